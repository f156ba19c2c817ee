"""Loading checkpoints written by LeRobot (`lerobot-train` output or Hub repos) into robotrain's policies.

LeRobot 0.4 keeps the normalization statistics out of the model, in processor files beside config.json and
model.safetensors (names and keys as LeRobot 0.4.4 writes them):

    policy_preprocessor.json     {"name": ..., "steps": [{"registry_name": ..., "config": {...}, "state_file": ...}]}
                                 rename_observations_processor, to_batch_processor, device_processor,
                                 normalizer_processor (config: eps, features, norm_map)
    policy_preprocessor_step_3_normalizer_processor.safetensors       flat "<feature>.<stat>" tensors: every
                                 statistic of every dataset feature (mean, std, min, max, count, q01, ...)
    policy_postprocessor.json    unnormalizer_processor (same config and state layout), device_processor
    policy_postprocessor_step_0_unnormalizer_processor.safetensors

LeRobot <= 0.3 (and many Hub repos, e.g. lerobot/diffusion_pusht) kept them inside model.safetensors, as buffers of
three modules, one per normalized feature and statistic, with the feature's dots written as underscores:

    normalize_inputs.buffer_observation_images_top.mean      inputs, as the policy normalized them
    normalize_targets.buffer_action.mean                     actions, to normalize the training targets
    unnormalize_outputs.buffer_action.mean                   actions, to un-normalize what the policy predicts

robotrain keeps the statistics as buffers of the model (normalize.py), so loading one means: the weights (with the
names mapped where robotrain's differ), then the statistics into the buffers. Inputs take the preprocessor's (or
normalize_inputs') statistics and actions the postprocessor's (or unnormalize_outputs'), as LeRobot applies them at
inference. Anything LeRobot would do differently from robotrain (another step, renamed observations, another
normalization mode, a feature without statistics, which LeRobot passes through unnormalized) is refused with the
file, the key and the fix. A caller that replaces the statistics right after (fine-tuning on a dataset) skips
them, so a checkpoint saved without statistics still gives its weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robotrain.configs.types import FeatureType, NormalizationMode
from robotrain.errors import UserError
from robotrain.policies.normalize import STAT_NAMES, Normalizer, buffer_key

logger = logging.getLogger(__name__)

PREPROCESSOR_NAME = "policy_preprocessor.json"
POSTPROCESSOR_NAME = "policy_postprocessor.json"
NORMALIZER_STEP = {PREPROCESSOR_NAME: "normalizer_processor", POSTPROCESSOR_NAME: "unnormalizer_processor"}
# Steps whose work robotrain does itself (batch axis, device) or that change nothing (an empty rename map).
PASSIVE_STEPS = {"rename_observations_processor", "to_batch_processor", "device_processor"}
# LeRobot <= 0.3's statistics modules inside model.safetensors (LeRobot 0.4 itself refuses such a file).
LEGACY_INPUTS, LEGACY_TARGETS, LEGACY_OUTPUTS = "normalize_inputs", "normalize_targets", "unnormalize_outputs"
LEGACY_PREFIXES = tuple(f"{module}." for module in (LEGACY_INPUTS, LEGACY_TARGETS, LEGACY_OUTPUTS))


def needs_lerobot_loader(policy: nn.Module, weights: Path) -> bool:
    """True when `weights` lack robotrain's statistics buffers and the policy needs them, or LeRobot's processor
    files lie beside them (a robotrain checkpoint always carries its buffers)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as file:
        saved = set(file.keys())
    buffers = set(_stats_buffer_names(policy))
    if buffers & saved:
        return False
    return bool(buffers) or (weights.parent / PREPROCESSOR_NAME).is_file()


