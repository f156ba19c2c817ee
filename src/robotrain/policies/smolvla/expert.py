"""SmolVLM and its action expert, run layer by layer side by side (LeRobot's SmolVLMWithExpertModel, same names).

The VLM is transformers' SmolVLMForConditionalGeneration cut to its first num_vlm_layers text layers; the expert is a
transformers LlamaModel built from a copy of the VLM's text config at expert_width_multiplier x its width (same heads
and head size, so both attend in one softmax). At every VLM layer i with an expert layer:

    self-attention layer (i % self_attn_every_n_layers == 0, or attention_mode="self_attn"):
        queries [VLM tokens, action tokens]   keys/values [VLM tokens, action tokens]   (one masked attention)
    cross-attention layer (the others):
        VLM tokens attend to VLM tokens; action tokens attend to the VLM layer's keys and values, mapped into the
        expert by its own k_proj/v_proj (in = the VLM's kv width)

        VLM layer i:  x -> RMSNorm -> q,k,v -> RoPE -> attention -> o_proj -> +x -> RMSNorm -> MLP -> +
                                          |  keys/values
        expert layer: a -> RMSNorm -> q(,k,v) -> RoPE -> attention -> o_proj -> +a -> RMSNorm -> MLP -> +

Image and language tokens never attend to the state or the actions, so their keys and values are the same whatever
follows them. They are computed once in `encode_prefix` (a cache of per-layer keys/values), and `run` sends the
remaining tokens through both models against that cache:
    training   cache = images + language (without gradients when the VLM is frozen); run: state token + actions
    inference  cache = images + language + state, once per chunk; run: actions, once per denoising step

Deviations from LeRobot (same function up to float rounding):
- LeRobot runs the whole prefix through every layer inside the autograd graph at each training step, although with
  a frozen VLM only the state token's path can carry gradients; here the cached part runs without a graph.
- The prefix's last-layer queries, attention outputs and MLP (and the final norm) feed nothing, so they are skipped.
- Attention is torch's scaled_dot_product_attention in float32 (LeRobot: an eager float32 softmax); masked entries
  get float32's lowest value, as LeRobot's, so fully masked rows (padding queries) stay finite.
- RoPE angles are computed once per pass instead of once per layer; cross-attention keys/values of the cache are
  projected into the expert once per chunk instead of once per denoising step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.errors import ConfigError
from robotrain.policies.smolvla.configuration import SmolVLAConfig
from robotrain.policies.smolvla.vlm import Backbone, build_vlm

ROPE_WAVELENGTH = 10_000.0  # LeRobot's (and pi0's) RoPE base, not the SmolVLM text config's rope_theta (100000)
MASKED = torch.finfo(torch.float32).min


def expert_intermediate_size(hidden: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """The expert's MLP width as LeRobot sizes it: 4 * (2/3 hidden), rounded up to a multiple of 256."""
    size = int(multiplier * int(2 * hidden / 3))
    return multiple_of * ((size + multiple_of - 1) // multiple_of)


def rope_angles(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """(sin, cos), each (B, T, 1, head_dim / 2), for rotating (B, T, heads, head_dim) tensors at `positions`."""
    half = head_dim // 2
    exponents = (2.0 / head_dim) * torch.arange(half, dtype=torch.float32, device=positions.device)
    radians = positions[..., None].to(torch.float32) / (ROPE_WAVELENGTH ** exponents)  # (B, T, half)
    return torch.sin(radians)[..., None, :], torch.cos(radians)[..., None, :]


def apply_rope(x: Tensor, angles: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate the two halves of each head (x: (B, T, heads, head_dim)), in float32, back to x's dtype."""
    sin, cos = angles
    first, second = x.to(torch.float32).chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


def attend(query: Tensor, key: Tensor, value: Tensor, bias: Tensor) -> Tensor:
    """Grouped-query attention in float32. query (B, Tq, H, hd), key/value (B, Tk, KV, hd), bias (B, 1, Tq, Tk)
    additive (0 or MASKED) -> (B, Tq, H * hd)."""
    batch, length = query.shape[:2]
    q, k, v = (t.to(torch.float32).transpose(1, 2) for t in (query, key, value))  # (B, heads, T, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    return out.transpose(1, 2).reshape(batch, length, -1)  # (B, Tq, H * hd)


def patch_positions(rows: int, cols: int, per_side: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(rows * cols,) position-embedding index of each patch of a full image, as transformers 4.57 (LeRobot 0.4.4's)
    computes it: the fraction i / n, scaled by (1 - 1e-6) in the pixels' dtype, bucketed into per_side intervals.

    transformers 5 rewrote this and drops the scaling, which moves every patch of a float32 image one bucket up (in
    float32, i / n * (1 - 1e-6) falls just below the boundary i / n; in bfloat16 it rounds back onto it). Computing it
    here keeps SmolVLA's vision features the same under both versions.
    """
    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side, device=device)
    row = torch.bucketize(torch.arange(rows, dtype=dtype, device=device) / rows * (1 - 1e-6), boundaries, right=True)
    col = torch.bucketize(torch.arange(cols, dtype=dtype, device=device) / cols * (1 - 1e-6), boundaries, right=True)
    return (row[:, None] * per_side + col[None, :]).flatten()


def mask_bias(allowed: Tensor) -> Tensor:
    """(B, Tq, Tk) bool -> (B, 1, Tq, Tk) additive float32 bias."""
    zeros = torch.zeros((), dtype=torch.float32, device=allowed.device)
    return torch.where(allowed, zeros, MASKED)[:, None]


def init_transformers_style(module: nn.Module, std: float) -> None:
    """Initialize a transformers model's parameters as its _init_weights does (normal(0, std) for linear, conv and
    embedding weights, a zero padding row and zero biases, ones and zeros for norms), in module order.

    Done here rather than left to transformers because its initialization (and the random numbers it draws) changes
    between versions: a seeded build gives the same weights under transformers 4.57 and 5.x.
    """
    for name, sub in module.named_modules():
        own = {key for key, param in sub._parameters.items() if param is not None}
        if isinstance(sub, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if getattr(sub, "padding_idx", None) is not None:
                sub.weight.data[sub.padding_idx].zero_()
        elif "weight" in own and sub.weight.ndim == 1:  # LayerNorm, RMSNorm
            nn.init.ones_(sub.weight)
        elif own - {"bias"}:
            raise RuntimeError(f"robotrain does not know how to initialize {type(sub).__name__} ({name}) of this "
                               "transformers version")
        if "bias" in own:
            nn.init.zeros_(sub.bias)


@dataclass
class PrefixCache:
    """Per VLM layer, the cached tokens' keys (RoPE applied) and values, each (B, T, KV, hd); `pad` (B, T) marks
    the real ones. `cross` keeps their projections into the expert's cross-attention layers, made on first use."""

    keys: list[Tensor]
    values: list[Tensor]
    pad: Tensor
    cross: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    @property
    def length(self) -> Tensor:
        """(B, 1) real tokens per sample: the position the next token takes."""
        return self.pad.sum(dim=1, keepdim=True)


class SmolVLMWithExpert(nn.Module):
    """`vlm` (SmolVLMForConditionalGeneration) and `lm_expert` (LlamaModel, no token embedding)."""

    def __init__(self, config: SmolVLAConfig, backbone: Backbone, dtype: torch.dtype, load_weights: bool):
        super().__init__()
        self.vlm = build_vlm(backbone, config.num_vlm_layers, load_weights, dtype)
        text = self.vlm.config.text_config
        self.num_vlm_layers = len(self.text_model.layers)
        self.head_dim = text.head_dim
        self.lm_expert = self._build_expert(config, text, dtype)
        self.num_expert_layers = len(self.lm_expert.layers)
        self.expert_hidden_size = self.lm_expert.config.hidden_size
        self.freeze_vision_encoder = config.freeze_vision_encoder
        self.train_expert_only = config.train_expert_only
        every = config.self_attn_every_n_layers
        cross_mode = "cross" in config.attention_mode
        self.cross_layers = {i for i in range(self.num_vlm_layers)
                             if cross_mode and not (every > 0 and i % every == 0)}
        self.expert_at = self._expert_layer_map()
        self._check_layer_shapes(cross_mode, every)
        self._set_requires_grad()

    @property
    def text_model(self) -> nn.Module:
        return self.vlm.model.text_model

    def _build_expert(self, config: SmolVLAConfig, text, dtype: torch.dtype) -> nn.Module:
        from transformers import AutoModel

        expert_config = copy.deepcopy(text)
        expert_config.hidden_size = int(text.hidden_size * config.expert_width_multiplier)
        expert_config.intermediate_size = expert_intermediate_size(expert_config.hidden_size)
        expert_config.num_hidden_layers = self.num_vlm_layers
        if config.num_expert_layers > 0:
            if self.num_vlm_layers % config.num_expert_layers:
                raise ConfigError("num_expert_layers", config.num_expert_layers,
                                  f"must divide the VLM's layer count ({self.num_vlm_layers})",
                                  "use a divisor of --policy.num_vlm_layers, or -1 for as many")
            expert_config.num_hidden_layers = config.num_expert_layers
        if expert_config.hidden_size % 2:
            raise ConfigError("expert_width_multiplier", config.expert_width_multiplier,
                              f"gives an odd expert width ({expert_config.hidden_size}), which the sine time "
                              "embedding cannot split in two", "e.g. --policy.expert_width_multiplier=0.75")
        # LeRobot builds the expert with the VLM config's dtype (bfloat16 when the VLM weights were loaded in it).
        expert = AutoModel.from_config(expert_config).to(dtype)
        every = config.self_attn_every_n_layers
        if "cross" in config.attention_mode:
            kv_width = text.num_key_value_heads * text.head_dim
            for index, layer in enumerate(expert.layers):
                if every > 0 and index % every == 0:
                    continue
                # Cross layers read the VLM's keys/values: new float32 projections (as LeRobot's nn.Linear).
                out = expert_config.num_key_value_heads * expert_config.head_dim
                layer.self_attn.k_proj = nn.Linear(kv_width, out, bias=expert_config.attention_bias)
                layer.self_attn.v_proj = nn.Linear(kv_width, out, bias=expert_config.attention_bias)
        expert.embed_tokens = None  # actions enter through action_in_proj
        return expert

    def _expert_layer_map(self) -> list[int | None]:
        """The expert layer beside each VLM layer (None: the actions skip that layer), as LeRobot pairs them."""
        step = self.num_vlm_layers // self.num_expert_layers
        if step == 0:
            return list(range(self.num_vlm_layers))
        return [None if i % step else i // step for i in range(self.num_vlm_layers)]

    def _check_layer_shapes(self, cross_mode: bool, every: int) -> None:
        """An expert layer built for cross-attention must sit at a cross-attention VLM layer and vice versa."""
        for vlm_index, expert_index in enumerate(self.expert_at):
            if expert_index is None:
                continue
            built_cross = cross_mode and not (every > 0 and expert_index % every == 0)
            if built_cross != (vlm_index in self.cross_layers):
                raise ConfigError("num_expert_layers", self.num_expert_layers,
                                  f"puts expert layer {expert_index} (built for "
                                  f"{'cross' if built_cross else 'self'}-attention) at VLM layer {vlm_index}, a "
                                  f"{'cross' if vlm_index in self.cross_layers else 'self'}-attention layer (LeRobot "
                                  "fails on this combination too)", "use --policy.num_expert_layers=-1")

    def _set_requires_grad(self) -> None:
        if self.freeze_vision_encoder:
            self.vlm.model.vision_model.requires_grad_(False)
        if self.train_expert_only:
            self.vlm.requires_grad_(False)
        else:
            # LeRobot also lists "text_model.model.norm.weight" and "text_model.model.layers.<last>.", names that
            # match no parameter of transformers' SmolVLM, so only lm_head ends up frozen.
            self.vlm.lm_head.requires_grad_(False)

    def train(self, mode: bool = True) -> SmolVLMWithExpert:
        super().train(mode)
        if self.freeze_vision_encoder:
            self.vlm.model.vision_model.eval()
        if self.train_expert_only:
            self.vlm.eval()
        return self

    @property
    def context_needs_grad(self) -> bool:
        """Whether gradients flow into the cached image/language part (only when the text model trains)."""
        return not self.train_expert_only

    def embed_images(self, pixels: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, tokens, D): vision tower, then the pixel-shuffle connector."""
        vision = self.vlm.model.vision_model
        frozen = self.freeze_vision_encoder or self.train_expert_only
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            pixels = pixels.to(vision.dtype)
            embeddings = vision.embeddings
            patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (N, rows * cols, C)
            rows, cols = pixels.shape[2] // embeddings.patch_size, pixels.shape[3] // embeddings.patch_size
            positions = patch_positions(rows, cols, embeddings.num_patches_per_side, pixels.dtype, pixels.device)
            hidden = patches + embeddings.position_embedding(positions)[None]
            features = vision.post_layernorm(vision.encoder(inputs_embeds=hidden).last_hidden_state)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.context_needs_grad):
            return self.vlm.model.connector(features)

    def embed_language(self, ids: Tensor) -> Tensor:
        return self.text_model.get_input_embeddings()(ids)

    # The two passes.
    def encode_prefix(self, embeddings: Tensor, pad: Tensor, blocks: Tensor) -> PrefixCache:
        """Keys and values of every VLM layer for prefix tokens (B, T, D); `blocks` (B, T) are LeRobot's cumulative
        attention blocks: a token sees the real tokens of its block and of earlier ones."""
        allowed = (blocks[:, None, :] <= blocks[:, :, None]) & pad[:, None, :] & pad[:, :, None]
        bias = mask_bias(allowed)
        angles = rope_angles(torch.cumsum(pad, dim=1) - 1, self.head_dim)
        hidden = embeddings.to(self.vlm.dtype)
        keys, values = [], []
        last = self.num_vlm_layers - 1
        for index, layer in enumerate(self.text_model.layers):
            normed = layer.input_layernorm(hidden)
            key, value = self._project_kv(layer, normed, angles)
            keys.append(key)
            values.append(value)
            if index < last:  # the last layer's outputs feed nothing
                query = apply_rope(self._split(layer.self_attn.q_proj(normed)), angles)
                hidden = self._finish(layer, hidden, attend(query, key, value, bias))
        return PrefixCache(keys, values, pad)

    def run(self, cache: PrefixCache, vlm_tokens: Tensor | None, action_tokens: Tensor) -> Tensor:
        """Send `vlm_tokens` (B, Tv, D) or None through the VLM layers and `action_tokens` (B, Ta, De) through the
        expert, both attending to `cache`; returns the actions' final hidden states (B, Ta, De), normed."""
        batch, n_actions = action_tokens.shape[:2]
        n_vlm = 0 if vlm_tokens is None else vlm_tokens.shape[1]
        device = action_tokens.device
        # Tokens after the cache see every real cached token, and each other causally (each starts a block).
        causal = torch.ones(n_vlm + n_actions, n_vlm + n_actions, dtype=torch.bool, device=device).tril()
        allowed = torch.cat([cache.pad[:, None, :].expand(-1, n_vlm + n_actions, -1),
                             causal.expand(batch, -1, -1)], dim=2)  # (B, Tv + Ta, Tc + Tv + Ta)
        bias = mask_bias(allowed)
        positions = cache.length + torch.arange(n_vlm + n_actions, device=device)  # (B, Tv + Ta)
        angles = rope_angles(positions, self.head_dim)
        vlm_angles = tuple(a[:, :n_vlm] for a in angles)
        action_angles = tuple(a[:, n_vlm:] for a in angles)
        # Cross-attention queries count from 0 (LeRobot subtracts the first action position).
        cross_angles = rope_angles(positions[:, n_vlm:] - positions[:, n_vlm:n_vlm + 1], self.head_dim)
        streams = {"vlm": None if vlm_tokens is None else vlm_tokens.to(self.vlm.dtype),
                   "expert": action_tokens.to(self.lm_expert.dtype)}
        for index, layer in enumerate(self.text_model.layers):
            expert = None if self.expert_at[index] is None else self.lm_expert.layers[self.expert_at[index]]
            if index in self.cross_layers:
                self._cross_layer(index, layer, expert, cache, streams, bias, vlm_angles, cross_angles)
            else:
                self._joint_layer(index, layer, expert, cache, streams, bias, vlm_angles, action_angles)
        return self.lm_expert.norm(streams["expert"])

    # One layer of `run`: streams["vlm"] (B, Tv, D) or None and streams["expert"] (B, Ta, De) are updated in place.
    def _joint_layer(self, index: int, layer: nn.Module, expert: nn.Module | None, cache: PrefixCache,
                     streams: dict[str, Tensor | None], bias: Tensor, vlm_angles: tuple[Tensor, Tensor],
                     action_angles: tuple[Tensor, Tensor]) -> None:
        """Self-attention layer: the VLM tokens and the actions attend together over cache + themselves."""
        vlm, actions = streams["vlm"], streams["expert"]
        n_vlm = 0 if vlm is None else vlm.shape[1]
        vlm_outputs_used = vlm is not None and index < self.num_vlm_layers - 1
        queries, keys, values = [], [cache.keys[index]], [cache.values[index]]
        if vlm is not None:
            normed = layer.input_layernorm(vlm)
            key, value = self._project_kv(layer, normed, vlm_angles)
            keys.append(key)
            values.append(value)
            if vlm_outputs_used:
                queries.append(apply_rope(self._split(layer.self_attn.q_proj(normed)), vlm_angles))
        if expert is not None:
            normed_actions = expert.input_layernorm(actions)
            key, value = self._project_kv(expert, normed_actions, action_angles)
            keys.append(key)
            values.append(value)
            queries.append(apply_rope(self._split(expert.self_attn.q_proj(normed_actions)), action_angles))
        if not queries:
            return
        first_row = 0 if vlm_outputs_used else n_vlm
        n_keys = sum(k.shape[1] for k in keys)
        out = attend(torch.cat(queries, dim=1), torch.cat(keys, dim=1), torch.cat(values, dim=1),
                     bias[:, :, first_row:first_row + sum(q.shape[1] for q in queries), :n_keys])
        if vlm_outputs_used:
            streams["vlm"] = self._finish(layer, vlm, out[:, :n_vlm])
        if expert is not None:
            streams["expert"] = self._finish(expert, actions, out[:, n_vlm - first_row:])

    def _cross_layer(self, index: int, layer: nn.Module, expert: nn.Module | None, cache: PrefixCache,
                     streams: dict[str, Tensor | None], bias: Tensor, vlm_angles: tuple[Tensor, Tensor],
                     cross_angles: tuple[Tensor, Tensor]) -> None:
        """Cross-attention layer: VLM tokens attend to cache + themselves; actions to the VLM's keys/values only."""
        vlm, actions = streams["vlm"], streams["expert"]
        n_vlm = 0 if vlm is None else vlm.shape[1]
        keys, values = cache.keys[index], cache.values[index]
        if vlm is not None:
            normed = layer.input_layernorm(vlm)
            key, value = self._project_kv(layer, normed, vlm_angles)
            keys, values = torch.cat([keys, key], dim=1), torch.cat([values, value], dim=1)
            if index < self.num_vlm_layers - 1:
                query = apply_rope(self._split(layer.self_attn.q_proj(normed)), vlm_angles)
                out = attend(query, keys, values, bias[:, :, :n_vlm, :keys.shape[1]])
                streams["vlm"] = self._finish(layer, vlm, out)
        if expert is None:
            return
        if vlm is None:  # the keys are the cache's alone: project them once per chunk
            if index not in cache.cross:
                cache.cross[index] = self._project_cross(expert, keys, values)
            expert_keys, expert_values = cache.cross[index]
        else:
            expert_keys, expert_values = self._project_cross(expert, keys, values)
        query = apply_rope(self._split(expert.self_attn.q_proj(expert.input_layernorm(actions))), cross_angles)
        out = attend(query, expert_keys, expert_values, bias[:, :, n_vlm:, :keys.shape[1]])
        streams["expert"] = self._finish(expert, actions, out)

    def _project_kv(self, layer: nn.Module, normed: Tensor, angles: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, T, KV, hd) keys (RoPE applied) and values of one layer's self-attention."""
        key = apply_rope(self._split(layer.self_attn.k_proj(normed)), angles)
        return key, self._split(layer.self_attn.v_proj(normed))

    def _project_cross(self, expert: nn.Module, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The VLM's (B, T, KV, hd) keys and values mapped by an expert cross layer's k_proj/v_proj."""
        attn = expert.self_attn
        flat_keys = keys.flatten(2).to(attn.k_proj.weight.dtype)  # (B, T, KV * hd)
        flat_values = values.flatten(2).to(attn.v_proj.weight.dtype)
        return self._split(attn.k_proj(flat_keys)), self._split(attn.v_proj(flat_values))

    def _split(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], -1, self.head_dim)  # (B, T, heads * hd) -> (B, T, heads, hd)

    @staticmethod
    def _finish(layer: nn.Module, hidden: Tensor, attention: Tensor) -> Tensor:
        """o_proj and the residual, then the MLP block and its residual (the stream keeps the layer's dtype)."""
        out = layer.self_attn.o_proj(attention.to(layer.self_attn.o_proj.weight.dtype)) + hidden
        return out + layer.mlp(layer.post_attention_layernorm(out))
