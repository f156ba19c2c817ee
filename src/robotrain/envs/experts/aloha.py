"""Scripted experts for gym-aloha's transfer-cube and insertion tasks, recorded the way the ACT paper does it.

    seed ──> joint-space env reset (object poses) ──> mocap sim: grippers welded to waypoint targets
                                                          │ joint positions + gripper commands, per step
                                                          v
                     Demonstration <── joint-space env replay (cameras rendered here only)

The end-effector pass drives each gripper through waypoints (aloha_waypoints.py) in gym-aloha's mocap models,
where inverse kinematics comes free from the weld constraint. Its joint trajectory then becomes the actions of
the joint-position-controlled env a policy is evaluated in, so a demonstration holds exactly the actions,
states and frames that env produced (Zhao et al. 2023, arXiv 2304.13705, section 5).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported

from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
from dm_control import mujoco  # noqa: E402
from dm_control.rl.control import compute_n_steps  # noqa: E402
from gym_aloha import constants as aloha_consts  # noqa: E402
from gym_aloha.tasks import sim as aloha_sim  # noqa: E402
from gym_aloha.utils import sample_box_pose, sample_insertion_pose  # noqa: E402

from robotrain.envs.configs import AlohaEnv  # noqa: E402
from robotrain.envs.experts import Demonstration, flatten_observation  # noqa: E402
from robotrain.envs.experts.aloha_waypoints import (  # noqa: E402
    Pose,
    Waypoint,
    insertion_plan,
    interpolate,
    plan_length,
    transfer_cube_plan,
)
from robotrain.errors import ConfigError  # noqa: E402

ARMS = ("left", "right")
# qpos layout of both models: per arm 6 joints then 2 finger slides; objects' free joints after index 16.
ARM_QPOS = {"left": slice(0, 6), "right": slice(8, 14)}
CAMERA, HEIGHT, WIDTH = "top", 480, 640
WELD_SOLIMP = (0.95, 0.99, 0.001)


@dataclass(frozen=True)
class _TaskSpec:
    """What differs between the two tasks."""

    name: str
    """gym-aloha's internal task name (selects its models)."""
    description: str
    """Natural-language task stored with the frames."""
    task_class: type
    """gym-aloha's joint-space task: object placement, action mapping and reward."""
    object_poses: Callable[[int], np.ndarray]
    """seed -> the objects' free-joint poses, drawn exactly as gym-aloha's reset draws them."""
    plan: Callable[[dict[str, Pose], np.ndarray], dict[str, list[Waypoint]]]
    """(start gripper poses, object poses) -> waypoints per arm."""


TASKS = {
    "AlohaTransferCube-v0": _TaskSpec(
        "transfer_cube", "Pick up the cube with the right arm and transfer it to the left arm.",
        aloha_sim.TransferCubeTask, sample_box_pose,
        lambda start, poses: transfer_cube_plan(start, poses[:2])),
    "AlohaInsertion-v0": _TaskSpec(
        "insertion", "Insert the peg into the socket.",
        aloha_sim.InsertionTask, lambda seed: np.concatenate(sample_insertion_pose(seed)),
        lambda start, poses: insertion_plan(start, poses[:2], poses[7:9])),
}


def demonstrate_aloha(env_cfg: AlohaEnv, seed: int, render: bool = True) -> Demonstration:
    """One scripted episode of env_cfg.task from `seed`: the same object poses gym-aloha's reset(seed) gives."""
    spec = _task_spec(env_cfg)
    joint_env = _JointSpaceEnv(spec, render=render)
    raw = joint_env.reset(seed)
    actions = _mocap_pass(spec, joint_env.object_qpos(), env_cfg.episode_length)
    frames, rewards = [], []
    for action in actions:
        frames.append(flatten_observation(_keep_obs_type(raw, env_cfg.obs_type), env_cfg.features_map))
        raw, reward = joint_env.step(action)
        rewards.append(reward)
    observations = {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}
    if "observation.state" in observations:
        observations["observation.state"] = observations["observation.state"].astype(np.float32)
    rewards_arr = np.asarray(rewards, dtype=np.float32)
    return Demonstration(observations=observations, actions=actions, rewards=rewards_arr,
                         successes=rewards_arr == joint_env.max_reward, seed=seed, task=spec.description)


def _task_spec(env_cfg: AlohaEnv) -> _TaskSpec:
    """The task's spec, or a ConfigError when the config asks for something the expert cannot record."""
    if env_cfg.task not in TASKS:
        raise ConfigError("env.task", env_cfg.task, "has no scripted ALOHA expert",
                          f"use one of {', '.join(TASKS)}")
    if env_cfg.fps != aloha_consts.FPS:
        raise ConfigError("env.fps", env_cfg.fps, f"gym-aloha steps at {aloha_consts.FPS} Hz",
                          f"use --env.fps={aloha_consts.FPS}")
    if env_cfg.obs_type not in env_cfg.obs_types:
        raise ConfigError("env.obs_type", env_cfg.obs_type, "is not an ALOHA observation type",
                          f"use --env.obs_type={env_cfg.obs_types[0]}")
    return TASKS[env_cfg.task]


def _keep_obs_type(raw: dict, obs_type: str) -> dict:
    """The raw observation as gym-aloha shapes it for `obs_type` (the joint state only with pixels_agent_pos)."""
    return raw if obs_type == "pixels_agent_pos" else {k: v for k, v in raw.items() if k != "agent_pos"}


