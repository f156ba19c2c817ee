"""TD-MPC's planner: MPPI over action sequences, scored by rolling TOLD out in latent space.

Hansen et al. 2022 (arXiv:2203.04955), section 3 and algorithm 2; the trajectory value is FOWM's eqn 4 (Feng et al.
2023, arXiv:2310.16029), which subtracts the Q ensemble's disagreement:

    score(a_0..a_{H-1}) = sum_t discount^t (R(z_t, a_t) - c * std_i Q_i(z_t, a_t))
                          + discount^H (min of 2 random Q_i(z_H, pi(z_H)) - c * std_i Q_i(z_H, pi(z_H)))

    repeat cem_iterations times:
        n_gaussian_samples sequences ~ clamp(N(mean, std), -1, 1)  +  n_pi_samples rolled out with pi (+ min_std noise)
        keep the n_elites best; weights = softmax(temperature * score) over them
        mean <- momentum * mean + (1 - momentum) * weighted mean;  std <- weighted std, clamped to [min_std, max_std]
    return one elite sequence drawn with those weights (the mean warm-starts the next call, shifted by one step)

The random numbers are drawn in LeRobot's order and shapes (policy noise, Gaussian noise, the two Q members of each
terminal value, the final draw), so after the same torch.manual_seed both give the same plan.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robotrain.configs.types import ACTION
from robotrain.policies.tdmpc.configuration import TDMPCConfig
from robotrain.policies.tdmpc.told import TDMPCTOLD


@torch.no_grad()
def plan(model: TDMPCTOLD, z: Tensor, config: TDMPCConfig, prev_mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Latents (B, latent_dim) -> (actions (horizon, B, A) in [-1, 1] before the final clamp, the Gaussian's mean
    (horizon, B, A) to warm-start the next call). `prev_mean` is the previous call's mean (None: start from 0)."""
    horizon, batch_size, latent_dim = config.horizon, z.shape[0], z.shape[1]
    action_dim = config.output_features[ACTION].shape[0]
    n_pi, n_total = config.n_pi_samples, config.n_gaussian_samples + config.n_pi_samples

    pi_actions = z.new_empty(horizon, n_pi, batch_size, action_dim)
    if n_pi > 0:
        z_pi = z.unsqueeze(0).expand(n_pi, batch_size, latent_dim)  # (n_pi, B, D)
        for t in range(horizon):
            # A little noise helps the elites cover more than the policy's own trajectory (as LeRobot).
            pi_actions[t] = model.pi(z_pi, config.min_std)
            z_pi = model.next_latent(z_pi, pi_actions[t])
    z_all = z.unsqueeze(0).expand(n_total, batch_size, latent_dim)  # (N, B, D)

    mean = z.new_zeros(horizon, batch_size, action_dim)
    if prev_mean is not None and prev_mean.shape == mean.shape:
        mean[:-1] = prev_mean[1:]  # the previous plan, one step on
    std = torch.full_like(mean, config.max_std)
    for _ in range(config.cem_iterations):
        noise = torch.randn(horizon, config.n_gaussian_samples, batch_size, action_dim, device=z.device)
        gaussian = torch.clamp(mean.unsqueeze(1) + std.unsqueeze(1) * noise, -1, 1)  # (H, n_gauss, B, A)
        actions = torch.cat([gaussian, pi_actions], dim=1)  # (H, N, B, A)
        value = trajectory_value(model, z_all, actions, config).nan_to_num_(0)  # (N, B)
        elite_index = torch.topk(value, config.n_elites, dim=0).indices  # (E, B)
        elite_value = value.take_along_dim(elite_index, dim=0)  # (E, B)
        elite_actions = actions.take_along_dim(elite_index[None, :, :, None], dim=1)  # (H, E, B, A)

        # TD-MPC's Omega = exp(temperature * (value - max)), normalized to sum to 1 over the elites.
        score = torch.exp(config.elite_weighting_temperature * (elite_value - elite_value.max(0, keepdim=True)[0]))
        score /= score.sum(0, keepdim=True)  # (E, B)
        weights = score[:, :, None]  # (E, B, 1), broadcast over (H, E, B, A)
        elite_mean = torch.sum(weights * elite_actions, dim=1)  # (H, B, A)
        elite_std = torch.sqrt(torch.sum(weights * (elite_actions - elite_mean.unsqueeze(1)) ** 2, dim=1))
        mean = config.gaussian_mean_momentum * mean + (1 - config.gaussian_mean_momentum) * elite_mean
        std = elite_std.clamp_(config.min_std, config.max_std)

    # One elite of the last iteration, drawn by its weight (TD-MPC executes a sample, not the mean).
    chosen = torch.multinomial(score.T, 1)[:, 0]  # (B,)
    return elite_actions[:, chosen, torch.arange(batch_size, device=z.device)], mean  # (H, B, A)


@torch.no_grad()
def trajectory_value(model: TDMPCTOLD, z: Tensor, actions: Tensor, config: TDMPCConfig) -> Tensor:
    """FOWM eqn 4: latents (N, B, D) and action sequences (H, N, B, A) -> values (N, B)."""
    ret, discount = 0, 1
    coeff = config.uncertainty_regularizer_coeff
    for t in range(actions.shape[0]):
        penalty = -(coeff * model.Qs(z, actions[t]).std(0)) if coeff > 0 else 0  # disagreement, (N, B)
        z, reward = model.next_latent_and_reward(z, actions[t])
        ret += discount * (reward + penalty)
        discount *= config.discount
    # Terminal value: Q of the policy's (noisy) next action, the minimum of two random members as FOWM appendix C.
    terminal = model.Qs(z, model.pi(z, config.min_std))  # (ensemble, N, B)
    pair = terminal[torch.randint(0, config.q_ensemble_size, size=(2,))] if config.q_ensemble_size > 2 else terminal
    ret += discount * torch.min(pair, dim=0)[0]
    if coeff > 0:
        ret -= discount * coeff * terminal.std(0)
    return ret
