"""Diffusion Policy: visuomotor policy learning via action diffusion.

Chi, Feng, Du, Xu, Cousineau, Burchfiel, Song. RSS 2023, arXiv:2303.04137 (the CNN-based variant). Module names
follow LeRobot's port (diffusion.unet..., diffusion.rgb_encoder.pool.nets, .out), so the parameter count is the same.

    camera frames (B, S, C, H, W) per camera           state (B, S, D)     env state (B, S, E)
        │ resize (optional), crop: random per image in training, centered in eval
        │ ResNet trunk (group norm, channels-last) -> spatial softmax keypoints (K, 2) -> Linear + ReLU
        ▼                                                  │                   │
    image features (B, S, n_cam · 2K) ──────── concat per step, flatten over S ─┴──> global condition (B, G)
                                                                                        │ FiLM
    x_T ~ N(0, I) (B, horizon, A) ──> 1-D conditional U-Net eps_θ(x_t, t, cond) ──> DDPM/DDIM step ──> ... ──> x_0
    actions executed: x_0[:, n_obs_steps-1 : n_obs_steps-1+n_action_steps]

Training: x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε with t uniform, loss = MSE(prediction, ε or x_0).

Deviations from LeRobot 0.4.4. The network is the same: with LeRobot's weights copied in, the global conditioning
and DDIM-sampled actions matched LeRobot's to 2e-6 (two cameras, state and env state, eval mode).
- Random crops are drawn per image (as the paper's code), in one batched gather; LeRobot's torchvision RandomCrop
  draws one window for the whole batch.
- The noise schedulers are written here (noise.py) instead of imported from diffusers; same math and settings.
- The U-Net's convolutions run as GEMMs (unet.GemmConv1d) and its FiLM Mish runs once per call, not per block.
- Without crop_shape, frames other than 96x96 are cropped to 7/8 of each side (configuration.py explains).
- Optional EMA of the weights (use_ema), which the paper uses and LeRobot 0.4 does not offer.
"""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, pad_key
from robotrain.errors import UserError
from robotrain.policies.backbones import make_resnet
from robotrain.policies.base import Policy
from robotrain.policies.diffusion.configuration import DiffusionConfig
from robotrain.policies.diffusion.noise import NoiseScheduler
from robotrain.policies.diffusion.unet import ConditionalUnet1d
from robotrain.policies.ema import EMA


def random_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w): an independent uniform window per image, gathered in one indexing op.

    The result is a channels-last view (its memory is (N, h, w, C)), the layout the ResNet runs fastest in.
    """
    n, _, height, width = images.shape
    h, w = size
    device = images.device
    top = torch.randint(0, height - h + 1, (n, 1, 1), device=device)
    left = torch.randint(0, width - w + 1, (n, 1, 1), device=device)
    rows = top + torch.arange(h, device=device).view(1, h, 1)  # (N, h, 1)
    cols = left + torch.arange(w, device=device).view(1, 1, w)  # (N, 1, w)
    index = torch.arange(n, device=device).view(n, 1, 1)
    return images.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)  # (N, h, w, C) -> NCHW view


def center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w), the window torchvision's CenterCrop takes (a view, no copy)."""
    height, width = images.shape[-2:]
    top, left = round((height - size[0]) / 2), round((width - size[1]) / 2)
    return images[..., top:top + size[0], left:left + size[1]]


def resnet_feature_size(size: int) -> int:
    """Side of a ResNet's layer4 map: the stem conv, max-pool and layers 2-4 each halve it, rounding up."""
    for _ in range(5):
        size = (size + 1) // 2
    return size


