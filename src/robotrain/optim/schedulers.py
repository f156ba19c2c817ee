"""Learning-rate schedule configs; `build(optimizer, num_training_steps)` makes a LambdaLR stepped once per step.

The schedules are written here (no diffusers dependency) and follow the published formulas (a policy's own
schedule lives in its folder, e.g. VQ-BeT's `vqbet`):
- `diffuser` / `cosine`: linear warmup from 0, then half a cosine to 0 (diffusers' get_cosine_schedule_with_warmup).
- `cosine_decay_with_warmup`: openpi's warmup then cosine to decay_lr, rescaled when the run is shorter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import draccus

from robotrain.errors import ConfigError

if TYPE_CHECKING:
    import torch

DIFFUSER_NAMES = ("cosine", "linear", "constant", "constant_with_warmup")


@dataclass
class LRSchedulerConfig(draccus.ChoiceRegistry):
    """Fields every schedule has."""

    num_warmup_steps: int | None = None
    """Steps of linear warmup from 0 to the optimizer's lr."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def lr_lambda(self, num_training_steps: int) -> Callable[[int], float]:
        """The factor applied to each param group's lr at a given step."""
        raise NotImplementedError

    def build(self, optimizer: torch.optim.Optimizer, num_training_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR for `optimizer` over a run of `num_training_steps`."""
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda(num_training_steps))

    def validate(self) -> None:
        if self.num_warmup_steps is not None and self.num_warmup_steps < 0:
            raise ConfigError("num_warmup_steps", self.num_warmup_steps, "cannot be negative", "use 0 or more")


def warmup_then(warmup: int, after: Callable[[int], float]) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return after(step)

    return factor


def cosine_to_zero(warmup: int, total: int, num_cycles: float = 0.5) -> Callable[[int], float]:
    def after(step: int) -> float:
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * progress)))

    return warmup_then(warmup, after)


@LRSchedulerConfig.register_subclass("diffuser")
@dataclass
class DiffuserSchedulerConfig(LRSchedulerConfig):
    """The schedules of diffusers' get_scheduler by name (LeRobot's `diffuser` type; Diffusion Policy's preset)."""

    name: str = "cosine"
    """cosine, linear, constant or constant_with_warmup."""

    def lr_lambda(self, num_training_steps: int) -> Callable[[int], float]:
        warmup = self.num_warmup_steps or 0
        if self.name == "cosine":
            return cosine_to_zero(warmup, num_training_steps)
        if self.name == "linear":
            remaining = max(1, num_training_steps - warmup)
            return warmup_then(warmup, lambda s: max(0.0, (num_training_steps - s) / remaining))
        if self.name == "constant_with_warmup":
            return warmup_then(warmup, lambda s: 1.0)
        return lambda s: 1.0

    def validate(self) -> None:
        super().validate()
        if self.name not in DIFFUSER_NAMES:
            raise ConfigError("name", self.name, f"is not a schedule (choose one of {', '.join(DIFFUSER_NAMES)})",
                              "use --scheduler.name=cosine")


@LRSchedulerConfig.register_subclass("cosine")
@dataclass
class CosineSchedulerConfig(LRSchedulerConfig):
    """Linear warmup, then cosine decay to 0 over the rest of the run (diffusers-style)."""

    num_warmup_steps: int | None = 500
    """Steps of linear warmup from 0 to the optimizer's lr."""
    num_cycles: float = 0.5
    """Cosine periods over the decay; 0.5 decays once from the peak to 0."""

    def lr_lambda(self, num_training_steps: int) -> Callable[[int], float]:
        return cosine_to_zero(self.num_warmup_steps or 0, num_training_steps, self.num_cycles)


@LRSchedulerConfig.register_subclass("cosine_decay_with_warmup")
@dataclass
class CosineDecayWithWarmupSchedulerConfig(LRSchedulerConfig):
    """openpi's schedule: warmup from peak/(w+1) to peak, cosine to decay_lr; rescaled for shorter runs."""

    num_warmup_steps: int | None = 1000
    """Warmup steps (scaled down with num_decay_steps when the run is shorter)."""
    num_decay_steps: int = 30000
    """Steps from the end of warmup to decay_lr."""
    peak_lr: float = 2.5e-5
    """Learning rate at the end of warmup; should equal the optimizer's lr."""
    decay_lr: float = 2.5e-6
    """Learning rate reached at the end of the decay."""

    def lr_lambda(self, num_training_steps: int) -> Callable[[int], float]:
        warmup, decay = self.num_warmup_steps or 0, self.num_decay_steps
        if num_training_steps < decay:  # squeeze both phases into a shorter run, keeping their ratio
            warmup = int(warmup * num_training_steps / decay)
            decay = num_training_steps
        floor = self.decay_lr / self.peak_lr

        def factor(step: int) -> float:
            if step < warmup:
                start = 1.0 / (warmup + 1)
                return start + (1.0 - start) * step / warmup
            progress = min(1.0, step / max(1, decay))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return factor

    def validate(self) -> None:
        super().validate()
        if self.peak_lr <= 0 or self.decay_lr < 0:
            raise ConfigError("peak_lr", self.peak_lr, "must be positive (and decay_lr not negative)",
                              "set --scheduler.peak_lr to the optimizer's lr")
        if self.num_decay_steps < 1:
            raise ConfigError("num_decay_steps", self.num_decay_steps, "must be at least 1", "e.g. 30000")
