"""VQ-BeT: Behavior Generation with Latent Actions (Lee et al., 2024, arXiv:2403.03181). Defaults as LeRobot 0.4.4's.

Inputs, as LeRobot's VQ-BeT takes them: exactly one camera and `observation.state`. Every observation step becomes
three GPT tokens (camera, state, action query) and LeRobot finds the action queries by counting input features, so an
environment state or a second camera is refused here rather than silently misplacing the tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_group_norm, check_positive, check_resnet
from robotrain.configs.types import ACTION, OBS_STATE, FeatureType, NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig
from robotrain.optim.schedulers import LRSchedulerConfig, cosine_to_zero

TOKENS_PER_STEP = 3  # camera, state and action query tokens of one observation step


@LRSchedulerConfig.register_subclass("vqbet")
@dataclass
class VQBeTSchedulerConfig(LRSchedulerConfig):
    """Constant lr while the VQ-VAE trains, then linear warmup and cosine decay (VQ-BeT)."""

    num_warmup_steps: int | None = 500
    """Warmup steps after the VQ-VAE phase."""
    num_vqvae_training_steps: int = 20000
    """Steps of the first phase (VQ-VAE training) with a constant factor of 1."""
    num_cycles: float = 0.5
    """Cosine periods over the decay."""

    def lr_lambda(self, num_training_steps: int) -> Callable[[int], float]:
        warmup, vq = self.num_warmup_steps or 0, self.num_vqvae_training_steps
        # Progress is measured against the whole run, as VQ-BeT's reference schedule does.
        cosine = cosine_to_zero(warmup, num_training_steps, self.num_cycles)
        return lambda step: 1.0 if step < vq else cosine(step - vq)


@dataclass
class VQBeTConfig(PolicyConfig):
    """VQ-BeT: a residual VQ-VAE tokenizes action chunks, then a GPT predicts codes and offsets."""

    n_obs_steps: int = 5
    """Observations per sample."""
    n_action_pred_token: int = 3
    """Future action tokens predicted per step."""
    action_chunk_size: int = 5
    """Actions per token (the VQ-VAE's chunk)."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.IDENTITY,
        "STATE": NormalizationMode.MIN_MAX,
        "ACTION": NormalizationMode.MIN_MAX,
    })
    """Normalization per feature type."""
    vision_backbone: str = "resnet18"
    """Image encoder: resnet18, resnet34 or resnet50."""
    crop_shape: tuple[int, int] | None = (84, 84)
    """Crop (height, width) of camera frames, random in training and centered in eval; null: no crop."""
    crop_is_random: bool = True
    """Random crops in training (center crops when false)."""
    pretrained_backbone_weights: str | None = None
    """Backbone weights: a torchvision weights name, a local file or a Hub id; null: random init."""
    use_group_norm: bool = True
    """Replace batch norm by group norm in the backbone (needs random init)."""
    spatial_softmax_num_keypoints: int = 32
    """Keypoints of the spatial-softmax image head."""
    n_vqvae_training_steps: int = 20000
    """Training steps of the first phase (the VQ-VAE alone); then it is frozen and the GPT trains."""
    vqvae_n_embed: int = 16
    """Codebook size of each of the two residual quantizer layers."""
    vqvae_embedding_dim: int = 256
    """Dimension of each code."""
    vqvae_enc_hidden_dim: int = 128
    """Hidden width of the VQ-VAE encoder and decoder."""
    gpt_block_size: int = 500
    """Context length of the GPT (at least 3 * n_obs_steps + n_action_pred_token - 1 tokens)."""
    gpt_input_dim: int = 512
    """Width of the observation and action-query tokens fed to the GPT."""
    gpt_output_dim: int = 512
    """Output width of the GPT (the input of the code and offset heads)."""
    gpt_n_layer: int = 8
    """GPT layers."""
    gpt_n_head: int = 8
    """GPT attention heads."""
    gpt_hidden_dim: int = 512
    """GPT width."""
    dropout: float = 0.1
    """Dropout in the GPT."""
    offset_loss_weight: float = 10000.0
    """Loss weight of the continuous offsets."""
    primary_code_loss_weight: float = 5.0
    """Loss weight of the first quantizer's code."""
    secondary_code_loss_weight: float = 0.5
    """Loss weight of the second quantizer's code."""
    bet_softmax_temperature: float = 0.1
    """Sampling temperature of the code heads (training and acting)."""
    sequentially_select: bool = False
    """Sample the primary code first and predict the secondary one conditioned on it."""
    optimizer_lr: float = 1e-4
    """Preset learning rate."""
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    """Preset Adam betas."""
    optimizer_eps: float = 1e-8
    """Preset Adam epsilon."""
    optimizer_weight_decay: float = 1e-6
    """Preset weight decay."""
    optimizer_vqvae_lr: float = 1e-3
    """Preset learning rate of the VQ-VAE's parameter group."""
    optimizer_vqvae_weight_decay: float = 1e-4
    """Preset weight decay of the VQ-VAE's parameter group."""
    scheduler_warmup_steps: int = 500
    """Preset warmup steps after the VQ-VAE phase."""

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, self.n_action_pred_token + self.action_chunk_size - 1))

    @property
    def leaves_parameters_out(self) -> bool:
        return True  # the VQ-VAE phase trains the VQ-VAE alone, the GPT phase everything else

    def get_optimizer_preset(self) -> AdamConfig:
        return AdamConfig(lr=self.optimizer_lr, betas=self.optimizer_betas, eps=self.optimizer_eps,
                          weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> VQBeTSchedulerConfig:
        return VQBeTSchedulerConfig(num_warmup_steps=self.scheduler_warmup_steps,
                                    num_vqvae_training_steps=self.n_vqvae_training_steps)

    def validate(self) -> None:
        super().validate()
        check_resnet(self, self.vision_backbone)
        check_positive(n_action_pred_token=self.n_action_pred_token, action_chunk_size=self.action_chunk_size,
                       vqvae_n_embed=self.vqvae_n_embed, vqvae_embedding_dim=self.vqvae_embedding_dim,
                       vqvae_enc_hidden_dim=self.vqvae_enc_hidden_dim, gpt_n_layer=self.gpt_n_layer,
                       gpt_n_head=self.gpt_n_head, gpt_input_dim=self.gpt_input_dim,
                       gpt_output_dim=self.gpt_output_dim, bet_softmax_temperature=self.bet_softmax_temperature,
                       spatial_softmax_num_keypoints=self.spatial_softmax_num_keypoints)
        if self.n_vqvae_training_steps < 1:
            raise ConfigError("n_vqvae_training_steps", self.n_vqvae_training_steps,
                              "must be at least 1 (the GPT learns the codes of a trained VQ-VAE)",
                              "e.g. --policy.n_vqvae_training_steps=20000")
        if self.gpt_hidden_dim % self.gpt_n_head:
            raise ConfigError("gpt_n_head", self.gpt_n_head, f"must divide gpt_hidden_dim ({self.gpt_hidden_dim})",
                              "e.g. --policy.gpt_n_head=8 with --policy.gpt_hidden_dim=512")
        tokens = TOKENS_PER_STEP * self.n_obs_steps + self.n_action_pred_token - 1
        if tokens > self.gpt_block_size:
            raise ConfigError("gpt_block_size", self.gpt_block_size,
                              f"is shorter than the {tokens} tokens a sample feeds the GPT "
                              "(3 * n_obs_steps + n_action_pred_token - 1)", f"use --policy.gpt_block_size={tokens}")
        if self.crop_shape is not None and (len(self.crop_shape) != 2 or min(self.crop_shape) < 1):
            raise ConfigError("crop_shape", list(self.crop_shape), "must be two positive sizes (height, width)",
                              "e.g. [84,84], or null")
        check_group_norm(self.use_group_norm, self.pretrained_backbone_weights)

    def validate_features(self) -> None:
        """Refuse inputs VQ-BeT cannot use: it reads exactly one RGB camera and observation.state (as LeRobot)."""
        inputs = sorted(self.input_features)
        cameras = sorted(self.image_features)
        if len(cameras) != 1:
            problem = "has no camera" if not cameras else f"has {len(cameras)} cameras"
            raise ConfigError("policy.input_features", inputs, f"{problem}, but VQ-BeT reads exactly one",
                              "use a dataset with one camera (PushT: --env.obs_type=pixels_agent_pos); extra cameras "
                              "can be left out by listing the inputs in a --config_path file")
        camera, shape = cameras[0], tuple(self.image_features[cameras[0]].shape)
        if len(shape) != 3 or shape[0] != 3:
            raise ConfigError("policy.input_features", f"{camera}: {list(shape)}",
                              "VQ-BeT's ResNet takes RGB images shaped (3, H, W)", "use a 3-channel camera")
        if self.crop_shape is not None and (self.crop_shape[0] > shape[1] or self.crop_shape[1] > shape[2]):
            raise ConfigError("policy.crop_shape", list(self.crop_shape), f"does not fit in the {shape[1]}x{shape[2]} "
                              f"frames of {camera}", f"use a crop of at most {list(shape[1:])}, or null")
        state = self.input_features.get(OBS_STATE)
        if state is None or len(state.shape) != 1:
            raise ConfigError("policy.input_features", inputs, f"VQ-BeT needs a 1-D '{OBS_STATE}' input",
                              "use a dataset that records the robot state")
        others = [k for k, f in self.input_features.items()
                  if k not in (camera, OBS_STATE) and f.type is not FeatureType.LANGUAGE]
        if others:
            raise ConfigError("policy.input_features", inputs,
                              f"VQ-BeT uses one camera and {OBS_STATE} only, not {others}",
                              "use a dataset without them (PushT: --env.obs_type=pixels_agent_pos), or list only the "
                              "camera and the state as inputs in a --config_path file")
        action = self.output_features.get(ACTION)
        if action is None or len(action.shape) != 1:
            raise ConfigError("policy.output_features", sorted(self.output_features),
                              "VQ-BeT predicts a 1-D 'action' feature, which is missing",
                              "train on a dataset with an 'action' column")
