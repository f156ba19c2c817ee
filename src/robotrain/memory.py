"""Keeping freed memory for reuse in a training process (glibc's malloc only).

By default glibc serves every allocation above a threshold (128 KB, growing up to 32 MB) with a mapping of its own
from the kernel and unmaps it when freed, and it trims the heap's free top back to the kernel. A training process
allocates and frees the same large buffers every step (activations, gradients, batches of frames), so it keeps
paying page faults on fresh memory. With allocations up to 1 GiB served from the heap and the heap never trimmed,
freed memory stays mapped for the next step to reuse.

Measured on 2 cores (docs/benchmarks.md, "Data loading" and "Training throughput"): cached 480x640 Diffusion samples
(two frames, 15 MB as floats) load at 524 samples/s with the defaults and 886 with this, and `robotrain train` on
Diffusion went from 2.18x to 2.53-2.60x LeRobot's samples/s. The cost: the process keeps its peak heap between
steps instead of returning it to the OS; a training process reaches that peak again on every step anyway.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
LARGEST_HEAP_ALLOCATION = 1 << 30  # allocations above this still get their own mapping
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # e.g. musl, which has no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_HEAP_ALLOCATION)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
