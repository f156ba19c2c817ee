"""ACT: Action Chunking with Transformers.

Zhao, Kumar, Levine, Finn. "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware", RSS 2023,
arXiv:2304.13705. Module and parameter names follow LeRobot's ACT (model.backbone..., model.encoder.layers.0...),
so the parameter count is the same and LeRobot's weights map one to one.

                                   actions (B, chunk, A)
                                          ^
                                     action_head
                                          ^
          +-------------------------------+-----------------------------+
          |  transformer decoder (n_decoder_layers)                     |
          |  queries: zeros + learned decoder_pos_embed (chunk tokens)  |
          +-------------------------------^-----------------------------+
                                          | cross-attention
          +-------------------------------+-----------------------------+
          |  transformer encoder (n_encoder_layers)                     |
          |  tokens: [latent, state, env_state, cam pixels...]          |
          |  pos:    [learned 1-D ..................., 2-D sinusoid ]   |
          +---^--------^---------^---------------^----------------------+
              |        |         |               | 1x1 conv to dim_model
           latent    state   env_state      ResNet layer4 (frozen BN), per camera
              ^
   train: z ~ N(mu, sigma) from the VAE encoder (n_vae_encoder_layers) over
          [cls, state, action_0 ... action_{chunk-1}] + fixed sinusoid, padded actions masked
   eval:  z = 0

Loss: L1(actions, target) with padded steps zeroed, averaged over every entry (as the paper's code and LeRobot),
plus kl_weight * KL(N(mu, sigma) || N(0, 1)) summed over latent dims and averaged over the batch.

Deviations from LeRobot (none changes the model's function):
- Tensors are batch-first (B, S, D) and attention runs through scaled_dot_product_attention without computing
  head-averaged attention weights (LeRobot asks nn.MultiheadAttention for them and throws them away).
- Only the class token leaves the VAE encoder, so its last layer computes queries, the feed-forward block and the
  norms for that token alone (keys and values still come from every token).
- The decoder's queries start as zeros, so every row of its first self-attention attends over identical values and
  returns out_proj(v(0)): that constant is computed directly. In training LeRobot's attention-weight dropout
  rescales it by a random factor near 1 (std ~3% over 100 queries); that noise is not reproduced.
- The 2-D sine embedding of each feature-map size is computed once and cached.
- feedforward_activation="glu" halves the hidden width, so linear2 takes dim_feedforward // 2 inputs (LeRobot
  builds dim_feedforward and fails at the first forward).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, FeatureType, pad_key
from robotrain.errors import UserError
from robotrain.policies.act.configuration import ACTConfig
from robotrain.policies.backbones import make_resnet
from robotrain.policies.base import Policy


class ACTPolicy(Policy):
    """ACT behind robotrain's policy interface: normalization, the action queue and temporal ensembling."""

    name = "act"
    config_class = ACTConfig

    def __init__(self, config: ACTConfig):
        super().__init__(config)
        self.model = ACT(config)
        self.image_keys = list(config.image_features)
        self.temporal_ensembler = (TemporalEnsembler(config.temporal_ensemble_coeff, config.chunk_size)
                                   if config.temporal_ensemble_coeff is not None else None)
        self._action_queue: deque[Tensor] = deque(maxlen=config.n_action_steps)

    def get_optim_params(self) -> list[dict[str, Any]]:
        """Two groups as LeRobot's: everything but the backbone, and the backbone at optimizer_lr_backbone."""
        rest = [p for n, p in self.named_parameters() if not n.startswith("model.backbone") and p.requires_grad]
        backbone = [p for n, p in self.named_parameters() if n.startswith("model.backbone") and p.requires_grad]
        return [{"params": rest}, {"params": backbone, "lr": self.config.optimizer_lr_backbone}]

    def reset(self) -> None:
        """Forget queued and ensembled actions; call at the start of every episode."""
        self._action_queue.clear()
        if self.temporal_ensembler is not None:
            self.temporal_ensembler.reset()

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.config.input_features if k not in batch]
        if missing:
            raise UserError(f"the batch lacks {missing} that this ACT policy was built for (it has {sorted(batch)}). "
                            "Fix: feed observations with the same keys as the training dataset")
        batch = self.normalizer.normalize(batch)
        batch[OBS_IMAGES] = [batch[k] for k in self.image_keys]  # each (B, C, H, W)
        return batch

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any]) -> Tensor:
        """(B, chunk_size, A) actions in dataset units."""
        self.eval()
        actions, _ = self.model(self._model_inputs(batch))
        return self.normalizer.unnormalize(ACTION, actions)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """The next (B, A) action: from the queue (refilled every n_action_steps calls) or temporally ensembled."""
        self.eval()
        if self.temporal_ensembler is not None:
            return self.temporal_ensembler.update(self.predict_action_chunk(batch))
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]  # (B, n, A)
            self._action_queue.extend(chunk.transpose(0, 1))  # n tensors of (B, A)
        return self._action_queue.popleft()

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss: masked L1 on the chunk (+ kl_weight * KL with the VAE); metrics l1_loss, kld_loss."""
        for key in (ACTION, pad_key(ACTION)):
            if key not in batch:
                raise UserError(f"ACT's training batch needs '{key}' (it has {sorted(batch)}). Fix: load the dataset "
                                "with the policy's delta_timestamps (the trainer does this from action_delta_indices)")
        inputs = self._model_inputs(batch)
        actions_hat, (mu, log_sigma_x2) = self.model(inputs)
        valid = ~batch[pad_key(ACTION)].unsqueeze(-1)  # (B, chunk, 1)
        # Padded steps count as zero error in the mean, as in the paper's code and LeRobot (not a mean over valid).
        l1_loss = (F.l1_loss(inputs[ACTION], actions_hat, reduction="none") * valid).mean()
        loss = l1_loss
        if mu is not None:
            kld = (-0.5 * (1 + log_sigma_x2 - mu.pow(2) - log_sigma_x2.exp())).sum(-1).mean()
            loss = l1_loss + self.config.kl_weight * kld
            # One transfer for both numbers instead of one .item() sync each.
            l1_value, kld_value = torch.stack([l1_loss.detach(), kld.detach()]).tolist()
            return loss, {"l1_loss": l1_value, "kld_loss": kld_value}
        return loss, {"l1_loss": l1_loss.item()}


class TemporalEnsembler:
    """Online temporal ensembling (paper, Algorithm 2): each step's action averages every chunk that covers it.

    The k-th prediction of a time step (k = 0 the oldest) has weight exp(-coeff * k), so coeff > 0 favours older
    predictions (as the paper's code and LeRobot). A running weighted mean per future step, and how many chunks it
    holds, is all the state.
    """

    def __init__(self, coeff: float, chunk_size: int):
        self.chunk_size = chunk_size
        self.weights = torch.exp(-coeff * torch.arange(chunk_size, dtype=torch.float32))  # by age rank, oldest first
        self.cum_weights = torch.cumsum(self.weights, 0)
        self.reset()

    def reset(self) -> None:
        self.average: Tensor | None = None  # (B, chunk - 1, A) weighted means of the steps still ahead
        self.count: Tensor | None = None  # (chunk - 1,) how many chunks each mean holds

    def update(self, actions: Tensor) -> Tensor:
        """Fold a new (B, chunk, A) prediction into the means and return the (B, A) action for this step."""
        if self.average is None:
            average, count = actions, torch.ones(self.chunk_size, dtype=torch.long)
        else:
            n = self.count
            w_old = self.cum_weights[n - 1].to(actions.device)[None, :, None]  # the weights already in the mean
            w_new = self.weights[n].to(actions.device)[None, :, None]  # the newcomer is the (n+1)-th oldest
            average = (self.average * w_old + actions[:, :-1] * w_new) / (w_old + w_new)
            average = torch.cat([average, actions[:, -1:]], dim=1)  # the last step has only this prediction
            count = torch.cat([n + 1, n.new_ones(1)])  # n < chunk_size: a step is in at most chunk predictions
        self.average, self.count = average[:, 1:], count[1:]
        return average[:, 0]


class ACT(nn.Module):
    """The network: normalized inputs -> (normalized action chunk, (mu, log sigma^2) or (None, None))."""

    def __init__(self, config: ACTConfig):
        super().__init__()
        self.config = config
        dim = config.dim_model
        self.state_dim = _feature_dim(config, OBS_STATE, FeatureType.STATE)
        self.env_dim = _feature_dim(config, OBS_ENV_STATE, FeatureType.ENV)
        action_dim = config.output_features[ACTION].shape[0]
        if config.use_vae:
            self.vae_encoder = ACTEncoder(config, config.n_vae_encoder_layers)
            self.vae_encoder_cls_embed = nn.Embedding(1, dim)
            if self.state_dim:
                self.vae_encoder_robot_state_input_proj = nn.Linear(self.state_dim, dim)
            self.vae_encoder_action_input_proj = nn.Linear(action_dim, dim)
            self.vae_encoder_latent_output_proj = nn.Linear(dim, 2 * config.latent_dim)
            n_tokens = 1 + bool(self.state_dim) + config.chunk_size
            positions = torch.arange(n_tokens, dtype=torch.float64)
            # Persistent (as LeRobot's) so LeRobot's state dicts load without renaming.
            self.register_buffer("vae_encoder_pos_enc", sinusoid(positions, dim).unsqueeze(0))  # (1, S, D)
        if config.image_features:
            self.backbone = make_resnet(config.vision_backbone, norm="frozen",
                                        dilate_last=config.replace_final_stride_with_dilation,
                                        weights=config.pretrained_backbone_weights)
            self.encoder_img_feat_input_proj = nn.Conv2d(self.backbone.out_channels, dim, kernel_size=1)
        self.encoder = ACTEncoder(config, config.n_encoder_layers)
        self.decoder = ACTDecoder(config)
        if self.state_dim:
            self.encoder_robot_state_input_proj = nn.Linear(self.state_dim, dim)
        if self.env_dim:
            self.encoder_env_state_input_proj = nn.Linear(self.env_dim, dim)
        self.encoder_latent_input_proj = nn.Linear(config.latent_dim, dim)
        self.encoder_1d_feature_pos_embed = nn.Embedding(1 + bool(self.state_dim) + bool(self.env_dim), dim)
        self.decoder_pos_embed = nn.Embedding(config.chunk_size, dim)  # DETR-style learned queries
        self.action_head = nn.Linear(dim, action_dim)
        self._cam_pos_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}
        self._reset_transformer_parameters()

    def _reset_transformer_parameters(self) -> None:
        # Xavier-uniform on every matrix of the transformers, as the original code; attention biases start at 0.
        for module in (self.encoder, self.decoder, getattr(self, "vae_encoder", None)):
            if module is None:
                continue
            for name, p in module.named_parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
                elif name.endswith(("in_proj_bias", "out_proj.bias")):
                    nn.init.zeros_(p)

    def _apply(self, fn, recurse: bool = True):
        self._cam_pos_cache = {}  # cached embeddings follow no .to(): rebuild on the new device/dtype
        return super()._apply(fn, recurse)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, tuple[Tensor | None, Tensor | None]]:
        """batch: normalized "observation.images" (list of (B, C, H, W)), state, env state, [action, action_is_pad]."""
        images = batch.get(OBS_IMAGES, [])
        reference = images[0] if images else batch[OBS_ENV_STATE]
        batch_size = reference.shape[0]
        if self.config.use_vae and self.training:
            mu, log_sigma_x2 = self._encode_latent(batch)
            latent = mu + (0.5 * log_sigma_x2).exp() * torch.randn_like(mu)  # reparameterization
        else:
            mu = log_sigma_x2 = None
            latent = reference.new_zeros(batch_size, self.config.latent_dim)  # the prior's mean at inference

        tokens = [self.encoder_latent_input_proj(latent)]  # each (B, D)
        if self.state_dim:
            tokens.append(self.encoder_robot_state_input_proj(batch[OBS_STATE]))
        if self.env_dim:
            tokens.append(self.encoder_env_state_input_proj(batch[OBS_ENV_STATE]))
        tokens = [torch.stack(tokens, dim=1)]  # (B, n_1d, D)
        pos = [self.encoder_1d_feature_pos_embed.weight.unsqueeze(0)]  # (1, n_1d, D)
        for image in images:
            features = self.backbone(image)  # (B, C', h, w)
            pos.append(self._camera_pos_embed(features))  # (1, h*w, D)
            # The 1x1 convolution as the matmul it is: CPU convolutions of a 3x3 map take a slow generic path.
            proj = self.encoder_img_feat_input_proj
            pixels = features.flatten(2).transpose(1, 2)  # (B, h*w, C')
            tokens.append(F.linear(pixels, proj.weight.flatten(1), proj.bias))  # (B, h*w, D)
        tokens, pos = torch.cat(tokens, dim=1), torch.cat(pos, dim=1)  # (B, S, D), (1, S, D)

        memory = self.encoder(tokens, pos)  # (B, S, D)
        decoded = self.decoder(memory, pos, self.decoder_pos_embed.weight.unsqueeze(0), batch_size)  # (B, T, D)
        return self.action_head(decoded), (mu, log_sigma_x2)

    def _encode_latent(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """VAE encoder: [cls, state, actions] -> (mu, log sigma^2), each (B, latent_dim)."""
        if ACTION not in batch:
            raise UserError("ACT with use_vae=true needs 'action' in the batch while training. Fix: pass the "
                            "action chunk, or call policy.eval() to predict")
        actions = batch[ACTION]  # (B, T, A)
        batch_size = actions.shape[0]
        parts = [self.vae_encoder_cls_embed.weight.expand(batch_size, 1, -1)]  # (B, 1, D)
        if self.state_dim:
            parts.append(self.vae_encoder_robot_state_input_proj(batch[OBS_STATE]).unsqueeze(1))  # (B, 1, D)
        parts.append(self.vae_encoder_action_input_proj(actions))  # (B, T, D)
        tokens = torch.cat(parts, dim=1)  # (B, S, D)
        n_fixed = len(parts) - 1  # cls (and state) are never padding
        is_pad = batch[pad_key(ACTION)]
        key_padding = torch.cat([is_pad.new_zeros(batch_size, n_fixed), is_pad], dim=1)  # (B, S), True = ignore
        # One additive mask for every layer (SDPA would convert and check a boolean one in each).
        mask = tokens.new_zeros(key_padding.shape).masked_fill_(key_padding, -math.inf)[:, None, None]  # (B,1,1,S)
        cls_out = self.vae_encoder(tokens, self.vae_encoder_pos_enc, mask, first_token_only=True)  # (B, 1, D)
        params = self.vae_encoder_latent_output_proj(cls_out[:, 0])  # (B, 2L)
        return params[:, : self.config.latent_dim], params[:, self.config.latent_dim:]  # log sigma^2 as the paper

    def _camera_pos_embed(self, features: Tensor) -> Tensor:
        """(1, h*w, D) 2-D sine embedding of a feature map's grid, cached per size/device/dtype."""
        h, w = features.shape[-2:]
        key = (h, w, features.device, features.dtype)
        if key not in self._cam_pos_cache:
            self._cam_pos_cache[key] = sinusoid_2d(h, w, self.config.dim_model).to(features.device, features.dtype)
        return self._cam_pos_cache[key]


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter names, batch-first, on SDPA."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.dim, self.n_heads, self.dropout = dim, n_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """query (B, Sq, D), key/value (B, Sk, D), mask (B, 1, 1, Sk) added to the scores (-inf: padding)."""
        d, w, b = self.dim, self.in_proj_weight, self.in_proj_bias
        if query is key:  # self-attention: one matmul for q and k
            q, k = F.linear(query, w[: 2 * d], b[: 2 * d]).chunk(2, dim=-1)
        else:
            q, k = F.linear(query, w[:d], b[:d]), F.linear(key, w[d: 2 * d], b[d: 2 * d])
        v = F.linear(value, w[2 * d:], b[2 * d:])
        q, k, v = (self._split_heads(t) for t in (q, k, v))  # (B, H, S, D/H)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, Sq, D)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, self.dim // self.n_heads)).transpose(1, 2)

    def constant_value(self, value: Tensor) -> Tensor:
        """Attention output when every key's value is the same vector `value` (.., D): softmax weights sum to 1."""
        d = self.dim
        return self.out_proj(F.linear(value, self.in_proj_weight[2 * d:], self.in_proj_bias[2 * d:]))


class Dropout(nn.Module):
    """Inverted dropout, its mask drawn with rand_like: on CPU about half the time of nn.Dropout (bernoulli_)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # in place: 0 or 1/(1-p), x's dtype
        return x * keep


def _activation(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}[name]


class ACTEncoderLayer(nn.Module):
    """Self-attention + feed-forward, post-norm (DETR) or pre-norm."""

    def __init__(self, config: ACTConfig):
        super().__init__()
        dim, hidden = config.dim_model, config.dim_feedforward
        self.self_attn = Attention(dim, config.n_heads, config.dropout)
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = Dropout(config.dropout)
        self.linear2 = nn.Linear(hidden // 2 if config.feedforward_activation == "glu" else hidden, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = Dropout(config.dropout), Dropout(config.dropout)
        self.activation = _activation(config.feedforward_activation)
        self.pre_norm = config.pre_norm

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None,
                first_token_only: bool = False) -> Tensor:
        """x (B, S, D), pos (1 or B, S, D) -> (B, S, D), or (B, 1, D) for the first token only."""
        skip = x
        if self.pre_norm:
            x = self.norm1(x)
        qk = x + pos
        if first_token_only:  # the other tokens' outputs would be thrown away: keys and values need them, not queries
            x = self.self_attn(qk[:, :1], qk, x, mask)
            skip = skip[:, :1]
        else:
            x = self.self_attn(qk, qk, x, mask)
        x = skip + self.dropout1(x)
        if self.pre_norm:
            skip, x = x, self.norm2(x)
        else:
            x = skip = self.norm1(x)
        x = skip + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        return x if self.pre_norm else self.norm2(x)


class ACTEncoder(nn.Module):
    """A stack of encoder layers (+ a final norm with pre-norm)."""

    def __init__(self, config: ACTConfig, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(ACTEncoderLayer(config) for _ in range(n_layers))
        self.norm = nn.LayerNorm(config.dim_model) if config.pre_norm else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None,
                first_token_only: bool = False) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, mask, first_token_only=first_token_only and i == last)
        return self.norm(x)


class ACTDecoderLayer(nn.Module):
    """Self-attention over the chunk's queries, cross-attention to the encoder, feed-forward."""

    def __init__(self, config: ACTConfig):
        super().__init__()
        dim, hidden = config.dim_model, config.dim_feedforward
        self.self_attn = Attention(dim, config.n_heads, config.dropout)
        self.multihead_attn = Attention(dim, config.n_heads, config.dropout)
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = Dropout(config.dropout)
        self.linear2 = nn.Linear(hidden // 2 if config.feedforward_activation == "glu" else hidden, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (Dropout(config.dropout) for _ in range(3))
        self.activation = _activation(config.feedforward_activation)
        self.pre_norm = config.pre_norm

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor, memory_pos: Tensor, shape: tuple[int, int, int],
                constant_input: bool = False) -> Tensor:
        """x (B, T, D), or (1, 1, D) broadcast to `shape` when constant_input; memory (B, S, D) -> (B, T, D)."""
        skip = x
        if self.pre_norm:
            x = self.norm1(x)
        if constant_input:  # identical values in every row: attention returns out_proj(v) whatever the weights
            x = self.self_attn.constant_value(x).expand(shape)
        else:
            qk = x + pos
            x = self.self_attn(qk, qk, x)
        x = skip + self.dropout1(x)  # (B, T, D)
        if self.pre_norm:
            skip, x = x, self.norm2(x)
        else:
            x = skip = self.norm1(x)
        x = skip + self.dropout2(self.multihead_attn(x + pos, memory + memory_pos, memory))
        if self.pre_norm:
            skip, x = x, self.norm3(x)
        else:
            x = skip = self.norm2(x)
        x = skip + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        return x if self.pre_norm else self.norm3(x)


class ACTDecoder(nn.Module):
    """A stack of decoder layers and a final norm; the queries start as zeros (their identity is the pos embed)."""

    def __init__(self, config: ACTConfig):
        super().__init__()
        self.layers = nn.ModuleList(ACTDecoderLayer(config) for _ in range(config.n_decoder_layers))
        self.norm = nn.LayerNorm(config.dim_model)

    def forward(self, memory: Tensor, memory_pos: Tensor, pos: Tensor, batch_size: int) -> Tensor:
        """memory (B, S, D), memory_pos (1, S, D), pos (1, T, D) -> (B, T, D)."""
        shape = (batch_size, pos.shape[1], pos.shape[2])
        x = memory.new_zeros(1, 1, shape[2])  # every query row is this zero vector
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, pos, memory_pos, shape, constant_input=i == 0)
        return self.norm(x)


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """(N,) positions -> (N, dim): channel i is sin (even i) or cos (odd i) of pos / 10000^(2*(i//2)/dim)."""
    channel = torch.arange(dim, dtype=torch.float64)
    angle = positions.to(torch.float64)[:, None] / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor")
                                                            / dim)
    return torch.where(channel % 2 == 0, angle.sin(), angle.cos()).to(torch.float32)


