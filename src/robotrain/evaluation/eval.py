"""`robotrain eval`: roll a trained policy out in simulation and write eval_info.json and videos."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robotrain.configs.train import EvalPipelineConfig
from robotrain.datasets.format import DEFAULT_TOLERANCE_S
from robotrain.files import atomic_write_json

logger = logging.getLogger(__name__)

EVAL_INFO_NAME = "eval_info.json"


def run_eval(cfg: EvalPipelineConfig) -> dict[str, Any]:
    """Evaluate cfg.policy (loaded from --policy.path) in simulation (cfg.env) and/or on recorded episodes
    (cfg.dataset); returns what eval_info.json holds."""
    from robotrain.policies.factory import make_policy
    from robotrain.training.setup import set_seed

    set_seed(cfg.seed)
    info: dict[str, Any] = {}
    if cfg.dataset is not None:
        from robotrain.datasets.metadata import LeRobotDatasetMetadata
        from robotrain.evaluation.offline import DEFAULT_BATCH_SIZE, OfflineEvaluator
        from robotrain.training.setup import make_dataset

        meta = LeRobotDatasetMetadata(cfg.dataset.repo_id, cfg.dataset.root, cfg.dataset.revision,
                                      cfg.dataset.episodes)
        # The checkpoint's statistics, not the dataset's: the policy is evaluated as it was trained.
        policy = make_policy(cfg.policy, ds_meta=meta, use_dataset_stats=False)
        dataset = make_dataset(cfg.dataset, policy.config, DEFAULT_TOLERANCE_S, cfg.dataset.episodes, meta)
        evaluator = OfflineEvaluator(dataset, batch_size=cfg.eval.batch_size or DEFAULT_BATCH_SIZE, seed=cfg.seed,
                                     max_samples=cfg.eval.max_samples)
        info["offline"] = {"dataset": cfg.dataset.repo_id, "episodes": cfg.dataset.episodes, **evaluator.run(policy)}
    if cfg.env is not None:
        info.update(_rollouts(cfg, make_policy(cfg.policy, env_cfg=cfg.env)))
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_eval_info(info, output_dir / EVAL_INFO_NAME)
    return info


def _rollouts(cfg: EvalPipelineConfig, policy: Any) -> dict[str, Any]:
    from robotrain.evaluation.rollout import Evaluator

    evaluator = Evaluator(cfg.env, cfg.eval, seed=cfg.seed)
    output_dir = Path(cfg.output_dir)
    try:
        return evaluator.run(policy, videos_dir=output_dir / "videos", max_videos=cfg.eval.max_episodes_rendered)
    finally:
        evaluator.close()


def write_eval_info(info: dict[str, Any], path: Path) -> None:
    atomic_write_json(path, info)
