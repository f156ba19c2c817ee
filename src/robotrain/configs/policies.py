"""The base of every policy configuration; `--policy.type=<name>` picks the subclass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from robotrain.configs.types import FeatureType, NormalizationMode, PolicyFeature
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import OptimizerConfig
from robotrain.optim.schedulers import LRSchedulerConfig

_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


@dataclass
class PolicyConfig(draccus.ChoiceRegistry):
    """Fields every policy has. Subclasses add the architecture and their training preset."""

    n_obs_steps: int = 1
    """Number of past observations (including the current one) the policy sees."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=dict)
    """Normalization per feature type (VISUAL, STATE, ENV, ACTION): MEAN_STD, MIN_MAX or IDENTITY."""
    input_features: dict[str, PolicyFeature] = field(default_factory=dict)
    """Policy inputs; derived from the dataset or env when empty."""
    output_features: dict[str, PolicyFeature] = field(default_factory=dict)
    """Policy outputs; derived from the dataset or env when empty."""
    device: str | None = None
    """cpu, cuda, cuda:N, mps or xpu; null picks the best available."""
    use_amp: bool = False
    """Use automatic mixed precision in evaluation."""
    push_to_hub: bool = False
    """Upload the trained policy to the Hugging Face Hub at the end (needs --policy.repo_id)."""
    repo_id: str | None = None
    """Hub repo to push the policy to, e.g. user/act_pusht."""
    private: bool | None = None
    """Create the Hub repo as private."""
    tags: list[str] | None = None
    """Extra tags for the Hub model card."""
    license: str | None = None
    """License for the Hub model card."""
    pretrained_path: Path | None = None
    """Set by --policy.path or a resume: the checkpoint the weights come from."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    @property
    def observation_delta_indices(self) -> list[int] | None:
        """Frame offsets of the observations one training sample holds (None: the current frame only)."""
        return None

    @property
    def action_delta_indices(self) -> list[int] | None:
        """Frame offsets of the actions one training sample holds."""
        return None

    @property
    def reward_delta_indices(self) -> list[int] | None:
        """Frame offsets of the rewards one training sample holds (None: rewards unused)."""
        return None

    @property
    def sample_end_margin(self) -> int:
        """Frames at the end of each episode that never start a training sample (0: every frame does)."""
        return 0

    @property
    def camera_frame_size(self) -> tuple[int, int] | None:
        """(height, width) the policy resizes camera frames to, so the dataset delivers and caches them at that size
        (None: frames keep their size)."""
        return None

    @property
    def leaves_parameters_out(self) -> bool:
        """Whether some training steps give no gradient to some parameters (VQ-BeT trains its VQ-VAE first):
        multi-process training then looks for them at every step."""
        return False

    def get_optimizer_preset(self) -> OptimizerConfig:
        """The optimizer this policy trains with when --use_policy_training_preset=true."""
        raise NotImplementedError

    def get_scheduler_preset(self) -> LRSchedulerConfig | None:
        """The learning-rate schedule of the preset (None: constant learning rate)."""
        return None

    def features_of(self, feature_type: FeatureType) -> dict[str, PolicyFeature]:
        """The input features of one type, e.g. every VISUAL one (the cameras)."""
        return {k: f for k, f in self.input_features.items() if f.type is feature_type}

    @property
    def image_features(self) -> dict[str, PolicyFeature]:
        return self.features_of(FeatureType.VISUAL)

    def validate_features(self) -> None:
        """Refuse input/output features this policy cannot use (ConfigError naming the feature and the fix)."""

    def validate(self) -> None:
        """Cross-field rules; subclasses extend it. Raises ConfigError naming the field."""
        if self.device is not None and not _DEVICE.match(self.device):
            raise ConfigError("device", self.device, "is not a device (cpu, cuda, cuda:N, mps or xpu)",
                              "use --policy.device=cpu, --policy.device=cuda, or leave it unset")
        if self.n_obs_steps < 1:
            raise ConfigError("n_obs_steps", self.n_obs_steps, "must be at least 1", "use 1 or more")
        if self.push_to_hub and not self.repo_id:
            raise ConfigError("push_to_hub", True, "needs a Hub repo to push to",
                              "add --policy.repo_id=<user>/<name>, or drop --policy.push_to_hub")
        for ftype, mode in self.normalization_mapping.items():
            if ftype not in FeatureType.__members__:
                raise ConfigError("normalization_mapping", ftype, "is not a feature type",
                                  f"use keys among {', '.join(FeatureType.__members__)}")
            if not isinstance(mode, NormalizationMode):
                raise ConfigError("normalization_mapping", mode, "is not a normalization mode",
                                  f"use one of {', '.join(NormalizationMode.__members__)}")


def check_resnet(config: PolicyConfig, backbone: str) -> None:
    """Policies with a ResNet image encoder accept resnet18, resnet34 and resnet50."""
    if backbone not in ("resnet18", "resnet34", "resnet50"):
        raise ConfigError("vision_backbone", backbone, "is not a supported backbone",
                          "use resnet18, resnet34 or resnet50")


def check_at_most(field_name: str, value: int, limit_name: str, limit: int) -> None:
    """`value` must not exceed another field's value; the message names both."""
    if value > limit:
        raise ConfigError(field_name, value, f"must not exceed {limit_name} ({limit})",
                          f"set --policy.{field_name} to at most {limit}, or raise --policy.{limit_name}")


def check_positive(**fields: int | float) -> None:
    """Every given field must be > 0."""
    for name, value in fields.items():
        if value <= 0:
            raise ConfigError(name, value, "must be positive", f"set --policy.{name} to a value above 0")


def check_choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    """`value` must be one of `choices`."""
    if value not in choices:
        raise ConfigError(field_name, value, f"is not one of {', '.join(choices)}",
                          f"use --policy.{field_name}={choices[0]}")


def check_ema(power: float, max_decay: float) -> None:
    """The weight EMA's decay 1 - (1 + step) ** -power, capped at max_decay, must stay in [0, 1)."""
    if not 0 <= max_decay < 1 or power <= 0:
        raise ConfigError("ema_max_decay" if power > 0 else "ema_power", max_decay if power > 0 else power,
                          "needs 0 <= ema_max_decay < 1 and ema_power > 0", "keep 0.9999 and 0.75 (the paper's)")


def check_group_norm(use_group_norm: bool, pretrained_weights: str | None) -> None:
    """Group norm replaces the backbone's batch norms, whose statistics pretrained weights need."""
    if use_group_norm and pretrained_weights:
        raise ConfigError("use_group_norm", True, "replaces the batch norms that pretrained weights need",
                          "set --policy.use_group_norm=false, or --policy.pretrained_backbone_weights=null")
