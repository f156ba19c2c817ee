"""Loader defaults follow what frames cost: no workers for cached frames, all CPUs but one when decoding."""

from __future__ import annotations

import pytest
import torch

from robotrain.datasets import LeRobotDataset
from robotrain.datasets.loader import batch_loader, default_num_workers, loader_options

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


def test_batches_keep_the_frames_memory_layout_and_equal_default_collate(tmp_path):
    """Frames are (C, H, W) views of (H, W, C) pixels; batching them as they lie in memory avoids a transposing
    copy (in workers too, where the batch goes to shared memory) and must give the same values."""
    root = record(tmp_path / "ds", [6, 6])
    ds = LeRobotDataset("test/synthetic", root=root, return_uint8=True,
                        delta_timestamps={"observation.image": [-0.1, 0.0], "action": [0.0, 0.1]})
    plain = LeRobotDataset("test/synthetic", root=root, return_uint8=True)
    for dataset, key_shape in ((ds, (4, 2, 3, 32, 48)), (plain, (4, 3, 32, 48))):
        for workers in (0, 2):
            options = loader_options(dataset, num_workers=workers)
            ours = list(torch.utils.data.DataLoader(dataset, batch_size=4, **options))
            options.pop("collate_fn")
            reference = list(torch.utils.data.DataLoader(dataset, batch_size=4, **options))
            for mine, theirs in zip(ours, reference, strict=True):
                assert mine.keys() == theirs.keys()
                for key, value in mine.items():
                    if isinstance(value, torch.Tensor):
                        assert torch.equal(value, theirs[key]), key
                    else:
                        assert value == theirs[key], key
                image = mine["observation.image"]
                assert image.shape == key_shape and not image.is_contiguous()
                assert image.movedim(-3, -1).is_contiguous(), "pixels stay channel-last in memory"


def test_whole_batches_equal_collated_samples(tmp_path):
    """The trainer fetches a batch in one call (`get_batch`, gathered columns); it must give what collating the
    samples one by one gives: past and future offsets padded at both episode edges, cameras, strings, tasks,
    negative indices; in workers too."""
    root = record(tmp_path / "ds", [3, 7, 5])
    ds = LeRobotDataset("test/synthetic", root=root, return_uint8=True, delta_timestamps={
        "observation.image": [-0.1, 0.0], "observation.state": [-0.2, -0.1, 0.0], "action": [0.0, 0.1, 0.2, 0.3]})
    order = [int(i) for i in torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))] + [-1, -15]
    for workers in (0, 2):
        whole = list(batch_loader(ds, order, 4, num_workers=workers))
        one_by_one = list(torch.utils.data.DataLoader(ds, batch_size=4, sampler=order, **loader_options(ds, 0)))
        assert [len(b["index"]) for b in whole] == [4, 4, 4, 4, 1]
        for mine, theirs in zip(whole, one_by_one, strict=True):
            assert mine.keys() == theirs.keys()
            for key, value in mine.items():
                if isinstance(value, torch.Tensor):
                    assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
                else:
                    assert value == theirs[key], key
    padded = ds.get_batch([0, 2])  # first and last frame of episode 0
    assert padded["observation.state_is_pad"].tolist() == [[True, True, False], [False, False, False]]
    assert padded["action_is_pad"].tolist() == [[False, False, False, True], [False, True, True, True]]
    with pytest.raises(IndexError, match="frame 15 is out of range"):
        ds.get_batch([0, 15])
