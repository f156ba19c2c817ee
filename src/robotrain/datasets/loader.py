"""DataLoader settings that keep the training step fed without taking its cores.

Measured on 2 cores (docs/benchmarks.md): with the frame cache a sample is a memory copy, and worker processes
only add the cost of shipping tensors between processes (0 workers was fastest: 7.9k vs 2.2k samples/s at
96x96); when frames are decoded on the fly, workers overlap decoding with training, but one core stays free
for the training step itself.
"""

from __future__ import annotations

import os
from typing import Any

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
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory}
    if workers > 0:
        # Workers live for the whole run (decoders stay open); 2 batches ahead each is enough to hide jitter.
        options.update(persistent_workers=True, prefetch_factor=2)
    return options
