"""Turning samples into a batch, in the loader's workers or in `LeRobotDataset.get_batch`."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info


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
