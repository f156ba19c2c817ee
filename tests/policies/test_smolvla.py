"""SmolVLA on a tiny backbone the tests write themselves (a SmolVLM config.json and a byte-level tokenizer made with
the `tokenizers` library): training, loss and denoising by hand, image and vector padding, attention masks,
tokenization, checkpoints, fine-tuning, the offline errors and the parameter count. The slow test has LeRobot 0.4.4
(the peer venv) save SmolVLA checkpoints from the same backbone folder and compares robotrain's actions and losses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers", reason="SmolVLA needs the `smolvla` extra: pip install 'robotrain[smolvla]'")

from safetensors.torch import load_file  # noqa: E402

from robotrain.configs.types import ACTION, FeatureType, PolicyFeature  # noqa: E402
from robotrain.devices import bf16_native  # noqa: E402
from robotrain.errors import ConfigError, UserError  # noqa: E402
from robotrain.policies import Policy  # noqa: E402
from robotrain.policies.factory import make_policy  # noqa: E402
from robotrain.policies.smolvla import modeling  # noqa: E402
from robotrain.policies.smolvla.configuration import SmolVLAConfig  # noqa: E402
from robotrain.policies.smolvla.modeling import SmolVLAPolicy, pad_vector, resize_with_pad, sample_time  # noqa: E402
from robotrain.policies.smolvla.tokens import TaskTokenizer  # noqa: E402
from robotrain.policies.smolvla.vlm import TINY_BACKBONE, write_tiny_backbone  # noqa: E402

VISUAL, STATE = FeatureType.VISUAL, FeatureType.STATE
CAMERA, WRIST = "observation.images.top", "observation.images.wrist"
TASKS = ["push the block", "pick up the red cube and put it in the bowl"]
PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("smolvlm"))


def make_config(backbone: Path | str, state_dim: int = 3, action_dim: int = 2, **fields) -> SmolVLAConfig:
    inputs = {CAMERA: PolicyFeature(VISUAL, (3, 24, 32)), "observation.state": PolicyFeature(STATE, (state_dim,))}
    return SmolVLAConfig(input_features=inputs, output_features={ACTION: PolicyFeature(FeatureType.ACTION,
                                                                                        (action_dim,))},
                         vlm_model_name=str(backbone), resize_imgs_with_padding=(32, 32), chunk_size=6,
                         n_action_steps=3, max_state_dim=8, max_action_dim=8, num_steps=3, num_vlm_layers=4,
                         device="cpu", **fields)


def stats_for(config: SmolVLAConfig, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, feature in {**config.input_features, **config.output_features}.items():
        shape = (feature.shape[0], 1, 1) if feature.type is VISUAL else tuple(feature.shape)
        out[key] = {"mean": torch.randn(shape, generator=gen), "std": torch.rand(shape, generator=gen) + 0.5,
                    "min": -torch.ones(shape), "max": torch.ones(shape)}
    return out


def make_policy_from(config: SmolVLAConfig, seed: int = 0) -> SmolVLAPolicy:
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(config)
    policy.load_stats(stats_for(config))
    return policy


def batch_for(config: SmolVLAConfig, batch: int = 2, seed: int = 0, tasks: list[str] | None = None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {key: torch.rand(batch, 1, *f.shape, generator=gen) if f.type is VISUAL else
           torch.randn(batch, 1, *f.shape, generator=gen) for key, f in config.input_features.items()}
    out[ACTION] = torch.randn(batch, config.chunk_size, config.output_features[ACTION].shape[0], generator=gen)
    out["action_is_pad"] = torch.zeros(batch, config.chunk_size, dtype=torch.bool)
    out["action_is_pad"][0, -2:] = True
    out["task"] = (tasks or TASKS)[:batch]
    return out


def observation(batch: dict, config: SmolVLAConfig, sample: int | slice = slice(None)) -> dict:
    index = sample if isinstance(sample, slice) else slice(sample, sample + 1)
    out = {key: batch[key][index, -1] for key in config.input_features}
    out["task"] = batch["task"][index]
    return out


def record(module: torch.nn.Module, store: list, output: bool = False):
    """A forward hook that appends the module's first input (or its output)."""
    return module.register_forward_hook(lambda _, args, out: store.append((out if output else args[0]).detach()))


