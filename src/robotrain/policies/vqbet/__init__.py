"""VQ-BeT: the registry entry (config, model, LeRobot's weight names, the contract tests' tiny variant)."""

from robotrain.configs.types import ACTION, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature
from robotrain.policies.registry import PolicySpec, register_policy
from robotrain.policies.vqbet.configuration import VQBeTConfig, VQBeTSchedulerConfig  # noqa: F401 (registers "vqbet")
from robotrain.policies.vqbet.lerobot_names import map_lerobot_names

register_policy(PolicySpec(
    name="vqbet",
    config_class=VQBeTConfig,
    title="VQ-BeT (Vector-Quantized Behavior Transformer)",
    paper="https://arxiv.org/abs/2403.03181",
    model="robotrain.policies.vqbet.modeling:VQBeTPolicy",
    tiny_config={
        "input_features": {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 24, 24)),
                           OBS_STATE: PolicyFeature(FeatureType.STATE, (3,))},
        "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
        "pretrained_backbone_weights": None, "crop_shape": (20, 20), "n_obs_steps": 3, "n_action_pred_token": 2,
        "action_chunk_size": 3, "spatial_softmax_num_keypoints": 4, "vqvae_n_embed": 4, "vqvae_embedding_dim": 8,
        "vqvae_enc_hidden_dim": 16, "gpt_block_size": 16, "gpt_input_dim": 16, "gpt_output_dim": 16,
        "gpt_n_layer": 2, "gpt_n_head": 2, "gpt_hidden_dim": 16,
        # The contract tests run forward in the first (VQ-VAE) phase: with 2 steps one forward leaves it unfinished.
        "n_vqvae_training_steps": 2,
    },
    tiny_loss=1.20171,
    lerobot_weight_names=map_lerobot_names,
))
