"""SmolVLA (Shukor et al., 2025, arXiv:2506.01844): a small vision-language-action model. Defaults as LeRobot 0.4.4's.

LeRobot's config.json also has use_delta_joint_actions_aloha (LeRobot raises NotImplementedError when it is true),
rtc_config (real-time chunking, an inference-time scheduler robotrain does not have) and compile_model/compile_mode
(torch.compile): a LeRobot checkpoint's values for them are dropped with a warning when it loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_at_most, check_choice, check_positive
from robotrain.configs.types import ACTION, OBS_STATE, FeatureType, NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamWConfig
from robotrain.optim.schedulers import CosineDecayWithWarmupSchedulerConfig


@dataclass
class SmolVLAConfig(PolicyConfig):
    """SmolVLA: SmolVLM2 layers read cameras, language and state; a flow-matching expert emits action chunks."""

    chunk_size: int = 50
    """Actions predicted per forward pass."""
    n_action_steps: int = 50
    """Actions of each chunk executed before predicting again (at most chunk_size)."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.IDENTITY,
        "STATE": NormalizationMode.MEAN_STD,
        "ACTION": NormalizationMode.MEAN_STD,
    })
    """Normalization per feature type."""
    max_state_dim: int = 32
    """State vectors are zero-padded to this size."""
    max_action_dim: int = 32
    """Action vectors are zero-padded to this size."""
    resize_imgs_with_padding: tuple[int, int] | None = (512, 512)
    """Resize frames to (width, height) keeping their aspect ratio, padding the left/top; null keeps their size."""
    empty_cameras: int = 0
    """Blank camera slots LeRobot adds (masked tokens: they change no result, so robotrain skips computing them)."""
    adapt_to_pi_aloha: bool = False
    """Convert ALOHA joint and gripper conventions to those of the pi0 models."""
    tokenizer_max_length: int = 48
    """Maximum tokens of the task text."""
    num_steps: int = 10
    """Euler steps of the flow-matching decoder at inference."""
    use_cache: bool = True
    """Cache the vision-language prefix between denoising steps."""
    freeze_vision_encoder: bool = True
    """Keep the vision encoder's weights fixed."""
    train_expert_only: bool = True
    """Train the action expert only (the VLM stays frozen)."""
    train_state_proj: bool = True
    """Train the state projection."""
    image_cache_gb: float = 4.0
    """Disk (GB, in a temporary file under $TMPDIR) for the frozen VLM's image tokens of each distinct frame seen in
    training, so later epochs skip the vision encoder (image_cache.py); 0 turns it off. Used only while the VLM is
    frozen (train_expert_only)."""
    optimizer_lr: float = 1e-4
    """Preset learning rate (the schedule's peak)."""
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    """Preset AdamW betas."""
    optimizer_eps: float = 1e-8
    """Preset AdamW epsilon."""
    optimizer_weight_decay: float = 1e-10
    """Preset weight decay."""
    optimizer_grad_clip_norm: float = 10.0
    """Preset gradient clipping norm."""
    scheduler_warmup_steps: int = 1000
    """Preset warmup steps."""
    scheduler_decay_steps: int = 30000
    """Preset cosine decay steps."""
    scheduler_decay_lr: float = 2.5e-6
    """Preset final learning rate."""
    vlm_model_name: str = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    """Backbone: a Hub id, a local folder (config.json, tokenizer files, weights), or builtin:tiny-smolvlm (tests)."""
    load_vlm_weights: bool = False
    """Start from the backbone's pretrained weights (in bfloat16, as LeRobot); a checkpoint's weights replace them."""
    add_image_special_tokens: bool = False
    """Surround image tokens with the VLM's special tokens."""
    attention_mode: str = "cross_attn"
    """How the expert reads the VLM: cross_attn or self_attn."""
    prefix_length: int = -1
    """Pad the prefix to this many tokens (masked padding: it changes no result, so robotrain skips it)."""
    pad_language_to: str = "longest"
    """Pad task tokens to the longest in the batch (longest) or to tokenizer_max_length (max_length)."""
    num_expert_layers: int = -1
    """Layers of the action expert; -1 uses as many as the VLM."""
    num_vlm_layers: int = 16
    """VLM layers kept (the rest are dropped)."""
    self_attn_every_n_layers: int = 2
    """Interleave a self-attention layer in the expert every n layers."""
    expert_width_multiplier: float = 0.75
    """Expert width as a fraction of the VLM's."""
    min_period: float = 4e-3
    """Smallest period of the sinusoidal time embedding."""
    max_period: float = 4.0
    """Largest period of the sinusoidal time embedding."""

    @property
    def observation_delta_indices(self) -> list[int]:
        return [0]

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, betas=self.optimizer_betas, eps=self.optimizer_eps,
                           weight_decay=self.optimizer_weight_decay, grad_clip_norm=self.optimizer_grad_clip_norm)

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr, decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps, num_decay_steps=self.scheduler_decay_steps)

    def validate(self) -> None:
        super().validate()
        check_positive(chunk_size=self.chunk_size, n_action_steps=self.n_action_steps, num_steps=self.num_steps,
                       max_state_dim=self.max_state_dim, max_action_dim=self.max_action_dim,
                       tokenizer_max_length=self.tokenizer_max_length,
                       expert_width_multiplier=self.expert_width_multiplier, min_period=self.min_period)
        if self.image_cache_gb < 0:
            raise ConfigError("image_cache_gb", self.image_cache_gb, "must be 0 (off) or more",
                              "e.g. --policy.image_cache_gb=2")
        check_at_most("n_action_steps", self.n_action_steps, "chunk_size", self.chunk_size)
        check_choice("attention_mode", self.attention_mode, ("cross_attn", "self_attn"))
        check_choice("pad_language_to", self.pad_language_to, ("longest", "max_length"))
        if self.n_obs_steps != 1:
            raise ConfigError("n_obs_steps", self.n_obs_steps, "SmolVLA sees one observation step only",
                              "use --policy.n_obs_steps=1")
        if self.empty_cameras < 0:
            raise ConfigError("empty_cameras", self.empty_cameras, "must be 0 or more", "e.g. --policy.empty_cameras=0")
        if self.resize_imgs_with_padding is not None and min(self.resize_imgs_with_padding) <= 0:
            raise ConfigError("resize_imgs_with_padding", self.resize_imgs_with_padding, "must be two positive sizes",
                              "e.g. --policy.resize_imgs_with_padding=[512,512]")
        # LeRobot records its blank cameras as input features (validate_features adds them); robotrain keeps them
        # out, so data and envs, which never have them, still match the policy's features.
        self.input_features = {k: f for k, f in self.input_features.items() if not _EMPTY_CAMERA.match(k)}

    def validate_features(self) -> None:
        """SmolVLA needs at least one RGB camera, a 1-D state and a 1-D action, within the padded sizes."""
        action = self.output_features.get(ACTION)
        if action is None or len(action.shape) != 1:
            raise ConfigError("policy.output_features", sorted(self.output_features),
                              "SmolVLA predicts a 1-D 'action' feature, which is missing",
                              "train on a dataset with an 'action' column")
        if not self.image_features:
            raise ConfigError("policy.input_features", sorted(self.input_features),
                              "SmolVLA needs at least one camera (observation.image or observation.images.<name>)",
                              "use a dataset or env with images")
        for key, feature in self.image_features.items():
            if len(feature.shape) != 3 or feature.shape[0] != 3:
                raise ConfigError("policy.input_features", f"{key}: {list(feature.shape)}",
                                  "SmolVLA's vision encoder takes RGB images shaped (3, H, W)",
                                  "use 3-channel cameras or drop this camera from the inputs")
        state = self.input_features.get(OBS_STATE)
        if state is None or state.type is not FeatureType.STATE or len(state.shape) != 1:
            raise ConfigError("policy.input_features", sorted(self.input_features),
                              "SmolVLA needs a 1-D 'observation.state' (its state token)",
                              "use a dataset or env that records the robot state")
        for name, feature, limit in (("max_state_dim", state, self.max_state_dim),
                                     ("max_action_dim", action, self.max_action_dim)):
            if feature.shape[0] > limit:
                raise ConfigError(name, limit, f"is smaller than the data's {feature.shape[0]} dimensions (vectors "
                                  "are zero-padded to it)", f"use --policy.{name}={feature.shape[0]} or more "
                                  "(a new model: a checkpoint's projections have the old size)")


_EMPTY_CAMERA = re.compile(r"^observation\.images\.empty_camera_\d+$")