def test_forward_backward_trains_the_expert_only(backbone):
    policy = make_policy_from(make_config(backbone))
    policy.train()
    loss, metrics = policy.forward(batch_for(policy.config))
    assert loss.ndim == 0 and torch.isfinite(loss) and metrics == {}
    loss.backward()
    named = dict(policy.named_parameters())
    with_grad = {name for name, p in named.items() if p.grad is not None}
    assert all(torch.isfinite(named[name].grad).all() for name in with_grad)
    assert not any(name.startswith("model.vlm_with_expert.vlm.") for name in with_grad)
    assert "model.state_proj.weight" in with_grad  # through the frozen VLM layers, by the state token
    assert {"model.action_in_proj.weight", "model.action_out_proj.weight",
            "model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"} <= with_grad
    assert set(map(id, policy.get_optim_params())) == {id(p) for p in named.values() if p.requires_grad}
    assert not policy.model.vlm_with_expert.vlm.training  # train() keeps the frozen VLM in eval mode


def test_training_the_vlm_too(backbone):
    policy = make_policy_from(make_config(backbone, train_expert_only=False))
    policy.train()
    policy.forward(batch_for(policy.config))[0].backward()
    grads = {name for name, p in policy.named_parameters() if p.grad is not None}
    assert "model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.up_proj.weight" in grads
    assert "model.vlm_with_expert.vlm.model.connector.modality_projection.proj.weight" in grads
    assert not any(".vision_model." in name or "lm_head" in name for name in grads)  # frozen, as LeRobot's


def test_save_load_gives_identical_actions(backbone, tmp_path):
    policy = make_policy_from(make_config(backbone)).eval()
    obs = observation(batch_for(policy.config), policy.config)
    noise = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(3))
    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)
    assert isinstance(loaded, SmolVLAPolicy)
    torch.testing.assert_close(loaded.state_dict(), policy.state_dict(), rtol=0, atol=0)
    assert torch.equal(loaded.predict_action_chunk(obs, noise=noise), policy.predict_action_chunk(obs, noise=noise))
    loaded.reset()
    actions = [loaded.select_action(obs, noise=noise) for _ in range(4)]  # 3 from the queue, then a new chunk
    expected = policy.predict_action_chunk(obs, noise=noise)
    for step, action in enumerate(actions):
        assert torch.equal(action, expected[:, step % 3])


# ---- the image cache (image_cache.py) ---------------------------------------------------------------------
def seeded_loss(policy: SmolVLAPolicy, batch: dict, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return policy.forward(batch)[0]


def test_image_cache_remembers_each_frame_and_changes_no_number(backbone):
    policy = make_policy_from(make_config(backbone)).train()
    cache, batch = policy.model.image_cache, batch_for(policy.config)
    first = seeded_loss(policy, batch, 1)
    assert (cache.misses, cache.hits, len(cache.entries)) == (2, 0, 2)
    again = seeded_loss(policy, batch, 1)
    assert (cache.misses, cache.hits) == (2, 2)
    assert torch.equal(first, again)
    # Each entry is the encoder's output on that image alone, bit for bit.
    pixels = resize_with_pad(batch[CAMERA][:, -1], 32, 32) * 2 - 1
    alone = policy.model.vlm_with_expert.embed_images(pixels[1:2])[0]
    assert torch.equal(cache.encode(pixels[1:2], encoder=None)[0], alone)
    # Without the cache (images encoded as one batch), the same loss within float rounding.
    uncached = make_policy_from(make_config(backbone, image_cache_gb=0)).train()
    torch.testing.assert_close(seeded_loss(uncached, batch, 1), first, rtol=1e-6, atol=1e-7)
    assert not uncached.model.image_cache.entries


def test_a_resumed_run_starts_with_an_empty_cache_and_stays_bit_exact(backbone, tmp_path):
    batches = [batch_for(make_config(backbone), seed=s) for s in (0, 1)]

    def train(policy: SmolVLAPolicy, optimizer, steps: range) -> None:
        policy.train()
        for step in steps:  # two batches, alternating: from step 2 on, every frame is a hit
            seeded_loss(policy, batches[step % 2], step).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    straight = make_policy_from(make_config(backbone))
    optimizer = straight.config.get_optimizer_preset().build(straight.get_optim_params())
    train(straight, optimizer, range(5))
    assert straight.model.image_cache.hits == 6

    first = make_policy_from(make_config(backbone))
    optimizer = first.config.get_optimizer_preset().build(first.get_optim_params())
    train(first, optimizer, range(3))
    first.save_pretrained(tmp_path)
    resumed = Policy.from_pretrained(tmp_path)
    resumed_optimizer = resumed.config.get_optimizer_preset().build(resumed.get_optim_params())
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    train(resumed, resumed_optimizer, range(3, 5))
    assert resumed.model.image_cache.hits == 0  # steps 3 and 4 encoded their frames again
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)


