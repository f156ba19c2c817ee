"""TOLD, the Task-Oriented Latent Dynamics model of TD-MPC, and its observation encoder.

Hansen, Wang, Su. "Temporal Difference Learning for Model Predictive Control", ICML 2022, arXiv:2203.04955
(section 3), with the V head and the ensemble of Q heads of FOWM: Feng, Hansen, Xiong, Rajagopalan, Wang.
"Finetuning Offline World Models in the Real World", CoRL 2023, arXiv:2310.16029 (section 3.1, appendix C).

    observation ──_encoder──> z (latent_dim, in (0, 1): every branch ends with LayerNorm + Sigmoid)
    (z, a) ──_dynamics──> z'            (z, a) ──_reward──> r          z ──_pi──> tanh(.) = a
    (z, a) ──_Qs[i]──> Q_i, i < q_ensemble_size                        z ──_V──> V

Attribute and Sequential layouts are LeRobot's (hence the underscores and the numbered children), so LeRobot's
model.safetensors loads by name and a model built after the same torch.manual_seed starts with the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_STATE, FeatureType
from robotrain.policies.tdmpc.configuration import TDMPCConfig

# (kernel, stride) of the image encoder's four convolutions (TD-MPC's DrQ-style encoder).
IMAGE_CONVS = ((7, 2), (5, 2), (3, 2), (3, 2))


def conv_output_size(size: int) -> int:
    """Height (or width) of the image encoder's last feature map for an input of `size` pixels (<= 0: too small)."""
    for kernel, stride in IMAGE_CONVS:
        size = (size - kernel) // stride + 1
    return size


def _mish_mlp(in_dim: int, hidden: int, out_dim: int) -> list[nn.Module]:
    """Linear-LN-Mish, twice, then Linear: TD-MPC's dynamics, reward and policy trunk."""
    return [nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.Mish(),
            nn.Linear(hidden, out_dim)]


