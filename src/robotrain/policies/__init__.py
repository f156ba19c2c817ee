"""Policies. Importing this package imports every policy folder, and each folder registers itself (registry.py).

Models and make_policy are imported on first use (`from robotrain.policies import ACTPolicy` works), so reading
configs stays light.
"""

import importlib
import pkgutil
from typing import Any

from robotrain.configs.policies import PolicyConfig
from robotrain.policies.registry import PolicySpec, policy_spec, policy_specs, register_policy

for _folder in pkgutil.iter_modules(__path__):
    if _folder.ispkg:
        importlib.import_module(f"{__name__}.{_folder.name}")

_SHARED = {"Policy": "robotrain.policies.base", "make_policy": "robotrain.policies.factory",
           "get_policy_class": "robotrain.policies.factory"}


def __getattr__(name: str) -> Any:
    """Shared entry points and each registered policy's config and model class, by class name."""
    if name in _SHARED:
        return getattr(importlib.import_module(_SHARED[name]), name)
    for spec in policy_specs().values():
        if name == spec.config_class.__name__:
            return spec.config_class
        if spec.model is not None and name == spec.model.partition(":")[2]:
            return spec.policy_class()
    raise AttributeError(f"module 'robotrain.policies' has no attribute '{name}'")


__all__ = ["Policy", "PolicyConfig", "PolicySpec", "get_policy_class", "make_policy", "policy_spec", "policy_specs",
           "register_policy"]
