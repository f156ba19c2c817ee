"""Diffusion Policy (Chi et al., 2023, arXiv:2303.04137). Defaults as LeRobot's published diffusion_pusht.

Cropping rule (the published 84x84 crop was chosen for PushT's 96x96 frames):
  - crop_shape set by the user (or by a config file): used as is, in pixels of the (resized) frame.
  - crop_ratio set instead: each side is cropped to that fraction, e.g. 0.9 of 240x320 -> 216x288.
  - neither set: 7/8 of each side, which is the published 84x84 on 96x96 frames and 420x560 on ALOHA's 480x640.
The crop used is written back into crop_shape when the policy is built, so config.json records it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from robotrain.configs.policies import (
    PolicyConfig,
    check_at_most,
    check_choice,
    check_ema,
    check_group_norm,
    check_positive,
    check_resnet,
)
from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_STATE, FeatureType, NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig
from robotrain.optim.schedulers import DiffuserSchedulerConfig

logger = logging.getLogger(__name__)

# The default crop_shape object. Compared by identity: a value the user typed (even (84, 84)) is a different
# object, so "left at its default" can be told apart from "set to 84x84" (dataclass defaults are shared as is).
DEFAULT_CROP_SHAPE = (84, 84)
DEFAULT_CROP_FRACTION = 7 / 8  # 84 / 96: the published crop relative to PushT's frames


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
    resize_shape: tuple[int, int] | None = None
    """Resize camera frames to (height, width) before cropping; null: keep their size."""
    crop_shape: tuple[int, int] | None = DEFAULT_CROP_SHAPE
    """Crop (height, width) of the (resized) frames; random in training, centered in eval; null: no crop. Unset, it is
    7/8 of each side (84x84 for 96x96 frames, 420x560 for 480x640) unless crop_ratio is given."""
    crop_ratio: float | None = None
    """Crop each side to this fraction of the (resized) frame instead of a fixed crop_shape (1.0: no crop)."""
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
    use_ema: bool = False
    """Keep an exponential moving average of the weights (saved with them) and act with it, as the paper does."""
    ema_power: float = 0.75
    """EMA warmup: decay = 1 - (1 + step) ** -ema_power (the paper's EMAModel)."""
    ema_max_decay: float = 0.9999
    """Upper bound of the EMA decay."""
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

    @property
    def sample_end_margin(self) -> int:
        return self.drop_n_last_frames

    @property
    def camera_frame_size(self) -> tuple[int, int] | None:
        return tuple(self.resize_shape) if self.resize_shape else None

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
            check_positive(num_inference_steps=self.num_inference_steps)
            check_at_most("num_inference_steps", self.num_inference_steps, "num_train_timesteps",
                          self.num_train_timesteps)
        for name in ("resize_shape", "crop_shape"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 1):
                raise ConfigError(name, list(value), "must be two positive sizes (height, width)",
                                  "e.g. [84,84], or null")
        if self.crop_ratio is not None and not 0 < self.crop_ratio <= 1:
            raise ConfigError("crop_ratio", self.crop_ratio, "must be in (0, 1]", "e.g. 0.9, or null")
        check_ema(self.ema_power, self.ema_max_decay)
        check_group_norm(self.use_group_norm, self.pretrained_backbone_weights)
        if self.drop_n_last_frames < 0:
            raise ConfigError("drop_n_last_frames", self.drop_n_last_frames, "cannot be negative", "use 0 or more")

    def validate_features(self) -> None:
        """Check the inputs can feed the model and settle the crop for the cameras' size (at policy build)."""
        if not self.image_features and OBS_ENV_STATE not in self.input_features:
            raise ConfigError("policy.input_features", sorted(self.input_features),
                              f"Diffusion Policy needs at least one camera or {OBS_ENV_STATE} among its inputs",
                              "use a dataset with images or an environment state")
        action = self.output_features.get(ACTION)
        if action is None or len(action.shape) != 1:
            raise ConfigError("policy.output_features", sorted(self.output_features),
                              "Diffusion Policy predicts a 1-D 'action' feature, which is missing",
                              "train on a dataset with an 'action' column")
        unused = [k for k, f in self.input_features.items()
                  if f.type in (FeatureType.STATE, FeatureType.ENV) and k not in (OBS_STATE, OBS_ENV_STATE)]
        if unused:  # as LeRobot: other state vectors (e.g. observation.effort) are not model inputs
            logger.info("Diffusion Policy does not use %s", ", ".join(unused))
        if not self.image_features:
            return
        sizes = {key: tuple(f.shape[1:]) for key, f in self.image_features.items()}
        for key, feature in self.image_features.items():
            if len(feature.shape) != 3 or feature.shape[0] != 3:
                raise ConfigError("policy.input_features", f"{key}: {list(feature.shape)}",
                                  "Diffusion Policy's ResNet takes RGB images shaped (3, H, W)",
                                  "use 3-channel cameras or drop this camera from the inputs")
        if self.resize_shape is None and len(set(sizes.values())) > 1:
            raise ConfigError("resize_shape", None, f"is needed: the cameras differ in size ({sizes})",
                              "set --policy.resize_shape=[H,W] to bring them to one size")
        self._settle_crop(tuple(self.resize_shape) if self.resize_shape else next(iter(sizes.values())))

    def _settle_crop(self, frame: tuple[int, int]) -> None:
        """Apply the cropping rule of the module docstring for frames of size `frame` (after any resize)."""
        from_ratio = None if self.crop_ratio is None else tuple(int(s * self.crop_ratio) for s in frame)
        if self.crop_shape is DEFAULT_CROP_SHAPE:
            crop = from_ratio or tuple(int(s * DEFAULT_CROP_FRACTION) for s in frame)
            crop = None if crop == frame else crop
            if crop != DEFAULT_CROP_SHAPE:
                how = f"crop_ratio={self.crop_ratio}" if from_ratio else "7/8 of each side"
                logger.info("crop_shape not set: cropping %s frames to %s (%s)", frame, crop, how)
            self.crop_shape = crop
            return
        crop = None if self.crop_shape is None else tuple(self.crop_shape)
        if from_ratio is not None and self.crop_ratio != 1.0 and crop != from_ratio:
            raise ConfigError("crop_ratio", self.crop_ratio, f"asks for a {from_ratio} crop but crop_shape is "
                              f"{list(crop) if crop else None}", "set only one of crop_shape and crop_ratio")
        if crop is not None and (crop[0] > frame[0] or crop[1] > frame[1]):
            raise ConfigError("crop_shape", list(crop), f"does not fit in the {frame[0]}x{frame[1]} camera frames",
                              f"use a crop of at most {list(frame)}, set crop_ratio instead, or null")
