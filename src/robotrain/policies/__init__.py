"""Policies. Importing this package registers every policy config under its `--policy.type` name."""

from robotrain.configs.policies import PolicyConfig
from robotrain.policies.act.configuration import ACTConfig
from robotrain.policies.diffusion.configuration import DiffusionConfig
from robotrain.policies.smolvla.configuration import SmolVLAConfig
from robotrain.policies.tdmpc.configuration import TDMPCConfig
from robotrain.policies.vqbet.configuration import VQBeTConfig

__all__ = ["ACTConfig", "DiffusionConfig", "PolicyConfig", "SmolVLAConfig", "TDMPCConfig", "VQBeTConfig"]
