"""VQ-BeT: Behavior Generation with Latent Actions.

Lee, Wang, Etukuru, Kim, Shafiullah, Pinto. ICML 2024, arXiv:2403.03181. Built as LeRobot 0.4.4 builds it: same
configuration, defaults, parameter count, optimizer groups and tensor names (vqbet.policy..., vqbet.action_head...),
so its checkpoints load (the ResNet's children are named as torchvision's, lerobot_names.py maps them).

    n = n_obs_steps, p = n_action_pred_token, W = action_chunk_size, G = 2 residual-VQ layers, C = vqvae_n_embed

    Phase 1 (the first n_vqvae_training_steps steps): a residual VQ-VAE learns to code action chunks (vqvae.py)
        every W-long window of the sample's actions ─▶ encoder ─▶ RVQ (2 codes) ─▶ decoder ─▶ L1 + commitment

    Phase 2 (the VQ-VAE frozen): a GPT predicts the codes and offsets of the chunks starting at each step
        step t-n+1                  step t-n+2                     step t
        [ cam │ state │ A_Q ]       [ cam │ state │ A_Q ]  ...      [ cam │ state │ A_Q ]  A_Q ... A_Q   (p - 1 more)
          │      │                    cam: crop ─ ResNet-18 (group norm) ─ spatial softmax ─ Linear+ReLU ─ Linear
          │      └ Linear             A_Q: one learned action-query token, repeated
        ┌─▼──────────────────────────────────────────────────────────────────────────────────────────────────┐
        │                      GPT (causal, gpt.py): 3n + p - 1 tokens                                       │
        └──────────────────────────▲───────────────────────────▲──────────────────────▲──────────▲──────────┘
                    output at each A_Q ─▶ code heads + offset head (head.py) ─▶ action chunk (W, A) per A_Q
        training: chunk k is compared with actions[k : k + W] (k = 0 .. n + p - 2)
        acting:   only the chunk of the current step (A_Q of step t) is used; its W actions are executed

Deviations from LeRobot 0.4.4 (none changes the trained network's function):
- Random crops are drawn per image (diffusion/modeling.py's random_crop); LeRobot draws one window per batch.
- Attention uses scaled_dot_product_attention; LeRobot's saved causal-mask buffer is not kept (gpt.py).
- The VQ-VAE's step count is saved with the weights, so resuming during phase 1 continues it (vqvae.py).
- Statistics live in the model (normalize.py) instead of LeRobot 0.4's processor files.
- As LeRobot, `*_is_pad` masks are not used: padded steps hold the episode's edge frame (the dataset repeats it), so
  chunks past an episode's end are learned as "stay" chunks.
"""

from __future__ import annotations

import logging
from collections import deque
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from robotrain.configs.types import ACTION, OBS_IMAGES, OBS_STATE
from robotrain.errors import UserError
from robotrain.policies.base import Policy
from robotrain.policies.diffusion.modeling import RgbEncoder
from robotrain.policies.vqbet.configuration import TOKENS_PER_STEP, VQBeTConfig
from robotrain.policies.vqbet.gpt import GPT
from robotrain.policies.vqbet.head import VQBeTHead

logger = logging.getLogger(__name__)


def rgb_encoder(config: VQBeTConfig) -> RgbEncoder:
    """Diffusion Policy's camera encoder, which is LeRobot's VQ-BeT encoder too (crop, ResNet, spatial softmax,
    Linear + ReLU), built from the fields it reads; VQ-BeT has no resize option."""
    shape = next(iter(config.image_features.values())).shape
    options = SimpleNamespace(resize_shape=None, crop_shape=config.crop_shape, crop_is_random=config.crop_is_random,
                              use_group_norm=config.use_group_norm, vision_backbone=config.vision_backbone,
                              pretrained_backbone_weights=config.pretrained_backbone_weights,
                              spatial_softmax_num_keypoints=config.spatial_softmax_num_keypoints)
    return RgbEncoder(options, tuple(shape[1:]))


