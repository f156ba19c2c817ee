"""What every policy is: an nn.Module with a small interface, saved as config.json + model.safetensors.

    forward(batch) -> (loss, metrics)        training: the loss and named floats to log
    predict_action_chunk(batch) -> (B, T, A) the next actions, in dataset units
    select_action(batch) -> (B, A)           one action per call (queues, temporal ensembling)
    reset()                                  forget queued actions and observations (call at episode start)
    get_optim_params()                       parameters or parameter groups for the optimizer
    save_pretrained(dir) / from_pretrained(dir_or_repo, **overrides)

Normalization statistics are buffers of the model (see normalize.py): the two files deploy on their own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import draccus
import torch
from torch import nn

from robotrain.configs.policies import PolicyConfig
from robotrain.configs.types import PolicyFeature
from robotrain.errors import ConfigError, UserError
from robotrain.files import atomic_write, atomic_write_json
from robotrain.policies.normalize import Normalizer

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Policy(nn.Module):
    """Base of ACTPolicy, DiffusionPolicy, ...: serialization and statistics handling live here, nothing else."""

    config_class: ClassVar[type[PolicyConfig]]
    name: ClassVar[str]

    def __init__(self, config: PolicyConfig, normalized: Mapping[str, PolicyFeature] | None = None):
        """Check the config and its features, and hold the statistics of the `normalized` features (default: every
        input and output feature) as buffers (`self.normalizer`)."""
        super().__init__()
        self.config = config
        config.validate()
        config.validate_features()
        features = normalized if normalized is not None else {**config.input_features, **config.output_features}
        self.normalizer = Normalizer(features, config.normalization_mapping)

    # The interface each policy implements.
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def predict_action_chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def get_optim_params(self) -> Any:
        return self.parameters()

    def update(self) -> None:
        """Called after each optimizer step (e.g. to update an EMA copy of the weights)."""

    # Statistics.
    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Overwrite every normalizer's statistics (fine-tuning on a new dataset uses its statistics)."""
        for module in self.modules():
            if isinstance(module, Normalizer):
                module.load_stats(stats)

    # Serialization.
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors into `directory` (each file atomically)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = draccus.encode(self.config, PolicyConfig)
        data.pop("pretrained_path", None)  # where the weights came from is not part of the model
        atomic_write_json(directory / CONFIG_NAME, data)
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(self, str(tmp)))

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, config: PolicyConfig | None = None,
                        device: str | torch.device = "cpu", strict: bool = True, **overrides: Any) -> Policy:
        """Load a saved policy (a directory or Hub repo); `overrides` change config fields, e.g. n_action_steps."""
        directory, weights = locate_pretrained(path_or_repo)
        if config is None:
            config = load_policy_config(directory / CONFIG_NAME)
        config = apply_overrides(config, overrides)
        config.pretrained_path = Path(directory)
        from robotrain.policies.factory import get_policy_class

        policy_cls = get_policy_class(config.type) if cls is Policy else cls
        if config.type != policy_cls.name:
            raise UserError(f"{path_or_repo} holds a '{config.type}' policy, not '{policy_cls.name}'. "
                            f"Fix: load it with {get_policy_class(config.type).__name__} or Policy.from_pretrained")
        from robotrain.policies.factory import build_without_backbone_download

        policy = build_without_backbone_download(policy_cls, config)
        load_weights(policy, weights, strict=strict)
        return policy.to(device).eval()


def locate_pretrained(path_or_repo: str | Path) -> tuple[Path, Path]:
    """(directory with config.json, its model.safetensors), from a local directory or a Hub repo (whose LeRobot
    processor files, if any, are fetched beside them)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise ConfigError("policy.path", str(path), f"holds no {name}",
                                  "point at a checkpoint's pretrained_model directory")
        return path, path / WEIGHTS_NAME
    from robotrain.hub import fetch_hub_file
    from robotrain.policies.lerobot_checkpoint import fetch_lerobot_processor_files

    config = fetch_hub_file(str(path_or_repo), CONFIG_NAME, "policy.path")
    weights = fetch_hub_file(str(path_or_repo), WEIGHTS_NAME, "policy.path")
    fetch_lerobot_processor_files(str(path_or_repo))  # LeRobot 0.4 repos keep their statistics there
    return config.parent, weights


def load_policy_config(path: Path) -> PolicyConfig:
    """A policy config.json (robotrain's or LeRobot's) -> the PolicyConfig subclass its "type" names."""
    from robotrain.configs.parser import read_config_file

    return read_config_file(PolicyConfig, path)


def apply_overrides(config: PolicyConfig, overrides: Mapping[str, Any]) -> PolicyConfig:
    """A copy of `config` with some fields replaced, checked like command-line flags."""
    if not overrides:
        return config
    names = {f.name for f in dataclasses.fields(config)}
    for key in overrides:
        if key not in names:
            raise ConfigError(f"policy.{key}", overrides[key], f"is not a field of {type(config).__name__}",
                              "check the spelling against `robotrain train --policy.type=... --help`")
    config = dataclasses.replace(config, **overrides)
    config.validate()
    return config


def check_weights_file(weights: Path) -> None:
    """A UserError naming `weights` when it is truncated or not a safetensors file (its header says so)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as file:
            file.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError, not an OSError
        raise UserError(f"{weights} is damaged ({str(exc).splitlines()[0]}): it cannot be loaded. Fix: use another "
                        "checkpoint of the run, or restore the file (a copy that was cut short?)") from None


def load_weights(policy: nn.Module, weights: Path, strict: bool = True, need_stats: bool = True) -> None:
    """Load model.safetensors into `policy`; a mismatch names the first differing tensor.

    A LeRobot checkpoint (no robotrain statistics buffers: LeRobot 0.4 keeps them in processor files beside it,
    LeRobot <= 0.3 under other names) loads through lerobot_checkpoint.py. need_stats=False says the caller loads
    other statistics next (fine-tuning on a dataset), so a LeRobot checkpoint saved without statistics loads too.
    """
    from safetensors.torch import load_model

    from robotrain.policies.lerobot_checkpoint import load_lerobot_checkpoint, needs_lerobot_loader

    check_weights_file(weights)
    if needs_lerobot_loader(policy, weights):
        load_lerobot_checkpoint(policy, weights, strict=strict, need_stats=need_stats)
        return
    try:
        missing, unexpected = load_model(policy, str(weights), strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"{weights} does not fit this policy's architecture: {str(exc).splitlines()[-1].strip()}. "
                        "Fix: load it with the config.json saved beside it") from None
    if strict and (missing or unexpected):
        first = sorted(missing or unexpected)[0]  # safetensors returns sets
        raise UserError(f"{weights} does not fit this policy: {len(missing)} missing and {len(unexpected)} unexpected "
                        f"tensors (e.g. {first}). Fix: load it with the config.json saved beside it")

