"""The 1-D conditional U-Net of Diffusion Policy (Chi et al. 2023, arXiv:2303.04137, the CNN variant).

    noisy actions (B, T, A) ──> Conv1d stages over time, FiLM-conditioned on [step embedding, observations]
      down: [Res(A→d0), Res(d0→d0), ↓2] [Res(d0→d1), Res, ↓2] [Res(d1→d2), Res]        (skips kept)
      mid:  Res(d2→d2), Res(d2→d2)
      up:   [Res(2·d2→d1), Res, ↑2] [Res(2·d1→d0), Res, ↑2]                             (skips concatenated)
      out:  Conv1d-GroupNorm-Mish, Conv1d(d0→A) ──> prediction (B, T, A)
    Res(x, c) = Block(FiLM(Block(x), c)) + Conv1x1(x);  Block = Conv1d-GroupNorm-Mish;  FiLM = γ(c)·h + β(c)

As the paper's code (and LeRobot's port), the up path has one stage fewer than the down path but upsamples in
every stage, and the last down stage does not downsample: T is halved len(down_dims)-1 times and restored. Module
names follow LeRobot's (down_modules.0.0.conv1.block.0, ...), so the parameter layout is the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sin/cos embedding of the diffusion step; frequencies precomputed."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None]  # (B, dim/2)
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


GEMM_MIN_INPUTS = 8192  # Cin * kernel_size. 2048 x 5 at T = 4: 79 ms as a GEMM vs 162 ms (fwd + bwd, 1 thread)


class GemmConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters) computed as one matrix product over unfolded windows (im2col).

    The U-Net's deepest convolutions are wide (2048 channels x 5 taps) over very short sequences (T = 4 at the
    default horizon): as one GEMM they take half the CPU time of PyTorch's convolution kernels. PyTorch also runs
    1x1 convolutions of small batches on one thread through a slow non-oneDNN path, which this avoids.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        if k == 1 and stride == 1 and pad == 0:
            cols = x.transpose(1, 2)  # (B, T, Cin)
        else:
            cols = F.pad(x, (pad, pad)).unfold(2, k, stride)  # (B, Cin, T', k)
            cols = cols.permute(0, 2, 1, 3).flatten(2)  # (B, T', Cin*k), the order of weight.flatten(1)
        return F.linear(cols, self.weight.flatten(1), self.bias).transpose(1, 2)  # (B, Cout, T')


def conv1d(cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv1d:
    """A GemmConv1d where it pays (1x1, or wide inputs), else nn.Conv1d: each GEMM adds a few small copies, and
    on a busy CPU every extra parallel op costs a scheduling delay, so narrow layers keep the single-op kernel."""
    use_gemm = kernel_size == 1 or cin * kernel_size >= GEMM_MIN_INPUTS
    return (GemmConv1d if use_gemm else nn.Conv1d)(cin, cout, kernel_size, stride, padding)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, cin: int, cout: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(conv1d(cin, cout, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, cout), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResidualBlock1d(nn.Module):
    """Two conv blocks with FiLM conditioning in between and a residual connection."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel_size: int, n_groups: int, film_scale: bool):
        super().__init__()
        self.out_channels, self.film_scale = cout, film_scale
        self.conv1 = Conv1dBlock(cin, cout, kernel_size, n_groups)
        # nn.Sequential(Mish, Linear) keeps LeRobot's names (cond_encoder.1.*); the Mish is applied once per
        # U-Net call instead (every block gets the same conditioning), see ConditionalUnet1d.forward.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cout * 2 if film_scale else cout))
        self.conv2 = Conv1dBlock(cout, cout, kernel_size, n_groups)
        self.residual_conv = conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, mished_cond: torch.Tensor) -> torch.Tensor:
        """x (B, cin, T), mished_cond = Mish(cond) (B, cond_dim) -> (B, cout, T)."""
        h = self.conv1(x)
        film = self.cond_encoder[1](mished_cond).unsqueeze(-1)  # (B, cout or 2 cout, 1)
        if self.film_scale:  # unbind, not two slices: its backward is one op (a stack), theirs four
            scale, bias = film.unflatten(1, (2, self.out_channels)).unbind(1)
            return self.conv2(torch.addcmul(bias, scale, h)) + self.residual_conv(x)
        return self.conv2(h + film) + self.residual_conv(x)


class ConditionalUnet1d(nn.Module):
    """Denoiser eps_θ(x_t, t, obs) or x0_θ(...): (B, T, A) noisy actions -> (B, T, A)."""

    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: tuple[int, ...] = (512, 1024, 2048),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 128, film_scale: bool = True):
        super().__init__()
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(step_embed_dim), nn.Linear(step_embed_dim, step_embed_dim * 4), nn.Mish(),
            nn.Linear(step_embed_dim * 4, step_embed_dim))
        cond_dim = step_embed_dim + global_cond_dim

        def res(cin: int, cout: int) -> ResidualBlock1d:
            return ResidualBlock1d(cin, cout, cond_dim, kernel_size, n_groups, film_scale)

        in_out = list(zip((action_dim, *down_dims[:-1]), down_dims, strict=True))
        self.down_modules = nn.ModuleList()
        for i, (cin, cout) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down_modules.append(nn.ModuleList(
                [res(cin, cout), res(cout, cout), nn.Identity() if last else conv1d(cout, cout, 3, 2, 1)]))
        self.mid_modules = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up_modules = nn.ModuleList()
        for cout, cin in reversed(in_out[1:]):
            # Every up stage upsamples (the reference's "is last" test never fires here): T is restored exactly.
            self.up_modules.append(nn.ModuleList(
                [res(cin * 2, cout), res(cout, cout), nn.ConvTranspose1d(cout, cout, 4, 2, 1)]))
        # The reference builds this block with 8 groups whatever n_groups is; kept for identical layouts.
        self.final_conv = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, 8),
                                        conv1d(down_dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """x (B, T, A), timesteps (B,) long, global_cond (B, G) -> (B, T, A)."""
        x = x.transpose(1, 2)  # (B, A, T): channels first for Conv1d
        cond = F.mish(torch.cat((self.diffusion_step_encoder(timesteps), global_cond), dim=-1))  # (B, cond_dim)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for res1, res2, up in self.up_modules:
            x = up(res2(res1(torch.cat((x, skips.pop()), dim=1), cond), cond))
        return self.final_conv(x).transpose(1, 2)
