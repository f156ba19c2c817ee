"""The contract every registered policy keeps, checked on its registry entry's tiny variant.

forward/backward on a training batch shaped as LeRobotDataset delivers it, save -> load giving identical actions,
reset() starting the action queue over, and a seeded regression value of the loss (the registry's tiny_loss).
A new policy folder is covered here as soon as it registers a model.
"""

from __future__ import annotations

import math

import pytest
import torch

from robotrain.configs.types import ACTION, REWARD, TASK, FeatureType, pad_key
from robotrain.policies import policy_specs
from robotrain.policies.base import Policy

SPECS = {name: spec for name, spec in sorted(policy_specs().items()) if spec.model is not None}


def tiny_policy(name: str, seed: int = 0) -> Policy:
    spec = SPECS[name]
    config = spec.config_class(**{"device": "cpu", **spec.tiny_config})
    torch.manual_seed(seed)
    policy = spec.policy_class()(config)
    policy.load_stats(neutral_stats(config))
    return policy


def neutral_stats(config) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics of every feature under every mode (mean 0 / std 1, min -1 / max 1): values pass nearly as is."""
    stats = {}
    for key, feature in {**config.input_features, **config.output_features}.items():
        shape = (feature.shape[0], 1, 1) if feature.type is FeatureType.VISUAL else tuple(feature.shape)
        stats[key] = {"mean": torch.zeros(shape), "std": torch.ones(shape), "min": -torch.ones(shape),
                      "max": torch.ones(shape)}
    return stats


def training_batch(config, batch_size: int = 2, seed: int = 0) -> dict:
    """A batch as LeRobotDataset + the loader give it: time-stacked where the config asks for offsets, with masks."""
    gen = torch.Generator().manual_seed(seed)
    obs_steps = config.observation_delta_indices
    batch: dict = {}
    for key, feature in config.input_features.items():
        lead = (batch_size, len(obs_steps)) if obs_steps is not None else (batch_size,)
        visual = feature.type is FeatureType.VISUAL
        batch[key] = (torch.rand if visual else torch.randn)(*lead, *feature.shape, generator=gen)
        if obs_steps is not None:
            batch[pad_key(key)] = torch.zeros(lead, dtype=torch.bool)
    action_dim = config.output_features[ACTION].shape[0]
    steps = len(config.action_delta_indices)
    batch[ACTION] = torch.randn(batch_size, steps, action_dim, generator=gen).clamp(-1, 1)
    batch[pad_key(ACTION)] = torch.zeros(batch_size, steps, dtype=torch.bool)
    batch[pad_key(ACTION)][0, -1] = True  # the first sample's episode ends before its last action
    if config.reward_delta_indices is not None:
        rewards = len(config.reward_delta_indices)
        batch[REWARD] = torch.rand(batch_size, rewards, generator=gen)
        batch[pad_key(REWARD)] = torch.zeros(batch_size, rewards, dtype=torch.bool)
    batch[TASK] = ["push the block"] * batch_size
    return batch


def observation(config, batch: dict, sample: int = 0) -> dict:
    """One observation of the batch (the current frame of a time-stacked one), as an env gives it."""
    obs_steps = config.observation_delta_indices
    now = obs_steps.index(0) if obs_steps is not None else None
    out = {key: (batch[key][sample:sample + 1, now] if now is not None else batch[key][sample:sample + 1])
           for key in config.input_features}
    out[TASK] = batch[TASK][sample:sample + 1]
    return out


def act(policy: Policy, obs: dict, calls: int, seed: int = 0) -> torch.Tensor:
    """`calls` actions after a reset, with the sampling RNG seeded (several policies sample at inference)."""
    torch.manual_seed(seed)
    policy.reset()
    return torch.stack([policy.select_action(obs) for _ in range(calls)])


@pytest.mark.parametrize("name", SPECS)
def test_forward_backward_gives_finite_gradients(name):
    policy = tiny_policy(name)
    policy.train()
    loss, metrics = policy.forward(training_batch(policy.config))
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert all(isinstance(v, float) for v in metrics.values()), metrics
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", SPECS)
def test_save_load_gives_identical_actions(name, tmp_path):
    policy = tiny_policy(name)
    obs = observation(policy.config, training_batch(policy.config))
    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)
    assert type(loaded) is type(policy)
    assert torch.equal(act(loaded, obs, 3), act(policy.eval(), obs, 3))


@pytest.mark.parametrize("name", SPECS)
def test_reset_starts_over(name):
    policy = tiny_policy(name).eval()
    batch = training_batch(policy.config)
    first = act(policy, observation(policy.config, batch, 0), 4)
    other = observation(policy.config, batch, 1)
    torch.manual_seed(0)
    policy.reset()
    policy.select_action(other)  # leaves queued actions (or observations) of another episode behind
    assert torch.equal(act(policy, observation(policy.config, batch, 0), 4), first)


@pytest.mark.parametrize("name", SPECS)
def test_seeded_loss_regression_value(name):
    expected = SPECS[name].tiny_loss
    assert expected is not None, f"the {name} registry entry has no tiny_loss"
    policy = tiny_policy(name)
    policy.train()
    torch.manual_seed(1)
    loss, _ = policy.forward(training_batch(policy.config))
    assert loss.item() == pytest.approx(expected, rel=1e-4)
