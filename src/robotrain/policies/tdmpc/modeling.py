"""TD-MPC: a latent world model learned with temporal-difference targets, planned through with MPPI.

Hansen, Wang, Su. "Temporal Difference Learning for Model Predictive Control", ICML 2022, arXiv:2203.04955, in the
offline form of FOWM (Feng, Hansen, Xiong, Rajagopalan, Wang. "Finetuning Offline World Models in the Real World",
CoRL 2023, arXiv:2310.16029) that LeRobot implements: a V head learned by expectile regression gives in-sample TD
targets, and the policy head is trained by advantage-weighted regression instead of maximizing Q.

    training sample: o_0..o_H (observations), a_0..a_{H-1}, r_0..r_{H-1}          (H = horizon)

    o_0 ──encode──> z_0 ──dynamics(., a_0)──> z_1 ──dynamics(., a_1)──> ... z_H      (one latent rollout)
                     │            └──reward──> r̂_0          └──reward──> r̂_1
                     ├──Q_i(z_t, a_t), V(z_t), pi(z_t)      for t < H
    o_1..o_H ──target encoder (EMA of encode)──> consistency targets for z_1..z_H
    TD target  r_t + discount * V(encode(o_{t+1}))        V target  min of 2 random target Q_i(z_t, a_t)

    loss = sum_t 0.5^t * (20 consistency + 0.5 reward + 0.1 sum_i Q_i TD + 0.1 V expectile)  (sum over t, mean over B)
           + 0.5 * mean_t,B 0.5^t * min(exp(3 * advantage), 100) * |pi(z_t) - a_t|^2       (advantage-weighted pi)
    (coefficients: consistency_coeff, reward_coeff, value_coeff, pi_coeff, advantage_scaling, temporal_decay_coeff)

    inference: o ──encode──> z ──MPPI (planner.py, use_mpc) or pi(z)──> a, repeated n_action_repeats times

After each optimizer step the trainer calls update(): model_target <- 0.995 model_target + 0.005 model.

Deviations from LeRobot 0.4.4 (none changes what a trained model computes):
- Any single camera key works. LeRobot copies the camera to observation.image, shifts that copy, and encodes the
  original key: with another key it fails at inference (KeyError) and trains without augmentation. The robot state
  is optional (LeRobot reads observation.state and observation.state_is_pad unconditionally); the padding mask of
  the observations is taken from whichever observation the policy has.
- The random shift is a replicate-pad and crop (LeRobot: grid_sample on pixel centres, the same up to rounding) and
  runs in training mode only; it accepts non-square images. The two random Q members come from torch's RNG, not
  NumPy's (told.py), so runs seeded through torch are reproducible, resumes included.
- Batches stay batch-first; actions come back from predict_action_chunk as (B, T, A) in dataset units (LeRobot:
  (T, B, A), normalized, the processors un-normalize). The "advantage" metric is a mean (LeRobot logs a tensor).
Deviations from the paper, as LeRobot: the EMA runs every step at 0.995 (FOWM: every 2 steps at 0.99); pi's loss
is the squared error (FOWM: Gaussian log-likelihood, the same up to a factor 0.5 folded into pi_coeff and a
constant) and is a mean over time steps where the other terms sum over them.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_STATE, REWARD, pad_key
from robotrain.errors import UserError
from robotrain.policies.base import Policy
from robotrain.policies.tdmpc.configuration import TDMPCConfig
from robotrain.policies.tdmpc.planner import plan
from robotrain.policies.tdmpc.told import TDMPCTOLD, random_shift, update_ema


class TDMPCPolicy(Policy):
    """TD-MPC behind robotrain's policy interface: normalization, planning, action repeats, the target EMA."""

    name = "tdmpc"
    config_class = TDMPCConfig

    def __init__(self, config: TDMPCConfig):
        super().__init__(config)
        self.model = TDMPCTOLD(config)
        self.model_target = copy.deepcopy(self.model)  # consistency and value targets; follows model by EMA
        self.model_target.requires_grad_(False)
        self.observation_keys = list(config.input_features)
        self.image_key = next(iter(config.image_features), None)
        # The observation whose padding mask stands for all of them (they are stacked at the same frames).
        self.pad_source = next(k for k in (OBS_STATE, self.image_key, OBS_ENV_STATE) if k in config.input_features)
        self.reset()

    def get_optim_params(self) -> list[Tensor]:
        """The online model's parameters (the target network is updated by update(), not by the optimizer)."""
        return list(self.model.parameters())

    def reset(self) -> None:
        """Forget queued actions and the planner's warm start; call at the start of every episode."""
        self._action_queue: deque[Tensor] = deque(maxlen=max(self.config.n_action_steps,
                                                             self.config.n_action_repeats))
        self._prev_mean: Tensor | None = None

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step of the target network; the trainer calls it after each optimizer step."""
        update_ema(self.model_target, self.model, self.config.target_model_momentum)

    # -- inference -------------------------------------------------------------------------------------------

    def encode_observation(self, batch: dict[str, Any]) -> Tensor:
        """Latents (B, latent_dim) of one observation per sample, given in dataset units (images in [0, 1])."""
        missing = [k for k in self.observation_keys if k not in batch]
        if missing:
            raise UserError(f"the batch lacks {missing} that this TD-MPC policy was built for (it has "
                            f"{sorted(batch)}). Fix: feed observations with the same keys as the training dataset")
        batch = self.normalizer.normalize({k: batch[k] for k in self.observation_keys})
        return self.model.encode(batch)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any]) -> Tensor:
        """(B, T, A) actions in dataset units: the planned horizon (use_mpc, T = horizon) or pi's action (T = 1)."""
        self.eval()
        z = self.encode_observation(batch)
        if self.config.use_mpc:
            actions, self._prev_mean = plan(self.model, z, self.config, self._prev_mean)  # (H, B, A)
        else:
            actions = self.model.pi(z).unsqueeze(0)  # (1, B, A)
        actions = torch.clamp(actions, -1, 1).transpose(0, 1)  # (B, T, A)
        return self.normalizer.unnormalize(ACTION, actions)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """The next (B, A) action: a plan's first action repeated n_action_repeats times, or its first
        n_action_steps actions, then a new plan."""
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch)  # (B, T, A)
            if self.config.n_action_repeats > 1:
                self._action_queue.extend([chunk[:, 0]] * self.config.n_action_repeats)
            else:
                self._action_queue.extend(chunk[:, : self.config.n_action_steps].transpose(0, 1))  # n of (B, A)
        return self._action_queue.popleft()

    # -- training --------------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """The TD-MPC loss of a batch of (horizon + 1)-step windows, and its terms as metrics."""
        obs, action, reward, masks = self._training_inputs(batch)
        cfg, model = self.config, self.model
        horizon = action.shape[0]

        # Latent rollout from the first observation through the dataset's actions.
        z_preds, reward_preds = [model.encode({k: v[0] for k, v in obs.items()})], []
        for t in range(horizon):
            z_next, r = model.next_latent_and_reward(z_preds[-1], action[t])
            z_preds.append(z_next)
            reward_preds.append(r)
        z = torch.stack(z_preds)  # (H + 1, B, D)
        reward_preds = torch.stack(reward_preds)  # (H, B)
        q_preds = model.Qs(z[:-1], action)  # (ensemble, H, B)
        v_preds = model.V(z[:-1])  # (H, B)

        with torch.no_grad():
            next_obs = {k: v[1:] for k, v in obs.items()}
            z_targets = self.model_target.encode(next_obs)  # (H, B, D)
            # FOWM eqn 3: TD targets from V of the next observation, with the online model as FOWM's code (and
            # LeRobot) do; V's own targets are Q of the dataset's actions, so every target stays in-sample.
            q_targets = reward + cfg.discount * model.V(model.encode(next_obs))  # (H, B)
            v_targets = self.model_target.min_of_two_Qs(z[:-1].detach(), action)  # (H, B)

        decay = cfg.temporal_decay_coeff ** torch.arange(horizon, device=z.device).unsqueeze(-1)  # (H, 1)
        valid = masks["first"] & masks["action"]  # (H, B): z_t and the heads on it depend on o_0 and a_<=t
        consistency = _decayed_sum(F.mse_loss(z[1:], z_targets, reduction="none").mean(-1),
                                   decay, valid & masks["next"])
        reward_loss = _decayed_sum((reward_preds - reward) ** 2, decay, valid & masks["reward"])
        td_error = ((q_preds - q_targets.unsqueeze(0)) ** 2).sum(0)  # summed over the ensemble, (H, B)
        q_loss = _decayed_sum(td_error, decay, valid & masks["reward"] & masks["next"])
        diff = v_targets - v_preds
        # Expectile regression: under-estimates weigh expectile_weight, over-estimates 1 - expectile_weight.
        expectile = torch.where(diff > 0, cfg.expectile_weight, 1 - cfg.expectile_weight) * diff ** 2
        v_loss = _decayed_sum(expectile, decay, valid)
        pi_loss, advantage = self._pi_loss(z.detach(), action, decay, valid)

        loss = (cfg.consistency_coeff * consistency + cfg.reward_coeff * reward_loss + cfg.value_coeff * q_loss
                + cfg.value_coeff * v_loss + cfg.pi_coeff * pi_loss)
        names = ("consistency_loss", "reward_loss", "Q_value_loss", "V_value_loss", "pi_loss", "sum_loss", "Q", "V",
                 "advantage")
        values = torch.stack([consistency, reward_loss, q_loss, v_loss, pi_loss, loss * horizon, q_preds.mean(),
                              v_preds.mean(), advantage[0].mean()]).detach().tolist()  # one transfer for all
        return loss, dict(zip(names, values, strict=True))

    def _pi_loss(self, z: Tensor, action: Tensor, decay: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """FOWM section 3.1: squared error to the dataset's actions weighted by min(exp(scale * A), 100), where
        A = min of 2 target Q_i - V; returns (loss, advantages (H, B))."""
        with torch.no_grad():
            advantage = self.model_target.min_of_two_Qs(z[:-1], action) - self.model.V(z[:-1])  # (H, B)
            weight = torch.clamp(torch.exp(advantage * self.config.advantage_scaling), max=100.0)
        squared_error = F.mse_loss(self.model.pi(z[:-1]), action, reduction="none").sum(-1)  # (H, B)
        # A mean over time steps, not a sum as the other terms (the original code and LeRobot do the same).
        return (weight * squared_error * decay * valid).mean(), advantage

    def _training_inputs(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]]:
        """Normalized, time-major training tensors: observations (H + 1, B, ...), actions (H, B, A), rewards (H, B)
        and the validity masks (True = inside the episode): first (B,), next (H, B), action (H, B), reward (H, B)."""
        obs_pad = pad_key(self.pad_source)
        for key in (*self.observation_keys, obs_pad, ACTION, pad_key(ACTION), REWARD, pad_key(REWARD)):
            if key not in batch:
                raise UserError(f"TD-MPC's training batch needs '{key}' (it has {sorted(batch)}). Fix: train on a "
                                "dataset with next.reward, loaded with the policy's delta_timestamps (the trainer "
                                "does this from observation/action/reward_delta_indices)")
        horizon = self.config.horizon
        if batch[ACTION].shape[1] != horizon or batch[obs_pad].shape[1] != horizon + 1:
            raise UserError(f"TD-MPC with horizon={horizon} needs {horizon + 1} observation steps and {horizon} "
                            f"actions per sample, the batch holds {batch[obs_pad].shape[1]} and "
                            f"{batch[ACTION].shape[1]}. "
                            "Fix: load the dataset with the policy's delta_timestamps")
        normalized = self.normalizer.normalize({k: batch[k] for k in (*self.observation_keys, ACTION)})
        obs = {k: normalized[k].transpose(0, 1) for k in self.observation_keys}  # each (H + 1, B, ...)
        if self.image_key is not None and self.training and self.config.max_random_shift_ratio > 0:
            images = obs[self.image_key]
            shifted = random_shift(images.reshape(-1, *images.shape[2:]), self.config.max_random_shift_ratio)
            obs[self.image_key] = shifted.reshape(images.shape)  # (H + 1, B, C, H, W)
        reward = batch[REWARD]
        reward = (reward.squeeze(-1) if reward.ndim == 3 else reward).transpose(0, 1)  # (H, B)
        masks = {"first": ~batch[obs_pad][:, 0], "next": ~batch[obs_pad][:, 1:].transpose(0, 1),
                 "action": ~batch[pad_key(ACTION)].transpose(0, 1), "reward": ~batch[pad_key(REWARD)].transpose(0, 1)}
        return obs, normalized[ACTION].transpose(0, 1), reward, masks


def _decayed_sum(values: Tensor, decay: Tensor, valid: Tensor) -> Tensor:
    """sum over time of decay^t * values on valid steps, then the mean over the batch: (H, B) -> ()."""
    return (decay * values * valid).sum(0).mean()
