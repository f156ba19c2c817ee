"""Convert hand-written v2.1/v2.0 datasets to v3.0 and read them back: values, layout, bad files, crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from robotrain.datasets import convert
from robotrain.datasets.convert import ConvertConfig, convert_dataset
from robotrain.datasets.dataset import LeRobotDataset
from robotrain.datasets.format import INFO_KEYS, DatasetError, read_info
from robotrain.errors import ConfigError

from .helpers import TASKS, gray, record
from .v21 import CAMERA, write_v21_dataset

LENGTHS = [12, 7, 15, 9]
FPS = 10


@pytest.fixture(scope="module")
def v21_root(tmp_path_factory) -> Path:
    """A v2.1 dataset with two episodes per chunk, so episode_chunk matters; never modified by tests."""
    return write_v21_dataset(tmp_path_factory.mktemp("v21") / "src", LENGTHS, fps=FPS, chunks_size=2)


@pytest.fixture(scope="module")
def converted(v21_root, tmp_path_factory) -> Path:
    return convert_dataset(ConvertConfig(root=v21_root, output_root=tmp_path_factory.mktemp("out") / "v3")).output_root


@pytest.fixture
def v21_copy(v21_root, tmp_path) -> Path:
    """A private copy of the source, for tests that break or fill it."""
    return Path(shutil.copytree(v21_root, tmp_path / "src"))


def source_rows(root: Path, episodes: list[int]) -> list[dict]:
    """The source's parquet rows of `episodes`, in order."""
    info = json.loads((root / "meta/info.json").read_text())
    rows = []
    for episode in episodes:
        path = info["data_path"].format(episode_chunk=episode // info["chunks_size"], episode_index=episode)
        rows += pq.read_table(root / path).to_pylist()
    return rows


def check_items(out: Path, source: Path, episodes: list[int]) -> None:
    """Every frame of the v3.0 dataset equals the source's `episodes` (renumbered 0..n-1) row for row."""
    ds = LeRobotDataset("test/converted", root=out)
    expected = source_rows(source, episodes)
    assert len(ds) == len(expected) and ds.num_episodes == len(episodes)
    for idx, row in enumerate(expected):
        item = ds[idx]
        old, i = row["episode_index"], row["frame_index"]
        assert item["observation.state"].tolist() == row["observation.state"] == [old, i]
        assert item["action"].tolist() == row["action"]
        assert item["next.reward"].item() == pytest.approx(row["next.reward"])
        assert item["next.done"].item() is row["next.done"]
        assert item["timestamp"].item() == pytest.approx(row["timestamp"]) == pytest.approx(i / FPS)
        assert item["frame_index"].item() == i and item["index"].item() == idx
        assert item["episode_index"].item() == episodes.index(old)
        assert item["task"] == TASKS[row["task_index"]] == TASKS[old % 2]
        image = item[CAMERA]
        assert image.shape == (3, 32, 48)
        assert abs(image.mean().item() * 255 - gray(old, i)) <= 4, (old, i)


def test_items_equal_the_source(converted, v21_root):
    check_items(converted, v21_root, list(range(len(LENGTHS))))


def test_v3_layout_and_info(converted):
    info = json.loads((converted / "meta/info.json").read_text())
    assert set(INFO_KEYS) <= set(info)
    assert "total_videos" not in info and "total_chunks" not in info
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and isinstance(info["fps"], int)
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, sum(LENGTHS), 2)
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:4"} and info["robot_type"] == "test_bot"
    features = info["features"]
    assert all(f["fps"] == FPS for k, f in features.items() if k != CAMERA)
    assert "fps" not in features[CAMERA] and features[CAMERA]["info"]["video.height"] == 32
    assert len(list(converted.glob("data/*/*.parquet"))) == 1
    assert len(list(converted.glob("videos/*/*/*.mp4"))) == 1
    assert not (converted / "meta/episodes.jsonl").exists()
    assert not list(converted.parent.glob(".*.converting"))


