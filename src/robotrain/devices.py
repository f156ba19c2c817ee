"""Device and precision: `null` picks the best device; an unavailable device or precision is a user error."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from robotrain.errors import ConfigError


def best_device() -> torch.device:
    """cuda > mps > xpu > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    return torch.device("cpu")


def resolve_device(name: str | None) -> torch.device:
    """`--policy.device` -> a device that exists on this machine."""
    if name is None:
        return best_device()
    device = torch.device(name)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
    }.get(device.type, False)
    if not available:
        raise ConfigError("policy.device", name, "is not available on this machine",
                          f"use --policy.device={best_device().type}, or leave it unset to pick the best one")
    return device


@dataclass(frozen=True)
class Precision:
    """How the policy computes: fp32, or bf16 autocast over fp32 master weights (--policy.use_amp=true)."""

    device_type: str
    dtype: torch.dtype | None = None  # None: fp32 throughout

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in (backward follows the dtypes autocast chose)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def label(self) -> str:
        return "fp32" if self.dtype is None else "bf16 autocast, fp32 weights and optimizer"


def bf16_native(device: torch.device | str | None) -> bool:
    """Whether `device` computes bfloat16 in hardware: CPUs with AVX512-BF16 or AMX, CUDA GPUs that support it;
    mps and xpu do."""
    kind = torch.device(device or "cpu").type
    if kind == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True


def choose_precision(device: torch.device, use_amp: bool) -> Precision:
    """bf16 autocast where the device computes bf16 natively, else a ConfigError (never a silent fp32 run)."""
    if not use_amp:
        return Precision(device.type)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("policy.use_amp", True, f"robotrain has no mixed precision for {device.type}",
                          "drop --policy.use_amp (train in fp32)")
    if not bf16_native(device):
        what = "GPU" if device.type == "cuda" else "CPU (it needs AVX512-BF16 or AMX)"
        raise ConfigError("policy.use_amp", True, f"this {what} has no native bf16",
                          "drop --policy.use_amp (train in fp32)")
    return Precision(device.type, torch.bfloat16)


def bf16_matmul_speedup(size: int = 1024, repeats: int = 3) -> float:
    """How much faster a (size x size) matrix product runs in bf16 than in fp32 on this CPU (best of `repeats`).

    AVX512-BF16 alone does not make bf16 fast: measured at 2048, 2.4x faster on an AMD EPYC but 2.1x slower on an
    Intel Xeon without AMX, where oneDNN falls back to converting. About 50 ms, once per run."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))  # training's random stream untouched
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # first call: kernel selection, page faults
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            x @ x
            best = min(best, time.perf_counter() - start)
        timings[dtype] = best
    return timings[torch.float32] / timings[torch.bfloat16]


def slow_bf16_warning(precision: Precision) -> str | None:
    """A line for the banner when bf16 autocast will make this CPU run slower than fp32 (None otherwise)."""
    if precision.dtype != torch.bfloat16 or precision.device_type != "cpu":
        return None
    speedup = bf16_matmul_speedup()
    if speedup >= 1.0:
        return None
    amx = "" if torch.cpu._is_amx_tile_supported() else " (it has no AMX)"
    return (f"--policy.use_amp=true: bf16 matrix products run at {speedup:.2f}x the speed of fp32 on this CPU{amx}, "
            "so this run will be slower than in fp32 (activations still take half the memory). "
            "Fix: drop --policy.use_amp for speed")
