"""Bad datasets and bad frames: one clear DatasetError naming the file (and episode) and the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from robotrain.datasets import LeRobotDataset, LeRobotDatasetMetadata
from robotrain.datasets.format import DatasetError
from robotrain.errors import ConfigError

from .helpers import features, frame, record


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return record(tmp_path_factory.mktemp("pristine") / "ds", [8, 6])


@pytest.fixture
def copy(pristine, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(pristine, target)
    return target


def load(root):
    return LeRobotDataset("test/synthetic", root=root)


def edit_info(root, **changes):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def test_missing_info_json(copy):
    (copy / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json is missing.*Fix: point --dataset\.root"):
        load(copy)


def test_v21_dataset_names_the_converter(copy):
    edit_info(copy, codebase_version="v2.1")
    with pytest.raises(DatasetError, match=rf"v2\.1 dataset.*robotrain dataset convert --root={copy}"):
        load(copy)


def test_unsupported_version(copy):
    edit_info(copy, codebase_version="v4.0")
    with pytest.raises(DatasetError, match=r"codebase_version v4\.0 is not supported"):
        load(copy)


def test_unknown_info_keys_are_ignored_with_a_warning(copy, caplog):
    edit_info(copy, total_videos=2, some_future_key=1)
    assert len(load(copy)) == 14
    assert "ignoring unknown keys some_future_key, total_videos" in caplog.text


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_data_parquet(copy, damage):
    path = copy / "data/chunk-000/file-000.parquet"
    data = path.read_bytes()
    path.write_bytes(b"not a parquet file" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"data/chunk-000/file-000\.parquet is corrupt or truncated"):
        load(copy)


def test_corrupt_episode_table(copy):
    (copy / "meta/episodes/chunk-000/file-000.parquet").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"meta/episodes/chunk-000/file-000\.parquet is corrupt"):
        load(copy)


def test_missing_video_file(copy):
    (copy / "videos/observation.image/chunk-000/file-000.mp4").unlink()
    ds = load(copy)
    with pytest.raises(DatasetError, match=r"videos/observation\.image/chunk-000/file-000\.mp4"):
        ds[0]


def test_truncated_video_file(copy):
    path = copy / "videos/observation.image/chunk-000/file-000.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    ds = load(copy)
    with pytest.raises(DatasetError, match=r"file-000\.mp4"):
        for i in range(len(ds)):
            ds[i]


def test_episode_length_mismatch(copy):
    edit_info(copy, total_episodes=3)
    with pytest.raises(DatasetError, match=r"info\.json says 3 episodes but meta/episodes holds 2"):
        load(copy)


def test_repo_id_that_escapes_the_cache():
    with pytest.raises(ConfigError, match=r"--repo_id=\.\./x: is not a dataset id"):
        LeRobotDataset("../x")


def test_absent_dataset_offline(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset user/nothing is not at .* HF_HUB_OFFLINE is set.*--dataset\.root"):
        LeRobotDataset("user/nothing")


# ---- writing ---------------------------------------------------------------------------------------------------
@pytest.fixture
def writer(tmp_path):
    return LeRobotDataset.create("test/w", 10, features(), root=tmp_path / "w")


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.pop("action"), r"missing \['action'\]"),
    (lambda f: f.update(extra=1), r"unexpected \['extra'\]"),
    (lambda f: f.update(task=""), r"'task' must be a non-empty string"),
    (lambda f: f.update(action=np.zeros(3, np.float32)), r"'action' has shape \(3,\), expected \(2,\)"),
    (lambda f: f.update(action=np.array(["a", "b"])), r"'action' has dtype <U1"),
    (lambda f: f.update(**{"observation.image": np.zeros((10, 10, 3), np.uint8)}),
     r"camera 'observation\.image' has shape"),
    (lambda f: f.update(**{"observation.image": np.full((32, 48, 3), 2.0)}), r"floats outside \[0, 1\]"),
])
def test_add_frame_is_strict(writer, change, message):
    bad = frame(0, 0, 5)
    change(bad)
    with pytest.raises(DatasetError, match=message):
        writer.add_frame(bad)


def test_add_frame_accepts_chw_float_and_scalars(writer):
    good = frame(0, 0, 1)
    good["observation.image"] = np.full((3, 32, 48), 0.5, np.float32)
    good["next.reward"] = 0.25
    writer.add_frame(good)
    writer.save_episode()
    ds = LeRobotDataset("test/w", root=writer.root, return_uint8=True)
    assert ds[0]["observation.image"].float().mean().item() == pytest.approx(128, abs=3)
    assert ds[0]["next.reward"].item() == 0.25


def test_create_refuses_a_non_empty_root(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DatasetError, match=r"already exists and is not empty.*LeRobotDataset\.resume"):
        LeRobotDataset.create("test/w", 10, features(), root=tmp_path / "full")


def test_save_episode_without_frames(writer):
    with pytest.raises(DatasetError, match=r"no frames"):
        writer.save_episode()


def test_bad_feature_specs(tmp_path):
    with pytest.raises(DatasetError, match=r"feature name 'a/b' contains '/'"):
        LeRobotDataset.create("t/w", 10, {"a/b": {"dtype": "float32", "shape": [1]}}, root=tmp_path / "a")
    with pytest.raises(DatasetError, match=r"dtype 'floaty'"):
        LeRobotDataset.create("t/w", 10, {"a": {"dtype": "floaty", "shape": [1]}}, root=tmp_path / "b")
    with pytest.raises(DatasetError, match=r"cameras are \[height, width, 3\]"):
        LeRobotDataset.create("t/w", 10, {"c": {"dtype": "video", "shape": [3, 32, 48]}}, root=tmp_path / "c")


def test_metadata_repr_and_paths(pristine):
    meta = LeRobotDatasetMetadata("test/synthetic", root=pristine)
    assert meta.get_video_file_path(1, "observation.image").name == "file-000.mp4"
    assert "episodes=2" in repr(meta)
