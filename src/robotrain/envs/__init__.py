"""Simulation environments (`--env.type=pusht|aloha|xarm`)."""

from robotrain.envs.configs import AlohaEnv, EnvConfig, PushtEnv, XarmEnv

__all__ = ["AlohaEnv", "EnvConfig", "PushtEnv", "XarmEnv"]