def load_lerobot_checkpoint(policy: nn.Module, weights: Path, strict: bool = True, need_stats: bool = True) -> None:
    """Load a LeRobot model.safetensors into `policy`, with the statistics from its processor files (LeRobot 0.4)
    or its buffers (LeRobot <= 0.3). need_stats=False, for a caller that loads other statistics next, skips them."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    stats = read_checkpoint_stats(policy, weights, state) if need_stats else None
    try:
        missing, unexpected = policy.load_state_dict(map_lerobot_weight_names(state, policy.config.type),
                                                    strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"{weights} does not fit this policy's architecture: {str(exc).splitlines()[-1].strip()}. "
                        "Fix: load it with the config.json saved beside it") from None
    stats_buffers = set(_stats_buffer_names(policy))
    missing = [name for name in missing if name not in stats_buffers]
    if strict and (missing or unexpected):
        first = (missing or unexpected)[0]
        raise UserError(f"{weights} (a LeRobot checkpoint) does not fit this policy: {len(missing)} missing and "
                        f"{len(unexpected)} unexpected tensors (e.g. {first}). Fix: load it with the config.json "
                        "saved beside it")
    if stats is not None:
        for module in policy.modules():
            if isinstance(module, Normalizer):
                module.load_stats(stats)


def read_checkpoint_stats(policy: nn.Module, weights: Path,
                          state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The statistics of a LeRobot checkpoint, from wherever its version kept them."""
    if any(name.startswith(LEGACY_PREFIXES) for name in state):
        return read_legacy_stats(weights, state, policy)
    if not (weights.parent / PREPROCESSOR_NAME).is_file():
        raise UserError(f"{weights} holds no normalization statistics and {weights.parent / PREPROCESSOR_NAME} is "
                        "missing (a LeRobot 0.4 checkpoint keeps them in its processor files). Fix: copy "
                        "policy_preprocessor.json, policy_postprocessor.json and their .safetensors files from the "
                        "run's pretrained_model directory beside it, or fine-tune it on a dataset, whose statistics "
                        "replace them")
    return read_lerobot_stats(weights.parent, policy)


def map_lerobot_weight_names(state: dict[str, torch.Tensor], policy_type: str) -> dict[str, torch.Tensor]:
    """A LeRobot model.safetensors' tensors under robotrain's names: LeRobot <= 0.3's statistics buffers are left
    out (read_legacy_stats reads them), the rest is renamed as the policy's registry entry says. A robotrain state
    dict passes unchanged."""
    from robotrain.policies.registry import policy_spec

    weights = {name: tensor for name, tensor in state.items() if not name.startswith(LEGACY_PREFIXES)}
    rename = policy_spec(policy_type).lerobot_weight_names
    return rename(weights) if rename is not None else weights


