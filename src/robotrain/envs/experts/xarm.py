"""Scripted expert for xArm Lift (envs/xarm/lift.py): reach above the cube, descend, close, lift.

    phase    target of the grasp site (world frame)          gripper   next phase when
    above    cube centre + (0, 0, APPROACH_HEIGHT)           open      within XY_TOLERANCE of it in x-y
    descend  cube centre + (0, 0, GRASP_HEIGHT)              open      within Z_TOLERANCE of it in z
    close    cube centre + (0, 0, GRASP_HEIGHT)              close     CLOSE_STEPS later
    lift     straight up to the cube's height + LIFT_TARGET  close     the env reports success (it terminates);
                                                                       back to "above" if the cube slips away

The expert reads the cube's and the gripper's positions from the simulator (the policy only sees the camera and
the gripper state) and moves with a saturated proportional controller: action[:3] = clip(GAIN * error, -1, 1),
which the env turns into at most ~5 mm of motion per step; action[3] = +1 closes the gripper, -1 opens it.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported

import numpy as np  # noqa: E402

from robotrain.configs.types import OBS_IMAGE, OBS_STATE  # noqa: E402
from robotrain.envs.configs import XarmEnv  # noqa: E402
from robotrain.envs.experts import Demonstration, flatten_observation  # noqa: E402
from robotrain.errors import UserError  # noqa: E402

APPROACH_HEIGHT = 0.08  # m above the cube's centre before descending
GRASP_HEIGHT = 0.0  # the grasp site (between the fingertips) at the cube's centre
LIFT_TARGET = 0.30  # m above the cube: beyond the 0.15 m success height, so the arm keeps moving until success
XY_TOLERANCE, Z_TOLERANCE = 0.01, 0.01
CLOSE_STEPS = 15  # the fingers need ~15 steps (1 s) to close on the cube
SLIP_DISTANCE = 0.06  # cube farther than this from the grasp site while lifting: it slipped, start over
GAIN = 30.0
OPEN, CLOSE = -1.0, 1.0


def demonstrate_xarm(env_cfg: XarmEnv, seed: int, render: bool = True) -> Demonstration:
    """One scripted xArm Lift episode from `seed` (the scene `reset(seed=seed)` gives), until success or the
    episode length. With render=False no camera image is made (the frames hold the state only)."""
    if not isinstance(env_cfg, XarmEnv):
        raise UserError(f"--env.type={getattr(env_cfg, 'type', env_cfg)}: the xArm expert needs an xarm env. "
                        "Fix: use --env.type=xarm")
    env = _make_env(env_cfg, render)
    keys = {key for key in env_cfg.features if key == OBS_STATE or (render and key == OBS_IMAGE)}
    frames: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    actions, rewards, successes = [], [], []
    try:
        raw, _ = env.reset(seed=seed)
        controller = _LiftController()
        while len(actions) < env_cfg.episode_length:
            raw = raw if isinstance(raw, dict) else {"pixels": raw}  # obs_type=pixels gives the image alone
            for key, value in flatten_observation(raw, env_cfg.features_map).items():
                if key in keys:
                    frames[key].append(value)
            action = controller.act(env.unwrapped.eef, env.unwrapped.obj)
            raw, reward, terminated, truncated, info = env.step(action)
            actions.append(action)
            rewards.append(reward)
            successes.append(bool(info["is_success"]))
            if terminated or truncated:
                break
    finally:
        env.close()
    observations = {key: np.stack(values).astype(np.uint8 if key == OBS_IMAGE else np.float32)
                    for key, values in frames.items()}
    return Demonstration(observations=observations, actions=np.array(actions, np.float32).reshape(-1, 4),
                         rewards=np.array(rewards, np.float32), successes=np.array(successes, bool), seed=seed,
                         task=env_cfg.task_descriptions[env_cfg.task])


class _LiftController:
    """The phase machine of the module docstring; act() maps positions (world frame) to a (4,) action."""

    def __init__(self):
        self.phase, self.closing_steps = "above", 0

    def act(self, grasp: np.ndarray, cube: np.ndarray) -> np.ndarray:
        gripper = OPEN
        if self.phase == "lift" and np.linalg.norm(cube - grasp) > SLIP_DISTANCE:
            self.phase = "above"
        if self.phase == "above":
            target = cube + [0.0, 0.0, APPROACH_HEIGHT]
            if np.linalg.norm((target - grasp)[:2]) < XY_TOLERANCE:
                self.phase = "descend"
        if self.phase == "descend":
            target = cube + [0.0, 0.0, GRASP_HEIGHT]
            if abs(target[2] - grasp[2]) < Z_TOLERANCE:
                self.phase, self.closing_steps = "close", 0
        if self.phase == "close":
            target, gripper = cube + [0.0, 0.0, GRASP_HEIGHT], CLOSE
            self.closing_steps += 1
            if self.closing_steps > CLOSE_STEPS:
                self.phase = "lift"
        if self.phase == "lift":
            target, gripper = np.array([grasp[0], grasp[1], cube[2] + LIFT_TARGET]), CLOSE
        move = np.clip(GAIN * (target - grasp), -1.0, 1.0)
        return np.array([*move, gripper], dtype=np.float32)


def _make_env(env_cfg: XarmEnv, render: bool):
    """The env a policy is evaluated in (gym.make, with its checks), or without rendering the same simulation."""
    if render:
        from robotrain.envs.factory import make_single_env

        return make_single_env(env_cfg)
    env_cfg.validate()
    from robotrain.envs.xarm.lift import XarmLiftEnv

    class _UnrenderedXarmLift(XarmLiftEnv):
        """Physics, reward and success as XarmLiftEnv; the camera image is a blank frame, never drawn (rendering
        is ~35 ms a step on a CPU, the physics well under 1 ms)."""

        def _render(self, size: tuple[int, int]) -> np.ndarray:
            return np.zeros((*size, 3), dtype=np.uint8)

    return _UnrenderedXarmLift(obs_type=env_cfg.obs_type)
