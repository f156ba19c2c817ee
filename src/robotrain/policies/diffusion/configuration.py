"""Diffusion Policy (Chi et al., 2023, arXiv:2303.04137). Defaults as LeRobot's published diffusion_pusht."""

from __future__ import annotations

from dataclasses import dataclass, field

from robotrain.configs.policies import (
    PolicyConfig,
    check_at_most,
    check_choice,
    check_group_norm,
    check_positive,
    check_resnet,
)
from robotrain.configs.types import NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig
from robotrain.optim.schedulers import DiffuserSchedulerConfig


@PolicyConfig.register_subclass("diffusion")
@dataclass
class DiffusionConfig(PolicyConfig):
    """Diffusion Policy: a 1-D conditional U-Net denoises an action sequence given recent observations."""

    n_obs_steps: int = 2
    """Observations per sample (the current one and n_obs_steps-1 before it)."""
    horizon: int = 16
    """Length of the denoised action sequence (a multiple of 2**len(down_dims))."""
    n_action_steps: int = 8
    """Actions executed per prediction (at most horizon - n_obs_steps + 1)."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.MEAN_STD,
        "STATE": NormalizationMode.MIN_MAX,
        "ACTION": NormalizationMode.MIN_MAX,
    })
    """Normalization per feature type."""
    drop_n_last_frames: int = 7
    """Frames at the end of each episode never used as a sample start (horizon - n_action_steps - n_obs_steps + 1)."""
    vision_backbone: str = "resnet18"
    """Image encoder: resnet18, resnet34 or resnet50."""
    crop_shape: tuple[int, int] | None = (84, 84)
    """Crop (height, width) of camera frames; random in training, centered in eval. null: no crop."""
    crop_is_random: bool = True
    """Random crops in training (center crops when false)."""
    pretrained_backbone_weights: str | None = None
    """Backbone weights: a torchvision weights name, a local file or a Hub id; null: random init."""
    use_group_norm: bool = True
    """Replace batch norm by group norm in the backbone (needs random init)."""
    spatial_softmax_num_keypoints: int = 32
    """Keypoints of the spatial-softmax image head."""
    use_separate_rgb_encoder_per_camera: bool = False
    """One image encoder per camera instead of a shared one."""
    down_dims: tuple[int, ...] = (512, 1024, 2048)
    """U-Net channel widths per downsampling stage."""
    kernel_size: int = 5
    """U-Net convolution kernel size."""
    n_groups: int = 8
    """Group-norm groups in the U-Net."""
    diffusion_step_embed_dim: int = 128
    """Size of the diffusion-step embedding."""
    use_film_scale_modulation: bool = True
    """FiLM conditioning with scale and bias (bias only when false)."""
    noise_scheduler_type: str = "DDPM"
    """DDPM or DDIM."""
    num_train_timesteps: int = 100
    """Diffusion steps in training."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule: linear, scaled_linear or squaredcos_cap_v2."""
    beta_start: float = 1e-4
    """First beta of the schedule."""
    beta_end: float = 0.02
    """Last beta of the schedule."""
    prediction_type: str = "epsilon"
    """The network predicts the noise (epsilon) or the clean actions (sample)."""
    clip_sample: bool = True
    """Clip denoised actions to [-clip_sample_range, clip_sample_range] at each step."""
    clip_sample_range: float = 1.0
    """Clip range of clip_sample."""
    num_inference_steps: int | None = None
    """Denoising steps at inference; null means num_train_timesteps."""
    do_mask_loss_for_padding: bool = False
    """Leave padded actions (past the episode end) out of the loss."""
    optimizer_lr: float = 1e-4
    """Preset learning rate."""
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    """Preset Adam betas."""
    optimizer_eps: float = 1e-8
    """Preset Adam epsilon."""
    optimizer_weight_decay: float = 1e-6
    """Preset weight decay."""
    scheduler_name: str = "cosine"
    """Preset learning-rate schedule."""
    scheduler_warmup_steps: int = 500
    """Preset warmup steps."""

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    def get_optimizer_preset(self) -> AdamConfig:
        return AdamConfig(lr=self.optimizer_lr, betas=self.optimizer_betas, eps=self.optimizer_eps,
                          weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> DiffuserSchedulerConfig:
        return DiffuserSchedulerConfig(name=self.scheduler_name, num_warmup_steps=self.scheduler_warmup_steps)

    def validate(self) -> None:
        super().validate()
        check_resnet(self, self.vision_backbone)
        check_positive(horizon=self.horizon, n_action_steps=self.n_action_steps,
                       num_train_timesteps=self.num_train_timesteps)
        check_choice("noise_scheduler_type", self.noise_scheduler_type, ("DDPM", "DDIM"))
        check_choice("prediction_type", self.prediction_type, ("epsilon", "sample"))
        check_choice("beta_schedule", self.beta_schedule, ("squaredcos_cap_v2", "linear", "scaled_linear"))
        factor = 2 ** len(self.down_dims)
        if self.horizon % factor:
            raise ConfigError("horizon", self.horizon,
                              f"must be a multiple of 2**len(down_dims) = {factor} (the U-Net downsamples it)",
                              f"use --policy.horizon={max(factor, self.horizon // factor * factor)}")
        usable = self.horizon - self.n_obs_steps + 1  # actions from the current step to the horizon's end
        if self.n_action_steps > usable:
            raise ConfigError("n_action_steps", self.n_action_steps,
                              f"must not exceed horizon - n_obs_steps + 1 ({usable})",
                              f"set --policy.n_action_steps to at most {usable}, or raise --policy.horizon")
        if self.num_inference_steps is not None:
            check_at_most("num_inference_steps", self.num_inference_steps, "num_train_timesteps",
                          self.num_train_timesteps)
        if self.crop_shape is not None and min(self.crop_shape) < 1:
            raise ConfigError("crop_shape", list(self.crop_shape), "must be positive", "e.g. [84,84], or null")
        check_group_norm(self.use_group_norm, self.pretrained_backbone_weights)
        if self.drop_n_last_frames < 0:
            raise ConfigError("drop_n_last_frames", self.drop_n_last_frames, "cannot be negative", "use 0 or more")
