"""ACT: Action Chunking with Transformers (Zhao et al., 2023, arXiv:2304.13705). Defaults as LeRobot's."""

from __future__ import annotations

from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_at_most, check_choice, check_positive, check_resnet
from robotrain.configs.types import ACTION, OBS_ENV_STATE, FeatureType, NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamWConfig


@dataclass
class ACTConfig(PolicyConfig):
    """ACT: a CVAE whose transformer decoder predicts a chunk of future actions from cameras and state."""

    n_obs_steps: int = 1
    """Observations per sample; ACT supports 1 only."""
    chunk_size: int = 100
    """Actions predicted per forward pass (the chunk)."""
    n_action_steps: int = 100
    """Actions of each chunk executed before predicting again (at most chunk_size)."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.MEAN_STD,
        "STATE": NormalizationMode.MEAN_STD,
        "ACTION": NormalizationMode.MEAN_STD,
    })
    """Normalization per feature type."""
    vision_backbone: str = "resnet18"
    """Image encoder: resnet18, resnet34 or resnet50."""
    pretrained_backbone_weights: str | None = "ResNet18_Weights.IMAGENET1K_V1"
    """Backbone weights: a torchvision weights name, a local file (safetensors or .pth) or a Hub id; null: random."""
    replace_final_stride_with_dilation: bool = False
    """Dilate the backbone's last stage instead of striding (doubles the feature map)."""
    pre_norm: bool = False
    """Layer norm before (true) or after (false) attention and feed-forward blocks."""
    dim_model: int = 512
    """Transformer width."""
    n_heads: int = 8
    """Attention heads (must divide dim_model)."""
    dim_feedforward: int = 3200
    """Hidden width of the transformer feed-forward blocks."""
    feedforward_activation: str = "relu"
    """Feed-forward activation: relu, gelu or glu."""
    n_encoder_layers: int = 4
    """Transformer encoder layers."""
    n_decoder_layers: int = 1
    """Transformer decoder layers (the original code ran 7 but only the first one was used)."""
    use_vae: bool = True
    """Train with the VAE objective (a style latent inferred from the action chunk)."""
    latent_dim: int = 32
    """Size of the VAE latent."""
    n_vae_encoder_layers: int = 4
    """Transformer layers of the VAE encoder."""
    temporal_ensemble_coeff: float | None = None
    """Temporal ensembling weight exp(-coeff * i) (0.01 in the paper); needs n_action_steps=1. null disables."""
    dropout: float = 0.1
    """Dropout in the transformer layers."""
    kl_weight: float = 10.0
    """Weight of the KL term of the VAE loss."""
    optimizer_lr: float = 1e-5
    """Preset learning rate."""
    optimizer_weight_decay: float = 1e-4
    """Preset weight decay."""
    optimizer_lr_backbone: float = 1e-5
    """Preset learning rate of the image backbone."""

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def validate(self) -> None:
        super().validate()
        check_resnet(self, self.vision_backbone)
        check_positive(chunk_size=self.chunk_size, n_action_steps=self.n_action_steps, dim_model=self.dim_model,
                       n_heads=self.n_heads, latent_dim=self.latent_dim, n_encoder_layers=self.n_encoder_layers,
                       n_decoder_layers=self.n_decoder_layers, n_vae_encoder_layers=self.n_vae_encoder_layers,
                       dim_feedforward=self.dim_feedforward)
        if self.n_obs_steps != 1:
            raise ConfigError("n_obs_steps", self.n_obs_steps, "ACT sees one observation step only",
                              "use --policy.n_obs_steps=1")
        check_at_most("n_action_steps", self.n_action_steps, "chunk_size", self.chunk_size)
        if self.temporal_ensemble_coeff is not None and self.n_action_steps > 1:
            raise ConfigError("temporal_ensemble_coeff", self.temporal_ensemble_coeff,
                              f"temporal ensembling predicts every step, so it needs n_action_steps=1 "
                              f"(got {self.n_action_steps})",
                              "add --policy.n_action_steps=1, or drop --policy.temporal_ensemble_coeff")
        if self.dim_model % self.n_heads:
            raise ConfigError("n_heads", self.n_heads, f"must divide dim_model ({self.dim_model})",
                              "e.g. --policy.n_heads=8 with --policy.dim_model=512")
        if self.dim_model % 2:
            raise ConfigError("dim_model", self.dim_model, "must be even (the 2-D position embedding splits it in "
                              "two)", "e.g. --policy.dim_model=512")
        check_choice("feedforward_activation", self.feedforward_activation, ("relu", "gelu", "glu"))
        if self.feedforward_activation == "glu" and self.dim_feedforward % 2:
            raise ConfigError("dim_feedforward", self.dim_feedforward, "must be even with glu (it halves the width)",
                              "e.g. --policy.dim_feedforward=3200")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must be in [0, 1)", "e.g. --policy.dropout=0.1")

    def validate_features(self) -> None:
        """ACT needs an action vector and at least one camera or an environment state to look at."""
        action = self.output_features.get(ACTION)
        if action is None or action.type is not FeatureType.ACTION or len(action.shape) != 1:
            raise ConfigError("policy.output_features", sorted(self.output_features),
                              "ACT predicts a 1-D 'action' feature, which is missing",
                              "train on a dataset with an 'action' column")
        if not self.image_features and OBS_ENV_STATE not in self.input_features:
            raise ConfigError("policy.input_features", sorted(self.input_features),
                              "ACT needs at least one camera (observation.image[s]...) or "
                              "observation.environment_state among its inputs",
                              "use a dataset with images or an environment state")
        for key, feature in self.image_features.items():
            if len(feature.shape) != 3 or feature.shape[0] != 3:
                raise ConfigError("policy.input_features", f"{key}: {list(feature.shape)}",
                                  "ACT's ResNet takes RGB images shaped (3, H, W)",
                                  "use 3-channel cameras or drop this camera from the inputs")
