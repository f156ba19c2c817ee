"""DataLoader settings that keep the training step fed without taking its cores.

Measured on 2 cores (docs/benchmarks.md): with the frame cache a sample is a memory copy, and worker processes
only add the cost of shipping tensors between processes (0 workers was fastest: 7.9k vs 2.2k samples/s at
96x96); when frames are decoded on the fly, workers overlap decoding with training, but one core stays free
for the training step itself.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

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


def stack_keeping_layout(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, keeping the samples' memory layout. Camera frames are (C, H, W) views of (H, W, C) pixels;
    default_collate copies them into a contiguous batch in a worker (a transposing copy: 7.4 vs 2.1 ms for 8
    two-frame 480x640 uint8 samples), while here each sample is one block copy into shared memory."""
    first = tensors[0]
    if first.is_contiguous() or any(t.shape != first.shape or t.stride() != first.stride() for t in tensors):
        return default_collate(tensors)
    order = sorted(range(first.dim()), key=lambda d: -first.stride(d))  # dimensions as they lie in memory
    in_memory_order = [t.permute(order) for t in tensors]
    if not in_memory_order[0].is_contiguous():  # not a dense layout (e.g. a slice): nothing to keep
        return default_collate(tensors)
    shape = (len(tensors), *in_memory_order[0].shape)
    if get_worker_info() is not None:  # as default_collate: straight into shared memory, no copy when sent
        out = first.new(first._typed_storage()._new_shared(first.numel() * len(tensors))).view(shape)
    else:
        out = first.new_empty(shape)
    torch.stack(in_memory_order, 0, out=out)
    return out.permute(0, *[order.index(d) + 1 for d in range(first.dim())])


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch LeRobotDataset samples: default_collate, with tensors stacked in their memory layout."""
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = stack_keeping_layout(values) if isinstance(values[0], torch.Tensor) else default_collate(values)
    return batch


def loader_options(dataset: LeRobotDataset, num_workers: int | None = None, pin_memory: bool = False) -> dict[str, Any]:
    """Keyword arguments for torch.utils.data.DataLoader (workers, persistence, prefetching)."""
    workers = default_num_workers(dataset) if num_workers is None else num_workers
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory, "collate_fn": collate}
    if workers > 0:
        # Workers live for the whole run (decoders stay open); 2 batches ahead each is enough to hide jitter.
        options.update(persistent_workers=True, prefetch_factor=2)
    return options
