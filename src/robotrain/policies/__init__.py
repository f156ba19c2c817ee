"""Policies. Importing this package registers every policy config under its `--policy.type` name.

Models (ACTPolicy, DiffusionPolicy) and make_policy are imported on first use, so reading configs stays light.
"""

from typing import Any

from robotrain.configs.policies import PolicyConfig
from robotrain.policies.act.configuration import ACTConfig
from robotrain.policies.diffusion.configuration import DiffusionConfig
from robotrain.policies.smolvla.configuration import SmolVLAConfig
from robotrain.policies.tdmpc.configuration import TDMPCConfig
from robotrain.policies.vqbet.configuration import VQBeTConfig

_LAZY = {
    "ACTPolicy": "robotrain.policies.act.modeling",
    "DiffusionPolicy": "robotrain.policies.diffusion.modeling",
    "Policy": "robotrain.policies.base",
    "make_policy": "robotrain.policies.factory",
    "get_policy_class": "robotrain.policies.factory",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robotrain.policies' has no attribute '{name}'")


__all__ = ["ACTConfig", "ACTPolicy", "DiffusionConfig", "DiffusionPolicy", "Policy", "PolicyConfig", "SmolVLAConfig",
           "TDMPCConfig", "VQBeTConfig", "get_policy_class", "make_policy"]
