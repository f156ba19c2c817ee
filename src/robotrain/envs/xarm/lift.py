"""xArm Lift (the FOWM / TD-MPC task) on MuJoCo 3 and gymnasium 1, driven through robotrain's own code.

gym-xarm 0.1.1, the last release, pins mujoco<3 (gym-aloha's dm_control needs mujoco 3) and calls gymnasium
0.29's renderer API (`MujocoRenderer.render(..., camera_name=...)`, a TypeError on gymnasium >= 1). Only its
scene files are used here: the MJCF model and meshes in gym_xarm/tasks/assets, installed with
`pip install --no-deps gym-xarm==0.1.1`. None of its Python modules is imported.

    action (4,) in [-1, 1] ──> mocap target of link7 += clamp(action[:3]) / 20 ; both gripper motors = action[3]
                          ──> 2 MuJoCo steps of 2 ms ──> camera0 84x84 + agent_pos (grasp site - table centre, gripper)

Dynamics, reward and reset distribution follow gym-xarm. Deviations, each for a reason:
  * Reward and success are computed in world coordinates, as FOWM's simxarm does. gym-xarm 0.1.1 subtracts the
    table centre from positions and then compares them with a world-frame height, so `is_success` never fires.
  * agent_pos is the grasp site relative to the table centre (subtracted once, as gym-xarm before 0.1.1).
  * reset() clears all simulator state (controls, warm start) first, so a seeded reset does not depend on the
    previous episode; actions outside [-1, 1] are clipped instead of failing an assert.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from robotrain.errors import UserError  # noqa: E402

SCENE_PACKAGE = "gym_xarm"
SCENE_RELPATH = Path("tasks") / "assets" / "lift.xml"
INSTALL = "pip install --no-deps gym-xarm==0.1.1"

CAMERA = "camera0"
TABLE_CENTRE = np.array([1.655, 0.3, 0.63625])
GRIPPER_QUAT = np.array([0.0, 1.0, 0.0, 0.0])  # fingers pointing down
N_SUBSTEPS = 20  # the mocap moves action/20 per step: gym-xarm's n_substeps, though only 2 are simulated
PHYSICS_STEPS_PER_ACTION = 2
RESET_SETTLE_STEPS = 10
LIFT_HEIGHT = 0.15  # success: the cube's centre this far above where it was placed
# Workspace of the grasp site (world frame): the mocap may not be pushed further out than this.
WORKSPACE_LOW = np.array([TABLE_CENTRE[0] - 0.405, TABLE_CENTRE[1] - 0.3, 0.2])
WORKSPACE_HIGH = np.array([TABLE_CENTRE[0] + 0.045, TABLE_CENTRE[1] + 0.3, 1.2])


def scene_path() -> Path:
    """The lift scene shipped in the gym-xarm package; UserError with the install command when it is absent."""
    spec = importlib.util.find_spec(SCENE_PACKAGE)  # locates the package without running its code
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / SCENE_RELPATH if locations else None
    if path is None or not path.is_file():
        raise UserError(f"--env.type=xarm needs the xArm scene files of the gym-xarm package, which is not "
                        f"installed. Fix: {INSTALL} (--no-deps: its pins mujoco<3 and gymnasium<1 are not needed, "
                        "robotrain runs the task itself)")
    return path


class XarmLiftEnv(gym.Env):
    """Lift a cube with an xArm7 whose gripper follows a mocap target; observes camera0 and the gripper state."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, obs_type: str = "pixels_agent_pos", render_mode: str = "rgb_array",
                 observation_width: int = 84, observation_height: int = 84,
                 visualization_width: int = 384, visualization_height: int = 384):
        if obs_type not in ("pixels_agent_pos", "pixels"):
            raise ValueError(f"obs_type must be pixels_agent_pos or pixels, got {obs_type!r}")
        self.obs_type, self.render_mode = obs_type, render_mode
        self._obs_size = (observation_height, observation_width)
        self._vis_size = (visualization_height, visualization_width)
        self.model = mujoco.MjModel.from_xml_path(str(scene_path()))
        # The offscreen buffer must hold the largest image asked for.
        self.model.vis.global_.offheight = max(self._obs_size[0], self._vis_size[0], self.model.vis.global_.offheight)
        self.model.vis.global_.offwidth = max(self._obs_size[1], self._vis_size[1], self.model.vis.global_.offwidth)
        self.data = mujoco.MjData(self.model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}  # created on first use: no GL until needed
        self._ids = self._look_up_ids()
        self._weld_to_mocap()
        self._initial_qpos = self.data.qpos.copy()
        self._initial_qvel = self.data.qvel.copy()
        self._init_z = 0.0
        self._last_action = np.zeros(4)

        image = gym.spaces.Box(0, 255, (*self._obs_size, 3), dtype=np.uint8)
        state = gym.spaces.Box(-1000.0, 1000.0, (4,), dtype=np.float64)
        self.observation_space = (gym.spaces.Dict({"pixels": image, "agent_pos": state})
                                  if obs_type == "pixels_agent_pos" else image)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)

    def _look_up_ids(self) -> dict[str, Any]:
        """Names in the MJCF -> ids and qpos addresses, looked up once."""
        m = self.model

        def joint_qpos(name: str) -> int:
            return int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)])

        weld = next(i for i in range(m.neq) if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD)
        mocap_body, arm_body = int(m.eq_obj1id[weld]), int(m.eq_obj2id[weld])
        return {
            "grasp": mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "grasp"),
            "object": mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "object_site"),
            "gripper_qpos": joint_qpos("right_outer_knuckle_joint"),
            "inner_knuckle_qpos": joint_qpos("right_inner_knuckle_joint"),
            "object_qpos": joint_qpos("object_joint0"),
            "weld": weld, "mocap": int(m.body_mocapid[mocap_body]), "arm_body": arm_body,
        }

    def _weld_to_mocap(self) -> None:
        """Make the weld hold link7 exactly at the mocap body's pose (no anchor offset, identity rotation)."""
        self.model.eq_data[self._ids["weld"], :10] = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        mujoco.mj_forward(self.model, self.data)

    # -- gymnasium API ---------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self._initial_qpos
        self.data.qvel[:] = self._initial_qvel
        self._place_gripper_and_cube()
        mujoco.mj_step(self.model, self.data, nstep=RESET_SETTLE_STEPS)
        mujoco.mj_forward(self.model, self.data)  # positions consistent with the state the observation shows
        self._last_action = np.zeros(4)
        return self._observation(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
        self._last_action = action
        self._apply_action(action)
        mujoco.mj_step(self.model, self.data, nstep=PHYSICS_STEPS_PER_ACTION)
        mujoco.mj_forward(self.model, self.data)
        success = self.is_success()
        return self._observation(), self.reward(), success, False, {"is_success": success}

    def render(self) -> np.ndarray:
        return self._render(self._vis_size)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    # -- task ------------------------------------------------------------------------------------------------

    @property
    def eef(self) -> np.ndarray:
        """Grasp site position, world frame."""
        return self.data.site_xpos[self._ids["grasp"]].copy()

    @property
    def obj(self) -> np.ndarray:
        """Cube centre, world frame."""
        return self.data.site_xpos[self._ids["object"]].copy()

    @property
    def z_target(self) -> float:
        return self._init_z + LIFT_HEIGHT

    def is_success(self) -> bool:
        return bool(self.obj[2] >= self.z_target)

    def reward(self) -> float:
        """gym-xarm's shaped lift reward: reach the cube (bonus for closing on it), then height while held."""
        obj, eef = self.obj, self.eef
        reach_dist = float(np.linalg.norm(obj - eef))
        if reach_dist < 0.05:
            reach = -reach_dist + max(self._last_action[3], 0.0) / 50
        elif np.linalg.norm(obj[:2] - eef[:2]) < 0.05:
            reach = -reach_dist
        else:
            reach = -reach_dist - 2 * abs(obj[2] - eef[2])
        lifted = obj[2] >= self.z_target - 0.01
        dropped = obj[2] < self._init_z + 0.005 and reach_dist > 0.02
        if lifted and not dropped:
            pick = self.z_target
        elif reach_dist < 0.1 and obj[2] > self._init_z + 0.005:
            pick = min(self.z_target, float(obj[2]))
        else:
            pick = 0.0
        return float(reach / 100 + pick)

    def _place_gripper_and_cube(self) -> None:
        """Random gripper start and cube position, drawn in gym-xarm's order from the env's seeded RNG."""
        gripper = np.array([1.280, 0.295, 0.735]) + self.np_random.uniform(-0.05, 0.05, size=3)
        mocap = self._ids["mocap"]
        self.data.mocap_pos[mocap] = gripper
        self.data.mocap_quat[mocap] = GRIPPER_QUAT
        self.data.qpos[self._ids["gripper_qpos"]] = 0.0
        self.data.qpos[self._ids["inner_knuckle_qpos"]] = 0.0
        cube = TABLE_CENTRE - np.array([0.15, 0.10, 0.07])
        cube[0] += self.np_random.uniform(-0.05, 0.05)
        cube[1] += self.np_random.uniform(-0.05, 0.05)
        start = self._ids["object_qpos"]
        self.data.qpos[start:start + 3] = cube  # keeps the cube's orientation
        self._init_z = float(cube[2])

    def _apply_action(self, action: np.ndarray) -> None:
        """Gripper motors from action[3]; the mocap restarts from link7's pose and moves by the clamped action."""
        self.data.ctrl[:2] = action[3]
        delta = action[:3].copy()
        grasp = self.data.site_xpos[self._ids["grasp"]]
        delta = np.where(grasp > WORKSPACE_HIGH, np.minimum(delta, 0.0), delta)
        delta = np.where(grasp < WORKSPACE_LOW, np.maximum(delta, 0.0), delta)
        mocap, arm = self._ids["mocap"], self._ids["arm_body"]
        self.data.mocap_pos[mocap] = self.data.xpos[arm] + delta / N_SUBSTEPS
        # gym-xarm adds (not composes) the gripper quaternion; MuJoCo normalizes it, pulling the fingers downwards.
        self.data.mocap_quat[mocap] = self.data.xquat[arm] + GRIPPER_QUAT

    def _observation(self) -> Any:
        pixels = self._render(self._obs_size)
        if self.obs_type == "pixels":
            return pixels
        state = np.concatenate([self.eef - TABLE_CENTRE, self.data.qpos[[self._ids["gripper_qpos"]]]])
        return {"pixels": pixels, "agent_pos": state}

    def _render(self, size: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 view from camera0."""
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.model, height=size[0], width=size[1])
        renderer.update_scene(self.data, camera=CAMERA)
        return renderer.render()
