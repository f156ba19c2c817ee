"""VQ-BeT's residual VQ-VAE: action chunks -> two discrete codes (a coarse one and a residual one) and back.

    action chunk (N, W, A) -> flatten (N, W*A) -> encoder MLP -> x (N, D)
        x ─────────▶ codebook 0: nearest code c0, vector q0 ──┐
        x - q0 ────▶ codebook 1: nearest code c1, vector q1 ──┤
                                                             ▼
                   z = q0 + q1 (straight-through: gradients reach x) -> decoder MLP -> (N, W, A)

    loss = L1(chunk, decoded) + 5 * sum_i MSE(sg(q_i), residual_i)         (reconstruction + commitment)

Residual VQ: Zeghidour et al., "SoundStream", arXiv:2107.03312, Algorithm 1; VQ-BeT (Lee et al. 2024,
arXiv:2403.03181, section 3.2) trains it on action chunks for the first n_vqvae_training_steps, then freezes it and
uses its codes as the GPT's targets. The codebooks are not trained by gradients: each is an exponential moving
average of the encoder outputs assigned to its codes (van den Oord et al. 2017, appendix A.1), with the settings
LeRobot gives lucidrains' vector-quantize-pytorch: decay 0.8, Laplace smoothing eps 1e-5, codebooks initialised
kaiming-uniform (no k-means initialisation), no dead-code expiry, commitment weight 1.

Tensor names are LeRobot's (vq_layer.layers.0._codebook.embed, encoder.0.weight, discretized, ...), so its
checkpoints load as they are. Deviations from LeRobot 0.4.4:
- The number of VQ-VAE steps taken is a buffer (optimized_steps), so a checkpoint saved during the first phase resumes
  it where it stopped; LeRobot counts them in a Python attribute that restarts at 0. A LeRobot checkpoint, which lacks
  it, loads with the count implied by `discretized` (see VqVae._load_from_state_dict).
- Only forward passes in training mode count as VQ-VAE steps (LeRobot also counts passes in eval mode).
- Nearest codes are the argmin of squared distances; LeRobot takes the argmax of minus their square roots, which
  picks the same code.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION
from robotrain.policies.vqbet.configuration import VQBeTConfig

logger = logging.getLogger(__name__)

NUM_QUANTIZERS = 2  # VQ-BeT's residual VQ always has two layers (primary and secondary code)
COMMITMENT_LOSS_WEIGHT = 5.0  # weight of the summed commitment losses in the VQ-VAE loss (LeRobot, fixed)


def mlp(in_dim: int, widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last), as LeRobot's MLP."""
    layers: list[nn.Module] = []
    for width in widths[:-1]:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, widths[-1]))
    return nn.Sequential(*layers)


class EmaCodebook(nn.Module):
    """One codebook of `size` vectors, moved toward the inputs assigned to them by exponential moving averages."""

    def __init__(self, dim: int, size: int, decay: float = 0.8, eps: float = 1e-5):
        super().__init__()
        self.size, self.decay, self.eps = size, decay, eps
        embed = torch.empty(1, size, dim)
        nn.init.kaiming_uniform_(embed)  # on this 3-D shape fan_in = size * dim, as in LeRobot
        # LeRobot's "k-means done" flag, always 1: its VQ-BeT initialises codebooks at random, not by k-means.
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, size))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("embed", embed)

    @torch.no_grad()
    def nearest(self, x: Tensor) -> Tensor:
        """(N, D) -> (N,) index of the nearest code (Euclidean), computed in float32 even under autocast."""
        with torch.autocast(x.device.type, enabled=False):
            x, codebook = x.float(), self.embed[0]  # (N, D), (C, D)
            squared = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1) - 2 * x @ codebook.T  # (N, C)
            return squared.argmin(-1)

    @torch.no_grad()
    def ema_update(self, x: Tensor, codes: Tensor) -> None:
        """Move the assignment counts and the sums of assigned inputs toward this batch's; codes = their ratio."""
        onehot = F.one_hot(codes, self.size).to(x.dtype)  # (N, C)
        self.cluster_size.lerp_(onehot.sum(0, keepdim=True), 1 - self.decay)  # (1, C)
        self.embed_avg.lerp_((onehot.T @ x).unsqueeze(0), 1 - self.decay)  # (1, C, D)
        total = self.cluster_size.sum(-1, keepdim=True)  # (1, 1)
        # Laplace smoothing: a code no input chose keeps a small count instead of dividing by zero.
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total  # (1, C)
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(-1))


class VectorQuantizer(nn.Module):
    """A quantizer layer: nearest code, EMA codebook update, straight-through output and commitment loss."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self._codebook = EmaCodebook(dim, size)  # the name LeRobot's checkpoints use

    def forward(self, x: Tensor, update: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(N, D) -> quantized (N, D), codes (N,), commitment loss (scalar); the codebook moves when `update`."""
        codes = self._codebook.nearest(x)
        quantized = self._codebook.embed[0][codes]  # (N, D), gathered before the update below, as LeRobot
        if update:
            self._codebook.ema_update(x.detach().float(), codes)
        if not self.training:
            return quantized, codes, x.new_zeros(())
        commitment = F.mse_loss(quantized, x)  # the codebook is a buffer: only x gets this gradient
        return x + (quantized - x).detach(), codes, commitment


