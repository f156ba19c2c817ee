"""Loader defaults follow what frames cost: no workers for cached frames, all CPUs but one when decoding."""

from __future__ import annotations

import torch

from robotrain.datasets import LeRobotDataset
from robotrain.datasets.loader import default_num_workers, loader_options

from .helpers import record


def test_workers_follow_the_frame_source(tmp_path):
    root = record(tmp_path / "ds", [6, 6])
    decoding = LeRobotDataset("test/synthetic", root=root, frame_cache="off")
    cached = LeRobotDataset("test/synthetic", root=root, frame_cache="on")
    assert default_num_workers(cached, cpus=2) == 0
    assert default_num_workers(decoding, cpus=2) == 1 and default_num_workers(decoding, cpus=64) == 8
    assert default_num_workers(decoding, cpus=1) == 1


def test_loader_with_workers_yields_right_batches(tmp_path):
    root = record(tmp_path / "ds", [6, 6])
    ds = LeRobotDataset("test/synthetic", root=root, delta_timestamps={"action": [0.0, 0.1]})
    options = loader_options(ds, num_workers=2)
    assert options["persistent_workers"] and options["prefetch_factor"] == 2
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, **options))
    states = torch.cat([b["observation.state"] for b in batches])
    assert states.tolist() == [[e, i] for e in range(2) for i in range(6)]
    assert batches[0]["observation.image"].shape == (4, 3, 32, 48)
    assert batches[1]["action_is_pad"][1].tolist() == [False, True]  # row 5: the episode's last frame
