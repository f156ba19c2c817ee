"""Scripted experts: demonstrators that solve each simulated task, so datasets can be generated locally.

Every expert is a function `(env_cfg, seed, render=True) -> Demonstration`. With `render=False` cameras are
left out (and not rendered): that is how success rates over many seeds are measured quickly. Recording
(`robotrain dataset record-sim`) calls an expert once per episode, in parallel processes, and writes its frames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robotrain.envs.configs import EnvConfig


@dataclass
class Demonstration:
    """One expert episode. Frame t holds the observation the expert saw and the action it then took."""

    observations: dict[str, np.ndarray]
    """Batch key -> (T, ...) array: cameras as (T, H, W, 3) uint8, states as (T, D) float32."""
    actions: np.ndarray
    """(T, action_dim) float32, in the env's action space."""
    rewards: np.ndarray
    """(T,) float32: the reward received after action t."""
    successes: np.ndarray
    """(T,) bool: whether the task counted as solved after action t."""
    seed: int
    """The env seed that produced this episode (reproducible: same seed, same episode)."""
    task: str = ""
    """Natural-language task description stored with the frames."""

    @property
    def success(self) -> bool:
        """Solved at the end of the episode (or at any step for tasks that end on success)."""
        return bool(self.successes.any())

    def __len__(self) -> int:
        return len(self.actions)


Expert = Callable[..., Demonstration]


def flatten_observation(raw: Mapping[str, Any], features_map: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Map one raw gym observation (possibly nested, e.g. {"pixels": {"top": ...}}) to batch keys, as numpy."""
    out = {}
    for raw_key, batch_key in features_map.items():
        value: Any = raw
        for part in raw_key.split("/"):
            if not isinstance(value, Mapping) or part not in value:
                value = None
                break
            value = value[part]
        if value is not None:
            out[batch_key] = np.asarray(value)
    return out


def get_expert(env_cfg: EnvConfig) -> Expert:
    """The scripted expert for this env's task; raises UserError naming the env when there is none."""
    from robotrain.errors import UserError

    if env_cfg.type == "aloha":
        from robotrain.envs.experts.aloha import demonstrate_aloha

        return demonstrate_aloha
    if env_cfg.type == "pusht":
        from robotrain.envs.experts.pusht import demonstrate_pusht

        return demonstrate_pusht
    if env_cfg.type == "xarm":
        from robotrain.envs.experts.xarm import demonstrate_xarm

        return demonstrate_xarm
    raise UserError(f"--env.type={env_cfg.type}: there is no scripted expert for this env. "
                    "Fix: record with --env.type=aloha, --env.type=pusht or --env.type=xarm")


def demonstrate(env_cfg: EnvConfig, seed: int, render: bool = True) -> Demonstration:
    """Run the task's scripted expert for one episode from `seed`."""
    return get_expert(env_cfg)(env_cfg, seed, render=render)