def test_image_cache_fills_then_stops_and_switches_off_when_nothing_repeats(backbone):
    policy = make_policy_from(make_config(backbone)).train()
    cache = policy.model.image_cache
    seeded_loss(policy, batch_for(policy.config, seed=0), 0)
    entry = cache.used_bytes // 2
    cache.clear()
    cache.budget_bytes = 3 * entry
    for seed in (0, 0, 1, 2):  # the first batch twice (hits), then new frames beyond the budget
        seeded_loss(policy, batch_for(policy.config, seed=seed), seed)
    assert cache.full and cache.enabled and len(cache.entries) == 3 and cache.hits == 2

    fresh = make_policy_from(make_config(backbone)).train()
    cache = fresh.model.image_cache
    cache.budget_bytes = 3 * entry
    for seed in range(3):  # every frame new, as under augmentation
        seeded_loss(fresh, batch_for(fresh.config, seed=seed), seed)
    assert not cache.enabled and not cache.entries and cache.used_bytes == 0
    assert cache.misses == 4  # off at the 4th frame, which did not fit: the last batch was not looked up
    seeded_loss(fresh, batch_for(fresh.config, seed=0), 0)
    assert cache.misses == 4 and not cache.entries


def test_a_full_disk_switches_the_image_cache_off_and_changes_nothing(backbone, monkeypatch, caplog):
    import errno
    import tempfile

    batch = batch_for(make_config(backbone))
    expected = seeded_loss(make_policy_from(make_config(backbone)).train(), batch, 1)

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_room)
    policy = make_policy_from(make_config(backbone)).train()
    with caplog.at_level("WARNING"):
        loss = seeded_loss(policy, batch, 1)
    assert torch.equal(loss, expected)
    cache = policy.model.image_cache
    assert not cache.enabled and not cache.entries
    assert caplog.text.count("cannot write its temporary file") == 1 and "Fix: point TMPDIR" in caplog.text


def test_image_cache_is_for_frozen_training_only(backbone):
    policy = make_policy_from(make_config(backbone))
    batch = batch_for(policy.config)
    policy.eval().predict_action_chunk(observation(batch, policy.config))
    assert policy.model.image_cache.misses == 0  # acting: every frame is new
    vlm_trains = make_policy_from(make_config(backbone, train_expert_only=False)).train()
    seeded_loss(vlm_trains, batch, 0)
    assert vlm_trains.model.image_cache.misses == 0  # the connector learns: its outputs change every step
    policy.train()
    seeded_loss(policy, batch, 0)
    assert policy.model.image_cache.entries
    copy = deepcopy(policy)  # a copy starts with an empty cache of the same budget, not the same file
    assert not copy.model.image_cache.entries and policy.model.image_cache.entries
    assert copy.model.image_cache.budget_bytes == policy.model.image_cache.budget_bytes
    policy.load_state_dict(policy.state_dict())  # new weights: the stored tokens no longer hold
    assert not policy.model.image_cache.entries and policy.model.image_cache.used_bytes == 0
    copy.train()
    seeded_loss(copy, batch, 0)
    assert copy.model.image_cache.entries
    with pytest.raises(ConfigError, match=r"image_cache_gb=-1.*Fix: e.g. --policy.image_cache_gb=2"):
        make_config(backbone, image_cache_gb=-1).validate()