class VQBeTModel(nn.Module):
    """Observation tokens, GPT and action head on normalized tensors (the class docstring of the module)."""

    def __init__(self, config: VQBeTConfig):
        super().__init__()
        self.config = config
        self.rgb_encoder = rgb_encoder(config)
        # One learned action query, repeated at every place it is needed (the paper's authors found independent
        # tokens worse).
        self.action_token = nn.Parameter(torch.randn(1, 1, config.gpt_input_dim))
        state_dim = config.input_features[OBS_STATE].shape[0]
        self.state_projector = nn.Sequential(nn.Linear(state_dim, config.gpt_input_dim))
        self.rgb_feature_projector = nn.Sequential(nn.Linear(self.rgb_encoder.feature_dim, config.gpt_input_dim))
        self.policy = GPT(config)
        self.action_head = VQBeTHead(config)
        # Row k: the action offsets of the chunk the k-th action query predicts, k = 0 .. n + p - 2.
        queries = config.n_obs_steps + config.n_action_pred_token - 1
        starts = torch.arange(queries).unsqueeze(1)  # (Q, 1)
        self.register_buffer("select_target_actions_indices", starts + torch.arange(config.action_chunk_size))

    def query_features(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, n, ...) observations -> GPT outputs at the n + p - 1 action queries: (B, n + p - 1, F)."""
        images, state = batch[OBS_IMAGES], batch[OBS_STATE]  # (B, n, 1, C, H, W), (B, n, D)
        b, n = state.shape[:2]
        camera = self.rgb_encoder(images.flatten(0, 2)).view(b, n, -1)  # (B*n, F) -> (B, n, F), one camera
        query = self.action_token.expand(b, n, -1)  # (B, n, D)
        per_step = torch.stack([self.rgb_feature_projector(camera), self.state_projector(state), query], dim=2)
        tokens = per_step.flatten(1, 2)  # (B, n, 3, D) -> (B, 3n, D): camera, state, query of each step in turn
        future = self.action_token.expand(b, self.config.n_action_pred_token - 1, -1)  # (B, p - 1, D)
        out = self.policy(torch.cat([tokens, future], dim=1))  # (B, 3n + p - 1, F)
        last = TOKENS_PER_STEP - 1  # the query is the last token of its step
        return torch.cat([out[:, last:TOKENS_PER_STEP * n:TOKENS_PER_STEP], out[:, TOKENS_PER_STEP * n:]], dim=1)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Phase-2 loss: every query's chunk against the true actions it covers."""
        out = self.action_head(self.query_features(batch))
        targets = batch[ACTION][:, self.select_target_actions_indices]  # (B, Q, W, A)
        return self.action_head.loss(out, targets)

    def predict_chunk(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """(B, W, A) normalized actions: the chunk of the current step's query.

        Codes are sampled for every query, as LeRobot does, so a seeded generator draws the same codes."""
        out = self.action_head(self.query_features(batch), generator)
        return out["predicted_action"][:, self.config.n_obs_steps - 1]


class VQBeTPolicy(Policy):
    """VQ-BeT behind robotrain's policy interface: normalization, the two training phases, observation queues."""

    name = "vqbet"
    config_class = VQBeTConfig

    def __init__(self, config: VQBeTConfig):
        config.validate_features()  # before its camera is looked up
        camera = next(iter(config.image_features))
        used = {k: config.input_features[k] for k in (camera, OBS_STATE)}
        super().__init__(config, normalized={**used, **config.output_features})
        self.camera = camera
        self.vqbet = VQBeTModel(config)
        self._warned_untrained = False
        self._queues: dict[str, deque[Tensor]] = {}
        self.reset()

    @property
    def vqvae(self) -> nn.Module:
        return self.vqbet.action_head.vqvae_model

    def get_optim_params(self) -> list[dict[str, Any]]:
        """LeRobot's three groups: decayed (GPT Linear weights, encoders, heads), the VQ-VAE at its own lr and weight
        decay, and the GPT's biases/norms/embeddings without weight decay."""
        model, head = self.vqbet, self.vqbet.action_head
        decay, no_decay = model.policy.configure_parameters()
        decay += [*model.rgb_encoder.parameters(), *model.state_projector.parameters(),
                  *model.rgb_feature_projector.parameters(), model.action_token,
                  *head.map_to_cbet_preds_offset.parameters()]
        decay += [p for module in head.code_heads() for p in module.parameters()]
        vqvae = [*self.vqvae.encoder.parameters(), *self.vqvae.decoder.parameters(),
                 *self.vqvae.vq_layer.parameters()]
        return [
            {"params": decay},
            {"params": vqvae, "weight_decay": self.config.optimizer_vqvae_weight_decay,
             "lr": self.config.optimizer_vqvae_lr},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def reset(self) -> None:
        """Forget queued observations and actions; call at the start of every episode."""
        n_obs = self.config.n_obs_steps
        self._queues = {OBS_IMAGES: deque(maxlen=n_obs), OBS_STATE: deque(maxlen=n_obs),
                        ACTION: deque(maxlen=self.config.action_chunk_size)}

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Normalize; the camera goes under observation.images with a camera axis before (C, H, W)."""
        missing = [k for k in (self.camera, OBS_STATE) if k not in batch]
        if missing:
            raise UserError(f"the batch lacks {missing} that this VQ-BeT policy was built for (it has "
                            f"{sorted(batch)}). Fix: feed observations with the same keys as the training dataset")
        batch = self.normalizer.normalize(batch)
        batch[OBS_IMAGES] = batch[self.camera].unsqueeze(-4)  # (..., C, H, W) -> (..., 1, C, H, W)
        return batch

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss: the VQ-VAE's during the first n_vqvae_training_steps steps, then the GPT's."""
        self._check_training_batch(batch)
        inputs = self._model_inputs(batch)
        if not bool(self.vqvae.discretized):
            return self.vqvae.phase_one_step(inputs[ACTION])  # images and states are not needed yet
        return self.vqbet.compute_loss(inputs)

    def _check_training_batch(self, batch: dict[str, Any]) -> None:
        config = self.config
        if ACTION not in batch:
            raise UserError(f"VQ-BeT's training batch needs '{ACTION}' (it has {sorted(batch)}). Fix: load the "
                            "dataset with the policy's delta_timestamps (the trainer does this)")
        expected = len(config.action_delta_indices)
        if batch[ACTION].dim() != 3 or batch[ACTION].shape[1] != expected:
            raise UserError(f"the batch's '{ACTION}' has shape {tuple(batch[ACTION].shape)}, VQ-BeT expects "
                            f"(B, {expected}, A) (n_obs_steps - 1 + n_action_pred_token + action_chunk_size - 1). "
                            "Fix: load the dataset with this config's action_delta_indices")
        state = batch.get(OBS_STATE)
        if state is not None and (state.dim() != 3 or state.shape[1] != config.n_obs_steps):
            raise UserError(f"the batch's '{OBS_STATE}' has shape {tuple(state.shape)}, VQ-BeT expects "
                            f"(B, {config.n_obs_steps}, D). Fix: load the dataset with this config's "
                            "observation_delta_indices")

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """(B, action_chunk_size, A) actions in dataset units from the current observation on.

        Observations with a step axis (B, n_obs_steps, ...) are used as they are; single observations (B, ...) join
        the observation history first (as select_action does)."""
        inputs = self._model_inputs(batch)
        if inputs[OBS_STATE].dim() == 3:  # (B, n, D)
            history = {OBS_IMAGES: inputs[OBS_IMAGES], OBS_STATE: inputs[OBS_STATE]}
        else:
            self._remember(inputs)
            history = self._history()
        return self._sample(history, generator)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """The next (B, A) action; a new chunk of action_chunk_size actions is predicted when the queue runs out."""
        self._remember(self._model_inputs(batch))
        queue = self._queues[ACTION]
        if not queue:
            queue.extend(self._sample(self._history(), generator).transpose(0, 1))  # W x (B, A)
        return queue.popleft()

    def _remember(self, inputs: dict[str, Any]) -> None:
        """Push single observations into the n_obs_steps queues; the first one of an episode fills them."""
        for key in (OBS_IMAGES, OBS_STATE):
            queue = self._queues[key]
            while len(queue) < queue.maxlen - 1:
                queue.append(inputs[key])
            queue.append(inputs[key])

    def _history(self) -> dict[str, Tensor]:
        """The queued observations stacked along a step axis: (B, n_obs_steps, ...)."""
        return {key: torch.stack(list(self._queues[key]), dim=1) for key in (OBS_IMAGES, OBS_STATE)}

    def _sample(self, history: dict[str, Tensor], generator: torch.Generator | None) -> Tensor:
        """Predict a chunk in eval mode (centered crops, no dropout) and return it in dataset units."""
        if not bool(self.vqvae.discretized) and not self._warned_untrained:
            logger.warning("VQ-BeT acts with a VQ-VAE still in its first training phase: its codes mean nothing "
                           "yet, so the actions are noise (train past n_vqvae_training_steps)")
            self._warned_untrained = True
        was_training = self.training
        self.eval()
        try:
            actions = self.vqbet.predict_chunk(history, generator)
        finally:
            self.train(was_training)
        return self.normalizer.unnormalize(ACTION, actions)
