"""Diffusion Policy: the registry entry (config, model, LeRobot's weight names, the contract tests' tiny variant)."""

from robotrain.configs.types import ACTION, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature
from robotrain.policies.diffusion.configuration import DiffusionConfig
from robotrain.policies.diffusion.lerobot_names import map_lerobot_names
from robotrain.policies.registry import PolicySpec, register_policy

register_policy(PolicySpec(
    name="diffusion",
    config_class=DiffusionConfig,
    title="Diffusion Policy",
    paper="https://arxiv.org/abs/2303.04137",
    model="robotrain.policies.diffusion.modeling:DiffusionPolicy",
    tiny_config={
        "input_features": {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 24, 24)),
                           OBS_STATE: PolicyFeature(FeatureType.STATE, (3,))},
        "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
        "pretrained_backbone_weights": None, "horizon": 8, "n_action_steps": 4, "down_dims": (16, 32),
        "kernel_size": 3, "n_groups": 4, "diffusion_step_embed_dim": 8, "spatial_softmax_num_keypoints": 4,
        "num_train_timesteps": 10, "num_inference_steps": 4, "crop_shape": (20, 20),
    },
    tiny_loss=1.22464,
    lerobot_weight_names=map_lerobot_names,
))
