"""SmolVLA: a small vision-language-action model trained with flow matching.

Shukor, Aubakirova, Capuano, et al. "SmolVLA: A Vision-Language-Action Model for Affordable and Efficient Robotics",
2025, arXiv:2506.01844. Module and tensor names follow LeRobot 0.4.4's SmolVLAPolicy (model.vlm_with_expert.vlm...,
model.vlm_with_expert.lm_expert..., model.state_proj, ...), so the parameter count is the same and a LeRobot
checkpoint's model.safetensors loads as it is.

                                   actions (B, chunk_size, max_action_dim) -> first action_dim
                                             ^ action_out_proj
     +-----------------------------+       +-+-------------------------+
     | SmolVLM2 text layers        | k, v  | action expert (Llama,     |  layer i: cross-attention to the VLM's
     | (first num_vlm_layers)      |------>| width x 0.75)             |  keys/values, or, every
     |                             |       |                           |  self_attn_every_n_layers, one attention
     +--^--------------^--------^--+       +-----------^---------------+  over [VLM tokens, actions]
        |              |        |                      | action_time_mlp_out(silu(action_time_mlp_in(
  vision tower +   language   state_proj               |   [action_in_proj(x_t), sine(t)])))
  connector, per   tokens     (max_state_dim)        x_t = t * noise + (1 - t) * actions
  camera (64 tok.) (task + \\n)                        t ~ Beta(1.5, 1) * 0.999 + 0.001 (training)
  resize-with-pad                                     Euler from t=1 to 0 in num_steps (inference)

Attention (LeRobot's blocks): images and language see each other; the state token sees them and itself; action
token j sees all of those and actions <= j. Padding is never attended. Training loss: MSE between the velocity
v_t and u_t = noise - actions, zeroed where action_is_pad, over the real action dimensions, averaged.

Deviations from LeRobot 0.4.4:
- The loss ignores the padded action dimensions and the steps past the episode end, as its code intends: LeRobot
  0.4.4 reads the mask from a misspelled key ("actions_id_pad", never present) and truncates to max_action_dim, so
  it averages over every step and all 32 dimensions.
- Images of empty cameras (empty_cameras) are masked tokens that nothing attends to and that take no position, so
  they are not computed (LeRobot runs the vision tower on them); the same holds for prefix_length padding.
- Cameras of one size go through the vision tower as one batch; task texts are tokenized once each (tokens.py).
- In training with a frozen VLM, each distinct frame's image tokens are computed once and stored (image_cache.py,
  --policy.image_cache_gb): later epochs skip the vision tower.
- use_cache=false recomputes the prefix at every denoising step (the same result; LeRobot 0.4.4 fails there).
- See expert.py for how the layers run (cached prefix, no autograd graph for the frozen VLM's part).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION, OBS_STATE, TASK, pad_key
from robotrain.devices import bf16_native
from robotrain.errors import UserError
from robotrain.policies.base import Policy
from robotrain.policies.smolvla import aloha
from robotrain.policies.smolvla.configuration import SmolVLAConfig
from robotrain.policies.smolvla.expert import SmolVLMWithExpert, init_transformers_style
from robotrain.policies.smolvla.image_cache import ImageFeatureCache
from robotrain.policies.smolvla.tokens import TaskTokenizer
from robotrain.policies.smolvla.vlm import Backbone, load_backbone


def vlm_dtype(config: SmolVLAConfig) -> torch.dtype:
    """LeRobot loads the VLM in bfloat16 when it loads its weights (and builds the expert from the VLM's config, so in
    bfloat16 too), else in float32. robotrain does the same, with float32 on devices without native bfloat16."""
    return torch.bfloat16 if config.load_vlm_weights and bf16_native(config.device) else torch.float32


def resize_with_pad(images: Tensor, width: int, height: int, pad_value: float = 0.0) -> Tensor:
    """(B, C, H, W) -> (B, C, height, width): bilinear resize keeping the aspect ratio, padded on the left and top."""
    cur_height, cur_width = images.shape[2:]
    ratio = max(cur_width / width, cur_height / height)
    new_height, new_width = int(cur_height / ratio), int(cur_width / ratio)
    resized = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    return F.pad(resized, (max(0, width - new_width), 0, max(0, height - new_height), 0), value=pad_value)


def pad_vector(x: Tensor, size: int) -> Tensor:
    """Zero-pad the last dimension to `size`."""
    return x if x.shape[-1] == size else F.pad(x, (0, size - x.shape[-1]))


def time_embedding(time: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """(B,) flow-matching times -> (B, dim) sine/cosine features (float64 where the device has it, as LeRobot)."""
    dtype = torch.float32 if time.device.type == "mps" else torch.float64
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (2 * math.pi / period)[None, :] * time[:, None]  # (B, dim / 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def special_token_id(tokenizer: Any, name: str, default: str) -> int:
    """The id of one of SmolVLM's image tokens (its tokenizer_config names them; LeRobot reads the same)."""
    token_id = getattr(tokenizer, f"{name}_id", None)
    return int(token_id) if token_id is not None else int(tokenizer.convert_tokens_to_ids(default))


