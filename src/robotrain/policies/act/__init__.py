"""ACT: the registry entry (config, model, the contract tests' tiny variant). LeRobot's weight names are ours."""

from robotrain.configs.types import ACTION, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature
from robotrain.policies.act.configuration import ACTConfig
from robotrain.policies.registry import PolicySpec, register_policy

register_policy(PolicySpec(
    name="act",
    config_class=ACTConfig,
    title="ACT (Action Chunking with Transformers)",
    paper="https://arxiv.org/abs/2304.13705",
    model="robotrain.policies.act.modeling:ACTPolicy",
    tiny_config={
        "input_features": {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                           OBS_STATE: PolicyFeature(FeatureType.STATE, (3,))},
        "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
        "pretrained_backbone_weights": None, "dim_model": 32, "n_heads": 2, "dim_feedforward": 64,
        "n_encoder_layers": 2, "n_decoder_layers": 2, "n_vae_encoder_layers": 2, "latent_dim": 4, "chunk_size": 6,
        "n_action_steps": 3,
    },
    tiny_loss=6.5964,
))
