"""The one registry of policies. Each `policies/<name>/__init__.py` declares its policy once:

    register_policy(PolicySpec(name="act", config_class=ACTConfig, model="robotrain.policies.act.modeling:ACTPolicy",
                               tiny_config={...}, tiny_loss=..., lerobot_weight_names=...))

Importing `robotrain.policies` imports every subfolder, so adding a policy means adding a folder and nothing else:
`--policy.type` choices, `get_policy_class`, the LeRobot checkpoint loader and the contract tests
(tests/policies/test_contract.py) all read this registry. Models are imported on first use, so parsing a command
line stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robotrain.configs.policies import PolicyConfig

if TYPE_CHECKING:
    import torch

    from robotrain.policies.base import Policy

StateDict = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class PolicySpec:
    """Everything robotrain needs to know about one policy, declared in its own folder."""

    name: str
    """The `--policy.type` value and the "type" in config.json."""
    config_class: type[PolicyConfig]
    model: str | None
    """"<module>:<class>" of the Policy subclass, imported on first use; None while only the config exists (the
    type parses, and training or evaluating it is refused before any work, naming the policies that have models)."""
    title: str = ""
    """The policy's name for people (model cards, docs), e.g. "ACT (Action Chunking with Transformers)"."""
    paper: str | None = None
    """Where the method was published (a URL), for model cards."""
    tiny_config: Mapping[str, Any] = field(default_factory=dict)
    """Config fields (features included) of a small, fast variant: the contract tests build it with seed 0."""
    tiny_loss: float | None = None
    """The tiny variant's training loss on the contract tests' fixed batch: a regression value."""
    lerobot_weight_names: Callable[[StateDict], StateDict] | None = None
    """Maps a LeRobot model.safetensors' tensor names to this policy's (None: the names are the same)."""
    lerobot_processor_steps: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    """LeRobot preprocessor steps this policy does itself (e.g. SmolVLA's tokenizer), by registry name: each is
    called as check(pipeline_file, index, step, config) and raises a UserError when LeRobot would do otherwise."""

    def check_has_model(self) -> None:
        """A ConfigError naming the policies that have a model, when this one has none (called at parse time)."""
        if self.model is None:
            from robotrain.errors import ConfigError

            available = ", ".join(name for name, spec in sorted(policy_specs().items()) if spec.model is not None)
            raise ConfigError("policy.type", self.name, f"has a config but no model in this version of robotrain "
                              f"(policies with a model: {available})", "choose one of those")

    def policy_class(self) -> type[Policy]:
        """The model class, imported now."""
        self.check_has_model()
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)


_SPECS: dict[str, PolicySpec] = {}


def register_policy(spec: PolicySpec) -> PolicySpec:
    """Declare a policy: its config becomes the `--policy.type={name}` choice."""
    if spec.name in _SPECS:
        raise ValueError(f"policy type '{spec.name}' is registered twice")
    PolicyConfig.register_subclass(spec.name)(spec.config_class)
    _SPECS[spec.name] = spec
    return spec


def policy_specs() -> dict[str, PolicySpec]:
    """Every registered policy by type name (importing robotrain.policies registers them all)."""
    import robotrain.policies  # noqa: F401

    return dict(_SPECS)


def policy_spec(policy_type: str) -> PolicySpec:
    """The spec of a `--policy.type` name; a UserError naming the available ones when there is none."""
    from robotrain.errors import ConfigError, did_you_mean

    specs = policy_specs()
    if policy_type not in specs:
        guess = did_you_mean(policy_type, specs)
        raise ConfigError("policy.type", policy_type,
                          f"is not a policy type (choose one of {', '.join(sorted(specs))})",
                          f"did you mean --policy.type={guess}?" if guess else "pick one of those")
    return specs[policy_type]
