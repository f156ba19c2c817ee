"""VQ-BeT's action head: GPT features -> codes of the residual VQ (sampled) + continuous offsets -> action chunks.

    feature f (NT, gpt_output_dim)
        ├─ map_to_cbet_preds_bin ─▶ logits (NT, G, C) ─ softmax(/ temperature) ─ sample ─▶ codes (NT, G)
        │       (sequentially_select: primary logits from f, secondary logits from [f, onehot(primary code)])
        └─ map_to_cbet_preds_offset ─▶ offsets (NT, G, C, W*A) ─ pick each layer's sampled code, sum ─▶ (NT, W, A)
    action chunk = VQ-VAE decoder(sum of the sampled codes' vectors) + offset                    (NT, W, A)

Loss (VQ-BeT, section 3.3): focal loss (gamma 2) of each layer's logits against the frozen VQ-VAE's codes of the true
chunk, weighted primary_code_loss_weight / secondary_code_loss_weight, plus offset_loss_weight * L1(true chunk,
predicted chunk). As in the paper's code and LeRobot, the predicted chunk used by the L1 term is built from codes
*sampled* from the head's own logits, not from the true codes; the decoder runs without gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION
from robotrain.policies.vqbet.configuration import VQBeTConfig
from robotrain.policies.vqbet.vqvae import NUM_QUANTIZERS, VqVae

FOCAL_GAMMA = 2.0


def focal_loss(logits: Tensor, target: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Mean over rows of -(1 - p)^gamma log p, p the softmax probability of the target class (Lin et al. 2017)."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (N,)
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


class VQBeTHead(nn.Module):
    """Code and offset heads over the frozen VQ-VAE (the module names are LeRobot's)."""

    def __init__(self, config: VQBeTConfig):
        super().__init__()
        self.config = config
        self.n_embed, self.chunk_size = config.vqvae_n_embed, config.action_chunk_size
        self.action_dim = config.output_features[ACTION].shape[0]
        features, codes = config.gpt_output_dim, config.vqvae_n_embed
        self.vqvae_model = VqVae(config)
        # One-layer heads in nn.Sequential, as LeRobot's MLP builds them (so the names end in .0.weight).
        if config.sequentially_select:
            self.map_to_cbet_preds_primary_bin = nn.Sequential(nn.Linear(features, codes))
            self.map_to_cbet_preds_secondary_bin = nn.Sequential(nn.Linear(features + codes, codes))
        else:
            self.map_to_cbet_preds_bin = nn.Sequential(nn.Linear(features, NUM_QUANTIZERS * codes))
        offsets = NUM_QUANTIZERS * codes * self.chunk_size * self.action_dim
        self.map_to_cbet_preds_offset = nn.Sequential(nn.Linear(features, offsets))

    def code_heads(self) -> list[nn.Module]:
        """The code-logit heads (one or two), for the optimizer groups."""
        if self.config.sequentially_select:
            return [self.map_to_cbet_preds_primary_bin, self.map_to_cbet_preds_secondary_bin]
        return [self.map_to_cbet_preds_bin]

    def _sample(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """(M, C) logits -> (M,) codes drawn from softmax(logits / temperature)."""
        probs = torch.softmax(logits / self.config.bet_softmax_temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def sample_codes(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(NT, F) features -> logits (NT, G, C) and sampled codes (NT, G)."""
        if self.config.sequentially_select:
            primary_logits = self.map_to_cbet_preds_primary_bin(x)  # (NT, C)
            primary = self._sample(primary_logits, generator)
            onehot = F.one_hot(primary, self.n_embed).to(x.dtype)
            secondary_logits = self.map_to_cbet_preds_secondary_bin(torch.cat([x, onehot], dim=1))  # (NT, C)
            codes = torch.stack([primary, self._sample(secondary_logits, generator)], dim=1)
            return torch.stack([primary_logits, secondary_logits], dim=1), codes
        logits = self.map_to_cbet_preds_bin(x).view(-1, NUM_QUANTIZERS, self.n_embed)  # (NT, G*C) -> (NT, G, C)
        # Both layers' codes in one draw over (NT*G, C) rows, as LeRobot draws them (same seeded samples).
        codes = self._sample(logits.reshape(-1, self.n_embed), generator).view(-1, NUM_QUANTIZERS)  # (NT, G)
        return logits, codes

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """(N, T, F) GPT features at the action queries -> logits, codes, decoded and predicted chunks.

        predicted_action is (N, T, W, A); the rest are flattened over (N, T): logits (NT, G, C), offsets
        (NT, G, C, W*A), sampled_centers (NT, G), decoded_action (NT, W, A)."""
        n, t, _ = features.shape
        x = features.reshape(n * t, -1)  # (NT, F)
        offsets = self.map_to_cbet_preds_offset(x).view(n * t, NUM_QUANTIZERS, self.n_embed, -1)  # (NT, G, C, W*A)
        logits, codes = self.sample_codes(x, generator)
        rows = torch.arange(n * t, device=x.device).unsqueeze(1)  # (NT, 1)
        layers = torch.arange(NUM_QUANTIZERS, device=x.device).unsqueeze(0)  # (1, G)
        offset = offsets[rows, layers, codes].sum(dim=1)  # (NT, G, W*A) -> (NT, W*A), summed over layers
        decoded = self.vqvae_model.decode_codes(codes)  # (NT, W, A), no gradient
        predicted = decoded + offset.view(n * t, self.chunk_size, self.action_dim)  # (NT, W, A)
        return {"cbet_logits": logits, "cbet_offsets": offsets, "sampled_centers": codes,
                "decoded_action": decoded, "predicted_action": predicted.view(n, t, self.chunk_size, -1)}

    def loss(self, out: dict[str, Tensor], targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Loss and LeRobot's metrics for head outputs against true chunks `targets` (N, T, W, A)."""
        config = self.config
        targets = targets.reshape(-1, self.chunk_size, self.action_dim)  # (NT, W, A)
        predicted = out["predicted_action"].reshape(targets.shape)  # (NT, W, A)
        true_codes = self.vqvae_model.codes_of(targets)  # (NT, G), from the frozen VQ-VAE
        logits, sampled = out["cbet_logits"], out["sampled_centers"]
        offset_loss = F.l1_loss(predicted, targets)
        code_loss = (config.primary_code_loss_weight * focal_loss(logits[:, 0], true_codes[:, 0])
                     + config.secondary_code_loss_weight * focal_loss(logits[:, 1], true_codes[:, 1]))
        loss = code_loss + config.offset_loss_weight * offset_loss
        error = (targets - predicted).detach()
        metrics = {
            "classification_loss": code_loss.item(),
            "offset_loss": offset_loss.item(),
            "equal_primary_code_rate": (true_codes[:, 0] == sampled[:, 0]).float().mean().item(),
            "equal_secondary_code_rate": (true_codes[:, 1] == sampled[:, 1]).float().mean().item(),
            "vq_action_error": (targets - out["decoded_action"]).abs().mean().item(),
            "offset_action_error": error.abs().mean().item(),
            "action_error_max": error.abs().max().item(),
            "action_mse_error": error.pow(2).mean().item(),
        }
        return loss, metrics