class ResidualVQ(nn.Module):
    """Quantizers in sequence, each coding what the previous ones left (SoundStream's Algorithm 1)."""

    def __init__(self, dim: int, num_quantizers: int, codebook_size: int):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantizer(dim, codebook_size) for _ in range(num_quantizers))
        self.register_buffer("freeze_codebook", torch.tensor(False))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, D) -> sum of the quantized vectors (N, D), codes (N, G), commitment losses (G,)."""
        update = self.training and not bool(self.freeze_codebook)
        residual, quantized_sum = x, 0.0
        codes, losses = [], []
        for layer in self.layers:
            quantized, layer_codes, loss = layer(residual, update)
            residual = residual - quantized.detach()
            quantized_sum = quantized_sum + quantized
            codes.append(layer_codes)
            losses.append(loss)
        return quantized_sum, torch.stack(codes, -1), torch.stack(losses)

    def codebook_vectors(self, codes: Tensor) -> Tensor:
        """(N, G) codes -> (N, D), the sum over layers of each layer's code vector."""
        return sum(layer._codebook.embed[0][codes[:, i]] for i, layer in enumerate(self.layers))


class VqVae(nn.Module):
    """Encoder, residual VQ and decoder over action chunks, and the switch from the first training phase to the
    second: `discretized` turns true after n_vqvae_training_steps (then the codebooks stop moving)."""

    def __init__(self, config: VQBeTConfig):
        super().__init__()
        self.chunk_size, self.action_dim = config.action_chunk_size, config.output_features[ACTION].shape[0]
        self.n_vqvae_training_steps = config.n_vqvae_training_steps
        hidden, dim = config.vqvae_enc_hidden_dim, config.vqvae_embedding_dim
        self.register_buffer("discretized", torch.tensor(False))
        self.register_buffer("optimized_steps", torch.tensor(0))  # robotrain's: exact resume (module docstring)
        self.vq_layer = ResidualVQ(dim, NUM_QUANTIZERS, config.vqvae_n_embed)
        self.encoder = mlp(self.chunk_size * self.action_dim, [hidden, hidden, dim])
        self.decoder = mlp(dim, [hidden, hidden, self.chunk_size * self.action_dim])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "optimized_steps"
        if key not in state_dict and prefix + "discretized" in state_dict:
            # A LeRobot checkpoint: it keeps no step count, so the phase it was saved in decides.
            done = bool(state_dict[prefix + "discretized"])
            state_dict[key] = torch.tensor(self.n_vqvae_training_steps if done else 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def quantize(self, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, W, A) -> latent (N, D), codes (N, G), commitment losses (G,)."""
        return self.vq_layer(self.encoder(chunks.flatten(1)))  # (N, W*A) into the encoder

    @torch.no_grad()
    def codes_of(self, chunks: Tensor) -> Tensor:
        """(N, W, A) -> (N, G) codes of action chunks: the GPT's classification targets in the second phase."""
        return self.quantize(chunks)[1]

    def decode(self, latent: Tensor) -> Tensor:
        """(N, D) -> (N, W, A) action chunks."""
        return self.decoder(latent).view(-1, self.chunk_size, self.action_dim)  # (N, W*A) -> (N, W, A)

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """(N, G) codes -> (N, W, A) the action chunks their summed code vectors decode to."""
        return self.decode(self.vq_layer.codebook_vectors(codes))

    def phase_one_step(self, actions: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The VQ-VAE loss on every chunk of `actions` (B, T, A); counts the step and freezes after the last one."""
        windows = actions.unfold(1, self.chunk_size, 1)  # (B, T-W+1, A, W)
        # Window-major order, as LeRobot concatenates them: (T-W+1, B, W, A) -> (N, W, A).
        chunks = windows.permute(1, 0, 3, 2).reshape(-1, self.chunk_size, self.action_dim)
        latent, codes, commitment = self.quantize(chunks)
        reconstruction = (chunks.flatten(1) - self.decoder(latent)).abs().mean()
        loss = reconstruction + COMMITMENT_LOSS_WEIGHT * commitment.sum()
        metrics = {
            "n_different_codes": float(sum(len(torch.unique(codes[:, i])) for i in range(codes.shape[1]))),
            "n_different_combinations": float(len(torch.unique(codes, dim=0))),
            "recon_l1_error": reconstruction.item(),
        }
        if self.training:
            self.optimized_steps += 1
            if int(self.optimized_steps) >= self.n_vqvae_training_steps:
                self.freeze()
        return loss, metrics

    def freeze(self) -> None:
        """End the first phase: codebooks stop moving and the policy trains its GPT from now on."""
        self.discretized.fill_(True)
        self.vq_layer.freeze_codebook.fill_(True)
        logger.info("VQ-VAE trained for %d steps: frozen, training the GPT from now on", int(self.optimized_steps))
