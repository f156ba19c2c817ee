"""tdmpc: the registry entry. Only the config exists so far: the type parses, and training or evaluating it is refused
at parse time with the list of policies that have a model."""

from robotrain.policies.registry import PolicySpec, register_policy
from robotrain.policies.tdmpc.configuration import TDMPCConfig

register_policy(PolicySpec(name="tdmpc", config_class=TDMPCConfig, model=None))
