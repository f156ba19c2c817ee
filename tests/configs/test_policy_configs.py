"""Policy configs carry LeRobot's names, defaults, presets and delta indices."""

from __future__ import annotations

import dataclasses

import pytest

from robotrain.configs.policies import PolicyConfig
from robotrain.configs.schema import field_docs, validate_tree
from robotrain.configs.train import EvalPipelineConfig, TrainConfig
from robotrain.configs.types import NormalizationMode
from robotrain.envs.configs import EnvConfig
from robotrain.optim.optimizers import AdamConfig, AdamWConfig, OptimizerConfig
from robotrain.optim.schedulers import (
    CosineDecayWithWarmupSchedulerConfig,
    DiffuserSchedulerConfig,
    LRSchedulerConfig,
)
from robotrain.policies import ACTConfig, DiffusionConfig, SmolVLAConfig, TDMPCConfig, VQBeTConfig
from robotrain.policies.vqbet.configuration import VQBeTSchedulerConfig


def test_registered_policy_types():
    assert sorted(PolicyConfig.get_known_choices()) == ["act", "diffusion", "mlp", "smolvla", "tdmpc", "vqbet"]
    assert sorted(EnvConfig.get_known_choices()) == ["aloha", "pusht", "xarm"]
    assert sorted(OptimizerConfig.get_known_choices()) == ["adam", "adamw", "sgd"]
    assert {"diffuser", "cosine", "vqbet", "cosine_decay_with_warmup"} <= set(LRSchedulerConfig.get_known_choices())


def test_act_defaults():
    c = ACTConfig()
    assert (c.chunk_size, c.n_action_steps, c.dim_model, c.n_heads, c.dim_feedforward) == (100, 100, 512, 8, 3200)
    assert (c.n_encoder_layers, c.n_decoder_layers, c.use_vae, c.latent_dim, c.kl_weight) == (4, 1, True, 32, 10.0)
    assert c.pretrained_backbone_weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert c.action_delta_indices == list(range(100)) and c.observation_delta_indices is None
    assert c.get_optimizer_preset() == AdamWConfig(lr=1e-5, weight_decay=1e-4) and c.get_scheduler_preset() is None
    assert c.normalization_mapping == dict.fromkeys(("VISUAL", "STATE", "ACTION"), NormalizationMode.MEAN_STD)


def test_diffusion_defaults_are_the_published_pusht_ones():
    c = DiffusionConfig()
    assert (c.n_obs_steps, c.horizon, c.n_action_steps, c.crop_shape, c.drop_n_last_frames) == (2, 16, 8, (84, 84), 7)
    assert c.drop_n_last_frames == c.horizon - c.n_action_steps - c.n_obs_steps + 1
    assert c.observation_delta_indices == [-1, 0] and c.action_delta_indices == list(range(-1, 15))
    assert c.get_optimizer_preset() == AdamConfig(lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
    assert c.get_scheduler_preset() == DiffuserSchedulerConfig(name="cosine", num_warmup_steps=500)


def test_other_policies_presets_and_indices():
    t = TDMPCConfig()
    assert t.observation_delta_indices == list(range(6)) and t.reward_delta_indices == list(range(5))
    assert t.get_optimizer_preset() == AdamConfig(lr=3e-4)
    v = VQBeTConfig()
    assert v.observation_delta_indices == [-4, -3, -2, -1, 0] and v.action_delta_indices == list(range(-4, 7))
    assert v.get_scheduler_preset() == VQBeTSchedulerConfig(num_warmup_steps=500, num_vqvae_training_steps=20000)
    s = SmolVLAConfig()
    assert s.get_scheduler_preset() == CosineDecayWithWarmupSchedulerConfig(
        num_warmup_steps=1000, num_decay_steps=30000, peak_lr=1e-4, decay_lr=2.5e-6)
    assert s.get_optimizer_preset().betas == (0.9, 0.95)


@pytest.mark.parametrize("cls", list(PolicyConfig.get_known_choices().values()))
def test_default_policy_configs_are_valid(cls):
    validate_tree(cls())


def _config_classes():
    seen, todo = set(), [TrainConfig, EvalPipelineConfig]
    for base in (PolicyConfig, EnvConfig, OptimizerConfig, LRSchedulerConfig):
        todo.extend(base.get_known_choices().values())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for f in dataclasses.fields(cls):
            if isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
                todo.append(f.type)
    return sorted(seen, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_flag_has_a_docstring(cls):
    """--help explains every flag: each init field has a docstring under it."""
    docs = field_docs(cls)
    undocumented = [f.name for f in dataclasses.fields(cls) if f.init and not docs.get(f.name)]
    assert not undocumented, f"{cls.__name__} fields without a docstring: {undocumented}"
