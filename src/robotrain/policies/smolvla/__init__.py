"""SmolVLA: the registry entry (config, model, the contract tests' tiny variant, the LeRobot preprocessor steps it
does itself). LeRobot's tensor names are ours.

The tiny variant names the built-in backbone (vlm_model_name="builtin:tiny-smolvlm", vlm.py): a 2-layer vision
tower and 4-layer text model with random weights and a byte-level tokenizer, built in memory, so the contract tests
need no file and no download. The model needs the optional `transformers` dependency (`robotrain[smolvla]`).
"""

from robotrain.configs.types import ACTION, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature
from robotrain.policies.registry import PolicySpec, register_policy
from robotrain.policies.smolvla.configuration import SmolVLAConfig
from robotrain.policies.smolvla.lerobot_compat import LEROBOT_PROCESSOR_STEPS
from robotrain.policies.smolvla.vlm import TINY_BACKBONE

register_policy(PolicySpec(
    name="smolvla",
    config_class=SmolVLAConfig,
    title="SmolVLA",
    paper="https://arxiv.org/abs/2506.01844",
    model="robotrain.policies.smolvla.modeling:SmolVLAPolicy",
    tiny_config={
        "input_features": {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 24, 32)),
                           OBS_STATE: PolicyFeature(FeatureType.STATE, (3,))},
        "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
        "vlm_model_name": TINY_BACKBONE, "resize_imgs_with_padding": (32, 32), "chunk_size": 6, "n_action_steps": 3,
        "max_state_dim": 8, "max_action_dim": 8, "num_steps": 3, "num_vlm_layers": 4,
    },
    tiny_loss=2.47632,
    lerobot_processor_steps=LEROBOT_PROCESSOR_STEPS,
))