def test_stats_and_episode_table(converted):
    ds = LeRobotDataset("test/converted", root=converted)
    stats = ds.meta.stats
    assert (converted / "meta/stats.json").is_file()
    assert stats["observation.state"]["max"].tolist() == [3, 14]
    assert stats["action"]["count"].tolist() == [sum(LENGTHS)]
    assert stats["index"]["max"].tolist() == [sum(LENGTHS) - 1]
    assert stats[CAMERA]["mean"].shape == (3, 1, 1)
    episodes = pq.read_table(next(converted.glob("meta/episodes/*/*.parquet"))).to_pylist()
    assert [e["length"] for e in episodes] == LENGTHS
    assert [e["tasks"] for e in episodes] == [[TASKS[e % 2]] for e in range(4)]
    assert [e["dataset_from_index"] for e in episodes] == [0, 12, 19, 34]
    assert [e["stats/episode_index/max"] for e in episodes] == [[0.0], [1.0], [2.0], [3.0]]
    starts = [e[f"videos/{CAMERA}/from_timestamp"] for e in episodes]
    assert starts == pytest.approx([0.0, 1.2, 1.9, 3.4])


def test_zero_size_caps_give_a_file_per_episode(v21_root, tmp_path):
    cfg = ConvertConfig(root=v21_root, output_root=tmp_path / "v3", data_files_size_in_mb=0, video_files_size_in_mb=0)
    out = convert_dataset(cfg).output_root
    assert len(list(out.glob("data/*/*.parquet"))) == len(LENGTHS)
    assert len(list(out.glob(f"videos/{CAMERA}/*/*.mp4"))) == len(LENGTHS)
    check_items(out, v21_root, list(range(len(LENGTHS))))


def break_two_episodes(root: Path) -> tuple[str, str]:
    """Delete episode 1's parquet and truncate episode 2's mp4; returns their file names."""
    parquet = root / "data/chunk-000/episode_000001.parquet"
    mp4 = root / f"videos/chunk-001/{CAMERA}/episode_000002.mp4"
    parquet.unlink()
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    return parquet.name, mp4.name


def test_bad_files_are_all_listed(v21_copy, tmp_path):
    parquet, mp4 = break_two_episodes(v21_copy)
    with pytest.raises(DatasetError) as error:
        convert_dataset(ConvertConfig(root=v21_copy, output_root=tmp_path / "v3"))
    message = str(error.value)
    assert parquet in message and mp4 in message and "--skip_missing=true" in message
    assert "episode 1:" in message and "episode 2:" in message and "2 of 4 episodes" in message
    assert not (tmp_path / "v3").exists() and not list(tmp_path.glob(".*.converting"))


