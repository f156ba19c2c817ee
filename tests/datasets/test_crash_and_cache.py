"""A recorder killed at any moment leaves a loadable dataset; the frame cache equals decoding and is reused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from robotrain.datasets import LeRobotDataset, LeRobotDatasetMetadata
from robotrain.datasets import frames as frames_module
from robotrain.datasets import hub as hub_module
from robotrain.datasets import writer as writer_module

from .helpers import frame, gray, record

RECORDER = textwrap.dedent("""
    import sys
    from tests.datasets.helpers import features, frame
    from robotrain.datasets import LeRobotDataset, writer as writer_module
    caps = {}
    if sys.argv[2] == "runs of 3":  # open files are joined every 3 episodes: kills also land inside joins,
        writer_module.SEGMENTS_PER_RUN = 3  # whose rows span two episode-table files of 2 rows
        writer_module.EPISODES_PER_FILE = 2
    else:  # "a file per episode": every save first closes the previous episode's files
        caps = {"data_files_size_in_mb": 0, "video_files_size_in_mb": 0}
    writer = LeRobotDataset.create("test/crash", 10, features(), root=sys.argv[1], **caps)
    for episode in range(40):
        for i in range(10):
            writer.add_frame(frame(episode, i, 10))
        writer.save_episode()
        print(f"saved {episode}", flush=True)
""")


def check_items(root, episodes: int) -> None:
    ds = LeRobotDataset("test/crash", root=root)
    assert len(ds) == 10 * episodes
    for idx in range(len(ds)):
        item = ds[idx]
        assert item["observation.state"].tolist() == [idx // 10, idx % 10]
        assert abs(item["observation.image"].mean().item() * 255 - gray(idx // 10, idx % 10)) < 4


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["runs of 3", "a file per episode"])
@pytest.mark.parametrize("delay_s", [0.0, 0.03, 0.07, 0.12, 0.2, 0.35])
def test_killed_recorder_leaves_a_loadable_dataset_and_resumes(tmp_path, delay_s, layout, monkeypatch):
    root = tmp_path / "ds"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(root), layout], stdout=subprocess.PIPE, text=True,
                            cwd=repo)
    assert proc.stdout.readline().strip() == "saved 0"
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    printed = [line for line in proc.stdout.read().splitlines() if line.startswith("saved")]
    proc.wait()
    committed = LeRobotDatasetMetadata("test/crash", root=root).total_episodes
    assert committed >= 1 + len(printed), "every episode reported saved must be committed"
    check_items(root, committed)

    if layout == "runs of 3":
        monkeypatch.setattr(writer_module, "SEGMENTS_PER_RUN", 3)
        monkeypatch.setattr(writer_module, "EPISODES_PER_FILE", 2)
    writer = LeRobotDataset.resume("test/crash", root=root)
    assert not [p for p in root.rglob(".*") if p.is_file()], "resume removes what the killed save left"
    for episode in range(committed, committed + 2):
        for i in range(10):
            writer.add_frame(frame(episode, i, 10))
        writer.save_episode()
    check_items(root, committed + 2)
    writer.finalize()
    check_items(root, committed + 2)
    per_file = 3 if layout == "runs of 3" else 1
    data_files = sorted(p.name for p in (root / "data/chunk-000").iterdir())
    assert data_files == [f"file-{i:03d}.parquet" for i in range(-(-(committed + 2) // per_file))]


def test_frame_cache_equals_decoding_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    root = record(tmp_path / "ds", [9, 5, 11])
    decoded = LeRobotDataset("test/synthetic", root=root, frame_cache="off", return_uint8=True)
    cached = LeRobotDataset("test/synthetic", root=root, frame_cache="on", return_uint8=True)
    assert isinstance(cached.frames, frames_module.FrameCache)
    for idx in range(len(decoded)):
        assert torch.equal(decoded[idx]["observation.image"], cached[idx]["observation.image"]), idx
    files = list((tmp_path / "cache").rglob("*.u8"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns

    subset = LeRobotDataset("test/synthetic", root=root, frame_cache="auto", episodes=[2], return_uint8=True,
                            delta_timestamps={"observation.image": [-0.1, 0.0]})
    assert isinstance(subset.frames, frames_module.FrameCache) and files[0].stat().st_mtime_ns == mtime
    assert subset[0]["observation.image_is_pad"].tolist() == [True, False]
    assert subset[3]["observation.image"][1].unique().tolist() == decoded[17]["observation.image"].unique().tolist()

    writer = LeRobotDataset.resume("test/synthetic", root=root)  # the dataset changes: a new cache
    for i in range(4):
        writer.add_frame(frame(3, i, 4))
    writer.save_episode()
    grown = LeRobotDataset("test/synthetic", root=root, frame_cache="on")
    assert len(list((tmp_path / "cache").rglob("*.u8"))) == 2
    assert abs(grown[len(grown) - 1]["observation.image"].mean().item() * 255 - gray(3, 3)) < 4


def test_frame_cache_over_budget_falls_back_or_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(frames_module, "cache_budget", lambda directory: 10)
    root = record(tmp_path / "ds", [4])
    auto = LeRobotDataset("test/synthetic", root=root, frame_cache="auto")
    assert isinstance(auto.frames, frames_module.DecodingSource)
    with pytest.raises(Exception, match=r"the frame cache needs .* frame_cache='off'"):
        LeRobotDataset("test/synthetic", root=root, frame_cache="on")


def test_download_fetches_only_the_selected_episodes_files(tmp_path, monkeypatch):
    """The Hub path with snapshot_download served from a local copy: meta first, then only the needed files."""
    source = record(tmp_path / "hub_copy", [5, 5, 5], data_files_size_in_mb=0, video_files_size_in_mb=0)
    requested: list[list[str]] = []

    def fake_snapshot(repo_id, target, revision, patterns):
        requested.append(patterns)
        import fnmatch

        for path in source.rglob("*"):
            rel = str(path.relative_to(source))
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in patterns):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / rel)

    monkeypatch.setattr(hub_module, "_snapshot", fake_snapshot)
    monkeypatch.setattr(hub_module, "hub_offline_requested", lambda: False)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    ds = LeRobotDataset("user/remote", episodes=[1])
    assert requested[0] == ["meta/**"]
    assert requested[1] == ["data/chunk-000/file-001.parquet", "videos/observation.image/chunk-000/file-001.mp4"]
    assert len(ds) == 5 and ds[0]["observation.state"].tolist() == [1, 0]
    assert not (tmp_path / "home/user/remote/data/chunk-000/file-000.parquet").exists()
    assert np.isclose(ds[4]["observation.image"].mean().item() * 255, gray(1, 4), atol=4)
