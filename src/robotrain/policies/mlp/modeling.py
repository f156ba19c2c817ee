"""MLP: behaviour cloning of action chunks from state vectors.

    state vectors of the last n_obs_steps, normalized to [-1, 1], concatenated  (B, S·D)
        │ Linear -> hidden_dim
        │ n_blocks × [x + Linear(Dropout(Mish(Linear(LayerNorm(x)))))]
        │ LayerNorm -> Linear
        ▼
    chunk of actions (B, chunk_size, A), L1 against the recorded chunk (padded steps left out)

It sees no cameras, so it suits tasks whose state says everything (PushT in the T's frame: 84% success after
3 minutes of training on 2 CPU cores, docs/benchmarks.md). It acts with an EMA of its weights (as Diffusion Policy):
with the raw weights and a constant learning rate a prototype reached 56% instead of 72% there.
"""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION, pad_key
from robotrain.errors import UserError
from robotrain.policies.base import Policy
from robotrain.policies.ema import EMA
from robotrain.policies.mlp.configuration import MLPConfig


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.inner = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.outer = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.outer(self.dropout(F.mish(self.inner(self.norm(x)))))


class ChunkMLP(nn.Module):
    """(B, in_dim) normalized observations -> (B, chunk_size, action_dim) normalized actions."""

    def __init__(self, in_dim: int, action_dim: int, config: MLPConfig):
        super().__init__()
        self.chunk_size, self.action_dim = config.chunk_size, action_dim
        self.inp = nn.Linear(in_dim, config.hidden_dim)
        self.blocks = nn.Sequential(*(ResidualBlock(config.hidden_dim, config.dropout) for _ in range(config.n_blocks)))
        self.out = nn.Sequential(nn.LayerNorm(config.hidden_dim), nn.Linear(config.hidden_dim, config.chunk_size *
                                                                            action_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(x))).view(-1, self.chunk_size, self.action_dim)


class MLPPolicy(Policy):
    """The MLP behind robotrain's policy interface: normalization, observation history, action queue, EMA."""

    name = "mlp"
    config_class = MLPConfig

    def __init__(self, config: MLPConfig):
        self.state_keys = list(config.state_features)
        used = {k: config.input_features[k] for k in self.state_keys}
        super().__init__(config, normalized={**used, **config.output_features})
        in_dim = config.n_obs_steps * sum(config.input_features[k].shape[0] for k in self.state_keys)
        self.model = ChunkMLP(in_dim, config.output_features[ACTION].shape[0], config)
        self.ema = EMA(self.model, config.ema_power, config.ema_max_decay) if config.use_ema else None
        self._history: deque[Tensor] = deque(maxlen=config.n_obs_steps)
        self._action_queue: deque[Tensor] = deque(maxlen=config.n_action_steps)

    def get_optim_params(self) -> Any:
        return self.model.parameters()

    def update(self) -> None:
        """After each optimizer step: move the EMA weights (when use_ema)."""
        if self.ema is not None:
            self.ema.update(self.model)

    def reset(self) -> None:
        """Forget queued observations and actions; call at the start of every episode."""
        self._history.clear()
        self._action_queue.clear()

    def _observation(self, batch: dict[str, Any]) -> Tensor:
        """The normalized state vectors side by side: (B, [S,] D)."""
        missing = [k for k in self.state_keys if k not in batch]
        if missing:
            raise UserError(f"the batch lacks {missing} that this MLP policy was built for (it has {sorted(batch)}). "
                            "Fix: feed observations with the same keys as the training dataset")
        normalized = self.normalizer.normalize({k: batch[k] for k in self.state_keys})
        return torch.cat([normalized[k] for k in self.state_keys], dim=-1)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss: L1 on the normalized chunk, padded steps counted as zero error (as ACT)."""
        for key in (ACTION, pad_key(ACTION)):
            if key not in batch:
                raise UserError(f"the MLP's training batch needs '{key}' (it has {sorted(batch)}). Fix: load the "
                                "dataset with the policy's delta_timestamps (the trainer does this)")
        observation = self._observation(batch)
        if observation.dim() == 2:  # n_obs_steps = 1 batches may come without the step axis
            observation = observation.unsqueeze(1)
        predicted = self.model(observation.flatten(1))
        target = self.normalizer.normalize({ACTION: batch[ACTION]})[ACTION]
        valid = ~batch[pad_key(ACTION)].unsqueeze(-1)
        loss = (F.l1_loss(predicted, target, reduction="none") * valid).mean()
        return loss, {}

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any]) -> Tensor:
        """(B, chunk_size, A) actions in dataset units. Observations with a step axis (B, n_obs_steps, D) are used
        as they are; single ones (B, D) join the observation history first (as select_action does)."""
        observation = self._observation(batch)
        if observation.dim() == 2:
            self._remember(observation)
            observation = torch.stack(list(self._history), dim=1)
        was_training = self.training
        self.eval()
        try:
            with self.ema.applied(self.model) if self.ema is not None else nullcontext():
                actions = self.model(observation.flatten(1))
        finally:
            self.train(was_training)
        return self.normalizer.unnormalize(ACTION, actions)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """The next (B, A) action; a new chunk is predicted every n_action_steps calls."""
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        elif self.config.n_obs_steps > 1:  # the next chunk needs the observations seen in between
            self._remember(self._observation(batch))
        return self._action_queue.popleft()

    def _remember(self, observation: Tensor) -> None:
        """Push one (B, D) observation; the first one of an episode fills the history."""
        while len(self._history) < self._history.maxlen - 1:
            self._history.append(observation)
        self._history.append(observation)
