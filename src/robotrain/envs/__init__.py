"""Simulation environments (`--env.type=pusht|aloha|xarm`): configs here, builders in robotrain.envs.factory."""

import os

# Before any simulator is imported: MuJoCo picks its OpenGL backend once, at import (EGL needs no display), and
# pygame (PushT) would otherwise print a banner on stdout.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from robotrain.envs.configs import AlohaEnv, EnvConfig, PushtEnv, XarmEnv  # noqa: E402

__all__ = ["AlohaEnv", "EnvConfig", "PushtEnv", "XarmEnv"]
