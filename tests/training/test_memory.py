"""reuse_freed_memory: a freed large buffer's pages are reused instead of faulted in again (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from robotrain.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # the same size again
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_a_second_buffer(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_second_large_buffer_reuses_the_freed_pages():
    applied, faults = page_faults_of_a_second_buffer("on")
    assert applied == "True"
    assert faults < 1000  # the 64 MB were kept mapped: no fault per 4 KB page
    _, default_faults = page_faults_of_a_second_buffer("off")
    assert default_faults > 10_000  # glibc's default unmaps and faults all 16,384 pages in again
