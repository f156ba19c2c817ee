"""Device selection: `null` picks the best available; an unavailable device is a user error, not a crash."""

from __future__ import annotations

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
