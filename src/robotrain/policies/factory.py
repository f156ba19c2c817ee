"""`--policy.type` -> policy class, and make_policy: features from a dataset or env, statistics, weights, device."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robotrain.configs.policies import PolicyConfig
from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_PREFIX, FeatureType, PolicyFeature
from robotrain.devices import resolve_device
from robotrain.errors import UserError
from robotrain.policies.base import locate_pretrained
from robotrain.policies.normalize import Normalizer
from robotrain.policies.registry import policy_spec

if TYPE_CHECKING:
    from robotrain.datasets.metadata import LeRobotDatasetMetadata
    from robotrain.envs.configs import EnvConfig
    from robotrain.policies.base import Policy

logger = logging.getLogger(__name__)

def get_policy_class(policy_type: str) -> type[Policy]:
    """The Policy subclass of a `--policy.type` name (imported on first use)."""
    return policy_spec(policy_type).policy_class()


def dataset_to_policy_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, PolicyFeature]:
    """Dataset features (info.json) -> policy features: cameras VISUAL (channel-first), states, env state, action."""
    out = {}
    for key, spec in features.items():
        shape = tuple(spec["shape"])
        if spec["dtype"] in ("video", "image"):
            names = spec.get("names") or []
            if len(shape) == 3 and len(names) == 3 and names[2] in ("channel", "channels"):
                shape = (shape[2], shape[0], shape[1])  # stored HWC; models take CHW
            out[key] = PolicyFeature(FeatureType.VISUAL, shape)
        elif key == OBS_ENV_STATE:
            out[key] = PolicyFeature(FeatureType.ENV, shape)
        elif key.startswith(OBS_PREFIX):
            out[key] = PolicyFeature(FeatureType.STATE, shape)
        elif key == ACTION:
            out[key] = PolicyFeature(FeatureType.ACTION, shape)
    return out


def features_mismatch(expected: Mapping[str, PolicyFeature], available: Mapping[str, PolicyFeature]) -> list[str]:
    """Human-readable differences between what a policy was built for and what a data source provides."""
    problems = []
    for key, feature in expected.items():
        if key not in available:
            problems.append(f"'{key}' {tuple(feature.shape)} is missing")
        elif tuple(available[key].shape) != tuple(feature.shape):
            problems.append(f"'{key}' has shape {tuple(available[key].shape)}, the policy expects "
                            f"{tuple(feature.shape)}")
    return problems


def make_policy(cfg: PolicyConfig, ds_meta: LeRobotDatasetMetadata | None = None, env_cfg: EnvConfig | None = None,
                dataset_stats: Mapping[str, Mapping[str, Any]] | None = None, adapt_features: bool = False,
                use_dataset_stats: bool = True) -> Policy:
    """Build the policy `cfg` describes for a dataset (training) or an env (evaluation), on cfg.device.

    With cfg.pretrained_path (--policy.path) the weights are loaded; given a dataset, its statistics replace the
    checkpoint's (fine-tuning). Features that differ from the checkpoint's stop with a message naming them, unless
    `adapt_features` asks to rebuild the layers they feed. A resumed run passes use_dataset_stats=False to keep
    the checkpoint's statistics.
    """
    if (ds_meta is None) == (env_cfg is None):
        raise ValueError("make_policy needs exactly one of ds_meta or env_cfg")
    available = dataset_to_policy_features(ds_meta.features) if ds_meta is not None else dict(env_cfg.features)
    source = f"dataset {ds_meta.repo_id}" if ds_meta is not None else f"env {env_cfg.type}"
    pretrained = cfg.pretrained_path is not None
    if pretrained and env_cfg is not None and cfg.input_features:
        from robotrain.envs.factory import check_policy_features

        check_policy_features(env_cfg, cfg.input_features)  # its message names the --env.obs_type that fits
    if pretrained and (cfg.input_features or cfg.output_features):
        problems = features_mismatch({**cfg.input_features, **cfg.output_features}, available)
        if problems and not adapt_features:
            raise UserError(f"the policy at {cfg.pretrained_path} cannot use the {source}: {'; '.join(problems)}. "
                            "Fix: use data with the policy's features, or fine-tune with --adapt_features=true to "
                            "rebuild the layers those features feed")
        if problems:
            logger.warning("adapting the policy to the %s: %s", source, "; ".join(problems))
            cfg.input_features, cfg.output_features = {}, {}
    if not cfg.output_features:
        cfg.output_features = {k: f for k, f in available.items() if f.type is FeatureType.ACTION}
    if not cfg.input_features:
        cfg.input_features = {k: f for k, f in available.items() if f.type is not FeatureType.ACTION}
    if not cfg.output_features:
        raise UserError(f"the {source} has no 'action' feature, so a policy cannot be trained on it. "
                        "Fix: use a dataset recorded with actions")
    cfg.device = str(resolve_device(cfg.device))
    cfg.validate()

    policy_cls = get_policy_class(cfg.type)
    stats = dataset_stats if dataset_stats is not None else (ds_meta.stats if ds_meta is not None else None)
    replace_stats = stats is not None and (use_dataset_stats or not pretrained)
    if pretrained:
        # A missing file is reported before any model is built; a Hub id becomes its directory in the cache.
        directory, _ = locate_pretrained(cfg.pretrained_path)
        policy = build_without_backbone_download(policy_cls, cfg)
        # Statistics about to be replaced need not be in the checkpoint (a LeRobot one may be saved without them).
        _load_pretrained_weights(policy, directory, adapt_features, need_stats=not replace_stats)
    else:
        policy = policy_cls(cfg)
    if replace_stats:
        policy.load_stats(stats)
    elif not pretrained:
        raise UserError(f"a new {cfg.type} policy needs dataset statistics to normalize its inputs. Fix: build it "
                        "from a dataset, or evaluate a trained policy with --policy.path")
    return policy.to(cfg.device)


def build_without_backbone_download(policy_cls: type[Policy], cfg: PolicyConfig) -> Policy:
    """Build a policy whose weights come from a checkpoint: ImageNet backbone weights would be overwritten at once,
    so they are not fetched (which also keeps loading a checkpoint offline-safe). The config keeps its value."""
    if getattr(cfg, "pretrained_backbone_weights", None) is None:
        return policy_cls(cfg)
    policy = policy_cls(dataclasses.replace(cfg, pretrained_backbone_weights=None))
    policy.config = cfg
    return policy


def _load_pretrained_weights(policy: Policy, directory: Path, adapt: bool, need_stats: bool) -> None:
    from safetensors.torch import load_file

    from robotrain.policies.base import WEIGHTS_NAME, check_weights_file, load_weights
    from robotrain.policies.lerobot_checkpoint import map_lerobot_weight_names

    if not adapt:
        load_weights(policy, directory / WEIGHTS_NAME, need_stats=need_stats)
        return
    check_weights_file(directory / WEIGHTS_NAME)
    # Keep every tensor whose shape still fits; layers fed by changed features keep their fresh initialization.
    # A LeRobot checkpoint's names are mapped first, or its Diffusion backbone would not fit by name.
    saved = map_lerobot_weight_names(load_file(str(directory / WEIGHTS_NAME)), policy.config.type)
    own = policy.state_dict()
    fitting = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    policy.load_state_dict(fitting, strict=False)
    # Statistics buffers are left out of both reports: fine-tuning replaces them with the dataset's.
    statistics = tuple(f"{name}." for name, module in policy.named_modules() if isinstance(module, Normalizer))
    fresh = sorted(k for k in set(own) - set(fitting) if not k.startswith(statistics))
    unused = sorted(k for k in set(saved) - set(own) if not k.startswith(statistics))
    if fresh:
        logger.warning("re-initialized %d tensor(s) that do not fit the new features, e.g. %s", len(fresh), fresh[0])
    if unused:
        logger.warning("ignored %d saved tensor(s) this policy has no place for, e.g. %s", len(unused), unused[0])
