"""Evaluation on recorded episodes, no simulator: the policy's own loss and its action error.

Used by `robotrain eval --policy.path=... --dataset.repo_id=... [--dataset.episodes=[...]]` (held-out data) and by
training's validation (--dataset.val_episodes or --dataset.val_fraction: a validation loss every eval_freq steps),
so users without a simulator see overfitting.

For each sample (every frame of the episodes, or max_samples of them picked once, with a fixed seed):
  loss           the policy's training loss in eval mode (no dropout; noise and sampling seeded, so two evaluations
                 of the same weights give the same number; ACT's latent is 0 there, so its KL term is 0)
  action error   predict_action_chunk from the frame's observation against the recorded actions that follow it, in
                 dataset units; steps past the episode's end are left out
The report: loss, action MAE and RMSE overall, MAE per action dimension (named as the dataset names them) and per
step of the predicted chunk.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from robotrain.configs.types import ACTION, OBS_PREFIX, TASK, pad_key

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


class OfflineEvaluator:
    """Holds a fixed set of samples of a dataset; run(policy) evaluates the policy on them."""

    def __init__(self, dataset: Any, batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 1000,
                 max_samples: int | None = None):
        from robotrain.datasets.loader import batch_loader

        self.dataset, self.seed = dataset, seed if seed is not None else 0
        indices = np.arange(len(dataset))
        if max_samples is not None and max_samples < len(indices):
            indices = np.sort(np.random.default_rng(self.seed).choice(indices, max_samples, replace=False))
        # In process (0 workers): evaluation is short and infrequent.
        self.loader = batch_loader(dataset, indices.tolist(), batch_size, num_workers=0)
        self.n_samples = len(indices)
        names = dataset.meta.names.get(ACTION)
        dims = dataset.meta.shapes[ACTION][0]
        self.action_names = list(names) if isinstance(names, list) and len(names) == dims else \
            [f"action_{i}" for i in range(dims)]

    def run(self, policy: Any) -> dict[str, Any]:
        """The policy's loss and action error on the samples; the caller's random streams are left as they were."""
        from robotrain.training.checkpoint import rng_state, set_rng_state
        from robotrain.training.setup import batch_to_device

        saved, was_training = rng_state(), policy.training
        device = next(policy.parameters()).device
        camera_keys = list(self.dataset.meta.camera_keys)
        totals = ErrorTotals()
        start = time.perf_counter()
        try:
            torch.manual_seed(self.seed)
            policy.eval()
            with torch.no_grad():
                for batch in self.loader:
                    batch = batch_to_device(batch, device, camera_keys)
                    loss, _ = policy(batch)
                    policy.reset()
                    predicted = policy.predict_action_chunk(current_observation(policy.config, batch))
                    totals.add(float(loss), len(batch[ACTION]), predicted, *recorded_actions(policy.config, batch))
        finally:
            set_rng_state(saved)
            policy.train(was_training)
        return totals.report(self.action_names, self.n_samples, time.perf_counter() - start)


def current_observation(config: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """What an env would give the policy at the sample's frame. A policy that reads past frames (Diffusion,
    VQ-BeT) takes the stacked history as it is; one whose samples look ahead (TD-MPC) gets the current frame."""
    offsets = config.observation_delta_indices
    keys = [k for k in batch if k.startswith(OBS_PREFIX) and not k.endswith("_is_pad")]
    out: dict[str, Any] = {TASK: batch[TASK]} if TASK in batch else {}
    if offsets is None or max(offsets) == 0 and len(offsets) > 1:
        return {**out, **{k: batch[k] for k in keys}}
    now = offsets.index(0)
    return {**out, **{k: batch[k][:, now] for k in keys}}


def recorded_actions(config: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The recorded actions from the sample's frame on (B, T, A) and the mask of steps inside the episode (B, T)."""
    offsets = torch.tensor(config.action_delta_indices)
    ahead = offsets >= 0  # Diffusion and VQ-BeT samples also hold the actions before the frame
    return batch[ACTION][:, ahead], ~batch[pad_key(ACTION)][:, ahead]


class ErrorTotals:
    """Running sums of losses and action errors per (step, dimension), over the steps inside episodes."""

    def __init__(self) -> None:
        self.loss_sum, self.samples = 0.0, 0
        self.abs_sum: torch.Tensor | None = None
        self.sq_sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, loss: float, n: int, predicted: torch.Tensor, recorded: torch.Tensor, valid: torch.Tensor) -> None:
        self.loss_sum, self.samples = self.loss_sum + loss * n, self.samples + n
        steps = min(predicted.shape[1], recorded.shape[1])
        error = (predicted[:, :steps].float() - recorded[:, :steps].float()).cpu()  # (B, T, A)
        mask = valid[:, :steps].cpu().unsqueeze(-1).float()  # (B, T, 1)
        abs_sum, sq_sum = (error.abs() * mask).sum(0), (error.square() * mask).sum(0)  # (T, A)
        count = mask.sum(0).expand_as(abs_sum)
        if self.abs_sum is None:
            self.abs_sum, self.sq_sum, self.count = abs_sum, sq_sum, count.clone()
        else:
            self.abs_sum += abs_sum
            self.sq_sum += sq_sum
            self.count += count

    def report(self, action_names: list[str], n_samples: int, seconds: float) -> dict[str, Any]:
        count = self.count.clamp(min=1)
        return {
            "n_samples": n_samples,
            "loss": self.loss_sum / max(1, self.samples),
            "action_mae": float(self.abs_sum.sum() / count.sum()),
            "action_rmse": float((self.sq_sum.sum() / count.sum()).sqrt()),
            "mae_per_dimension": dict(zip(action_names, (self.abs_sum.sum(0) / count.sum(0)).tolist(), strict=True)),
            "mae_per_step": (self.abs_sum.sum(1) / count.sum(1)).tolist(),
            "eval_s": seconds,
        }