def _value_mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """Linear-LN-Tanh-Linear-ELU-Linear to a scalar: TD-MPC's Q heads (and FOWM's V head)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Tanh(),
                         nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, 1))


class TDMPCTOLD(nn.Module):
    """The world model: encoder, latent dynamics, reward, policy, Q ensemble and V."""

    def __init__(self, config: TDMPCConfig):
        super().__init__()
        self.config = config
        latent, hidden = config.latent_dim, config.mlp_dim
        action_dim = config.output_features[ACTION].shape[0]
        self._encoder = TDMPCObservationEncoder(config)
        self._dynamics = nn.Sequential(*_mish_mlp(latent + action_dim, hidden, latent), nn.LayerNorm(latent),
                                       nn.Sigmoid())
        self._reward = nn.Sequential(*_mish_mlp(latent + action_dim, hidden, 1))
        self._pi = nn.Sequential(*_mish_mlp(latent, hidden, action_dim))
        self._Qs = nn.ModuleList(_value_mlp(latent + action_dim, hidden) for _ in range(config.q_ensemble_size))
        self._V = _value_mlp(latent, hidden)
        self._init_weights()
        if self._encoder.image_key is not None:
            # oneDNN convolves channels-last images faster (the Diffusion backbone does the same); the weights'
            # values and names are unchanged, only their memory layout (4-D tensors only: the convolutions').
            self._encoder.image_enc_layers.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        """Orthogonal weights (ReLU gain for convolutions), zero biases; the reward and Q outputs start at zero
        (TD-MPC's orthogonal_init), so early value targets are the rewards alone."""
        for module in self.modules():  # registration order, as LeRobot's apply(): same seed, same weights
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight)
            elif isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for head in (self._reward, *self._Qs):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def encode(self, observation: dict[str, Tensor]) -> Tensor:
        """Normalized observation, any leading dims (...) -> latent (..., latent_dim)."""
        return self._encoder(observation)

    def next_latent(self, z: Tensor, action: Tensor) -> Tensor:
        """(..., latent_dim), (..., A) -> the predicted next latent (..., latent_dim)."""
        return self._dynamics(torch.cat([z, action], dim=-1))

    def next_latent_and_reward(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """(..., latent_dim), (..., A) -> next latent (..., latent_dim) and reward (...)."""
        x = torch.cat([z, action], dim=-1)
        return self._dynamics(x), self._reward(x).squeeze(-1)

    def pi(self, z: Tensor, std: float = 0.0) -> Tensor:
        """The policy's action tanh(pi(z)) (..., A), plus Gaussian noise of `std` when std > 0.

        TD-MPC truncates that noise to [-1, 1]; LeRobot (and so this) adds it unclipped: the planner clamps the
        trajectories it samples from a Gaussian, and the action it returns, but not the policy's samples.
        """
        action = torch.tanh(self._pi(z))
        if std > 0:
            action = action + torch.randn_like(action) * std
        return action

    def V(self, z: Tensor) -> Tensor:  # noqa: N802 (the paper's name)
        """State value (...) of latents (..., latent_dim)."""
        return self._V(z).squeeze(-1)

    def Qs(self, z: Tensor, action: Tensor) -> Tensor:  # noqa: N802 (the paper's name)
        """Every ensemble member's Q value: (..., latent_dim), (..., A) -> (q_ensemble_size, ...)."""
        x = torch.cat([z, action], dim=-1)
        return torch.stack([q(x).squeeze(-1) for q in self._Qs], dim=0)

    def min_of_two_Qs(self, z: Tensor, action: Tensor) -> Tensor:  # noqa: N802
        """min(Q_i, Q_j) for two members drawn at random (FOWM appendix C): (...).

        Drawn with replacement, as LeRobot does (so i == j one time in q_ensemble_size); FOWM's code draws two
        distinct members. LeRobot draws from NumPy's global RNG, this from torch's, so a seeded torch run (and a
        resumed one) is reproducible. With two members or fewer, the minimum over all of them.
        """
        heads = list(self._Qs)
        if len(heads) > 2:
            heads = [heads[i] for i in torch.randint(0, len(heads), (2,)).tolist()]
        x = torch.cat([z, action], dim=-1)
        return torch.stack([q(x).squeeze(-1) for q in heads], dim=0).min(dim=0).values


class TDMPCObservationEncoder(nn.Module):
    """One encoder per modality (camera, environment state, robot state), each to the latent; their mean is z.

    FOWM concatenated several cameras along channels; LeRobot (and this) takes one camera (validate_features).
    """

    def __init__(self, config: TDMPCConfig):
        super().__init__()
        self.image_key = next(iter(config.image_features), None)
        self.has_state = _has(config, OBS_STATE, FeatureType.STATE)
        self.has_env_state = _has(config, OBS_ENV_STATE, FeatureType.ENV)
        latent, hidden = config.latent_dim, config.state_encoder_hidden_dim
        if self.image_key is not None:
            channels, height, width = config.image_features[self.image_key].shape
            dim, layers, in_channels = config.image_encoder_hidden_dim, [], channels
            for kernel, stride in IMAGE_CONVS:
                # In place: the activations are the largest tensors of a step, and ReLU needs no copy of its input.
                layers += [nn.Conv2d(in_channels, dim, kernel, stride=stride), nn.ReLU(inplace=True)]
                in_channels = dim
            flat = dim * conv_output_size(height) * conv_output_size(width)
            self.image_enc_layers = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, latent),
                                                  nn.LayerNorm(latent), nn.Sigmoid())

        if self.has_state:
            self.state_enc_layers = _state_encoder(config.input_features[OBS_STATE].shape[0], hidden, latent)
        if self.has_env_state:
            self.env_state_enc_layers = _state_encoder(config.input_features[OBS_ENV_STATE].shape[0], hidden, latent)

    def forward(self, observation: dict[str, Tensor]) -> Tensor:
        """Observation tensors with leading dims (...) -> (..., latent_dim), the mean over modalities."""
        features = []  # LeRobot's order (image, env state, robot state): the mean rounds the same way
        if self.image_key is not None:
            image = observation[self.image_key]  # (..., C, H, W)
            lead = image.shape[:-3]
            flat = image.reshape(-1, *image.shape[-3:]).contiguous(memory_format=torch.channels_last)  # (N, C, H, W)
            encoded = self.image_enc_layers(flat)  # (N, latent)
            features.append(encoded.reshape(*lead, -1))  # (..., latent)
        if self.has_env_state:
            features.append(self.env_state_enc_layers(observation[OBS_ENV_STATE]))
        if self.has_state:
            features.append(self.state_enc_layers(observation[OBS_STATE]))
        return torch.stack(features, dim=0).mean(0)


def _state_encoder(in_dim: int, hidden: int, latent: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ELU(), nn.Linear(hidden, latent), nn.LayerNorm(latent),
                         nn.Sigmoid())


def _has(config: TDMPCConfig, key: str, ftype: FeatureType) -> bool:
    feature = config.input_features.get(key)
    return feature is not None and feature.type is ftype


def random_shift(images: Tensor, ratio: float) -> Tensor:
    """DrQ's augmentation (TD-MPC section 4): pad by round(ratio * side) with edge pixels, then crop back at a random
    integer offset, drawn per image. (N, C, H, W) -> (N, C, H, W).

    LeRobot (after DrQ-v2) samples the shifted grid with grid_sample; its grid points fall on pixel centres, so the
    result is this crop up to float rounding. Cropping also handles non-square images, which LeRobot refuses.
    """
    n, _, height, width = images.shape
    pad_h, pad_w = round(ratio * height), round(ratio * width)
    if pad_h == 0 and pad_w == 0:
        return images
    padded = F.pad(images, (pad_w, pad_w, pad_h, pad_h), mode="replicate")  # (N, C, H + 2p, W + 2p)
    top = torch.randint(0, 2 * pad_h + 1, (n,), device=images.device)
    left = torch.randint(0, 2 * pad_w + 1, (n,), device=images.device)
    rows = top[:, None] + torch.arange(height, device=images.device)  # (N, H)
    cols = left[:, None] + torch.arange(width, device=images.device)  # (N, W)
    index = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def update_ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (same arithmetic as LeRobot)."""
    targets, sources = list(target.parameters()), list(online.parameters())
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, sources, alpha=1.0 - momentum)
