"""Exponential moving average of a policy's weights: Diffusion Policy's (the paper's EMAModel) and the MLP's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """Exponential moving average of a model's trainable weights, kept as buffers so checkpoints carry it.

    After n earlier updates the decay is min(1 - (1 + s) ** -power, max_decay) with s = n - 1, and 0 while s <= 0:
    the paper's EMAModel (inv_gamma 1, update_after_step 0). Batch-norm parameters and statistics are not
    averaged (the raw ones are used), as in that EMAModel.
    """

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        super().__init__()
        self.power, self.max_decay = power, max_decay
        self.names: list[str] = []  # parameter names of `model`, in order
        for module_name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            for name, param in module.named_parameters(prefix=module_name, recurse=False):
                if param.requires_grad:
                    self.names.append(name)
        params = dict(model.named_parameters())
        for name in self.names:
            self.register_buffer(self._key(name), params[name].detach().clone())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "-")  # buffer names cannot hold dots

    def decay(self, updates: int) -> float:
        """The decay of the update that follows `updates` earlier ones."""
        step = max(0, updates - 1)
        return 0.0 if step == 0 else min(1 - (1 + step) ** -self.power, self.max_decay)

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names], [getattr(self, self._key(n)) for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward the model's current weights (call after each optimizer step)."""
        params, shadows = self._pairs(model)
        torch._foreach_lerp_(shadows, [p.detach() for p in params], 1.0 - self.decay(int(self.step)))
        self.step += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Run `model` with the averaged weights inside the block (pointer swaps, no copies)."""
        if int(self.step) == 0:  # nothing averaged yet: the raw weights are the best estimate
            yield
            return
        params, shadows = self._pairs(model)
        self._swap(params, shadows)
        try:
            yield
        finally:
            self._swap(params, shadows)

    @staticmethod
    def _swap(params: list[Tensor], shadows: list[Tensor]) -> None:
        for param, shadow in zip(params, shadows, strict=True):
            param.data, shadow.data = shadow.data, param.data

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved without an average (use_ema turned on for fine-tuning): start it from the loaded weights.
        if not any(key.startswith(prefix) for key in state_dict):
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
