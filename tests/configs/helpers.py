"""Builders of on-disk runs and checkpoints that the config tests parse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import draccus

from robotrain.configs.parser import parse_train_config
from robotrain.configs.train import save_config


def make_checkpoint(run_dir: Path, argv: list[str], step: int = 100) -> Path:
    """A run directory as training leaves it: checkpoints/<step>/{pretrained_model,training_state} + `last`."""
    cfg = parse_train_config([*argv, f"--output_dir={run_dir}"])
    checkpoint = run_dir / "checkpoints" / f"{step:06d}"
    model_dir = checkpoint / "pretrained_model"
    model_dir.mkdir(parents=True)
    (checkpoint / "training_state").mkdir()
    save_config(cfg, model_dir / "train_config.json")
    (model_dir / "config.json").write_text(json.dumps(draccus.encode(cfg.policy)))
    (checkpoint / "training_state" / "training_step.json").write_text(json.dumps({"step": step}))
    os.symlink(checkpoint.name, run_dir / "checkpoints" / "last")
    return checkpoint


def make_policy_dir(path: Path, policy_data: dict) -> Path:
    """A pretrained_model directory holding only config.json (enough to parse --policy.path)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(policy_data))
    return path