def sample_noise(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Standard normal noise, drawn as LeRobot draws it (torch.normal, float32)."""
    return torch.normal(mean=0.0, std=1.0, size=shape, dtype=torch.float32, device=device)


def sample_time(batch: int, device: torch.device) -> Tensor:
    """t ~ Beta(1.5, 1.0) * 0.999 + 0.001: more weight near t = 1 (pure noise), never exactly 0."""
    beta = torch.distributions.Beta(concentration1=1.5, concentration0=1.0)
    return beta.sample((batch,)).to(device=device, dtype=torch.float32) * 0.999 + 0.001


def _forget_image_tokens(module: VLAFlowMatching, *_: Any) -> None:
    """Loaded weights may change the frozen encoder: the stored image tokens no longer hold."""
    module.image_cache.clear()


class VLAFlowMatching(nn.Module):
    """The network on normalized, padded tensors: VLM + expert, state and action projections, flow matching."""

    def __init__(self, config: SmolVLAConfig, backbone: Backbone, dtype: torch.dtype, load_weights: bool,
                 from_checkpoint: bool = False):
        super().__init__()
        self.config = config
        seed_state = torch.get_rng_state()
        self.vlm_with_expert = SmolVLMWithExpert(config, backbone, dtype, load_weights)
        width = self.vlm_with_expert.vlm.config.text_config.hidden_size
        expert = self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(config.max_state_dim, width)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert)
        self.action_out_proj = nn.Linear(expert, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(expert * 2, expert)
        self.action_time_mlp_out = nn.Linear(expert, expert)
        self.state_proj.requires_grad_(config.train_state_proj)
        if not from_checkpoint:  # (a checkpoint's weights replace them all)
            torch.set_rng_state(seed_state)  # random weights that depend on the seed, not on transformers' version
            self._init_random_weights(init_vlm=not load_weights)
        self.image_cache = ImageFeatureCache(int(config.image_cache_gb * 1e9))
        self.register_load_state_dict_pre_hook(_forget_image_tokens)
        fake = special_token_id(backbone.tokenizer, "fake_image_token", "<fake_token_around_image>")
        glob = special_token_id(backbone.tokenizer, "global_image_token", "<global-img>")
        self.image_start_ids, self.image_end_ids = [fake, glob], [fake]

    @torch.no_grad()
    def _init_random_weights(self, init_vlm: bool) -> None:
        """transformers' initialization for the VLM (unless its weights were loaded) and the expert, PyTorch's for
        the cross-attention key/value maps and the projections (LeRobot creates those as plain nn.Linear)."""
        vlm_with_expert = self.vlm_with_expert
        std = vlm_with_expert.vlm.config.text_config.initializer_range
        if init_vlm:
            init_transformers_style(vlm_with_expert.vlm, std)
        init_transformers_style(vlm_with_expert.lm_expert, std)
        for index in sorted(vlm_with_expert.cross_layers):
            expert_index = vlm_with_expert.expert_at[index]
            if expert_index is not None:
                attn = vlm_with_expert.lm_expert.layers[expert_index].self_attn
                attn.k_proj.reset_parameters()
                attn.v_proj.reset_parameters()
        for projection in (self.state_proj, self.action_in_proj, self.action_out_proj, self.action_time_mlp_in,
                           self.action_time_mlp_out):
            projection.reset_parameters()

    def embed_context(self, images: list[Tensor], image_masks: list[Tensor], empty_cameras: int,
                      lang_ids: Tensor, lang_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Image and language tokens: (B, Tc, D) embeddings (the VLM's dtype) and their (B, Tc) padding mask."""
        vlm = self.vlm_with_expert
        batch = lang_ids.shape[0]
        embed_images = vlm.embed_images
        if self.training and self.image_cache.enabled and not vlm.context_needs_grad:
            embed_images = functools.partial(self.image_cache.encode, encoder=vlm.embed_images)
        if len({tuple(img.shape) for img in images}) == 1:
            features = embed_images(torch.cat(images)).split(batch)  # one pass: (cameras * B, N, D) -> per camera
        else:
            features = [embed_images(img) for img in images]
        parts, pads = [], []
        for camera in range(len(images) + empty_cameras):
            if self.config.add_image_special_tokens:  # not scaled, as LeRobot
                self._special_tokens(self.image_start_ids, batch, parts, pads)
            if camera < len(images):
                tokens = features[camera]
                parts.append(tokens * torch.tensor(tokens.shape[-1] ** 0.5, dtype=tokens.dtype, device=tokens.device))
                pads.append(image_masks[camera][:, None].expand(-1, tokens.shape[1]))
            if self.config.add_image_special_tokens:
                self._special_tokens(self.image_end_ids, batch, parts, pads)
        language = vlm.embed_language(lang_ids)
        parts.append(language * math.sqrt(language.shape[-1]))
        pads.append(lang_mask)
        return torch.cat(parts, dim=1), torch.cat(pads, dim=1)

    def _special_tokens(self, ids: list[int], batch: int, parts: list[Tensor], pads: list[Tensor]) -> None:
        device = self.state_proj.weight.device
        tokens = self.vlm_with_expert.embed_language(torch.tensor(ids, device=device))
        parts.append(tokens[None].expand(batch, -1, -1))
        pads.append(torch.ones(batch, len(ids), dtype=torch.bool, device=device))

    def embed_actions(self, noisy_actions: Tensor, time: Tensor) -> Tensor:
        """(B, T, max_action_dim) x_t and (B,) t -> (B, T, expert width) action tokens."""
        tokens = self.action_in_proj(noisy_actions)
        times = time_embedding(time, tokens.shape[-1], self.config.min_period, self.config.max_period)
        times = times.to(tokens.dtype)[:, None, :].expand_as(tokens)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([tokens, times], dim=2))))

    def velocity(self, out: Tensor) -> Tensor:
        """The expert's final hidden states (B, >= chunk, De) -> the (B, chunk, max_action_dim) velocity, in float32."""
        return self.action_out_proj(out[:, -self.config.chunk_size:].to(torch.float32))

    def losses(self, context: dict[str, Any], state: Tensor, actions: Tensor, noise: Tensor | None = None,
               time: Tensor | None = None) -> Tensor:
        """Per-element flow-matching losses (B, chunk_size, max_action_dim) of one training batch."""
        noise = sample_noise(actions.shape, actions.device) if noise is None else noise
        time = sample_time(actions.shape[0], actions.device) if time is None else time
        t = time[:, None, None]
        noisy = t * noise + (1 - t) * actions
        target = noise - actions
        vlm = self.vlm_with_expert
        with torch.set_grad_enabled(torch.is_grad_enabled() and vlm.context_needs_grad):
            embeddings, pad = self.embed_context(**context)
            cache = vlm.encode_prefix(embeddings, pad, torch.zeros_like(pad, dtype=torch.long))
        state_token = self.state_proj(state)[:, None, :]  # (B, 1, D)
        out = vlm.run(cache, state_token, self.embed_actions(noisy, time))
        return F.mse_loss(target, self.velocity(out), reduction="none")

    @torch.no_grad()
    def sample_actions(self, context: dict[str, Any], state: Tensor, noise: Tensor | None = None) -> Tensor:
        """Integrate the velocity from noise (t = 1) to actions (t = 0) in num_steps Euler steps."""
        batch, device = state.shape[0], state.device
        if noise is None:
            noise = sample_noise((batch, self.config.chunk_size, self.config.max_action_dim), device)
        vlm = self.vlm_with_expert
        embeddings, pad = self.embed_context(**context)
        state_token = self.state_proj(state)[:, None, :].to(embeddings.dtype)
        embeddings = torch.cat([embeddings, state_token], dim=1)
        ones = torch.ones(batch, 1, dtype=torch.bool, device=device)
        pad = torch.cat([pad, ones], dim=1)
        blocks = torch.cat([torch.zeros_like(pad[:, 1:], dtype=torch.long), ones.long()], dim=1)  # state: block 1
        cache = vlm.encode_prefix(embeddings, pad, blocks) if self.config.use_cache else None
        dt = -1.0 / self.config.num_steps
        x_t = noise
        for step in range(self.config.num_steps):
            time = torch.tensor(1.0 + step * dt, dtype=torch.float32, device=device).expand(batch)
            step_cache = cache if cache is not None else vlm.encode_prefix(embeddings, pad, blocks)
            x_t = x_t + dt * self.velocity(vlm.run(step_cache, None, self.embed_actions(x_t, time)))
        return x_t


