"""MLP: the registry entry (config, model, the contract tests' tiny variant). robotrain's own; LeRobot has none."""

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_STATE, FeatureType, PolicyFeature
from robotrain.policies.mlp.configuration import MLPConfig
from robotrain.policies.registry import PolicySpec, register_policy

register_policy(PolicySpec(
    name="mlp",
    config_class=MLPConfig,
    title="MLP (behaviour cloning of action chunks from state)",
    model="robotrain.policies.mlp.modeling:MLPPolicy",
    tiny_config={
        "input_features": {OBS_STATE: PolicyFeature(FeatureType.STATE, (3,)),
                           OBS_ENV_STATE: PolicyFeature(FeatureType.ENV, (4,))},
        "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
        "n_obs_steps": 2, "chunk_size": 6, "n_action_steps": 3, "hidden_dim": 32, "n_blocks": 2,
    },
    tiny_loss=0.72422,
))
