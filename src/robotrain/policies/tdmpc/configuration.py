"""TD-MPC (Hansen et al., 2022, arXiv:2203.04955) as used for FOWM's xArm tasks. Defaults as LeRobot's."""

from __future__ import annotations

from dataclasses import dataclass, field

from robotrain.configs.policies import PolicyConfig, check_at_most, check_positive
from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_STATE, FeatureType, NormalizationMode
from robotrain.errors import ConfigError
from robotrain.optim.optimizers import AdamConfig

# The observations TD-MPC's encoder reads (plus one camera, under any key).
ENCODED_VECTORS = {OBS_STATE: FeatureType.STATE, OBS_ENV_STATE: FeatureType.ENV}


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
                       n_action_steps=self.n_action_steps, n_action_repeats=self.n_action_repeats,
                       latent_dim=self.latent_dim, mlp_dim=self.mlp_dim, q_ensemble_size=self.q_ensemble_size,
                       image_encoder_hidden_dim=self.image_encoder_hidden_dim, n_elites=self.n_elites,
                       state_encoder_hidden_dim=self.state_encoder_hidden_dim, cem_iterations=self.cem_iterations,
                       temporal_decay_coeff=self.temporal_decay_coeff)
        if self.n_obs_steps != 1:
            raise ConfigError("n_obs_steps", self.n_obs_steps, "TD-MPC sees one observation step only",
                              "use --policy.n_obs_steps=1")
        if self.n_pi_samples < 0:
            raise ConfigError("n_pi_samples", self.n_pi_samples, "cannot be negative",
                              "use --policy.n_pi_samples=0 or more")
        check_at_most("n_elites", self.n_elites, "n_gaussian_samples + n_pi_samples",
                      self.n_gaussian_samples + self.n_pi_samples)
        if self.q_ensemble_size < 2 and self.uncertainty_regularizer_coeff > 0:
            raise ConfigError("q_ensemble_size", self.q_ensemble_size, "the uncertainty penalty is the standard "
                              "deviation over the Q ensemble, which needs at least 2 members",
                              "use --policy.q_ensemble_size=5, or --policy.uncertainty_regularizer_coeff=0")
        for name, low, high in (("discount", 0.0, 1.0), ("expectile_weight", 0.0, 1.0),
                                ("target_model_momentum", 0.0, 1.0), ("gaussian_mean_momentum", 0.0, 1.0),
                                ("max_random_shift_ratio", 0.0, 0.49)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(name, value, f"must be in [{low}, {high}]",
                                  f"e.g. --policy.{name}={getattr(type(self), name)}")
        if not 0 <= self.min_std <= self.max_std:
            raise ConfigError("min_std", self.min_std, f"must be in [0, max_std={self.max_std}]",
                              "e.g. --policy.min_std=0.05 --policy.max_std=2.0")
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

    def validate_features(self) -> None:
        """An action vector, and what the encoder reads: at most one camera (at least 39 pixels a side, for its
        four strided convolutions), observation.state, observation.environment_state; at least one of them."""
        from robotrain.policies.tdmpc.told import conv_output_size

        action = self.output_features.get(ACTION)
        if action is None or action.type is not FeatureType.ACTION or len(action.shape) != 1:
            raise ConfigError("policy.output_features", sorted(self.output_features),
                              "TD-MPC predicts a 1-D 'action' feature, which is missing",
                              "train on a dataset with an 'action' column")
        cameras = self.image_features
        if len(cameras) > 1:
            raise ConfigError("policy.input_features", sorted(cameras), "TD-MPC encodes one camera (as LeRobot's)",
                              "use a dataset with a single camera, or list one camera in policy.input_features")
        for key, feature in cameras.items():
            if len(feature.shape) != 3 or min(conv_output_size(side) for side in feature.shape[1:]) < 1:
                raise ConfigError("policy.input_features", f"{key}: {list(feature.shape)}",
                                  "TD-MPC's image encoder takes (C, H, W) images of at least 39x39 pixels",
                                  "use a camera of that size (xArm's is 84x84)")
        unused = [key for key, feature in self.input_features.items() if feature.type is not FeatureType.VISUAL
                  and ENCODED_VECTORS.get(key) is not feature.type]
        if unused:
            raise ConfigError("policy.input_features", unused,
                              "TD-MPC encodes one camera, observation.state (STATE) and observation.environment_state "
                              "(ENV) only", "list only those in policy.input_features")
        if not self.input_features:
            raise ConfigError("policy.input_features", [], "TD-MPC needs a camera or a state to encode",
                              "train on a dataset with observation.image or observation.state")