def test_flow_matching_loss_matches_a_hand_computation(backbone):
    policy = make_policy_from(make_config(backbone))
    config, batch = policy.config, batch_for(policy.config)
    x_t, v_t = [], []
    hooks = [record(policy.model.action_in_proj, x_t), record(policy.model.action_out_proj, v_t, output=True)]
    torch.manual_seed(5)
    loss, _ = policy.forward(batch)
    for hook in hooks:
        hook.remove()
    torch.manual_seed(5)  # the same draws, in LeRobot's order: noise, then time
    noise = torch.normal(0.0, 1.0, size=(2, config.chunk_size, config.max_action_dim))
    time = torch.distributions.Beta(1.5, 1.0).sample((2,)) * 0.999 + 0.001
    stats = stats_for(config)[ACTION]
    actions = (batch[ACTION] - stats["mean"]) / (stats["std"] + 1e-8)
    actions = torch.cat([actions, torch.zeros(2, config.chunk_size, 6)], dim=2)  # zero-padded to max_action_dim
    t = time[:, None, None]
    torch.testing.assert_close(x_t[0], t * noise + (1 - t) * actions)
    squared = ((noise - actions) - v_t[0]) ** 2
    masked = squared * (~batch["action_is_pad"])[:, :, None]
    torch.testing.assert_close(loss, masked[:, :, :2].mean())  # the 2 real action dimensions only


def test_time_sampling_distribution():
    torch.manual_seed(0)
    times = sample_time(200_000, torch.device("cpu"))
    assert times.min() >= 0.001 and times.max() <= 1.0
    assert times.mean().item() == pytest.approx(0.001 + 0.999 * 1.5 / 2.5, abs=2e-3)  # Beta(1.5, 1) mean: 0.6


def test_euler_denoising_steps(backbone, monkeypatch):
    policy = make_policy_from(make_config(backbone)).eval()
    obs = observation(batch_for(policy.config), policy.config)
    noise = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    times, x_t, v_t = [], [], []
    embedding = modeling.time_embedding
    monkeypatch.setattr(modeling, "time_embedding", lambda t, *a: times.append(t.clone()) or embedding(t, *a))
    hooks = [record(policy.model.action_in_proj, x_t), record(policy.model.action_out_proj, v_t, output=True)]
    chunk = policy.predict_action_chunk(obs, noise=noise)
    for hook in hooks:
        hook.remove()
    assert [t[0].item() for t in times] == pytest.approx([1.0, 2 / 3, 1 / 3])  # num_steps=3, from t=1 down
    assert torch.equal(x_t[0], noise)
    for step in range(2):
        torch.testing.assert_close(x_t[step + 1], x_t[step] - v_t[step] / 3)
    final = x_t[2] - v_t[2] / 3
    stats = stats_for(policy.config)[ACTION]
    torch.testing.assert_close(chunk, final[:, :, :2] * (stats["std"] + 1e-8) + stats["mean"])


def test_resize_with_pad():
    wide = torch.arange(8.0).reshape(1, 1, 2, 4)
    out = resize_with_pad(wide, 8, 8, pad_value=-5.0)  # (width, height)
    assert out.shape == (1, 1, 8, 8)
    assert (out[:, :, :4] == -5.0).all()  # padded on the top
    expected = torch.nn.functional.interpolate(wide, size=(4, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, 4:], expected)
    tall = resize_with_pad(torch.ones(2, 3, 10, 5), 4, 4)
    assert tall.shape == (2, 3, 4, 4) and (tall[..., :2] == 0).all() and (tall[..., 2:] == 1).all()  # left pad
    same = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(resize_with_pad(same, 6, 6), same)


