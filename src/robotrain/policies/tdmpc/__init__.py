"""TD-MPC: the registry entry (config, model, the contract tests' tiny variant). LeRobot's weight names are ours."""

from robotrain.configs.types import ACTION, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature
from robotrain.policies.registry import PolicySpec, register_policy
from robotrain.policies.tdmpc.configuration import TDMPCConfig

register_policy(PolicySpec(
    name="tdmpc",
    config_class=TDMPCConfig,
    title="TD-MPC",
    paper="https://arxiv.org/abs/2203.04955",
    model="robotrain.policies.tdmpc.modeling:TDMPCPolicy",
    tiny_config={
        "input_features": {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 40, 40)),
                           OBS_STATE: PolicyFeature(FeatureType.STATE, (3,))},
        "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
        "horizon": 3, "latent_dim": 8, "mlp_dim": 16, "state_encoder_hidden_dim": 16, "image_encoder_hidden_dim": 4,
        "n_gaussian_samples": 16, "n_pi_samples": 4, "n_elites": 4, "cem_iterations": 2,
    },
    tiny_loss=2.22194,
))
