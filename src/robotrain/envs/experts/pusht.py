"""Scripted PushT expert: pushes chosen by simulating candidates on a mirror of gym-pusht's scene.

How pushes are chosen is in `pusht_planner`; this module runs one episode on the real env and records it.
"""

from __future__ import annotations

import importlib
import logging
import os

import numpy as np

from robotrain.configs.types import FeatureType
from robotrain.envs.configs import PushtEnv
from robotrain.envs.experts import Demonstration, flatten_observation
from robotrain.errors import UserError

logger = logging.getLogger(__name__)

TASK = "Push the T-shaped block onto the target."
# Without camera frames the env is asked for keypoints instead of pixels, so no image is ever rendered.
UNRENDERED_OBS_TYPE = "environment_state_agent_pos"


def demonstrate_pusht(env_cfg: PushtEnv, seed: int, render: bool = True) -> Demonstration:
    """One expert PushT episode from `seed` (the scene `gym.make(...).reset(seed=seed)` gives), until success."""
    if not isinstance(env_cfg, PushtEnv):
        raise UserError(f"--env.type={getattr(env_cfg, 'type', env_cfg)}: the PushT expert needs a pusht env. "
                        "Fix: use --env.type=pusht")
    env_cfg.validate()
    import gymnasium as gym

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    importlib.import_module(env_cfg.package_name)  # Registers the gym ids.
    from robotrain.envs.experts.pusht_planner import PushPlanner, SceneState
    from robotrain.envs.pusht_block_frame import BlockFrame

    kwargs = env_cfg.gym_kwargs
    if not render:
        kwargs["obs_type"] = UNRENDERED_OBS_TYPE
    # Observation keys this obs type records, with their (H, W, 3) or (D,) shapes; cameras only when rendering.
    keep = {key: _frame_shape(feature.type, feature.shape) for key, feature in env_cfg.features.items()
            if key.startswith("observation.") and (render or feature.type != FeatureType.VISUAL)}
    env = env_cfg.wrap(gym.make(env_cfg.gym_id, **kwargs))
    # The planner works in world coordinates; an env in the T's frame takes its targets in that frame.
    to_action = env.world_to_action if isinstance(env, BlockFrame) else np.asarray
    try:
        raw, _ = env.reset(seed=seed)
        planner = PushPlanner()
        frames: dict[str, list[np.ndarray]] = {key: [] for key in keep}
        actions, rewards, successes = [], [], []
        pending: list[np.ndarray] = []
        while len(actions) < env_cfg.episode_length:
            if not pending:
                plan = planner.plan(SceneState.from_env(env.unwrapped), env_cfg.episode_length - len(actions))
                if plan is None or not plan.targets:
                    logger.warning("PushT expert, seed %d: no reachable push at step %d; episode ends unsolved",
                                   seed, len(actions))
                    break
                pending = list(plan.targets)
            action = to_action(pending.pop(0))
            for key, value in flatten_observation(raw, env_cfg.features_map).items():
                if key in keep:
                    frames[key].append(value)
            raw, reward, terminated, truncated, info = env.step(action)
            actions.append(action)
            rewards.append(reward)
            successes.append(bool(info["is_success"]))
            if terminated or truncated:
                break
    finally:
        env.close()
    observations = {key: _stack(values, keep[key]) for key, values in frames.items()}
    return Demonstration(observations=observations, actions=np.array(actions, np.float32).reshape(-1, 2),
                         rewards=np.array(rewards, np.float32), successes=np.array(successes, bool), seed=seed,
                         task=TASK)


def _frame_shape(kind: FeatureType, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one recorded frame: cameras as (H, W, 3) (features list them channel-first)."""
    return (*shape[1:], shape[0]) if kind == FeatureType.VISUAL else tuple(shape)


def _stack(values: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """(T, ...) array of one batch key's frames: cameras stay uint8, states become float32."""
    dtype = np.uint8 if len(shape) == 3 else np.float32
    return np.stack(values).astype(dtype) if values else np.zeros((0, *shape), dtype)