def test_state_and_actions_are_zero_padded_to_the_max_dims(backbone):
    assert torch.equal(pad_vector(torch.ones(2, 3), 5), torch.tensor([[1.0, 1, 1, 0, 0]] * 2))
    policy = make_policy_from(make_config(backbone))
    batch, states, x_t = batch_for(policy.config), [], []
    hooks = [record(policy.model.state_proj, states), record(policy.model.action_in_proj, x_t)]
    policy.forward(batch, noise=torch.ones(2, 6, 8), time=torch.full((2,), 0.25))
    for hook in hooks:
        hook.remove()
    stats = stats_for(policy.config)["observation.state"]
    normalized = (batch["observation.state"][:, -1] - stats["mean"]) / (stats["std"] + 1e-8)
    torch.testing.assert_close(states[0][:, :3], normalized)
    assert states[0].shape == (2, 8) and (states[0][:, 3:] == 0).all()
    assert torch.equal(x_t[0][:, :, 2:], torch.full((2, 6, 6), 0.25))  # t * noise + (1 - t) * 0


def test_attention_masks(backbone):
    """Padding is invisible, actions attend causally, and the cached inference path equals the training path."""
    policy = make_policy_from(make_config(backbone)).eval()
    batch = batch_for(policy.config)
    noise = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(2))
    both = policy.predict_action_chunk(observation(batch, policy.config), noise=noise)  # task 0 padded to task 1
    alone = policy.predict_action_chunk(observation(batch, policy.config, 0), noise=noise[:1])
    torch.testing.assert_close(both[:1], alone, rtol=0, atol=1e-5)
    # Action token j sees actions <= j only: changing the last noisy action leaves the others' velocity alone.
    _, context, state = policy._model_inputs(observation(batch, policy.config))
    model = policy.model
    with torch.no_grad():
        embeddings, pad = model.embed_context(**context)
        prefix = torch.cat([embeddings, model.state_proj(state)[:, None]], dim=1)
        pad = torch.cat([pad, torch.ones(2, 1, dtype=torch.bool)], dim=1)
        blocks = torch.cat([torch.zeros(2, pad.shape[1] - 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long)],
                           dim=1)
        cache = model.vlm_with_expert.encode_prefix(prefix, pad, blocks)
        time = torch.full((2,), 0.7)

        def velocity(x):
            cache.cross.clear()
            return model.velocity(model.vlm_with_expert.run(cache, None, model.embed_actions(x, time)))

        changed = noise.clone()
        changed[:, -1] += 1.0
        before, after = velocity(noise), velocity(changed)
        torch.testing.assert_close(before[:, :-1], after[:, :-1], rtol=0, atol=1e-6)
        assert not torch.allclose(before[:, -1], after[:, -1])
        # Training (cache: images + language; state and actions run together) gives the same velocity. Actions at
        # the statistics' mean normalize to 0, so there x_t = t * noise.
        v_train = []
        hook = record(model.action_out_proj, v_train, output=True)
        mean = stats_for(policy.config)[ACTION]["mean"]
        policy.elementwise_losses({**batch, ACTION: mean.expand(2, 6, 2)}, noise=noise, time=time)
        hook.remove()
    torch.testing.assert_close(v_train[0], velocity(0.7 * noise), rtol=0, atol=1e-5)