class _JointSpaceEnv:
    """gym-aloha's joint-position env, stepped as its dm_control Environment steps it, rendering only on demand.

    gym_aloha.env.AlohaEnv renders three cameras every step; this renders the top camera only, and nothing
    when `render` is False, while physics, action mapping and reward are gym-aloha's own.
    """

    def __init__(self, spec: _TaskSpec, render: bool):
        self.spec, self.render = spec, render
        self.physics = mujoco.Physics.from_xml_path(str(aloha_consts.ASSETS_DIR / f"bimanual_viperx_{spec.name}.xml"))
        self.task = spec.task_class()
        self.max_reward = self.task.max_reward
        self.n_sub_steps = compute_n_steps(aloha_consts.DT, self.physics.timestep())

    def reset(self, seed: int) -> dict:
        """Place the objects as gym-aloha's reset(seed=seed) does and return the first observation."""
        # gym-aloha passes object poses to its task through this module-level slot.
        aloha_sim.BOX_POSE[0] = self.spec.object_poses(seed)
        with self.physics.reset_context():
            self.task.initialize_episode(self.physics)
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[dict, float]:
        """Apply one 14-D action for one control step; return the next observation and the reward."""
        self.task.before_step(action, self.physics)
        self.physics.step(self.n_sub_steps)
        self.task.after_step(self.physics)
        return self._observe(), float(self.task.get_reward(self.physics))

    def object_qpos(self) -> dict[str, np.ndarray]:
        """Each object's free-joint pose (7,), by joint name."""
        return _free_joints(self.physics)

    def _observe(self) -> dict:
        raw = {"agent_pos": self.task.get_qpos(self.physics)}
        if self.render:
            raw["pixels"] = {CAMERA: self.physics.render(height=HEIGHT, width=WIDTH, camera_id=CAMERA)}
        return raw


def _free_joints(physics: mujoco.Physics) -> dict[str, np.ndarray]:
    """Pose of every free joint (the objects), by joint name."""
    model = physics.model
    free = [model.id2name(j, "joint") for j in range(model.njnt) if model.jnt_type[j] == 0]  # mjJNT_FREE
    return {name: physics.named.data.qpos[name].copy() for name in free}


def _mocap_pass(spec: _TaskSpec, objects: dict[str, np.ndarray], length: int) -> np.ndarray:
    """Drive the grippers through the task's waypoints in the mocap model; return the (length, 14) joint actions."""
    physics = _mocap_physics(spec, objects)
    start = {arm: _gripper_pose(physics, arm) for arm in ARMS}
    plans = spec.plan(start, np.concatenate(list(objects.values())))
    if plan_length(plans) > length:
        raise ConfigError("env.episode_length", length, f"the scripted {spec.name} expert needs "
                          f"{plan_length(plans)} steps", f"use --env.episode_length={plan_length(plans)} or more")
    n_sub_steps = compute_n_steps(aloha_consts.DT, physics.timestep())
    actions = np.empty((length, 14), dtype=np.float32)
    for t in range(length):
        grippers = []
        for i, arm in enumerate(ARMS):
            # Aim for where the gripper should be at the end of this step.
            pos, quat, gripper = interpolate(plans[arm], t + 1)
            physics.data.mocap_pos[i], physics.data.mocap_quat[i] = pos, quat
            grippers.append(gripper)
        physics.data.ctrl[:] = _finger_ctrl(grippers)
        physics.step(n_sub_steps)
        qpos = physics.data.qpos
        actions[t] = np.concatenate([qpos[ARM_QPOS["left"]], grippers[:1], qpos[ARM_QPOS["right"]], grippers[1:]])
    return actions


def _mocap_physics(spec: _TaskSpec, objects: dict[str, np.ndarray]) -> mujoco.Physics:
    """gym-aloha's end-effector model, arms at rest, objects where the joint-space env put them."""
    path = aloha_consts.ASSETS_DIR / f"bimanual_viperx_end_effector_{spec.name}.xml"
    physics = mujoco.Physics.from_xml_path(str(path))
    # The welds' relative pose is taken from the model's zero pose, which puts each gripper 13.5 cm behind its
    # mocap body; make it the identity so a mocap target is the gripper pose itself.
    physics.model.eq_data[:, 3:10] = [0, 0, 0, 1, 0, 0, 0]
    # gym-aloha's welds are soft (impedance 0.25): the grippers then sag and twist by tens of degrees under
    # gravity and joint friction. A stiff weld holds them within a millimetre and a tenth of a degree.
    physics.model.eq_solimp[:, :3] = WELD_SOLIMP
    with physics.reset_context():
        physics.data.qpos[:16] = aloha_consts.START_ARM_POSE
        for name, pose in objects.items():
            physics.named.data.qpos[name] = pose
        physics.data.ctrl[:] = _finger_ctrl([0.0, 0.0])
    for i, arm in enumerate(ARMS):
        physics.data.mocap_pos[i], physics.data.mocap_quat[i] = _gripper_pose(physics, arm)
    return physics


def _gripper_pose(physics: mujoco.Physics, arm: str) -> Pose:
    body = f"vx300s_{arm}/gripper_link"
    return physics.named.data.xpos[body].copy(), physics.named.data.xquat[body].copy()


def _finger_ctrl(grippers: list[float]) -> np.ndarray:
    """Finger actuator targets for normalized openings (left, right), mapped as gym-aloha's joint env maps them."""
    out = []
    for g in grippers:
        pos = aloha_consts.unnormalize_puppet_gripper_position(g)
        out += [pos, -pos]
    return np.array(out)
