"""reuse_freed_memory: large buffers come from the heap (kept for reuse), not from a mapping of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import torch
from robotrain.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
buffer = torch.empty(48 << 20, dtype=torch.uint8)  # above glibc's largest default mmap threshold (32 MB)
print(applied, buffer.data_ptr() < libc.sbrk(0))  # below the program break: inside the heap
"""


def allocate_a_large_buffer(mode: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, in_heap = out.split()
    return applied, in_heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_come_from_the_heap_only_with_the_setting():
    assert allocate_a_large_buffer("on") == ("True", "True")
    assert allocate_a_large_buffer("off") == ("False", "False")  # glibc's default: a mapping, unmapped on free