def test_task_texts_are_tokenized_once_each(backbone):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    calls = []
    counting = _Counting(tokenizer, calls)
    task_tokenizer = TaskTokenizer(counting, max_length=10, padding="longest")
    for _ in range(3):
        ids, mask = task_tokenizer(["ab", "a longer task", "ab"])
    assert calls == ["ab\n", "a longer task\n"] and task_tokenizer.encoded == 2
    assert ids.shape == (3, 10) and mask.sum(1).tolist() == [3, 10, 3]  # truncated to max_length
    assert ids[0, :3].tolist() == tokenizer("ab\n")["input_ids"] and (ids[0, 3:] == tokenizer.pad_token_id).all()
    assert task_tokenizer(["x\n"])[0].tolist() == [tokenizer("x\n")["input_ids"]]  # a newline is not doubled
    fixed = TaskTokenizer(tokenizer, max_length=12, padding="max_length")
    assert fixed(["ab"])[0].shape == (1, 12)


class _Counting:
    """A tokenizer that records the texts it encodes."""

    def __init__(self, tokenizer, calls: list):
        self.tokenizer, self.calls, self.pad_token_id = tokenizer, calls, tokenizer.pad_token_id

    def __call__(self, text, **kwargs):
        self.calls.append(text)
        return self.tokenizer(text, **kwargs)


def test_several_tasks_train_one_policy(backbone):
    policy = make_policy_from(make_config(backbone))
    batch = batch_for(policy.config, batch=3, tasks=["stack the cups", "open the drawer", "stack the cups"])
    policy.train()
    loss, _ = policy.forward(batch)
    loss.backward()
    assert policy.tokenizer.encoded == 2
    obs = observation(batch, policy.config, 0)
    noise = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0))
    first = policy.predict_action_chunk(obs, noise=noise)
    other = policy.predict_action_chunk({**obs, "task": ["open the drawer"]}, noise=noise)
    assert not torch.allclose(first, other)  # the instruction changes the actions


def test_missing_inputs_and_task_are_named(backbone):
    policy = make_policy_from(make_config(backbone))
    obs = observation(batch_for(policy.config), policy.config)
    with pytest.raises(UserError, match="'task'"):
        policy.predict_action_chunk({k: v for k, v in obs.items() if k != "task"})
    with pytest.raises(UserError, match="2 strings"):
        policy.predict_action_chunk({**obs, "task": ["only one"]})


