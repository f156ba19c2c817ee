"""Feature normalization with dataset statistics, kept as buffers inside the model.

The statistics travel in model.safetensors with the weights, so config.json + model.safetensors is all a deployment
needs (as diffusion_policy and LeRobot before v0.4 did). Math as LeRobot's (eps = 1e-8):
    MEAN_STD  (x - mean) / (std + eps)
    MIN_MAX   2 (x - min) / (max - min + eps) - 1      (to [-1, 1])
    IDENTITY  x
Image statistics are per channel, shaped (C, 1, 1) so they broadcast over (..., C, H, W).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from robotrain.configs.types import FeatureType, NormalizationMode, PolicyFeature
from robotrain.errors import ConfigError, UserError

EPS = 1e-8
STAT_NAMES = {NormalizationMode.MEAN_STD: ("mean", "std"), NormalizationMode.MIN_MAX: ("min", "max")}


def buffer_key(feature: str) -> str:
    """Module names cannot hold dots: observation.images.top -> observation_images_top."""
    return feature.replace(".", "_")


class FeatureStats(nn.Module):
    """The two statistics one feature is normalized with; +inf until set, so a missing statistic cannot pass."""

    def __init__(self, mode: NormalizationMode, shape: tuple[int, ...]):
        super().__init__()
        self.mode = mode
        for name in STAT_NAMES[mode]:
            self.register_buffer(name, torch.full(shape, torch.inf))


class Normalizer(nn.Module):
    """Normalizes and un-normalizes the features of a batch by the mode their feature type maps to."""

    def __init__(self, features: Mapping[str, PolicyFeature], norm_map: Mapping[str, NormalizationMode],
                 stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.stats = nn.ModuleDict()
        self.keys: dict[str, str] = {}  # feature -> module key
        for feature, spec in features.items():
            ftype = spec.type.value if isinstance(spec.type, FeatureType) else str(spec.type)
            mode = NormalizationMode(norm_map.get(ftype, NormalizationMode.IDENTITY))
            if mode is NormalizationMode.IDENTITY:
                continue
            if mode not in STAT_NAMES:
                raise ConfigError("normalization_mapping", f"{ftype}: {mode.value}", "is not supported by robotrain",
                                  "use MEAN_STD, MIN_MAX or IDENTITY")
            shape = (spec.shape[0], 1, 1) if spec.type is FeatureType.VISUAL else tuple(spec.shape)
            self.stats[buffer_key(feature)] = FeatureStats(mode, shape)
            self.keys[feature] = buffer_key(feature)
        self._checked = False
        if stats is not None:
            self.load_stats(stats)

    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Copy dataset statistics ({feature: {"mean": array, ...}}) into the buffers."""
        for feature, key in self.keys.items():
            module = self.stats[key]
            if feature not in stats:
                raise UserError(f"the dataset has no statistics for '{feature}', which the policy normalizes "
                                f"({module.mode.value}). Fix: recompute the dataset's stats "
                                "(`robotrain dataset validate` lists them), or map its type to IDENTITY in "
                                "--policy.normalization_mapping")
            for name in STAT_NAMES[module.mode]:
                buffer = getattr(module, name)
                value = torch.as_tensor(np.asarray(stats[feature][name]), dtype=torch.float32)
                if value.numel() != buffer.numel():
                    raise UserError(f"the statistic '{feature}.{name}' has {value.numel()} values but the policy's "
                                    f"feature has shape {tuple(buffer.shape)}. Fix: use a dataset whose "
                                    f"'{feature}' matches the policy, or train a new policy")
                buffer.copy_(value.reshape(buffer.shape))
        self._checked = False

    def _load_from_state_dict(self, *args, **kwargs):
        self._checked = False  # new statistics arrive with a checkpoint: check them again on first use
        super()._load_from_state_dict(*args, **kwargs)

    def _check_ready(self) -> None:
        for feature, key in self.keys.items():
            module = self.stats[key]
            for name in STAT_NAMES[module.mode]:
                if not torch.isfinite(getattr(module, name)).all():
                    raise UserError(f"the policy has no statistics for '{feature}' ({name} is not set). Fix: build "
                                    "the policy from a dataset (make_policy(cfg, ds_meta=...)) or load a checkpoint")
        self._checked = True

    def normalize(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict: features this normalizer knows are normalized, every other entry passes through."""
        if not self._checked:
            self._check_ready()
        out = dict(batch)
        for feature, key in self.keys.items():
            if feature in out:
                out[feature] = self._transform(self.stats[key], out[feature], inverse=False)
        return out

    def unnormalize(self, feature: str, value: torch.Tensor) -> torch.Tensor:
        """Map one normalized feature (e.g. predicted actions) back to dataset units."""
        if not self._checked:
            self._check_ready()
        if feature not in self.keys:
            return value
        return self._transform(self.stats[self.keys[feature]], value, inverse=True)

    @staticmethod
    def _transform(stats: FeatureStats, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        if stats.mode is NormalizationMode.MEAN_STD:
            mean, std = stats.mean, stats.std
            return x * (std + EPS) + mean if inverse else (x - mean) / (std + EPS)
        low, high = stats.min, stats.max
        if inverse:
            return (x + 1) / 2 * (high - low + EPS) + low
        return (x - low) / (high - low + EPS) * 2 - 1
