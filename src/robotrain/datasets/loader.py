"""DataLoader settings that keep the training step fed without taking its cores.

Measured on 2 cores (docs/benchmarks.md): with the frame cache a sample is a memory copy, and worker processes
only add the cost of shipping tensors between processes (0 workers was fastest: 7.9k vs 2.2k samples/s at
96x96); when frames are decoded on the fly, workers overlap decoding with training, but one core stays free
for the training step itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from robotrain.datasets.collate import collate
from robotrain.datasets.dataset import LeRobotDataset
from robotrain.datasets.frames import FrameCache

MAX_WORKERS = 8  # beyond this, per-worker decoder caches cost more memory than they save time


def cpu_count() -> int:
    """CPUs this process may use (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_num_workers(dataset: LeRobotDataset, cpus: int | None = None) -> int:
    """0 when frames come from the cache (or there are no videos), else every CPU but one, at most MAX_WORKERS."""
    cpus = cpu_count() if cpus is None else cpus
    decodes_video = bool(dataset.meta.video_keys) and not isinstance(dataset.frames, FrameCache)
    if not decodes_video:
        return 0
    return max(1, min(cpus - 1, MAX_WORKERS))


def loader_options(dataset: LeRobotDataset, num_workers: int | None = None, pin_memory: bool = False) -> dict[str, Any]:
    """Keyword arguments for torch.utils.data.DataLoader (workers, persistence, prefetching)."""
    workers = default_num_workers(dataset) if num_workers is None else num_workers
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory, "collate_fn": collate}
    if workers > 0:
        # Workers live for the whole run (decoders stay open); 2 batches ahead each is enough to hide jitter.
        options.update(persistent_workers=True, prefetch_factor=2)
    return options


class WholeBatches(torch.utils.data.Dataset):
    """A dataset seen as batches: item `indices` is `dataset.get_batch(indices)`, so a loader fetches a batch in
    one call instead of one call per sample."""

    def __init__(self, dataset: LeRobotDataset):
        self.dataset = dataset

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        return self.dataset.get_batch(indices)

    def __len__(self) -> int:
        return len(self.dataset)


def batch_loader(dataset: LeRobotDataset, sampler: Iterable[int], batch_size: int, num_workers: int | None = None,
                 pin_memory: bool = False, **dataloader_kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader of `batch_size` batches drawn from `sampler`, each fetched whole (`LeRobotDataset.get_batch`);
    the last batch may be smaller. Same batches as a DataLoader over `dataset` with `loader_options`."""
    options = loader_options(dataset, num_workers, pin_memory) | dataloader_kwargs
    options["collate_fn"] = already_collated
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    return torch.utils.data.DataLoader(WholeBatches(dataset), sampler=batches, batch_size=None, **options)


def already_collated(batch: dict[str, Any]) -> dict[str, Any]:
    """collate_fn of `batch_loader` (module level, so workers can unpickle it)."""
    return batch