def dataset_meta(config: SmolVLAConfig, camera: str, state_dim: int, action_dim: int) -> SimpleNamespace:
    features = {camera: {"dtype": "video", "shape": [20, 28, 3], "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
                ACTION: {"dtype": "float32", "shape": [action_dim], "names": None}}
    gen = torch.Generator().manual_seed(9)
    stats = {camera: {"mean": torch.rand(3, 1, 1, generator=gen), "std": torch.rand(3, 1, 1, generator=gen)},
             "observation.state": {"mean": torch.randn(state_dim, generator=gen), "std": torch.ones(state_dim)},
             ACTION: {"mean": torch.randn(action_dim, generator=gen), "std": torch.ones(action_dim)}}
    return SimpleNamespace(repo_id="test/smolvla_finetune", features=features, stats=stats)


def test_finetune_from_a_checkpoint_with_new_features(backbone, tmp_path):
    policy = make_policy_from(make_config(backbone))
    policy.save_pretrained(tmp_path)
    meta = dataset_meta(policy.config, WRIST, state_dim=5, action_dim=4)

    def pretrained():
        config = Policy.from_pretrained(tmp_path).config
        config.pretrained_path = tmp_path
        return config

    with pytest.raises(UserError, match="--adapt_features=true"):
        make_policy(pretrained(), ds_meta=meta)
    tuned = make_policy(pretrained(), ds_meta=meta, adapt_features=True)
    assert list(tuned.config.input_features) == [WRIST, "observation.state"]
    assert tuned.config.output_features[ACTION].shape == (4,)
    saved = load_file(tmp_path / "model.safetensors")
    for name, tensor in tuned.state_dict().items():  # every weight fits: vectors are padded to the max dims
        if not name.startswith("normalizer."):
            assert torch.equal(tensor, saved[name]), name
    torch.testing.assert_close(tuned.normalizer.stats["action"].mean, meta.stats[ACTION]["mean"])
    batch = {WRIST: torch.rand(2, 1, 3, 20, 28), "observation.state": torch.randn(2, 1, 5),
             ACTION: torch.randn(2, 6, 4), "task": ["a", "b"]}
    tuned.train()
    loss, _ = tuned.forward(batch)
    loss.backward()
    assert tuned.predict_action_chunk({WRIST: batch[WRIST][:, 0], "observation.state": batch["observation.state"][:, 0],
                                       "task": ["a", "b"]}).shape == (2, 6, 4)


def test_offline_errors_say_which_files_and_how_to_get_them(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        SmolVLAPolicy(make_config("robotrain-tests/no-such-backbone"))
    message = str(err.value)
    assert "\n" not in message
    for words in ("--policy.vlm_model_name=robotrain-tests/no-such-backbone", "HF_HUB_OFFLINE is set",
                  "config.json", "tokenizer.json", "tokenizer_config.json",
                  "hf download robotrain-tests/no-such-backbone", "--policy.vlm_model_name=/path/to/smolvlm2"):
        assert words in message
    assert "model.safetensors" not in message  # weights are not needed without load_vlm_weights
    with pytest.raises(ConfigError, match="model.safetensors"):
        SmolVLAPolicy(make_config("robotrain-tests/no-such-backbone", load_vlm_weights=True))

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((backbone / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"lacks tokenizer\.json, tokenizer_config\.json .*hf download") as err:
        SmolVLAPolicy(make_config(partial))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"lacks model\.safetensors.*--policy\.load_vlm_weights=false"):
        SmolVLAPolicy(make_config(backbone, load_vlm_weights=True))
    with pytest.raises(ConfigError, match="neither an existing local folder nor a Hub id.*hf download"):
        SmolVLAPolicy(make_config(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="load_vlm_weights"):
        SmolVLAPolicy(make_config(TINY_BACKBONE, load_vlm_weights=True))


def test_missing_transformers_is_one_line_with_the_install_command(backbone, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(UserError, match=r"^SmolVLA builds .* not installed\. Fix: pip install 'robotrain\[smolvla\]'$"):
        SmolVLAPolicy(make_config(backbone))


def test_a_checkpoint_never_reads_the_backbone_weights(backbone, tmp_path):
    """config.json says load_vlm_weights=true (as lerobot/smolvla_base's): loading it needs no weight file."""
    config = make_config(backbone)
    policy = make_policy_from(config)
    policy.config.load_vlm_weights = True
    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)  # the backbone folder has no model.safetensors
    assert loaded.config.load_vlm_weights
    vlm = loaded.model.vlm_with_expert.vlm
    expected = torch.bfloat16 if bf16_native("cpu") else torch.float32  # LeRobot's dtype, where native
    assert vlm.dtype == expected and loaded.model.state_proj.weight.dtype == torch.float32


def expected_parameter_count(text: dict, vision: dict, scale: int, config: SmolVLAConfig) -> int:
    """SmolVLA's parameter count from the backbone's sizes, worked out by hand as LeRobot builds it."""
    hidden, heads, kv, head = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"], \
        text["head_dim"]
    layers = min(config.num_vlm_layers, text["num_hidden_layers"])
    v = vision["hidden_size"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    vision_count = (3 * vision["patch_size"] ** 2 * v + v + patches * v + 2 * v
                    + vision["num_hidden_layers"] * (4 * (v * v + v) + 2 * v * vision["intermediate_size"]
                                                     + vision["intermediate_size"] + v + 4 * v))
    connector = v * scale**2 * hidden
    text_layer = (hidden * heads * head * 2 + 2 * hidden * kv * head + 3 * hidden * text["intermediate_size"]
                  + 2 * hidden)
    vlm = vision_count + connector + 2 * text["vocab_size"] * hidden + layers * text_layer + hidden
    width = int(hidden * config.expert_width_multiplier)
    mlp = 256 * ((4 * int(2 * width / 3) + 255) // 256)
    expert = width  # final norm
    for index in range(layers):
        cross = index % config.self_attn_every_n_layers != 0
        kv_in = kv * head if cross else width
        expert += width * heads * head * 2 + 2 * (kv_in * kv * head) + 3 * width * mlp + 2 * width
    projections = (config.max_state_dim * hidden + hidden + 2 * (config.max_action_dim * width)
                   + config.max_action_dim + width + 2 * width * width + width + width * width + width)
    return vlm + expert + projections


def test_parameter_count_as_lerobot_builds_it(backbone):
    policy = make_policy_from(make_config(backbone))
    config = json.loads((backbone / "config.json").read_text())
    expected = expected_parameter_count(config["text_config"], config["vision_config"], config["scale_factor"],
                                        policy.config)
    assert sum(p.numel() for p in policy.parameters()) == expected


@pytest.mark.slow
def test_actions_and_losses_match_lerobot_for_its_own_checkpoints(backbone, tmp_path):
    """LeRobot builds SmolVLA from the same backbone folder, saves checkpoints and acts on fixed inputs and noise;
    robotrain loads the directories and must give the same actions, training losses and parameter count."""
    if not PEER_PYTHON.exists():
        pytest.skip(f"the LeRobot peer venv is absent ({PEER_PYTHON}); build it with ../shared/peer/setup_lerobot.sh")
    probe = subprocess.run([str(PEER_PYTHON), "-c", "import transformers, num2words"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the peer venv lacks LeRobot's smolvla extra (transformers, num2words)")
    script = Path(__file__).with_name("peer_smolvla.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(PEER_PYTHON), str(script), str(tmp_path), str(backbone)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in ("default", "variant", "bf16"):
        directory = tmp_path / variant
        io, meta = load_file(directory / "io.safetensors"), json.loads((directory / "io.json").read_text())
        policy = Policy.from_pretrained(directory)
        assert isinstance(policy, SmolVLAPolicy)
        assert sum(p.numel() for p in policy.parameters()) == meta["params"]
        # float32 as LeRobot without load_vlm_weights; with it, LeRobot's bfloat16 VLM and expert (where native),
        # compared to bfloat16 rounding.
        low = variant == "bf16" and bf16_native("cpu")
        atol = 1e-2 if low else 1e-5
        expert = policy.model.vlm_with_expert.lm_expert
        assert expert.layers[0].mlp.up_proj.weight.dtype == (torch.bfloat16 if low else torch.float32)
        assert expert.layers[1].self_attn.k_proj.weight.dtype == torch.float32  # a cross layer's new projection
        steps = sorted({int(key.split(".")[1]) for key in io if key.startswith("step.")})
        obs = [{**{k.split(".", 2)[2]: v for k, v in io.items() if k.startswith(f"step.{t}.")},
                "task": meta["tasks"]} for t in steps]
        got = [policy.predict_action_chunk(obs[0], noise=io["noise.0"])]
        expected = [io["chunk"]]
        policy.reset()
        for t in steps:
            got.append(policy.select_action(obs[t], noise=io[f"noise.{t}"]))
            expected.append(io[f"action.{t}"])
        normalize = policy.normalizer.normalize  # compared in normalized units, as the other LeRobot checks
        for ours, theirs in zip(got, expected, strict=True):
            assert torch.isfinite(theirs).all()
            torch.testing.assert_close(normalize({ACTION: ours})[ACTION], normalize({ACTION: theirs})[ACTION],
                                       rtol=0, atol=atol)
        train = {k.removeprefix("train."): v for k, v in io.items()
                 if k.startswith("train.") and k not in ("train.noise", "train.time", "train.losses")}
        with torch.no_grad():
            losses = policy.elementwise_losses({**train, "task": meta["tasks"]}, io["train.noise"], io["train.time"])
        torch.testing.assert_close(losses, io["train.losses"], rtol=1e-5, atol=50 * atol if low else 1e-4)