class SmolVLAPolicy(Policy):
    """SmolVLA behind robotrain's policy interface: normalization, tokenization, image preparation, the action queue."""

    name = "smolvla"
    config_class = SmolVLAConfig

    def __init__(self, config: SmolVLAConfig):
        super().__init__(config)
        # A checkpoint (--policy.path, resume, from_pretrained) supplies every weight: the backbone's are not read.
        from_checkpoint = config.pretrained_path is not None
        load_weights = config.load_vlm_weights and not from_checkpoint
        backbone = load_backbone(config.vlm_model_name, need_weights=load_weights)
        self.model = VLAFlowMatching(config, backbone, vlm_dtype(config), load_weights, from_checkpoint)
        self.tokenizer = TaskTokenizer(backbone.tokenizer, config.tokenizer_max_length, config.pad_language_to)
        self.image_keys = list(config.image_features)
        self.action_dim = config.output_features[ACTION].shape[0]
        self._action_queue: deque[Tensor] = deque(maxlen=config.n_action_steps)

    def get_optim_params(self) -> list[nn.Parameter]:
        """The trainable parameters (the frozen VLM gets no gradient; LeRobot hands it to AdamW, which skips it)."""
        return [p for p in self.parameters() if p.requires_grad]

    def reset(self) -> None:
        """Forget queued actions; call at the start of every episode."""
        self._action_queue.clear()

    def _model_inputs(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any], Tensor]:
        """(the normalized batch, the context for embed_context, the padded (B, max_state_dim) state)."""
        missing = [k for k in (*self.image_keys, OBS_STATE, TASK) if k not in batch]
        if missing:
            raise UserError(f"the batch lacks {missing}, which this SmolVLA policy needs (it has {sorted(batch)}). "
                            "Fix: feed the cameras and state it was built for, and the task text under 'task'")
        norm = self.normalizer.normalize(batch)
        images, masks = [], []
        for key in self.image_keys:
            image = norm[key][:, -1] if norm[key].ndim == 5 else norm[key]  # (B, C, H, W)
            if self.config.resize_imgs_with_padding is not None:
                image = resize_with_pad(image, *self.config.resize_imgs_with_padding, pad_value=0)
            images.append(image * 2.0 - 1.0)  # [0, 1] -> [-1, 1], as SigLIP expects
            mask = batch.get(f"{key}_padding_mask")
            masks.append(mask.bool() if mask is not None else
                         torch.ones(image.shape[0], dtype=torch.bool, device=image.device))
        state = norm[OBS_STATE][:, -1] if norm[OBS_STATE].ndim > 2 else norm[OBS_STATE]
        state = pad_vector(state, self.config.max_state_dim)
        if self.config.adapt_to_pi_aloha:
            state = aloha.decode_state(state)
        ids, lang_mask = self.tokenizer(self._tasks(batch[TASK], state.shape[0]), device=state.device)
        context = {"images": images, "image_masks": masks, "empty_cameras": self.config.empty_cameras,
                   "lang_ids": ids, "lang_mask": lang_mask}
        return norm, context, state

    @staticmethod
    def _tasks(tasks: Any, batch: int) -> list[str]:
        if isinstance(tasks, str):
            return [tasks] * batch
        tasks = list(tasks)
        if len(tasks) != batch or not all(isinstance(t, str) for t in tasks):
            raise UserError(f"the batch's 'task' must be {batch} strings (one per sample), got {tasks!r}. Fix: pass "
                            "the task text of every sample (the dataset's task column, or the env's instruction)")
        return tasks

    def forward(self, batch: dict[str, Any], noise: Tensor | None = None,
                time: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Training loss: flow-matching MSE, zeroed past the episode end, over the real action dimensions."""
        losses = self.elementwise_losses(batch, noise, time)
        is_pad = batch.get(pad_key(ACTION))
        if is_pad is not None:
            losses = losses * ~is_pad[:, :, None]
        return losses[:, :, : self.action_dim].mean(), {}

    def elementwise_losses(self, batch: dict[str, Any], noise: Tensor | None = None,
                           time: Tensor | None = None) -> Tensor:
        """(B, chunk_size, max_action_dim) squared errors before masking, as LeRobot's VLAFlowMatching returns them."""
        norm, context, state = self._model_inputs(batch)
        actions = pad_vector(norm[ACTION], self.config.max_action_dim)
        if self.config.adapt_to_pi_aloha:
            actions = aloha.encode_actions_inv(actions)
        return self.model.losses(context, state, actions, noise, time)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], noise: Tensor | None = None) -> Tensor:
        """(B, chunk_size, action_dim) actions in dataset units; `noise` (B, chunk_size, max_action_dim) fixes the
        starting point of the denoising (drawn from the global RNG otherwise)."""
        self.eval()
        _, context, state = self._model_inputs(batch)
        actions = self.model.sample_actions(context, state, noise)[:, :, : self.action_dim]
        if self.config.adapt_to_pi_aloha:
            actions = aloha.encode_actions(actions)
        return self.normalizer.unnormalize(ACTION, actions)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], noise: Tensor | None = None) -> Tensor:
        """The next (B, action_dim) action: a chunk is predicted every n_action_steps calls and queued."""
        self.eval()
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise)[:, : self.config.n_action_steps]  # (B, n, A)
            self._action_queue.extend(chunk.transpose(0, 1))  # n tensors of (B, A)
        return self._action_queue.popleft()
