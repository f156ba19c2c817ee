"""VQ-BeT: residual VQ and EMA codebooks by hand, the two training phases, loss terms, queues, LeRobot's defaults,
parameter count, optimizer groups and names, config errors; the slow test compares with LeRobot 0.4.4 itself."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file

from robotrain.configs.types import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE, FeatureType, PolicyFeature, pad_key
from robotrain.errors import ConfigError
from robotrain.policies import Policy, VQBeTConfig, VQBeTPolicy
from robotrain.policies.vqbet.configuration import VQBeTSchedulerConfig
from robotrain.policies.vqbet.head import focal_loss
from robotrain.policies.vqbet.lerobot_names import map_lerobot_names
from robotrain.policies.vqbet.vqvae import EmaCodebook, ResidualVQ
from tests.policies.test_contract import tiny_policy, training_batch

PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"
PUSHT_FEATURES = {
    "input_features": {OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                       OBS_STATE: PolicyFeature(FeatureType.STATE, (2,))},
    "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
}
# LeRobot 0.4.4's VQBeTConfig defaults (lerobot/policies/vqbet/configuration_vqbet.py), field by field.
LEROBOT_DEFAULTS = {
    "n_obs_steps": 5, "n_action_pred_token": 3, "action_chunk_size": 5, "vision_backbone": "resnet18",
    "crop_shape": (84, 84), "crop_is_random": True, "pretrained_backbone_weights": None, "use_group_norm": True,
    "spatial_softmax_num_keypoints": 32, "n_vqvae_training_steps": 20000, "vqvae_n_embed": 16,
    "vqvae_embedding_dim": 256, "vqvae_enc_hidden_dim": 128, "gpt_block_size": 500, "gpt_input_dim": 512,
    "gpt_output_dim": 512, "gpt_n_layer": 8, "gpt_n_head": 8, "gpt_hidden_dim": 512, "dropout": 0.1,
    "offset_loss_weight": 10000.0, "primary_code_loss_weight": 5.0, "secondary_code_loss_weight": 0.5,
    "bet_softmax_temperature": 0.1, "sequentially_select": False, "optimizer_lr": 1e-4,
    "optimizer_betas": (0.95, 0.999), "optimizer_eps": 1e-8, "optimizer_weight_decay": 1e-6,
    "optimizer_vqvae_lr": 1e-3, "optimizer_vqvae_weight_decay": 1e-4, "scheduler_warmup_steps": 500,
}


def pusht_config(**overrides) -> VQBeTConfig:
    return VQBeTConfig(device="cpu", **{**PUSHT_FEATURES, **overrides})


def train_steps(policy: VQBeTPolicy, optimizer: torch.optim.Optimizer, steps: int, first_seed: int = 0) -> list[dict]:
    """Optimizer steps as the trainer takes them, each on its own seeded batch and RNG; returns the metrics."""
    policy.train()
    out = []
    for i in range(steps):
        torch.manual_seed(first_seed + i)
        loss, metrics = policy.forward(training_batch(policy.config, batch_size=4, seed=first_seed + i))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append(metrics)
    return out


def preset_optimizer(policy: VQBeTPolicy) -> torch.optim.Optimizer:
    return policy.config.get_optimizer_preset().build(policy.get_optim_params())


def vqvae_state(policy: VQBeTPolicy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.vqvae.state_dict().items()}


# ---- residual VQ and codebooks -------------------------------------------------------------------------------
def test_residual_vq_quantizes_as_computed_by_hand():
    rvq = ResidualVQ(dim=2, num_quantizers=2, codebook_size=3)
    rvq.layers[0]._codebook.embed.copy_(torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]]))
    rvq.layers[1]._codebook.embed.copy_(torch.tensor([[[0.0, 0.0], [0.25, 0.0], [0.0, 0.5]]]))
    rvq.freeze_codebook.fill_(True)
    x = torch.tensor([[0.9, 0.1], [0.2, 1.7]], requires_grad=True)
    # Row 0: nearest (1, 0) leaves (-0.1, 0.1), nearest (0, 0). Row 1: (0, 2) leaves (0.2, -0.3), nearest (0.25, 0).
    quantized, codes, losses = rvq.train()(x)
    assert codes.tolist() == [[1, 0], [2, 1]]
    torch.testing.assert_close(quantized, torch.tensor([[1.0, 0.0], [0.25, 2.0]]))
    # Commitment: mean squared distance of each layer's input to its code.
    expected = [(0.01 + 0.01 + 0.04 + 0.09) / 4, (0.01 + 0.01 + 0.0025 + 0.09) / 4]
    torch.testing.assert_close(losses, torch.tensor(expected))
    quantized.sum().backward()  # straight-through in both layers: each passes the gradient on to x
    torch.testing.assert_close(x.grad, torch.full((2, 2), 2.0))
    eval_quantized, eval_codes, eval_losses = rvq.eval()(x)
    assert torch.equal(eval_codes, codes) and not eval_losses.any()
    torch.testing.assert_close(eval_quantized, quantized)
    torch.testing.assert_close(rvq.codebook_vectors(codes), quantized)


def test_ema_codebook_update_as_computed_by_hand():
    book = EmaCodebook(dim=2, size=3)
    book.embed_avg.copy_(torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]]))
    book.cluster_size.copy_(torch.tensor([[1.0, 2.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    book.ema_update(x, torch.tensor([0, 0, 2]))
    # decay 0.8: counts (2, 0, 1) and sums ((4, 0), (0, 0), (0, 4)) enter with weight 0.2.
    torch.testing.assert_close(book.cluster_size, torch.tensor([[1.2, 1.6, 0.2]]))
    torch.testing.assert_close(book.embed_avg, torch.tensor([[[1.6, 0.8], [1.6, 1.6], [2.4, 3.2]]]))
    # Laplace smoothing with eps 1e-5 over 3 codes, total count 3.
    smoothed = [(n + 1e-5) / (3.0 + 3e-5) * 3.0 for n in (1.2, 1.6, 0.2)]
    expected = [[1.6 / smoothed[0], 0.8 / smoothed[0]], [1.6 / smoothed[1], 1.6 / smoothed[1]],
                [2.4 / smoothed[2], 3.2 / smoothed[2]]]
    torch.testing.assert_close(book.embed, torch.tensor([expected]))
    # The codes are now about (1.33, 0.67), (1, 1) and (12, 16).
    assert book.nearest(torch.tensor([[1.3, 0.7], [1.1, 1.2], [11.0, 15.0]])).tolist() == [0, 1, 2]


def test_codebooks_start_kaiming_uniform_and_move_only_in_phase_one_training():
    """LeRobot's VQ-BeT uses lucidrains' defaults: random kaiming-uniform codebooks, no k-means initialisation."""
    book = EmaCodebook(dim=256, size=16)
    bound = math.sqrt(6 / (16 * 256))  # kaiming-uniform of a (1, 16, 256) tensor: fan_in = 16 * 256
    assert book.embed.abs().max() <= bound and book.embed.abs().max() > 0.95 * bound
    assert torch.equal(book.embed_avg, book.embed) and not book.cluster_size.any() and book.initted.item() == 1
    rvq = ResidualVQ(dim=4, num_quantizers=2, codebook_size=5)
    x = torch.randn(8, 4)
    before = {k: v.clone() for k, v in rvq.layers.state_dict().items()}
    rvq.eval()(x)
    rvq.train()
    rvq.freeze_codebook.fill_(True)
    rvq(x)
    assert all(torch.equal(v, before[k]) for k, v in rvq.layers.state_dict().items())
    rvq.freeze_codebook.fill_(False)
    rvq(x)
    assert not torch.equal(rvq.layers[0]._codebook.embed, before["0._codebook.embed"])


# ---- the two phases ------------------------------------------------------------------------------------------
def test_vqvae_trains_for_n_steps_then_freezes_while_the_gpt_trains():
    policy = tiny_policy("vqbet")
    assert policy.config.n_vqvae_training_steps == 2
    optimizer = preset_optimizer(policy)
    codebook = policy.vqvae.vq_layer.layers[0]._codebook.embed.clone()
    first = train_steps(policy, optimizer, 1)
    assert set(first[0]) == {"n_different_codes", "n_different_combinations", "recon_l1_error"}
    assert int(policy.vqvae.optimized_steps) == 1 and not policy.vqvae.discretized
    assert not torch.equal(policy.vqvae.vq_layer.layers[0]._codebook.embed, codebook)  # EMA moved it
    gpt_before = {k: v.clone() for k, v in policy.vqbet.policy.state_dict().items()}
    train_steps(policy, optimizer, 1, first_seed=1)  # the last VQ-VAE step: the switch follows it
    assert policy.vqvae.discretized and policy.vqvae.vq_layer.freeze_codebook
    assert all(torch.equal(v, gpt_before[k]) for k, v in policy.vqbet.policy.state_dict().items())
    frozen = vqvae_state(policy)
    metrics = train_steps(policy, optimizer, 2, first_seed=2)
    assert {"classification_loss", "offset_loss", "equal_primary_code_rate"} <= set(metrics[0])
    assert all(torch.equal(v, frozen[k]) for k, v in policy.vqvae.state_dict().items())
    assert all(p.grad is None for p in policy.vqvae.parameters())
    assert not torch.equal(policy.vqbet.policy.state_dict()["lm_head.weight"], gpt_before["lm_head.weight"])
    assert int(policy.vqvae.optimized_steps) == 2


def test_the_phase_survives_save_and_load_so_resuming_is_exact(tmp_path):
    straight = tiny_policy("vqbet")
    optimizer = preset_optimizer(straight)
    train_steps(straight, optimizer, 3)  # 2 VQ-VAE steps, then 1 GPT step

    first = tiny_policy("vqbet")
    optimizer = preset_optimizer(first)
    train_steps(first, optimizer, 1)
    first.save_pretrained(tmp_path)
    resumed = Policy.from_pretrained(tmp_path)
    assert int(resumed.vqvae.optimized_steps) == 1
    optimizer_resumed = preset_optimizer(resumed)
    optimizer_resumed.load_state_dict(optimizer.state_dict())
    train_steps(resumed, optimizer_resumed, 2, first_seed=1)
    ours, theirs = resumed.state_dict(), straight.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]


def test_scheduler_preset_holds_the_lr_through_phase_one_then_warms_up_and_decays():
    config = pusht_config(n_vqvae_training_steps=20, scheduler_warmup_steps=10)
    scheduler = config.get_scheduler_preset()
    assert isinstance(scheduler, VQBeTSchedulerConfig)
    assert (scheduler.num_vqvae_training_steps, scheduler.num_warmup_steps, scheduler.num_cycles) == (20, 10, 0.5)
    factor = scheduler.lr_lambda(100)
    # LeRobot's formula: 1 during phase 1, linear warmup from 0, then a half cosine whose progress is measured
    # against the whole run (100 - 10 steps), so it does not reach 0 at the end.
    assert [factor(s) for s in (0, 19, 20, 25, 30)] == [1.0, 1.0, 0.0, 0.5, 1.0]
    assert factor(75) == pytest.approx(0.5) and factor(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 69 / 90)))
    optimizer = config.get_optimizer_preset()
    assert (optimizer.type, optimizer.lr, optimizer.betas, optimizer.eps, optimizer.weight_decay) == \
        ("adam", 1e-4, (0.95, 0.999), 1e-8, 1e-6)


# ---- loss, padding, queues -----------------------------------------------------------------------------------
def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    # p = 3/4 for the first row's target, 1/2 for the second's; gamma 2.
    expected = (-(0.25 ** 2) * math.log(0.75) - (0.5 ** 2) * math.log(0.5)) / 2
    assert focal_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(expected)


@pytest.mark.parametrize("sequential", [False, True])
def test_phase_two_loss_is_weighted_focal_losses_plus_weighted_offset_l1(sequential):
    config = dataclasses.replace(tiny_policy("vqbet").config, sequentially_select=sequential,
                                 primary_code_loss_weight=3.0, secondary_code_loss_weight=0.25,
                                 offset_loss_weight=100.0)
    torch.manual_seed(0)
    head = VQBeTPolicy(config).vqbet.action_head
    head.vqvae_model.freeze()  # the second phase
    features = torch.randn(2, 4, config.gpt_output_dim)
    targets = torch.randn(2, 4, config.action_chunk_size, 2)
    out = head(features, generator=torch.Generator().manual_seed(3))
    loss, metrics = head.loss(out, targets)
    codes, logits = out["sampled_centers"], out["cbet_logits"]
    # The predicted chunk: the sampled codes' decoded vectors plus their offsets, summed over the two layers.
    rows = torch.arange(8)
    offsets = out["cbet_offsets"][rows, 0, codes[:, 0]] + out["cbet_offsets"][rows, 1, codes[:, 1]]
    vectors = sum(head.vqvae_model.vq_layer.layers[i]._codebook.embed[0][codes[:, i]] for i in range(2))
    predicted = head.vqvae_model.decoder(vectors).view(8, -1, 2) + offsets.view(8, -1, 2)
    torch.testing.assert_close(out["predicted_action"].reshape(8, -1, 2), predicted)
    true_codes = head.vqvae_model.codes_of(targets.reshape(8, -1, 2))
    focal = [-(1 - p) ** 2 * p.log() for p in (F.softmax(logits[:, i], -1)[rows, true_codes[:, i]] for i in range(2))]
    l1 = (targets.reshape(8, -1, 2) - predicted).abs().mean()
    expected = 3.0 * focal[0].mean() + 0.25 * focal[1].mean() + 100.0 * l1
    torch.testing.assert_close(loss, expected)
    assert metrics["offset_loss"] == pytest.approx(l1.item(), rel=1e-6)
    assert metrics["classification_loss"] == pytest.approx((expected - 100.0 * l1).item(), rel=1e-6)


def test_targets_are_the_chunks_each_query_predicts_and_padding_is_not_masked():
    config = pusht_config()
    assert len(config.action_delta_indices) == 11  # n_obs_steps - 1 + n_action_pred_token + chunk - 1
    policy = tiny_policy("vqbet")
    rows = policy.vqbet.select_target_actions_indices  # query k covers actions k .. k + W - 1
    assert rows.tolist() == [[k, k + 1, k + 2] for k in range(policy.config.n_obs_steps + 1)]
    policy.vqvae.freeze()
    batch = training_batch(policy.config, batch_size=3)
    padded = {**batch, pad_key(ACTION): torch.ones_like(batch[pad_key(ACTION)]),
              pad_key(OBS_STATE): torch.ones_like(batch[pad_key(OBS_STATE)])}
    losses = []
    for sample in (batch, padded):
        torch.manual_seed(5)
        losses.append(policy.train().forward(sample)[0])
    # As LeRobot: the dataset repeats an episode's edge frame into padded steps, and those count as targets.
    assert torch.equal(losses[0], losses[1])


def test_queues_predict_a_chunk_every_action_chunk_size_steps_from_the_last_observations():
    policy = tiny_policy("vqbet").eval()
    policy.vqvae.freeze()
    n, chunk = policy.config.n_obs_steps, policy.config.action_chunk_size
    calls = []
    predict = policy.vqbet.predict_chunk
    policy.vqbet.predict_chunk = lambda history, generator: calls.append(history) or predict(history, generator)
    states = [torch.full((1, 3), float(t) / 10) for t in range(7)]
    image = torch.rand(1, 3, 24, 24)
    policy.reset()
    actions = [policy.select_action({OBS_IMAGE: image, OBS_STATE: s}) for s in states]
    assert len(calls) == 3 and all(a.shape == (1, 2) for a in actions)  # at steps 0, 3 and 6
    normalize = policy.normalizer.normalize
    for call, t in zip(calls, (0, chunk, 2 * chunk), strict=True):
        window = [states[max(0, i)] for i in range(t - n + 1, t + 1)]  # the first observation fills the queue
        expected = normalize({OBS_STATE: torch.stack(window, dim=1)})[OBS_STATE]
        torch.testing.assert_close(call[OBS_STATE], expected)
        assert call[OBS_STATE].shape == (1, n, 3) and call["observation.images"].shape == (1, n, 1, 3, 24, 24)
    # A time-stacked observation gives the same chunk as the queues holding it.
    stacked = {OBS_IMAGE: image.unsqueeze(1).expand(1, n, 3, 24, 24), OBS_STATE: torch.stack(states[4:7], dim=1)}
    chunk_actions = policy.predict_action_chunk(stacked, generator=torch.Generator().manual_seed(1))
    policy.reset()
    for s in states[:7]:
        policy._remember(policy._model_inputs({OBS_IMAGE: image, OBS_STATE: s}))
    from_queue = policy._sample(policy._history(), torch.Generator().manual_seed(1))
    assert chunk_actions.shape == (1, chunk, 2)
    torch.testing.assert_close(chunk_actions, from_queue)


# ---- LeRobot's defaults, size, optimizer groups, names -------------------------------------------------------
def test_defaults_and_fields_are_lerobots():
    config = VQBeTConfig()
    assert {name: getattr(config, name) for name in LEROBOT_DEFAULTS} == LEROBOT_DEFAULTS
    base = {f.name for f in dataclasses.fields(VQBeTConfig.__mro__[1])}
    own = {f.name for f in dataclasses.fields(VQBeTConfig)} - base - {"normalization_mapping"}
    assert own == set(LEROBOT_DEFAULTS) - {"n_obs_steps"}  # no field LeRobot 0.4.4 lacks
    assert {k: v.value for k, v in config.normalization_mapping.items()} == \
        {"VISUAL": "IDENTITY", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"}
    assert config.observation_delta_indices == [-4, -3, -2, -1, 0]
    assert config.action_delta_indices == list(range(-4, 7))


def test_parameter_count_and_optimizer_groups_equal_lerobots():
    policy = VQBeTPolicy(pusht_config())
    # Measured once with LeRobot 0.4.4 (the peer venv): VQBeTPolicy(VQBeTConfig(<these PushT features>)), the sum of
    # p.numel() over policy.parameters(), and per group of get_optim_params(): len(params), their numel, options.
    assert sum(p.numel() for p in policy.parameters()) == 37_515_530
    groups = policy.get_optim_params()
    summary = [(len(g["params"]), sum(p.numel() for p in g["params"]), {k: v for k, v in g.items() if k != "params"})
               for g in groups]
    assert summary == [(107, 37_103_104, {}), (12, 101_642, {"weight_decay": 1e-4, "lr": 1e-3}),
                       (68, 310_784, {"weight_decay": 0.0})]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(policy.parameters()))


def to_lerobot_names(state: dict[str, torch.Tensor], config: VQBeTConfig) -> dict[str, torch.Tensor]:
    """A robotrain state dict as LeRobot 0.4.4 saves it: numbered ResNet children, the grid and causal masks, no
    VQ-VAE step count (the names and extras checked against the peer's state dict)."""
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    out = {}
    for name, tensor in state.items():
        if name.startswith("normalizer.") or name.endswith("optimized_steps"):
            continue
        prefix = "vqbet.rgb_encoder.backbone."
        if name.startswith(prefix):
            child, rest = name[len(prefix):].split(".", 1)
            name = f"{prefix}{index[child]}.{rest}"
        out[name] = tensor
    out["vqbet.rgb_encoder.pool.pos_grid"] = torch.zeros(9, 2)
    size = config.gpt_block_size
    for layer in range(config.gpt_n_layer):
        out[f"vqbet.policy.transformer.h.{layer}.attn.bias"] = torch.ones(size, size).tril().view(1, 1, size, size)
    return out


@pytest.mark.parametrize("discretized", [False, True])
def test_lerobot_names_map_onto_the_model_and_the_phase_follows_discretized(discretized):
    source = tiny_policy("vqbet")
    if discretized:
        source.vqvae.freeze()
    state = to_lerobot_names(source.state_dict(), source.config)
    assert "vqbet.policy.transformer.h.0.attn.c_attn.weight" in state
    assert "vqbet.action_head.vqvae_model.vq_layer.layers.1._codebook.embed_avg" in state
    target = tiny_policy("vqbet", seed=1)
    missing, unexpected = target.load_state_dict(map_lerobot_names(state), strict=False)
    assert not unexpected and all(k.startswith("normalizer.") for k in missing)
    assert int(target.vqvae.optimized_steps) == (source.config.n_vqvae_training_steps if discretized else 0)
    assert bool(target.vqvae.discretized) is discretized
    for key, value in source.state_dict().items():
        if not key.endswith("optimized_steps"):
            assert torch.equal(target.state_dict()[key], value), key


# ---- config errors -------------------------------------------------------------------------------------------
CAMERA = PolicyFeature(FeatureType.VISUAL, (3, 96, 96))
STATE = PolicyFeature(FeatureType.STATE, (2,))


@pytest.mark.parametrize(("inputs", "overrides", "field", "words"), [
    ({OBS_STATE: STATE}, {}, "policy.input_features", "has no camera"),
    ({"observation.images.a": CAMERA, "observation.images.b": CAMERA, OBS_STATE: STATE}, {}, "policy.input_features",
     "has 2 cameras"),
    ({OBS_IMAGE: CAMERA}, {}, "policy.input_features", "needs a 1-D 'observation.state'"),
    ({OBS_IMAGE: CAMERA, OBS_STATE: STATE, OBS_ENV_STATE: PolicyFeature(FeatureType.ENV, (16,))}, {},
     "policy.input_features", "not ['observation.environment_state']"),
    ({OBS_IMAGE: PolicyFeature(FeatureType.VISUAL, (1, 96, 96)), OBS_STATE: STATE}, {}, "policy.input_features",
     "RGB images"),
    ({OBS_IMAGE: CAMERA, OBS_STATE: STATE}, {"crop_shape": (100, 84)}, "policy.crop_shape", "does not fit"),
])
def test_features_vqbet_cannot_use_are_refused(inputs, overrides, field, words):
    config = pusht_config(input_features=inputs, **overrides)
    with pytest.raises(ConfigError) as error:
        VQBeTPolicy(config)
    assert error.value.field == field and words in str(error.value) and error.value.fix


@pytest.mark.parametrize(("overrides", "field"), [
    ({"n_vqvae_training_steps": 0}, "n_vqvae_training_steps"),
    ({"gpt_block_size": 16}, "gpt_block_size"),  # a sample is 3 * 5 + 3 - 1 = 17 tokens
    ({"gpt_n_head": 3}, "gpt_n_head"),
    ({"vision_backbone": "vgg16"}, "vision_backbone"),
    ({"bet_softmax_temperature": 0.0}, "bet_softmax_temperature"),
    ({"pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"}, "use_group_norm"),
])
def test_bad_config_values_are_refused_with_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        pusht_config(**overrides).validate()
    assert error.value.field == field and error.value.fix


def test_a_block_of_exactly_the_tokens_of_a_sample_is_enough():
    pusht_config(gpt_block_size=17).validate()


# ---- LeRobot itself ------------------------------------------------------------------------------------------
def _group(io: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in io.items() if key.startswith(prefix)}


def _check_phase_one(directory: Path, io: dict[str, torch.Tensor]) -> None:
    """The untrained checkpoint's first VQ-VAE step: loss, metrics, EMA-updated codebooks and gradients."""
    policy = Policy.from_pretrained(directory / "init").train()
    loss, metrics = policy.forward(_group(io, "batch.0."))
    loss.backward()
    assert loss.item() == pytest.approx(io["phase1.loss"].item(), rel=1e-6)
    assert metrics == pytest.approx({k: io[f"phase1.{k}"].item() for k in metrics}, rel=1e-6)
    for name, value in policy.vqvae.vq_layer.state_dict().items():
        if "._codebook." in name:
            torch.testing.assert_close(value, io[f"phase1.{name}"], rtol=0, atol=1e-6)
    for name, param in policy.vqvae.named_parameters():
        torch.testing.assert_close(param.grad, io[f"phase1.grad.{name}"], rtol=0, atol=1e-6)


def _check_trained(directory: Path, io: dict[str, torch.Tensor]) -> None:
    """The trained checkpoint: training loss (seeded sampling) and seeded actions, logits and offsets."""
    policy = Policy.from_pretrained(directory / "trained")
    assert policy.vqvae.discretized and int(policy.vqvae.optimized_steps) == policy.config.n_vqvae_training_steps
    torch.manual_seed(7)
    loss, metrics = policy.train().forward(_group(io, "batch.0."))
    assert loss.item() == pytest.approx(io["phase2.loss"].item(), rel=1e-5)
    assert metrics == pytest.approx({k: io[f"phase2.{k}"].item() for k in metrics}, rel=1e-5, abs=1e-6)
    head, captured = policy.vqbet.action_head, {}
    for i, module in enumerate(head.code_heads()):
        module.register_forward_hook(lambda m, args, out, i=i: captured.__setitem__(f"logits{i}", out))
    head.map_to_cbet_preds_offset.register_forward_hook(lambda m, args, out: captured.__setitem__("offsets", out))
    policy.eval().reset()
    normalize = policy.normalizer.normalize
    steps = sorted({int(key.split(".")[1]) for key in io if key.startswith("step.")})
    for t in steps:
        captured.clear()
        torch.manual_seed(100 + t)
        action = policy.select_action(_group(io, f"step.{t}."))
        assert torch.isfinite(io[f"action.{t}"]).all() and io[f"action.{t}"].abs().max() > 50  # dataset units
        # Compared in the network's units: in dataset units the tolerance would scale with the statistics.
        torch.testing.assert_close(normalize({ACTION: action})[ACTION], normalize({ACTION: io[f"action.{t}"]})[ACTION],
                                   rtol=0, atol=1e-5)
        assert bool(captured) == (f"logits.{t}" in io)
        if captured:
            logits = torch.cat([captured[f"logits{i}"] for i in range(len(head.code_heads()))], dim=-1)
            torch.testing.assert_close(logits, io[f"logits.{t}"], rtol=0, atol=1e-5)
            torch.testing.assert_close(captured["offsets"], io[f"offsets.{t}"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_lerobot_vqbet_checkpoints_load_and_give_the_same_losses_and_actions(tmp_path):
    """LeRobot trains tiny VQ-BeTs through the VQ-VAE phase and saves them; robotrain loads those directories and must
    reproduce LeRobot's VQ-VAE step, training loss, head outputs and (seeded) actions."""
    if not PEER_PYTHON.exists():
        pytest.skip(f"the LeRobot peer venv is absent ({PEER_PYTHON}); build it with ../shared/peer/setup_lerobot.sh")
    script = Path(__file__).with_name("peer_vqbet.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(PEER_PYTHON), str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in ("parallel", "sequential"):
        io = load_file(tmp_path / variant / "io.safetensors")
        _check_phase_one(tmp_path / variant, io)
        _check_trained(tmp_path / variant, io)
    # The saved files really are LeRobot's layout: numbered backbone, causal masks, no step count.
    saved = load_file(tmp_path / "parallel" / "trained" / "model.safetensors")
    assert "vqbet.rgb_encoder.backbone.4.0.conv1.weight" in saved and "vqbet.policy.transformer.h.0.attn.bias" in saved
    assert not any(key.endswith("optimized_steps") for key in saved)