def read_legacy_stats(weights: Path, state: dict[str, torch.Tensor],
                      policy: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{feature: {stat: tensor}} from LeRobot <= 0.3's buffers: inputs from normalize_inputs, actions from
    unnormalize_outputs, the module LeRobot un-normalized predictions with.

    normalize_targets held the same dataset statistics for the training loss; it is only compared (a difference is
    logged), as inference never read it.
    """
    outputs = set(policy.config.output_features)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for feature, mode, shape in _normalized_features(policy):
        module = LEGACY_OUTPUTS if feature in outputs else LEGACY_INPUTS
        stats[feature] = {}
        for stat in STAT_NAMES[mode]:
            key = _legacy_key(module, feature, stat)
            if key not in state:
                raise UserError(f"{weights} has no '{key}', which the policy needs to normalize '{feature}' "
                                f"({mode.value}) (a LeRobot <= 0.3 checkpoint keeps a buffer per normalized feature "
                                "and statistic). Fix: load it with the config.json saved with these weights")
            value = state[key]
            if value.numel() != shape.numel():
                raise UserError(f"{weights}: '{key}' has {value.numel()} values but the policy's '{feature}' has "
                                f"shape {tuple(shape)}. Fix: load it with the config.json saved with these weights")
            if not torch.isfinite(value).all():
                raise UserError(f"{weights}: '{key}' is not set (it holds inf, LeRobot <= 0.3's value before a "
                                "dataset's statistics were given), so the policy cannot normalize "
                                f"'{feature}'. Fix: fine-tune it on a dataset (robotrain train --policy.path=... "
                                "--dataset.repo_id=...), whose statistics replace these")
            target_key = _legacy_key(LEGACY_TARGETS, feature, stat)
            if feature in outputs and target_key in state and not torch.equal(state[target_key], value):
                logger.warning("%s: %s differs from %s; using the latter, which LeRobot un-normalized actions with",
                               weights, target_key, key)
            stats[feature][stat] = value
    return stats


def read_lerobot_stats(directory: Path, policy: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{feature: {stat: tensor}} for every feature `policy` normalizes, read from the processor files."""
    config = policy.config
    outputs = set(config.output_features)
    steps = {name: _normalizer_step(directory / name, config) for name in (PREPROCESSOR_NAME, POSTPROCESSOR_NAME)}
    features = {**config.input_features, **config.output_features}
    for name, step in steps.items():
        _check_norm_map(directory / name, step, features, config.normalization_mapping)
    tensors = {name: _read_state_file(directory / name, step) for name, step in steps.items()}
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for feature, mode, shape in _normalized_features(policy):
        source = POSTPROCESSOR_NAME if feature in outputs else PREPROCESSOR_NAME
        step_features = steps[source].get("config", {}).get("features", {})
        if feature not in outputs and feature not in step_features:
            raise UserError(f"{directory / source}: the {NORMALIZER_STEP[source]} step does not list '{feature}' in "
                            f"its features, so LeRobot feeds it unnormalized while the config normalizes it "
                            f"({mode.value}). Fix: set normalization_mapping.{_type_name(features[feature].type)} to "
                            "IDENTITY in config.json, or save the processors again with this feature")
        state_path = directory / steps[source]["state_file"]
        stats[feature] = {}
        for stat in STAT_NAMES[mode]:
            key = f"{feature}.{stat}"
            if key not in tensors[source]:
                raise UserError(f"{state_path} has no '{key}', which the policy needs to normalize '{feature}' "
                                f"({mode.value}). Fix: save the processors again with statistics of a dataset that "
                                f"has '{feature}' (LeRobot: make_pre_post_processors(cfg, dataset_stats=...))")
            value = tensors[source][key]
            if value.numel() != shape.numel():
                raise UserError(f"{state_path}: '{key}' has {value.numel()} values but the policy's '{feature}' has "
                                f"shape {tuple(shape)}. Fix: use the processor files saved with this config.json")
            stats[feature][stat] = value
    return stats


def processor_state_files(pipeline_json: Path) -> list[str]:
    """The state files a processor JSON names (for fetching them from the Hub beside it)."""
    return [step["state_file"] for step in _read_pipeline(pipeline_json) if "state_file" in step]


def fetch_lerobot_processor_files(repo_id: str) -> None:
    """Put a LeRobot repo's processor files into the Hub cache beside its weights; robotrain repos have none."""
    from robotrain.hub import fetch_hub_file, fetch_optional_hub_file

    for name in (PREPROCESSOR_NAME, POSTPROCESSOR_NAME):
        pipeline = fetch_optional_hub_file(repo_id, name)
        if pipeline is not None:
            for state_file in processor_state_files(pipeline):
                fetch_hub_file(repo_id, state_file, "policy.path")


def _legacy_key(module: str, feature: str, stat: str) -> str:
    """LeRobot <= 0.3 named a feature's buffer after it with dots as underscores (module names cannot hold dots)."""
    return f"{module}.buffer_{buffer_key(feature)}.{stat}"


def _stats_buffer_names(policy: nn.Module) -> Iterator[str]:
    for prefix, module in policy.named_modules():
        if isinstance(module, Normalizer):
            for name, _ in module.named_buffers(prefix=prefix):
                yield name


def _normalized_features(policy: nn.Module) -> Iterator[tuple[str, NormalizationMode, torch.Size]]:
    for module in policy.modules():
        if isinstance(module, Normalizer):
            for feature, key in module.keys.items():
                stats = module.stats[key]
                yield feature, stats.mode, getattr(stats, STAT_NAMES[stats.mode][0]).shape


def _read_pipeline(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: a LeRobot checkpoint keeps its statistics in {PREPROCESSOR_NAME} and "
                        f"{POSTPROCESSOR_NAME}. Fix: copy both (and their .safetensors files) from the LeRobot run's "
                        "pretrained_model directory") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}). Fix: copy it again from the LeRobot checkpoint") from None
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise UserError(f"{path} has no list of 'steps', so it is not a LeRobot 0.4 processor file. Fix: point at "
                        "a pretrained_model directory saved by LeRobot 0.4 or robotrain")
    return steps


