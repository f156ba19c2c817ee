"""The causal transformer of VQ-BeT: a minGPT/nanoGPT decoder over observation and action-query tokens.

    tokens (B, T, gpt_input_dim) -> wte (Linear) + wpe (learned positions) -> dropout
        -> gpt_n_layer x [x + attn(ln_1(x)); x + mlp(ln_2(x))]    causal multi-head attention, GELU MLP (4x)
        -> ln_f -> lm_head (Linear, no bias) -> (B, T, gpt_output_dim)

Karpathy's nanoGPT as VQ-BeT's reference code (and LeRobot) adapts it: a Linear token embedding instead of a lookup
table, GPT-2's initialisation (N(0, 0.02), attention output projections scaled by 1/sqrt(2 * n_layer)), and
weight decay on Linear weights only. Parameter names are LeRobot's (transformer.h.0.attn.c_attn.weight, ...).

Deviation from LeRobot 0.4.4: attention runs through scaled_dot_product_attention with is_causal=True instead of an
explicit (gpt_block_size x gpt_block_size) mask buffer, so that buffer (attn.bias, 1 MB per layer at the defaults) is
neither kept nor saved; LeRobot's copy is dropped when its checkpoints load (lerobot_names.py). Same function; in
training the attention dropout draws its mask differently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.policies.vqbet.configuration import VQBeTConfig


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each token sees itself and the tokens before it."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, nh, T, hs) -> (B, T, C), heads side by side
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    """A pre-norm transformer block."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """(B, T, gpt_input_dim) tokens -> (B, T, gpt_output_dim) features, each seeing only earlier tokens."""

    def __init__(self, config: VQBeTConfig):
        super().__init__()
        dim = config.gpt_hidden_dim
        self.block_size = config.gpt_block_size
        self.transformer = nn.ModuleDict({
            "wte": nn.Linear(config.gpt_input_dim, dim),
            "wpe": nn.Embedding(config.gpt_block_size, dim),
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList(Block(dim, config.gpt_n_head, config.dropout) for _ in range(config.gpt_n_layer)),
            "ln_f": nn.LayerNorm(dim),
        })
        self.lm_head = nn.Linear(dim, config.gpt_output_dim, bias=False)
        self.apply(_init_weights)
        for name, param in self.named_parameters():
            if name.endswith("attn.c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.gpt_n_layer))

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(tokens) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    def configure_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(decayed, not decayed): Linear weights decay; biases, LayerNorm and Embedding weights do not.

        Each list is sorted by parameter name, as nanoGPT (and so LeRobot) orders them."""
        decay, no_decay = set(), set()
        for module_name, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if name == "weight" and isinstance(module, nn.Linear):
                    decay.add(full)
                else:  # biases; LayerNorm and Embedding weights
                    no_decay.add(full)
        params = dict(self.named_parameters())
        return [params[n] for n in sorted(decay)], [params[n] for n in sorted(no_decay)]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
