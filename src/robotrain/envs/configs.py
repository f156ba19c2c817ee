"""Environment configs: task, rate, episode length and the features a policy gets from each observation type.

fps and episode lengths are LeRobot's (PushT 10 Hz / 300 steps, ALOHA 50 Hz / 400, xArm 15 Hz / 200), so policies
trained on LeRobot's datasets act at the rate they were recorded at. Building the envs is envs/factory.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import draccus

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_IMAGES, OBS_STATE, FeatureType, PolicyFeature
from robotrain.errors import ConfigError, did_you_mean


@dataclass
class EnvConfig(draccus.ChoiceRegistry):
    """Fields every simulated environment has."""

    task: str = ""
    """Gym task id within the env's package, e.g. AlohaTransferCube-v0."""
    fps: int = 30
    """Control rate (steps per second) and the rate of recorded videos."""
    episode_length: int = 300
    """Steps before an episode is truncated."""
    obs_type: str = "pixels_agent_pos"
    """What the environment observes; decides the policy's input features."""
    render_mode: str = "rgb_array"
    """Rendering for videos: rgb_array (offscreen, no display needed)."""

    # Set by each subclass: gym package, valid tasks and obs types, and the raw observation -> batch key map.
    package_name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    obs_types: ClassVar[tuple[str, ...]] = ()
    task_descriptions: ClassVar[dict[str, str]] = {}
    """Natural-language text per task: the dataset `task` column and a VLA's instruction."""
    install_hint: ClassVar[str] = "pip install 'robotrain[sim]'"
    """How to install what this env needs (named in the error when it is missing)."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    @property
    def gym_id(self) -> str:
        return f"{self.package_name}/{self.task}"

    @property
    def features(self) -> dict[str, PolicyFeature]:
        """The policy features this env provides (images channel-first), keyed by batch key."""
        raise NotImplementedError

    @property
    def features_map(self) -> dict[str, str]:
        """Raw observation key (`pixels/top` for nested dicts) -> batch key."""
        raise NotImplementedError

    @property
    def feature_names(self) -> dict[str, list[str]]:
        """Per-dimension names of vector features, stored in a recorded dataset's info.json (none by default)."""
        return {}

    @property
    def input_features(self) -> dict[str, PolicyFeature]:
        """What a policy evaluated in this env is fed: every feature but the action."""
        return {key: ft for key, ft in self.features.items() if ft.type is not FeatureType.ACTION}

    @property
    def output_features(self) -> dict[str, PolicyFeature]:
        """What a policy must output to drive this env: the action."""
        return {key: ft for key, ft in self.features.items() if ft.type is FeatureType.ACTION}

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        return {"obs_type": self.obs_type, "render_mode": self.render_mode, "max_episode_steps": self.episode_length}

    def wrap(self, env: Any) -> Any:
        """The gym env as this obs_type presents it: gym's own, unless robotrain defines the obs_type (block_frame)."""
        return env

    @property
    def suggested_policy(self) -> str:
        """The policy type to train first on data recorded with these settings (named after a recording)."""
        return "act"

    def validate(self) -> None:
        if self.task not in self.tasks:
            guess = did_you_mean(self.task, self.tasks)
            hint = f"did you mean --env.task={guess}?" if guess else f"use --env.task={self.tasks[0]}"
            raise ConfigError("task", self.task, f"is not a {self.type} task (choose one of {', '.join(self.tasks)})",
                              hint)
        if self.obs_type not in self.obs_types:
            guess = did_you_mean(self.obs_type, self.obs_types)
            raise ConfigError("obs_type", self.obs_type,
                              f"is not an observation type of {self.type} (choose one of {', '.join(self.obs_types)})",
                              f"did you mean --env.obs_type={guess}?" if guess else
                              f"use --env.obs_type={self.obs_types[0]}")
        for name in ("fps", "episode_length"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be at least 1", f"use a positive --env.{name}")
        if self.render_mode != "rgb_array":
            raise ConfigError("render_mode", self.render_mode, "only offscreen rendering is supported",
                              "use --env.render_mode=rgb_array")


@EnvConfig.register_subclass("pusht")
@dataclass
class PushtEnv(EnvConfig):
    """PushT (gym-pusht): push a T-shaped block onto a target with a 2-D pointer."""

    task: str = "PushT-v0"
    """Gym task id."""
    fps: int = 10
    """Control rate (steps per second)."""
    episode_length: int = 300
    """Steps before an episode is truncated."""
    obs_type: str = "pixels_agent_pos"
    """pixels_agent_pos (96x96 camera + 2-D position), environment_state_agent_pos (16 keypoints + position) or
    block_frame (pointer and goal in the T's own frame, actions too: learns far faster; envs/pusht_block_frame.py)."""
    visualization_width: int = 384
    """Width of rendered videos."""
    visualization_height: int = 384
    """Height of rendered videos."""

    package_name = "gym_pusht"
    tasks = ("PushT-v0",)
    obs_types = ("pixels_agent_pos", "environment_state_agent_pos", "block_frame")
    task_descriptions = {"PushT-v0": "Push the T-shaped block onto the target."}

    @property
    def features(self) -> dict[str, PolicyFeature]:
        feats = {OBS_STATE: PolicyFeature(FeatureType.STATE, (2,))}
        if self.obs_type == "pixels_agent_pos":
            feats[OBS_IMAGE] = PolicyFeature(FeatureType.VISUAL, (3, 96, 96))
        elif self.obs_type == "block_frame":  # the goal's origin and (sin, cos) of the turn left
            feats[OBS_ENV_STATE] = PolicyFeature(FeatureType.ENV, (4,))
        else:
            feats[OBS_ENV_STATE] = PolicyFeature(FeatureType.ENV, (16,))
        feats[ACTION] = PolicyFeature(FeatureType.ACTION, (2,))
        return feats

    @property
    def features_map(self) -> dict[str, str]:
        return {"pixels": OBS_IMAGE, "agent_pos": OBS_STATE,
                "environment_state": OBS_ENV_STATE, ACTION: ACTION}

    @property
    def feature_names(self) -> dict[str, list[str]]:
        if self.obs_type == "block_frame":
            env_state = ["goal_x", "goal_y", "sin_turn", "cos_turn"]
        else:
            env_state = [f"keypoint_{i}_{axis}" for i in range(8) for axis in "xy"]
        return {OBS_STATE: ["x", "y"], ACTION: ["x", "y"], OBS_ENV_STATE: env_state}

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        kwargs = {**super().gym_kwargs, "visualization_width": self.visualization_width,
                  "visualization_height": self.visualization_height}
        if self.obs_type == "block_frame":  # gym-pusht gives world keypoints, which `wrap` turns into the T's frame
            kwargs["obs_type"] = "environment_state_agent_pos"
        return kwargs

    @property
    def suggested_policy(self) -> str:
        # State only in the T's frame, where the MLP learns fastest (docs/benchmarks.md, "A demo that learns").
        return "mlp" if self.obs_type == "block_frame" else "diffusion"

    def wrap(self, env: Any) -> Any:
        if self.obs_type != "block_frame":
            return env
        from robotrain.envs.pusht_block_frame import BlockFrame

        return BlockFrame(env)


@EnvConfig.register_subclass("aloha")
@dataclass
class AlohaEnv(EnvConfig):
    """ALOHA (gym-aloha): two 6-DoF arms with grippers in MuJoCo; 480x640 top camera, 14-D joint state."""

    task: str = "AlohaInsertion-v0"
    """AlohaInsertion-v0 (peg into socket) or AlohaTransferCube-v0 (hand a cube from one arm to the other)."""
    fps: int = 50
    """Control rate (steps per second)."""
    episode_length: int = 400
    """Steps before an episode is truncated."""
    obs_type: str = "pixels_agent_pos"
    """pixels_agent_pos (top camera + joint state) or pixels (top camera only)."""

    package_name = "gym_aloha"
    tasks = ("AlohaInsertion-v0", "AlohaTransferCube-v0")
    obs_types = ("pixels_agent_pos", "pixels")
    task_descriptions = {
        "AlohaInsertion-v0": "Insert the peg into the socket.",
        "AlohaTransferCube-v0": "Pick up the cube with the right arm and transfer it to the left arm.",
    }

    @property
    def features(self) -> dict[str, PolicyFeature]:
        feats = {f"{OBS_IMAGES}.top": PolicyFeature(FeatureType.VISUAL, (3, 480, 640))}
        if self.obs_type == "pixels_agent_pos":
            feats[OBS_STATE] = PolicyFeature(FeatureType.STATE, (14,))
        feats[ACTION] = PolicyFeature(FeatureType.ACTION, (14,))
        return feats

    @property
    def features_map(self) -> dict[str, str]:
        # gym-aloha nests the camera under "pixels" with pixels_agent_pos and puts it at the top level with pixels.
        return {"pixels/top": f"{OBS_IMAGES}.top", "top": f"{OBS_IMAGES}.top",
                "agent_pos": OBS_STATE, ACTION: ACTION}

    @property
    def feature_names(self) -> dict[str, list[str]]:
        # As LeRobot's ALOHA datasets name the 14 joints.
        joints = [f"{side}_{joint}" for side in ("left", "right") for joint in
                  ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")]
        return {OBS_STATE: joints, ACTION: joints}


@EnvConfig.register_subclass("xarm")
@dataclass
class XarmEnv(EnvConfig):
    """xArm lift (FOWM's task): lift a cube with a 4-D end-effector action; 84x84 camera.

    Runs robotrain's own MuJoCo 3 port (envs/xarm/), which loads the scene files of the gym-xarm package:
    gym-xarm's own code needs mujoco<3 and gymnasium<1 (see docs/envs.md).
    """

    task: str = "XarmLift-v0"
    """Gym task id."""
    fps: int = 15
    """Control rate (steps per second)."""
    episode_length: int = 200
    """Steps before an episode is truncated."""
    obs_type: str = "pixels_agent_pos"
    """pixels_agent_pos (camera + 4-D state) or pixels (camera only)."""
    visualization_width: int = 384
    """Width of rendered videos."""
    visualization_height: int = 384
    """Height of rendered videos."""

    package_name = "gym_xarm"
    tasks = ("XarmLift-v0",)
    obs_types = ("pixels_agent_pos", "pixels")
    task_descriptions = {"XarmLift-v0": "Lift the cube."}
    install_hint = "pip install 'robotrain[sim]' && pip install --no-deps gym-xarm==0.1.1"

    @property
    def gym_id(self) -> str:
        return f"robotrain/{self.task}"

    @property
    def features(self) -> dict[str, PolicyFeature]:
        feats = {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 84, 84))}
        if self.obs_type == "pixels_agent_pos":
            feats[OBS_STATE] = PolicyFeature(FeatureType.STATE, (4,))
        feats[ACTION] = PolicyFeature(FeatureType.ACTION, (4,))
        return feats

    @property
    def features_map(self) -> dict[str, str]:
        return {"pixels": OBS_IMAGE, "agent_pos": OBS_STATE, ACTION: ACTION}

    @property
    def feature_names(self) -> dict[str, list[str]]:
        # The grasp site relative to the table centre and the gripper opening; actions move the site, grip.
        return {OBS_STATE: ["x", "y", "z", "gripper"], ACTION: ["dx", "dy", "dz", "gripper"]}

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        return {**super().gym_kwargs, "visualization_width": self.visualization_width,
                "visualization_height": self.visualization_height}
