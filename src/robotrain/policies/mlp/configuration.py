"""MLP: behaviour cloning of action chunks from state vectors (no cameras), the fast baseline for low-dim tasks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_at_most, check_ema, check_positive
from robotrain.configs.types import ACTION, FeatureType, NormalizationMode, PolicyFeature
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamWConfig
from robotrain.optim.schedulers import DiffuserSchedulerConfig

logger = logging.getLogger(__name__)

# Input feature types the MLP reads: every state vector, concatenated in key order.
STATE_TYPES = (FeatureType.STATE, FeatureType.ENV)


@dataclass
class MLPConfig(PolicyConfig):
    """A residual MLP maps the last n_obs_steps state observations to a chunk of actions (L1 loss, weight EMA)."""

    n_obs_steps: int = 1
    """Observations per sample (the current one and n_obs_steps-1 before it), concatenated."""
    chunk_size: int = 16
    """Actions predicted per forward pass."""
    n_action_steps: int = 8
    """Actions of each chunk executed before predicting again (at most chunk_size)."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "STATE": NormalizationMode.MIN_MAX,
        "ENV": NormalizationMode.MIN_MAX,
        "ACTION": NormalizationMode.MIN_MAX,
    })
    """Normalization per feature type (MIN_MAX: each dimension to [-1, 1] over the dataset)."""
    hidden_dim: int = 256
    """Width of the residual blocks."""
    n_blocks: int = 3
    """Residual blocks: x + Linear(Mish(Linear(LayerNorm(x))))."""
    dropout: float = 0.0
    """Dropout inside each block."""
    use_ema: bool = True
    """Act with an exponential moving average of the weights (saved with them)."""
    ema_power: float = 0.75
    """EMA warmup: decay = 1 - (1 + step) ** -ema_power."""
    ema_max_decay: float = 0.9999
    """Upper bound of the EMA decay."""
    optimizer_lr: float = 1e-3
    """Preset learning rate (cosine schedule to 0 after the warmup)."""
    optimizer_weight_decay: float = 1e-6
    """Preset weight decay (AdamW)."""
    scheduler_warmup_steps: int = 200
    """Preset warmup steps."""

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> DiffuserSchedulerConfig:
        return DiffuserSchedulerConfig(name="cosine", num_warmup_steps=self.scheduler_warmup_steps)

    def validate(self) -> None:
        super().validate()
        check_positive(chunk_size=self.chunk_size, n_action_steps=self.n_action_steps, hidden_dim=self.hidden_dim,
                       n_blocks=self.n_blocks)
        check_at_most("n_action_steps", self.n_action_steps, "chunk_size", self.chunk_size)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must be in [0, 1)", "e.g. --policy.dropout=0.1")
        check_ema(self.ema_power, self.ema_max_decay)

    @property
    def state_features(self) -> dict[str, PolicyFeature]:
        """The inputs the MLP reads, in the order it concatenates them."""
        return {k: f for k, f in sorted(self.input_features.items()) if f.type in STATE_TYPES}

    def validate_features(self) -> None:
        """The MLP needs a 1-D action and at least one state vector; cameras are left out (with a warning)."""
        action = self.output_features.get(ACTION)
        if action is None or len(action.shape) != 1:
            raise ConfigError("policy.output_features", sorted(self.output_features),
                              "the MLP predicts a 1-D 'action' feature, which is missing",
                              "train on a dataset with an 'action' column")
        if self.image_features:  # as Diffusion with extra state vectors: said once, then left out
            logger.warning("the MLP reads state vectors only: %s not used (a policy with an image encoder, act or "
                           "diffusion, can use them)", ", ".join(sorted(self.image_features)))
        if not self.state_features:
            raise ConfigError("policy.input_features", sorted(self.input_features),
                              "the MLP needs at least one state vector (observation.state or "
                              "observation.environment_state)", "use a dataset with state observations")
        for key, feature in self.state_features.items():
            if len(feature.shape) != 1:
                raise ConfigError("policy.input_features", f"{key}: {list(feature.shape)}",
                                  "the MLP reads 1-D state vectors", "flatten this feature or leave it out")
