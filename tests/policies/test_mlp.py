"""The MLP policy: observation history, EMA weights at inference, padded actions, features, and that it learns."""

from __future__ import annotations

import logging

import pytest
import torch

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature, pad_key
from robotrain.errors import ConfigError
from robotrain.policies import MLPConfig, MLPPolicy
from tests.policies.test_contract import neutral_stats

STATE, ENV = PolicyFeature(FeatureType.STATE, (3,)), PolicyFeature(FeatureType.ENV, (4,))
ACT = PolicyFeature(FeatureType.ACTION, (2,))


def make(**fields) -> MLPPolicy:
    config = MLPConfig(**{"device": "cpu", "input_features": {OBS_STATE: STATE, OBS_ENV_STATE: ENV},
                          "output_features": {ACTION: ACT}, "hidden_dim": 32, "n_blocks": 2, "chunk_size": 6,
                          "n_action_steps": 3, **fields})
    torch.manual_seed(0)
    policy = MLPPolicy(config)
    policy.load_stats(neutral_stats(config))
    return policy


def observation(seed: int, batch: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {OBS_STATE: torch.randn(batch, 3, generator=gen), OBS_ENV_STATE: torch.randn(batch, 4, generator=gen)}


def test_select_action_sees_the_last_n_obs_steps():
    policy = make(n_obs_steps=2)
    first, second = observation(1), observation(2)
    policy.reset()
    assert torch.equal(policy.select_action(first), policy.predict_action_chunk(
        {k: torch.stack([first[k], first[k]], 1) for k in first})[:, 0])  # the first observation fills the history
    for _ in range(2):  # the rest of the first chunk; the second observation is remembered meanwhile
        policy.select_action(first)
    new_chunk = policy.select_action(second)
    stacked = {k: torch.stack([first[k], second[k]], 1) for k in first}
    assert torch.equal(new_chunk, policy.predict_action_chunk(stacked)[:, 0])


def test_actions_come_from_the_averaged_weights():
    policy = make()
    optimizer = torch.optim.SGD(policy.get_optim_params(), lr=0.5)
    batch = {**{k: v.unsqueeze(1) for k, v in observation(3).items()}, ACTION: torch.rand(2, 6, 2),
             pad_key(ACTION): torch.zeros(2, 6, dtype=torch.bool)}
    for _ in range(3):
        loss, _ = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        policy.update()
    obs = observation(4)
    assert policy.state_keys == [OBS_ENV_STATE, OBS_STATE]  # concatenated in key order
    x = torch.cat([obs[OBS_ENV_STATE], obs[OBS_STATE]], -1)
    with torch.no_grad():
        raw = policy.model(x)
        with policy.ema.applied(policy.model):
            averaged = policy.model(x)
    assert not torch.allclose(raw, averaged)
    torch.testing.assert_close(policy.predict_action_chunk(obs), averaged)  # neutral stats: units are unchanged


def test_padded_actions_do_not_count():
    policy = make()
    batch = {**{k: v.unsqueeze(1) for k, v in observation(5).items()}, ACTION: torch.rand(2, 6, 2),
             pad_key(ACTION): torch.zeros(2, 6, dtype=torch.bool)}
    batch[pad_key(ACTION)][:, 4:] = True
    before, _ = policy(batch)
    batch[ACTION][:, 4:] = 1e6
    after, _ = policy(batch)
    assert before.item() == after.item()


def test_cameras_are_left_out_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        policy = make(input_features={OBS_STATE: STATE, OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 8, 8))})
    assert "observation.image not used" in caplog.text
    assert policy.state_keys == [OBS_STATE]


def test_no_state_vector_is_refused():
    with pytest.raises(ConfigError, match=r"policy\.input_features.*at least one state vector.*Fix"):
        make(input_features={OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 8, 8))})


def test_n_action_steps_cannot_exceed_the_chunk():
    with pytest.raises(ConfigError, match="n_action_steps"):
        make(n_action_steps=7)


def test_it_fits_a_chunk_that_depends_on_the_state():
    """Actions that are a fixed nonlinear function of the observation: the loss falls to a fifth of its start."""
    policy = make(hidden_dim=64, use_ema=False)
    optimizer = torch.optim.Adam(policy.get_optim_params(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(7, 12, generator=gen)
    losses = []
    for step in range(600):
        obs = observation(100 + step, batch=64)
        x = torch.cat([obs[OBS_STATE], obs[OBS_ENV_STATE]], -1)
        target = torch.tanh(x @ mixing).view(64, 6, 2)
        batch = {**{k: v.unsqueeze(1) for k, v in obs.items()}, ACTION: target,
                 pad_key(ACTION): torch.zeros(64, 6, dtype=torch.bool)}
        loss, _ = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:20]) / 20


def test_one_observation_step_acts_from_the_latest_chunk():
    policy = make(n_obs_steps=1)
    first, second = observation(1), observation(2)
    policy.reset()
    actions = [policy.select_action(obs) for obs in (first, second, second, second)]
    chunk_1, chunk_2 = policy.predict_action_chunk(first), policy.predict_action_chunk(second)
    for i in range(3):
        assert torch.equal(actions[i], chunk_1[:, i])
    assert torch.equal(actions[3], chunk_2[:, 0])  # a new chunk from the observation of the fourth call
