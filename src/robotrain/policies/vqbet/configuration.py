"""VQ-BeT: Behavior Generation with Latent Actions (Lee et al., 2024, arXiv:2403.03181). Defaults as LeRobot's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_group_norm, check_positive, check_resnet
from robotrain.configs.types import NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig
from robotrain.optim.schedulers import LRSchedulerConfig, cosine_to_zero


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
    """Crop (height, width) of camera frames; null: no crop."""
    crop_is_random: bool = True
    """Random crops in training (center crops when false)."""
    pretrained_backbone_weights: str | None = None
    """Backbone weights: a torchvision weights name, a local file or a Hub id; null: random init."""
    use_group_norm: bool = True
    """Replace batch norm by group norm in the backbone (needs random init)."""
    spatial_softmax_num_keypoints: int = 32
    """Keypoints of the spatial-softmax image head."""
    n_vqvae_training_steps: int = 20000
    """Steps spent training the VQ-VAE before it is frozen."""
    vqvae_n_embed: int = 16
    """Codebook size of each quantizer layer."""
    vqvae_embedding_dim: int = 256
    """Dimension of each code."""
    vqvae_enc_hidden_dim: int = 128
    """Hidden width of the VQ-VAE encoder."""
    gpt_block_size: int = 500
    """Context length of the GPT."""
    gpt_input_dim: int = 512
    """Input width of the GPT."""
    gpt_output_dim: int = 512
    """Output width of the GPT."""
    gpt_n_layer: int = 8
    """GPT layers."""
    gpt_n_head: int = 8
    """GPT attention heads."""
    gpt_hidden_dim: int = 512
    """GPT width."""
    dropout: float = 0.1
    """Dropout in the GPT."""
    mlp_hidden_dim: int = 1024
    """Hidden width of the code and offset heads."""
    offset_loss_weight: float = 10000.0
    """Loss weight of the continuous offsets."""
    primary_code_loss_weight: float = 5.0
    """Loss weight of the first quantizer's code."""
    secondary_code_loss_weight: float = 0.5
    """Loss weight of the second quantizer's code."""
    bet_softmax_temperature: float = 0.1
    """Sampling temperature of the code heads."""
    sequentially_select: bool = False
    """Predict the second code conditioned on the first."""
    optimizer_lr: float = 1e-4
    """Preset learning rate."""
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    """Preset Adam betas."""
    optimizer_eps: float = 1e-8
    """Preset Adam epsilon."""
    optimizer_weight_decay: float = 1e-6
    """Preset weight decay."""
    optimizer_vqvae_lr: float = 1e-3
    """Preset learning rate of the VQ-VAE."""
    optimizer_vqvae_weight_decay: float = 1e-4
    """Preset weight decay of the VQ-VAE."""
    scheduler_warmup_steps: int = 500
    """Preset warmup steps after the VQ-VAE phase."""

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, self.n_action_pred_token + self.action_chunk_size - 1))

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
                       vqvae_n_embed=self.vqvae_n_embed, gpt_n_head=self.gpt_n_head)
        if self.gpt_hidden_dim % self.gpt_n_head:
            raise ConfigError("gpt_n_head", self.gpt_n_head, f"must divide gpt_hidden_dim ({self.gpt_hidden_dim})",
                              "e.g. --policy.gpt_n_head=8 with --policy.gpt_hidden_dim=512")
        check_group_norm(self.use_group_norm, self.pretrained_backbone_weights)