class SpatialSoftmax(nn.Module):
    """Keypoints as softmax-weighted mean image coordinates (Finn et al. 2016, arXiv:1509.06113).

    A 1x1 convolution maps the C feature channels to K keypoint maps; each map's softmax over positions weights a
    grid of coordinates in [-1, 1]: (N, C, h, w) -> (N, K, 2) as (x, y).
    """

    def __init__(self, in_channels: int, height: int, width: int, num_keypoints: int):
        super().__init__()
        self.nets = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        # Built in float64 then rounded, so the grid equals numpy's linspace (LeRobot's) to the last bit.
        xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64)
        ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(height * width, 2)
        self.register_buffer("pos_grid", grid.float(), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        logits = self.nets(features).flatten(2)  # (N, K, h*w)
        return torch.softmax(logits, dim=-1) @ self.pos_grid  # (N, K, 2)


class RgbEncoder(nn.Module):
    """One camera frame (N, 3, H, W), normalized -> a feature vector (N, 2K): resize, crop, ResNet, keypoints."""

    def __init__(self, config: DiffusionConfig, frame_size: tuple[int, int]):
        super().__init__()
        self.resize_shape = tuple(config.resize_shape) if config.resize_shape else None
        self.crop_shape = tuple(config.crop_shape) if config.crop_shape else None
        self.crop_is_random = config.crop_is_random
        norm = "group" if config.use_group_norm else "batch"
        self.backbone = make_resnet(config.vision_backbone, norm=norm, weights=config.pretrained_backbone_weights)
        # Channels-last: on CPU a training pass over 210x280 frames took 10-15% less time (84x84: no difference),
        # and random_crop gathers into this layout anyway. .to(device) and load_state_dict keep it.
        self.backbone.to(memory_format=torch.channels_last)
        height, width = self.crop_shape or self.resize_shape or frame_size
        keypoints = config.spatial_softmax_num_keypoints
        self.pool = SpatialSoftmax(self.backbone.out_channels, resnet_feature_size(height),
                                   resnet_feature_size(width), keypoints)
        self.feature_dim = 2 * keypoints
        self.out = nn.Linear(2 * keypoints, self.feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        if self.resize_shape is not None and tuple(images.shape[-2:]) != self.resize_shape:
            images = F.interpolate(images, size=self.resize_shape, mode="bilinear", antialias=True)
        if self.crop_shape is not None:
            random = self.training and self.crop_is_random
            images = random_crop(images, self.crop_shape) if random else center_crop(images, self.crop_shape)
        features = self.backbone(images.contiguous(memory_format=torch.channels_last))  # (N, C', h, w)
        return F.relu(self.out(self.pool(features).flatten(1)))  # (N, 2K)


class DiffusionModel(nn.Module):
    """Observation encoders, the U-Net denoiser and the noise scheduler; works on normalized tensors."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.image_keys = list(config.image_features)
        cond_per_step = config.input_features[OBS_STATE].shape[0] if OBS_STATE in config.input_features else 0
        if self.image_keys:
            first = config.image_features[self.image_keys[0]].shape
            frame = tuple(config.resize_shape) if config.resize_shape else tuple(first[1:])
            if config.use_separate_rgb_encoder_per_camera:
                self.rgb_encoder = nn.ModuleList(RgbEncoder(config, frame) for _ in self.image_keys)
                feature_dim = self.rgb_encoder[0].feature_dim
            else:
                self.rgb_encoder = RgbEncoder(config, frame)
                feature_dim = self.rgb_encoder.feature_dim
            cond_per_step += feature_dim * len(self.image_keys)
        if OBS_ENV_STATE in config.input_features:
            cond_per_step += config.input_features[OBS_ENV_STATE].shape[0]
        self.action_dim = config.output_features[ACTION].shape[0]
        self.unet = ConditionalUnet1d(
            self.action_dim, cond_per_step * config.n_obs_steps, tuple(config.down_dims), config.kernel_size,
            config.n_groups, config.diffusion_step_embed_dim, config.use_film_scale_modulation)
        self.noise_scheduler = NoiseScheduler(
            config.noise_scheduler_type, config.num_train_timesteps, config.beta_schedule, config.beta_start,
            config.beta_end, config.prediction_type, config.clip_sample, config.clip_sample_range)
        self.num_inference_steps = config.num_inference_steps or config.num_train_timesteps

    def global_condition(self, batch: dict[str, Tensor]) -> Tensor:
        """Per observation step [state, camera features, env state], flattened over steps: (B, G)."""
        parts = []
        if OBS_STATE in batch:
            parts.append(batch[OBS_STATE])  # (B, S, D)
        if self.image_keys:
            images = batch[OBS_IMAGES]  # (B, S, n_cam, C, H, W)
            b, s, n = images.shape[:3]
            if isinstance(self.rgb_encoder, nn.ModuleList):
                per_camera = [enc(images[:, :, i].flatten(0, 1)) for i, enc in enumerate(self.rgb_encoder)]
                features = torch.stack(per_camera, dim=1)  # (B*S, n_cam, F)
            else:
                features = self.rgb_encoder(images.flatten(0, 2))  # (B*S*n_cam, F)
            parts.append(features.reshape(b, s, -1))  # (B, S, n_cam*F), cameras side by side
        if OBS_ENV_STATE in batch:
            parts.append(batch[OBS_ENV_STATE])  # (B, S, E)
        return torch.cat(parts, dim=-1).flatten(1)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Denoising loss on a normalized batch with (B, S, ...) observations and (B, horizon, A) actions."""
        cond = self.global_condition(batch)
        actions = batch[ACTION]
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.noise_scheduler.num_train_timesteps, (actions.shape[0],), device=actions.device)
        pred = self.unet(self.noise_scheduler.add_noise(actions, noise, t), t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        loss = F.mse_loss(pred, target, reduction="none")
        if self.config.do_mask_loss_for_padding:
            # Padded steps count as zero error in the mean over all entries, as LeRobot (not a mean over valid).
            loss = loss * ~batch[pad_key(ACTION)].unsqueeze(-1)
        return loss.mean()

    def generate_actions(self, batch: dict[str, Tensor], noise: Tensor | None = None,
                         generator: torch.Generator | None = None) -> Tensor:
        """Sample (B, n_action_steps, A) normalized actions, starting at the current observation."""
        cond = self.global_condition(batch)
        if noise is None:
            shape = (cond.shape[0], self.config.horizon, self.action_dim)
            noise = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        actions = self.noise_scheduler.sample(lambda x, t: self.unet(x, t, cond), noise, self.num_inference_steps,
                                              generator)
        start = self.config.n_obs_steps - 1
        return actions[:, start:start + self.config.n_action_steps]


class DiffusionPolicy(Policy):
    """Diffusion Policy behind robotrain's policy interface: normalization, observation and action queues, EMA."""

    name = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        image_keys = list(config.image_features)
        obs_keys = [k for k in (OBS_STATE, OBS_ENV_STATE) if k in config.input_features]
        used = {k: config.input_features[k] for k in (*image_keys, *obs_keys)}  # other state vectors: not inputs
        super().__init__(config, normalized={**used, **config.output_features})
        self.image_keys, self.obs_keys = image_keys, obs_keys
        self.diffusion = DiffusionModel(config)
        self.ema = EMA(self.diffusion, config.ema_power, config.ema_max_decay) if config.use_ema else None
        self._queues: dict[str, deque[Tensor]] = {}
        self.reset()

    def get_optim_params(self) -> Any:
        return self.diffusion.parameters()

    def update(self) -> None:
        """After each optimizer step: move the EMA weights (when use_ema)."""
        if self.ema is not None:
            self.ema.update(self.diffusion)

    def reset(self) -> None:
        """Forget queued observations and actions; call at the start of every episode."""
        n_obs = self.config.n_obs_steps
        self._queues = {key: deque(maxlen=n_obs) for key in self.obs_keys}
        if self.image_keys:
            self._queues[OBS_IMAGES] = deque(maxlen=n_obs)
        self._queues[ACTION] = deque(maxlen=self.config.n_action_steps)

    def _check_inputs(self, batch: dict[str, Any]) -> None:
        missing = [k for k in (*self.image_keys, *self.obs_keys) if k not in batch]
        if missing:
            raise UserError(f"the batch lacks {missing} that this Diffusion policy was built for (it has "
                            f"{sorted(batch)}). Fix: feed observations with the same keys as the training dataset")

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Normalize and stack the cameras under observation.images; observations keep their layout."""
        self._check_inputs(batch)
        batch = self.normalizer.normalize(batch)
        if self.image_keys:
            images = [batch[k] for k in self.image_keys]
            step_dim = images[0].dim() - 3  # the camera axis goes before (C, H, W)
            # One camera: a view instead of a copy.
            batch[OBS_IMAGES] = images[0].unsqueeze(step_dim) if len(images) == 1 else torch.stack(images, step_dim)
        return batch

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a batch with (B, n_obs_steps, ...) observations and (B, horizon, A) actions."""
        for key in (ACTION, pad_key(ACTION)):
            if key not in batch:
                raise UserError(f"Diffusion's training batch needs '{key}' (it has {sorted(batch)}). Fix: load the "
                                "dataset with the policy's delta_timestamps (the trainer does this)")
        horizon = batch[ACTION].shape[1]
        if horizon != self.config.horizon:
            raise UserError(f"the batch has {horizon} action steps but the policy's horizon is "
                            f"{self.config.horizon}. Fix: load the dataset with this config's action_delta_indices")
        inputs = self._model_inputs(batch)
        if not self._has_time_dim(inputs):  # n_obs_steps = 1 batches may come without the step axis
            inputs = {k: inputs[k].unsqueeze(1) if k in (*self.obs_keys, OBS_IMAGES) else inputs[k] for k in inputs}
        return self.diffusion.compute_loss(inputs), {}

    def _has_time_dim(self, batch: dict[str, Any]) -> bool:
        if self.image_keys:
            return batch[OBS_IMAGES].dim() == 6  # (B, S, n_cam, C, H, W)
        return batch[self.obs_keys[0]].dim() == 3  # (B, S, D)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], noise: Tensor | None = None,
                             generator: torch.Generator | None = None) -> Tensor:
        """(B, n_action_steps, A) actions in dataset units from the current observation on.

        Observations with a step axis (B, n_obs_steps, ...) are used as they are; single observations (B, ...) join
        the observation history first (as select_action does).
        """
        inputs = self._model_inputs(batch)
        if self._has_time_dim(inputs):
            history = {k: inputs[k] for k in self._queues if k != ACTION}
        else:
            self._remember(inputs)
            history = self._history()
        return self._sample(history, noise, generator)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], noise: Tensor | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
        """The next (B, A) action; a new chunk of n_action_steps is sampled when the queue runs out."""
        self._remember(self._model_inputs(batch))
        queue = self._queues[ACTION]
        if not queue:
            queue.extend(self._sample(self._history(), noise, generator).transpose(0, 1))  # n_action_steps × (B, A)
        return queue.popleft()

    def _remember(self, inputs: dict[str, Any]) -> None:
        """Push single observations into the n_obs_steps queues; the first one of an episode fills them."""
        for key, queue in self._queues.items():
            if key != ACTION:
                while len(queue) < queue.maxlen - 1:
                    queue.append(inputs[key])
                queue.append(inputs[key])

    def _history(self) -> dict[str, Tensor]:
        """The queued observations stacked along a step axis: (B, n_obs_steps, ...)."""
        return {key: torch.stack(list(queue), dim=1) for key, queue in self._queues.items() if key != ACTION}

    def _sample(self, history: dict[str, Tensor], noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Denoise a chunk in eval mode (centered crops), with the EMA weights when there are some."""
        was_training = self.training
        self.eval()
        try:
            with self.ema.applied(self.diffusion) if self.ema is not None else nullcontext():
                actions = self.diffusion.generate_actions(history, noise, generator)
        finally:
            self.train(was_training)
        return self.normalizer.unnormalize(ACTION, actions)
