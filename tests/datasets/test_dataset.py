"""Write datasets with robotrain's writer, read them back with LeRobotDataset: values, deltas, padding, errors."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from robotrain.datasets.dataset import LeRobotDataset
from robotrain.datasets.format import DatasetError
from robotrain.datasets.metadata import LeRobotDatasetMetadata

from .helpers import TASKS, gray, record

LENGTHS = [12, 7, 15]


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    return record(tmp_path_factory.mktemp("ds") / "video", LENGTHS)


def test_metadata(video_root):
    meta = LeRobotDatasetMetadata("test/synthetic", root=video_root)
    assert (meta.fps, meta.total_episodes, meta.total_frames, meta.total_tasks) == (10, 3, 34, 2)
    assert meta.camera_keys == meta.video_keys == ["observation.image"]
    assert meta.tasks == TASKS
    assert meta.episode_column("length").tolist() == LENGTHS
    assert meta.episode_column("dataset_from_index").tolist() == [0, 12, 19]
    info = json.loads((video_root / "meta/info.json").read_text())
    video = info["features"]["observation.image"]["info"]
    assert (video["video.codec"], video["video.g"], video["video.crf"], video["video.pix_fmt"]) == ("av1", 2, 30,
                                                                                                      "yuv420p")
    assert info["splits"] == {"train": "0:3"}
    stats = meta.stats
    assert stats["observation.state"]["max"].tolist() == [2, 14] and stats["action"]["count"].tolist() == [34]
    assert stats["observation.image"]["mean"].shape == (3, 1, 1)


def test_items_hold_what_was_written(video_root):
    ds = LeRobotDataset("test/synthetic", root=video_root)
    assert len(ds) == 34 and ds.num_episodes == 3
    for idx in range(len(ds)):
        item = ds[idx]
        episode, i = (int(v) for v in item["observation.state"])
        assert item["episode_index"].item() == episode and item["frame_index"].item() == i
        assert item["index"].item() == idx and item["timestamp"].item() == pytest.approx(i / 10)
        assert item["action"].tolist() == [episode * 100 + i, -i]
        assert item["task"] == TASKS[episode % 2]
        image = item["observation.image"]
        assert image.shape == (3, 32, 48) and image.dtype == torch.float32
        assert abs(image.mean().item() * 255 - gray(episode, i)) < 4, (episode, i)
    assert ds[0]["next.reward"].shape == () and ds[11]["next.done"].item() is True


def test_delta_timestamps_pad_at_episode_edges(video_root):
    ds = LeRobotDataset("test/synthetic", root=video_root,
                        delta_timestamps={"action": [-0.1, 0.0, 0.1, 0.2], "observation.image": [-0.1, 0.0]})
    first = ds[12]  # episode 1, frame 0
    assert first["action"][:, 1].tolist() == [0, 0, -1, -2]  # frame -1 clamps to frame 0
    assert first["action_is_pad"].tolist() == [True, False, False, False]
    assert first["observation.image"].shape == (2, 3, 32, 48)
    assert first["observation.image_is_pad"].tolist() == [True, False]
    last = ds[18]  # episode 1, frame 6 (its last)
    assert last["action_is_pad"].tolist() == [False, False, True, True]
    assert last["action"][:, 0].tolist() == [105, 106, 106, 106]
    assert abs(last["observation.image"][0].mean().item() * 255 - gray(1, 5)) < 4


def test_episode_subset(video_root):
    ds = LeRobotDataset("test/synthetic", root=video_root, episodes=[2, 0])
    assert len(ds) == 27 and ds.episodes == [0, 2]
    assert sorted({int(ds[i]["episode_index"]) for i in range(len(ds))}) == [0, 2]
    item = ds[12]  # first frame of episode 2
    assert item["observation.state"].tolist() == [2, 0]
    assert abs(item["observation.image"].mean().item() * 255 - gray(2, 0)) < 4


def test_uint8_and_transforms(video_root):
    ds = LeRobotDataset("test/synthetic", root=video_root, return_uint8=True)
    assert ds[3]["observation.image"].dtype == torch.uint8
    flipped = LeRobotDataset("test/synthetic", root=video_root, image_transforms=lambda x: 1 - x)
    expected = 1 - ds[3]["observation.image"].float().mean().item() / 255
    assert flipped[3]["observation.image"].mean().item() == pytest.approx(expected, abs=1e-6)


def test_image_features_round_trip_exactly(tmp_path):
    root = record(tmp_path / "img", [5, 4], use_videos=False)
    meta = LeRobotDatasetMetadata("test/synthetic", root=root)
    assert meta.image_keys == ["observation.image"] and meta.video_path is None
    ds = LeRobotDataset("test/synthetic", root=root, return_uint8=True)
    assert ds[6]["observation.image"].unique().tolist() == [gray(1, 1)]
    column = pq.read_table(root / "data/chunk-000/file-000.parquet")["observation.image"]
    assert column.type.names == ["bytes", "path"]


def test_size_caps_roll_over_to_new_files(tmp_path):
    root = record(tmp_path / "small", [6, 6, 6], data_files_size_in_mb=0, video_files_size_in_mb=0)
    assert len(list((root / "data").rglob("*.parquet"))) == 3
    assert len(list((root / "videos").rglob("*.mp4"))) == 3
    ds = LeRobotDataset("test/synthetic", root=root)
    assert abs(ds[13]["observation.image"].mean().item() * 255 - gray(2, 1)) < 4


@pytest.mark.parametrize(("deltas", "message"), [
    ({"action": [0.05]}, r"0\.05 s, which is not a multiple of 1/fps = 0\.1 s"),
    ({"actions": [0.0]}, r"names 'actions', which is not a feature"),
])
def test_bad_delta_timestamps(video_root, deltas, message):
    with pytest.raises(DatasetError, match=message):
        LeRobotDataset("test/synthetic", root=video_root, delta_timestamps=deltas)


def test_out_of_range_episodes(video_root):
    with pytest.raises(DatasetError, match=r"episodes \[3\] do not exist .*0\.\.2"):
        LeRobotDataset("test/synthetic", root=video_root, episodes=[0, 3])