def test_skip_missing_converts_the_rest(v21_copy, tmp_path):
    parquet, mp4 = break_two_episodes(v21_copy)
    report = convert_dataset(ConvertConfig(root=v21_copy, output_root=tmp_path / "v3", skip_missing=True))
    assert (report.episodes, report.frames) == (2, LENGTHS[0] + LENGTHS[3])
    assert len(report.skipped) == 2
    assert report.skipped[0].startswith("episode 1:") and parquet in report.skipped[0]
    assert report.skipped[1].startswith("episode 2:") and mp4 in report.skipped[1]
    check_items(report.output_root, v21_copy, [0, 3])
    info = json.loads((report.output_root / "meta/info.json").read_text())
    assert (info["total_episodes"], info["total_frames"], info["splits"]) == (2, 21, {"train": "0:2"})
    episodes = pq.read_table(next(report.output_root.glob("meta/episodes/*/*.parquet"))).to_pylist()
    assert [(e["episode_index"], e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (0, 0, 12), (1, 12, 21)]
    assert episodes[1]["stats/episode_index/min"] == [1.0] and episodes[1]["stats/index/min"] == [12.0]


def test_wrong_length_is_a_problem(v21_copy, tmp_path):
    lines = (v21_copy / "meta/episodes.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"length": 9', '"length": 10')
    (v21_copy / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"episode 3: .*episode_000003.parquet has 9 rows.*episode_000003.mp4 "
                                           r"has 9 frames"):
        convert_dataset(ConvertConfig(root=v21_copy, output_root=tmp_path / "v3"))


def test_output_root_must_be_new_or_empty(v21_root, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        convert_dataset(ConvertConfig(root=v21_root, output_root=tmp_path / "full"))
    assert (tmp_path / "full/keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert convert_dataset(ConvertConfig(root=v21_root, output_root=tmp_path / "empty")).episodes == 4


def test_default_output_root_and_leftover_temp_dir(v21_copy):
    leftover = v21_copy.parent / ".src_v3.0.converting"
    leftover.mkdir()
    (leftover / "junk").write_text("from a killed run")
    report = convert_dataset(ConvertConfig(root=v21_copy))
    assert report.output_root == v21_copy.parent / "src_v3.0" and report.episodes == 4
    assert not leftover.exists()


def test_v3_dataset_is_refused(tmp_path):
    root = record(tmp_path / "v3", [3])
    with pytest.raises(DatasetError, match="already v3.0"):
        convert_dataset(ConvertConfig(root=root, output_root=tmp_path / "out"))


def test_missing_info_json_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty/meta/info.json is missing"):
        convert_dataset(ConvertConfig(root=tmp_path / "empty"))


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("data_files_size_in_mb", -1, "0 or more"), ("video_files_size_in_mb", -5, "0 or more"),
])
def test_bad_config_values(v21_root, field, value, problem):
    with pytest.raises(ConfigError, match=problem) as error:
        ConvertConfig(root=v21_root, **{field: value}).validate()
    assert error.value.field == field


def test_root_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ConvertConfig(root=tmp_path / "nope").validate()


def test_interrupted_conversion_leaves_no_output(v21_root, tmp_path, monkeypatch):
    calls = []

    def failing_append(self, src):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway
        return real_append(self, src)

    real_append = convert.VideoConcatenator.append
    monkeypatch.setattr(convert.VideoConcatenator, "append", failing_append)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(ConvertConfig(root=v21_root, output_root=tmp_path / "v3"))
    assert len(calls) == 2
    assert not (tmp_path / "v3").exists() and not list(tmp_path.glob(".*"))


def test_reader_points_at_the_converter(v21_root):
    with pytest.raises(DatasetError, match="robotrain dataset convert --root=") as error:
        read_info(v21_root)
    assert str(v21_root) in str(error.value)


def test_v20_dataset_gets_stats_from_data(tmp_path):
    source = write_v21_dataset(tmp_path / "v20", [5, 8], fps=FPS, version="v2.0")
    assert not (source / "meta/episodes_stats.jsonl").exists()
    report = convert_dataset(ConvertConfig(root=source, output_root=tmp_path / "v3"))
    check_items(report.output_root, source, [0, 1])
    stats = LeRobotDataset("test/converted", root=report.output_root).meta.stats
    assert stats["observation.state"]["max"].tolist() == [1, 7] and "q99" in stats["observation.state"]
    assert stats[CAMERA]["count"].tolist() == [13]  # from the source's stats.json: videos are not decoded
    info = json.loads((report.output_root / "meta/info.json").read_text())
    assert "video_info" not in info["features"][CAMERA] and info["features"][CAMERA]["info"]["video.width"] == 48


def test_image_features_are_copied(tmp_path):
    source = write_v21_dataset(tmp_path / "images", [4, 6], fps=FPS, with_video=False)
    report = convert_dataset(ConvertConfig(root=source, output_root=tmp_path / "v3"))
    info = json.loads((report.output_root / "meta/info.json").read_text())
    assert info["video_path"] is None and info["features"][CAMERA]["dtype"] == "image"
    check_items(report.output_root, source, [0, 1])
