"""`robotrain eval`: roll a trained policy out in simulation and write eval_info.json and videos."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robotrain.configs.train import EvalPipelineConfig
from robotrain.files import atomic_write_json

logger = logging.getLogger(__name__)

EVAL_INFO_NAME = "eval_info.json"


def run_eval(cfg: EvalPipelineConfig) -> dict[str, Any]:
    """Evaluate cfg.policy (loaded from --policy.path) on cfg.env; returns what eval_info.json holds."""
    from robotrain.evaluation.rollout import Evaluator
    from robotrain.policies.factory import make_policy
    from robotrain.training.setup import set_seed

    set_seed(cfg.seed)
    policy = make_policy(cfg.policy, env_cfg=cfg.env)
    evaluator = Evaluator(cfg.env, cfg.eval, seed=cfg.seed)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        info = evaluator.run(policy, videos_dir=output_dir / "videos", max_videos=cfg.eval.max_episodes_rendered)
    finally:
        evaluator.close()
    write_eval_info(info, output_dir / EVAL_INFO_NAME)
    return info


def write_eval_info(info: dict[str, Any], path: Path) -> None:
    atomic_write_json(path, info)
