"""ACT: forward/backward, save/load, action queue, temporal ensembling, masking, a regression value, sizes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from robotrain.configs.types import FeatureType, PolicyFeature
from robotrain.errors import ConfigError, UserError
from robotrain.policies import ACTConfig, ACTPolicy, make_policy

CAM = "observation.images.top"
TINY = {"dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 2, "n_decoder_layers": 2,
        "n_vae_encoder_layers": 2, "latent_dim": 4, "chunk_size": 6, "n_action_steps": 6}
# LeRobot 0.4.4's ACTPolicy at its default config, one 3x96x96 camera, 2-D state and action (bench/policy_step.py).
LEROBOT_DEFAULT_PARAMS = 51_588_994


def features(image_shape=(3, 32, 32), state_dim=3, action_dim=2, env_dim=0) -> tuple[dict, dict]:
    inputs = {CAM: PolicyFeature(FeatureType.VISUAL, image_shape)} if image_shape else {}
    if state_dim:
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    if env_dim:
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (env_dim,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}


def stats_for(config: ACTConfig, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, feature in {**config.input_features, **config.output_features}.items():
        shape = (feature.shape[0], 1, 1) if feature.type is FeatureType.VISUAL else feature.shape
        out[key] = {"mean": torch.rand(shape, generator=gen), "std": torch.rand(shape, generator=gen) + 0.5}
    return out


def tiny_policy(seed: int = 0, **overrides) -> ACTPolicy:
    kwargs = {**TINY, "pretrained_backbone_weights": None, "device": "cpu", **overrides}
    inputs, outputs = features(**kwargs.pop("features", {}))
    config = ACTConfig(input_features=inputs, output_features=outputs, **kwargs)
    torch.manual_seed(seed)
    policy = ACTPolicy(config)
    policy.load_stats(stats_for(config))
    return policy


def make_batch(policy: ACTPolicy, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {key: torch.rand(batch_size, *f.shape, generator=gen) if f.type is FeatureType.VISUAL
             else torch.randn(batch_size, *f.shape, generator=gen) for key, f in policy.config.input_features.items()}
    chunk = policy.config.chunk_size
    batch["action"] = torch.randn(batch_size, chunk, policy.config.output_features["action"].shape[0], generator=gen)
    batch["action_is_pad"] = torch.zeros(batch_size, chunk, dtype=torch.bool)
    batch["action_is_pad"][0, chunk - 2:] = True
    return batch


def observation(batch: dict, index: int = 0) -> dict:
    return {k: v[index: index + 1] for k, v in batch.items() if k.startswith("observation.")}


def test_forward_backward_reaches_every_parameter():
    policy = tiny_policy()
    policy.train()
    loss, metrics = policy.forward(make_batch(policy))
    assert set(metrics) == {"l1_loss", "kld_loss"} and all(isinstance(v, float) for v in metrics.values())
    assert math.isclose(loss.item(), metrics["l1_loss"] + policy.config.kl_weight * metrics["kld_loss"], rel_tol=1e-5)
    loss.backward()
    no_grad = [n for n, p in policy.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters())


@pytest.mark.parametrize("overrides", [
    {"use_vae": False},
    {"pre_norm": True, "feedforward_activation": "gelu"},
    {"feedforward_activation": "glu", "replace_final_stride_with_dilation": True},
    {"features": {"image_shape": None, "state_dim": 0, "env_dim": 5}},
    {"features": {"env_dim": 4}},
])
def test_variants_train_and_predict(overrides):
    policy = tiny_policy(**overrides)
    batch = make_batch(policy, batch_size=3)
    loss, metrics = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss) and ("kld_loss" in metrics) == policy.config.use_vae
    actions = policy.predict_action_chunk(observation(batch))
    assert actions.shape == (1, policy.config.chunk_size, 2)


def test_save_load_gives_identical_actions(tmp_path):
    policy = tiny_policy()
    batch = make_batch(policy)
    before = policy.predict_action_chunk(batch)
    policy.save_pretrained(tmp_path)
    loaded = ACTPolicy.from_pretrained(tmp_path)
    assert torch.equal(loaded.predict_action_chunk(batch), before)
    assert loaded.config.input_features == policy.config.input_features
    overridden = ACTPolicy.from_pretrained(tmp_path, n_action_steps=1, temporal_ensemble_coeff=0.01)
    assert overridden.temporal_ensembler is not None
    assert torch.equal(overridden.predict_action_chunk(batch), before)


def test_select_action_queue_matches_chunks():
    policy = tiny_policy(n_action_steps=4)
    batch = make_batch(policy, batch_size=7)
    policy.reset()
    got = torch.stack([policy.select_action(observation(batch, t)) for t in range(7)])  # (7, 1, A)
    first = policy.predict_action_chunk(observation(batch, 0))[0]  # (chunk, A)
    second = policy.predict_action_chunk(observation(batch, 4))[0]
    expected = torch.cat([first[:4], second[:3]])
    torch.testing.assert_close(got[:, 0], expected)
    policy.reset()  # a reset starts a new chunk from the next observation
    torch.testing.assert_close(policy.select_action(observation(batch, 5))[0], policy.predict_action_chunk(
        observation(batch, 5))[0, 0])


@pytest.mark.parametrize("coeff", [0.01, 0.7, -0.3])
def test_temporal_ensembling_matches_offline_average(coeff):
    policy = tiny_policy(n_action_steps=1, temporal_ensemble_coeff=coeff, chunk_size=4)
    steps = 9
    batch = make_batch(policy, batch_size=steps)
    chunks = [policy.predict_action_chunk(observation(batch, t))[0].double() for t in range(steps)]  # (chunk, A)
    policy.reset()
    for t in range(steps):
        action = policy.select_action(observation(batch, t))[0]
        # Predictions covering step t, oldest first; the j-th oldest weighs exp(-coeff * j).
        covering = [chunks[k][t - k] for k in range(max(0, t - 3), t + 1)]
        weights = torch.exp(-coeff * torch.arange(len(covering), dtype=torch.float64))
        expected = sum(w * a for w, a in zip(weights, covering, strict=True)) / weights.sum()
        torch.testing.assert_close(action.double(), expected, rtol=1e-5, atol=1e-6)


def test_padded_steps_do_not_change_the_loss():
    policy = tiny_policy()
    batch = make_batch(policy)
    changed = dict(batch, action=batch["action"].clone())
    changed["action"][batch["action_is_pad"]] = 1e3  # garbage where the episode has ended
    losses = []
    for b in (batch, changed):
        torch.manual_seed(1)  # same dropout masks and latent sample
        losses.append(policy.forward(b)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)


def test_l1_is_a_mean_over_all_entries_with_padding_zeroed():
    policy = tiny_policy(use_vae=False)
    batch = make_batch(policy)
    policy.eval()
    loss, _ = policy.forward(batch)
    target = policy.normalizer.normalize(batch)["action"]
    predicted = policy.normalizer.normalize({"action": policy.predict_action_chunk(batch)})["action"]
    expected = ((target - predicted).abs() * ~batch["action_is_pad"][..., None]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_seeded_regression_value():
    policy = tiny_policy(seed=123)
    batch = make_batch(policy, seed=7)
    torch.manual_seed(0)
    loss, metrics = policy.forward(batch)
    action = policy.predict_action_chunk(batch)[0, 0]
    assert metrics["l1_loss"] == pytest.approx(REGRESSION["l1_loss"], rel=1e-4)
    assert metrics["kld_loss"] == pytest.approx(REGRESSION["kld_loss"], rel=1e-4)
    assert action.tolist() == pytest.approx(REGRESSION["action"], rel=1e-4, abs=1e-5)


# Recorded from this implementation after checking it against LeRobot 0.4.4 (same weights loaded strictly into both:
# eval actions, VAE mu / log sigma^2 and the training loss agree within 5e-7). A change here means the math changed.
REGRESSION = {"l1_loss": 0.6152120232582092, "kld_loss": 1.7800310850143433,
              "action": [0.6402168273925781, -0.7506475448608398]}


def test_default_parameter_count_equals_lerobot():
    inputs, outputs = features(image_shape=(3, 96, 96), state_dim=2, action_dim=2)
    config = ACTConfig(input_features=inputs, output_features=outputs, pretrained_backbone_weights=None)
    policy = ACTPolicy(config)
    assert sum(p.numel() for p in policy.parameters()) == LEROBOT_DEFAULT_PARAMS


def test_optimizer_groups_put_the_backbone_apart():
    policy = tiny_policy(optimizer_lr_backbone=3e-6)
    rest, backbone = policy.get_optim_params()
    names = {id(p): n for n, p in policy.named_parameters()}
    assert backbone["lr"] == 3e-6 and "lr" not in rest
    assert all(names[id(p)].startswith("model.backbone.") for p in backbone["params"])
    assert len(rest["params"]) + len(backbone["params"]) == len(list(policy.parameters()))
    optimizer = policy.config.get_optimizer_preset().build(policy.get_optim_params())
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 3e-6]


def test_make_policy_from_pusht_like_dataset():
    camera = {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channel"]}
    meta = SimpleNamespace(
        repo_id="local/pusht",
        features={"observation.image": camera,
                  "observation.state": {"dtype": "float32", "shape": [2], "names": None},
                  "action": {"dtype": "float32", "shape": [2], "names": None},
                  "episode_index": {"dtype": "int64", "shape": [1], "names": None}},
        stats={"observation.image": {"mean": [[[0.5]]] * 3, "std": [[[0.2]]] * 3},
               "observation.state": {"mean": [200.0, 300.0], "std": [100.0, 90.0]},
               "action": {"mean": [210.0, 290.0], "std": [95.0, 85.0]}})
    config = ACTConfig(pretrained_backbone_weights=None, device="cpu", **TINY)
    policy = make_policy(config, ds_meta=meta)
    assert set(policy.config.input_features) == {"observation.image", "observation.state"}
    assert policy.config.input_features["observation.image"].shape == (3, 96, 96)
    batch = make_batch(policy)
    loss, _ = policy.forward(batch)
    loss.backward()
    assert policy.select_action(observation(batch)).shape == (1, 2)


def test_default_weights_offline_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no torchvision download cache either
    inputs, outputs = features()
    with pytest.raises(ConfigError, match="pretrained_backbone_weights"):
        ACTPolicy(ACTConfig(input_features=inputs, output_features=outputs, **TINY))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"temporal_ensemble_coeff": 0.01}, "n_action_steps=1"),
    ({"n_action_steps": 7}, "must not exceed chunk_size"),
    ({"features": {"image_shape": None}}, "at least one camera"),
    ({"features": {"image_shape": (1, 32, 32)}}, "RGB"),
    ({"dim_model": 33, "n_heads": 3}, "must be even"),
])
def test_bad_configs_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        tiny_policy(**overrides)


def test_missing_batch_keys_are_user_errors():
    policy = tiny_policy()
    batch = make_batch(policy)
    with pytest.raises(UserError, match="action_is_pad"):
        policy.forward({k: v for k, v in batch.items() if k != "action_is_pad"})
    with pytest.raises(UserError, match="observation.state"):
        policy.select_action({CAM: batch[CAM]})
