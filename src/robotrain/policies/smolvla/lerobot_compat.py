"""The LeRobot 0.4.4 preprocessor steps of a SmolVLA checkpoint that robotrain does inside the policy.

A LeRobot SmolVLA policy_preprocessor.json holds, besides rename/batch/device/normalizer steps:
    smolvla_new_line_processor   adds "\\n" to the task text (no settings)
    tokenizer_processor          {"tokenizer_name", "max_length", "task_key", "padding_side", "padding", "truncation"}
SmolVLAPolicy does both (tokens.py) from its config, so these checks only refuse a step whose settings would make
LeRobot tokenize differently. The tokenizer's name is not compared: it is the backbone's, and pointing
vlm_model_name at a local copy of it is how an offline machine loads such a checkpoint.

Tensor names need no mapping: robotrain's SmolVLA names its modules as LeRobot does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robotrain.errors import UserError
from robotrain.policies.smolvla.configuration import SmolVLAConfig


def check_newline_step(path: Path, index: int, step: dict[str, Any], config: SmolVLAConfig) -> None:
    """Nothing to check: the policy always ends task texts with a newline."""


def check_tokenizer_step(path: Path, index: int, step: dict[str, Any], config: SmolVLAConfig) -> None:
    """Refuse settings SmolVLAPolicy's tokenization would not reproduce."""
    settings = step.get("config", {})
    expected = {"max_length": ("tokenizer_max_length", config.tokenizer_max_length),
                "padding": ("pad_language_to", config.pad_language_to)}
    for key, (field_name, value) in expected.items():
        if key in settings and settings[key] != value:
            raise UserError(f"{path}: steps[{index}] (tokenizer_processor) has {key}={settings[key]!r} but "
                            f"config.json's {field_name} is {value!r}. Fix: set {field_name} to {settings[key]!r} "
                            "in config.json (the value LeRobot tokenized with)")
    fixed = {"padding_side": "right", "truncation": True, "task_key": "task"}
    for key, value in fixed.items():
        if key in settings and settings[key] != value:
            raise UserError(f"{path}: steps[{index}] (tokenizer_processor) has {key}={settings[key]!r}, which "
                            f"SmolVLA never uses (LeRobot builds it with {key}={value!r}). Fix: save the processors "
                            "again with LeRobot's make_smolvla_pre_post_processors")


LEROBOT_PROCESSOR_STEPS = {"smolvla_new_line_processor": check_newline_step,
                           "tokenizer_processor": check_tokenizer_step}
