"""TD-MPC (Hansen et al., 2022, arXiv:2203.04955) as used for FOWM's xArm tasks. Defaults as LeRobot's."""

from __future__ import annotations

from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_at_most, check_positive
from robotrain.configs.types import NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig


@dataclass
class TDMPCConfig(PolicyConfig):
    """TD-MPC: a latent world model with value learning, planning with MPPI at inference."""

    n_action_repeats: int = 2
    """Times each planned action is repeated in the environment."""
    horizon: int = 5
    """Planning and training horizon (steps)."""
    n_action_steps: int = 1
    """Actions executed per plan (more than 1 needs use_mpc and n_action_repeats=1)."""
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.IDENTITY,
        "STATE": NormalizationMode.IDENTITY,
        "ENV": NormalizationMode.IDENTITY,
        "ACTION": NormalizationMode.MIN_MAX,
    })
    """Normalization per feature type (actions must be MIN_MAX: the planner samples in [-1, 1])."""
    image_encoder_hidden_dim: int = 32
    """Channels of the image encoder."""
    state_encoder_hidden_dim: int = 256
    """Hidden width of the state encoder."""
    latent_dim: int = 50
    """Size of the latent state."""
    q_ensemble_size: int = 5
    """Q-functions in the ensemble."""
    mlp_dim: int = 512
    """Hidden width of the MLP heads."""
    discount: float = 0.9
    """Discount factor."""
    use_mpc: bool = True
    """Plan with MPPI at inference (false: act with the policy network alone)."""
    cem_iterations: int = 6
    """Planner iterations per step."""
    max_std: float = 2.0
    """Largest standard deviation of the planner's samples."""
    min_std: float = 0.05
    """Smallest standard deviation of the planner's samples."""
    n_gaussian_samples: int = 512
    """Trajectories sampled from the planner's Gaussian."""
    n_pi_samples: int = 51
    """Trajectories sampled from the policy network."""
    uncertainty_regularizer_coeff: float = 1.0
    """Penalty on Q-ensemble disagreement when scoring trajectories."""
    n_elites: int = 50
    """Best trajectories kept per iteration."""
    elite_weighting_temperature: float = 0.5
    """Softmax temperature over the elites' scores."""
    gaussian_mean_momentum: float = 0.1
    """Momentum of the planner's mean update."""
    max_random_shift_ratio: float = 0.0476
    """Random-shift image augmentation, as a fraction of the image size."""
    reward_coeff: float = 0.5
    """Loss weight of reward prediction."""
    expectile_weight: float = 0.9
    """Expectile of the V-function regression."""
    value_coeff: float = 0.1
    """Loss weight of the Q and V losses."""
    consistency_coeff: float = 20.0
    """Loss weight of latent consistency."""
    advantage_scaling: float = 3.0
    """Scale of advantages in the policy loss."""
    pi_coeff: float = 0.5
    """Loss weight of the policy network."""
    temporal_decay_coeff: float = 0.5
    """Decay of loss weights along the horizon."""
    target_model_momentum: float = 0.995
    """EMA momentum of the target network."""
    optimizer_lr: float = 3e-4
    """Preset learning rate."""

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(self.horizon + 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.horizon))

    @property
    def reward_delta_indices(self) -> list[int]:
        return list(range(self.horizon))

    def get_optimizer_preset(self) -> AdamConfig:
        return AdamConfig(lr=self.optimizer_lr)

    def validate(self) -> None:
        super().validate()
        check_positive(horizon=self.horizon, n_gaussian_samples=self.n_gaussian_samples,
                       n_action_steps=self.n_action_steps, n_action_repeats=self.n_action_repeats)
        check_at_most("n_elites", self.n_elites, "n_gaussian_samples + n_pi_samples",
                      self.n_gaussian_samples + self.n_pi_samples)
        if self.normalization_mapping.get("ACTION") is not NormalizationMode.MIN_MAX:
            raise ConfigError("normalization_mapping", self.normalization_mapping.get("ACTION"),
                              "TD-MPC's planner samples actions in [-1, 1], so ACTION must be MIN_MAX",
                              "keep ACTION: MIN_MAX in --policy.normalization_mapping")
        if self.n_action_steps > 1:
            if self.n_action_repeats != 1:
                raise ConfigError("n_action_steps", self.n_action_steps,
                                  f"more than 1 needs n_action_repeats=1 (got {self.n_action_repeats})",
                                  "add --policy.n_action_repeats=1")
            if not self.use_mpc:
                raise ConfigError("n_action_steps", self.n_action_steps, "more than 1 needs the planner",
                                  "add --policy.use_mpc=true, or use --policy.n_action_steps=1")
            check_at_most("n_action_steps", self.n_action_steps, "horizon", self.horizon)