def sinusoid_2d(height: int, width: int, dim: int) -> Tensor:
    """(1, h*w, dim) DETR-style: dim/2 channels for the row, dim/2 for the column, positions 1..n scaled to 2*pi."""
    half = dim // 2
    eps = 1e-6  # in the original code's normalization; kept so the values match exactly
    rows = torch.arange(1, height + 1, dtype=torch.float32) / (height + eps) * (2 * math.pi)
    cols = torch.arange(1, width + 1, dtype=torch.float32) / (width + eps) * (2 * math.pi)
    row_embed = _sinusoid_f32(rows, half)[:, None, :].expand(height, width, half)
    col_embed = _sinusoid_f32(cols, half)[None, :, :].expand(height, width, half)
    return torch.cat([row_embed, col_embed], dim=-1).reshape(1, height * width, 2 * half)


def _sinusoid_f32(positions: Tensor, dim: int) -> Tensor:
    # The 2-D embedding is computed in float32 in the reference; float64 would differ in the last bits.
    channel = torch.arange(dim, dtype=torch.float32)
    angle = positions[:, None] / 10000 ** (2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    return torch.where(channel % 2 == 0, angle.sin(), angle.cos())


def _feature_dim(config: ACTConfig, key: str, ftype: FeatureType) -> int:
    """Size of an optional 1-D input (robot state, env state), 0 when the policy does not take it."""
    feature = config.input_features.get(key)
    return feature.shape[0] if feature is not None and feature.type is ftype else 0
