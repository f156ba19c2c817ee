"""robotrain's port of the xArm Lift task (gym id robotrain/XarmLift-v0); see lift.py for why it exists."""

from __future__ import annotations

import gymnasium as gym

XARM_LIFT_ID = "robotrain/XarmLift-v0"


def register() -> None:
    """Register robotrain/XarmLift-v0 with gymnasium (once per process; the module is imported lazily by make)."""
    if XARM_LIFT_ID not in gym.registry:
        gym.register(XARM_LIFT_ID, entry_point="robotrain.envs.xarm.lift:XarmLiftEnv", max_episode_steps=200)


register()