def _normalizer_step(path: Path, config: Any) -> dict[str, Any]:
    """The (un)normalizer step of a pipeline, after checking every other step is one robotrain does itself (in
    general, or in this policy: its registry entry's lerobot_processor_steps check their settings)."""
    from robotrain.policies.registry import policy_spec

    wanted = NORMALIZER_STEP[path.name]
    own_steps = policy_spec(config.type).lerobot_processor_steps
    found = None
    for index, step in enumerate(_read_pipeline(path)):
        name = step.get("registry_name") or step.get("class", "?")
        if name == wanted:
            found = step
        elif name in own_steps:
            own_steps[name](path, index, step, config)
        elif name == "rename_observations_processor" and step.get("config", {}).get("rename_map"):
            raise UserError(f"{path}: steps[{index}] renames observations ({step['config']['rename_map']}), which "
                            "robotrain does not do. Fix: give the data the policy's feature names and set "
                            "rename_map to {} in that file")
        elif name not in PASSIVE_STEPS:
            raise UserError(f"{path}: steps[{index}] is '{name}', a processor step robotrain cannot run (it loads "
                            f"LeRobot checkpoints whose processors only batch, move to a device and "
                            f"(un)normalize). Fix: use a policy whose {path.name} has only those steps")
    if found is None:
        raise UserError(f"{path} has no '{wanted}' step, so it does not say how to (un)normalize. Fix: save the "
                        "processors again with LeRobot's make_pre_post_processors for this policy")
    return found


def _check_norm_map(path: Path, step: dict[str, Any], features: dict[str, Any],
                    mapping: dict[str, NormalizationMode]) -> None:
    """LeRobot normalizes by the processor's norm_map: it must agree with config.json's normalization_mapping."""
    norm_map = step.get("config", {}).get("norm_map", {})
    for ftype in sorted({_type_name(f.type) for f in features.values()}):
        theirs = NormalizationMode(norm_map.get(ftype, NormalizationMode.IDENTITY))
        ours = NormalizationMode(mapping.get(ftype, NormalizationMode.IDENTITY))
        if theirs is not ours:
            raise UserError(f"{path}: norm_map.{ftype} is {theirs.value} but config.json's "
                            f"normalization_mapping.{ftype} is {ours.value}. Fix: set normalization_mapping.{ftype} "
                            f"to {theirs.value} in config.json (the mode LeRobot applied)")


def _read_state_file(pipeline_json: Path, step: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if "state_file" not in step:
        raise UserError(f"{pipeline_json}: the '{NORMALIZER_STEP[pipeline_json.name]}' step has no state_file: this "
                        "LeRobot checkpoint was saved without normalization statistics, and LeRobot would run it "
                        "unnormalized. Fix: save its processors with the training dataset's statistics "
                        "(LeRobot: make_pre_post_processors(cfg, dataset_stats=dataset.meta.stats)), or fine-tune "
                        "it on a dataset, whose statistics replace them")
    path = pipeline_json.parent / step["state_file"]
    if not path.is_file():
        raise UserError(f"{path} is missing ({pipeline_json.name} names it as its statistics). Fix: copy it from the "
                        "LeRobot run's pretrained_model directory")
    return load_file(str(path))


def _type_name(ftype: FeatureType | str) -> str:
    return ftype.value if isinstance(ftype, FeatureType) else str(ftype)
