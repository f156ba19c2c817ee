"""The sampler resumes at the exact sample; checkpoints round-trip optimizer, scheduler and RNG state exactly."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch

from robotrain.configs.run import step_id
from robotrain.training import checkpoint as ckpt
from robotrain.training.metrics import format_big_number, train_line
from robotrain.training.sampler import EpisodeAwareSampler


def test_sampler_drops_the_last_frames_of_each_episode_and_shuffles_per_epoch():
    sampler = EpisodeAwareSampler([0, 10, 15], [10, 15, 30], drop_n_last_frames=3, seed=7)
    first_epoch = list(itertools.islice(iter(sampler), len(sampler)))
    assert sorted(first_epoch) == [*range(0, 7), *range(10, 12), *range(15, 27)]
    second_epoch = list(itertools.islice(iter(sampler), len(sampler)))
    assert sorted(second_epoch) == sorted(first_epoch) and second_epoch != first_epoch
    again = EpisodeAwareSampler([0, 10, 15], [10, 15, 30], drop_n_last_frames=3, seed=7)
    assert list(itertools.islice(iter(again), len(again))) == first_epoch  # the order depends on the seed only


@pytest.mark.parametrize("drawn", [0, 5, 21, 50])
def test_sampler_resumes_at_the_next_sample(drawn):
    stream = list(itertools.islice(iter(EpisodeAwareSampler([0, 8], [8, 21], seed=3)), 80))
    resumed = EpisodeAwareSampler([0, 8], [8, 21], seed=3)
    resumed.load_state_dict(resumed.state_after(drawn))
    assert list(itertools.islice(iter(resumed), 80 - drawn)) == stream[drawn:]


def test_sampler_refuses_episodes_shorter_than_the_drop():
    with pytest.raises(ValueError, match="drop_n_last_frames"):
        EpisodeAwareSampler([0], [5], drop_n_last_frames=5)


def test_rng_state_round_trip_restores_every_generator():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    state = ckpt.rng_state()
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(state)
    got = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_optimizer_state_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}]
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    ckpt.save_optimizer_state(optimizer, tmp_path)
    fresh = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], lr=0.1)
    ckpt.load_optimizer_state(fresh, tmp_path)
    for a, b in zip(optimizer.state_dict()["state"].values(), fresh.state_dict()["state"].values(), strict=True):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.param_groups[1]["lr"] == 0.5
    assert json.loads((tmp_path / ckpt.OPTIMIZER_PARAM_GROUPS).read_text())["param_groups"][0]["lr"] == 0.1


def test_fused_adam_resumes_exactly_on_channels_last_weights(tmp_path):
    """The file holds state contiguous; loading must give it the weight's layout, or fused Adam pairs wrong elements."""
    def train(model, optimizer, steps, seed):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            model(torch.randn(2, 3, 8, 8, generator=generator).contiguous(memory_format=torch.channels_last)).square(
            ).mean().backward()
            optimizer.step()
            optimizer.zero_grad()

    def build():
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 5, 3).to(memory_format=torch.channels_last)
        return model, torch.optim.Adam(model.parameters(), lr=0.1, fused=True)

    uninterrupted, optimizer = build()
    train(uninterrupted, optimizer, 2, seed=1)
    ckpt.save_optimizer_state(optimizer, tmp_path)
    weights = {k: v.clone() for k, v in uninterrupted.state_dict().items()}
    train(uninterrupted, optimizer, 2, seed=2)
    resumed, fresh = build()
    resumed.load_state_dict(weights)
    ckpt.load_optimizer_state(fresh, tmp_path)
    train(resumed, fresh, 2, seed=2)
    assert torch.equal(resumed.weight, uninterrupted.weight) and torch.equal(resumed.bias, uninterrupted.bias)


def test_step_ids_and_partial_checkpoint_cleanup(tmp_path):
    assert step_id(100, 5000) == "000100" and step_id(7, 12_345_678) == "00000007"
    root = tmp_path / "checkpoints"
    (root / "000010" / "pretrained_model").mkdir(parents=True)
    (root / ".tmp-000020" / "pretrained_model").mkdir(parents=True)
    (root / ".tmp-last").symlink_to("000010")
    ckpt.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["000010"]


def test_log_line_has_lerobots_fields_in_order():
    assert format_big_number(999) == "999" and format_big_number(12_345) == "12K" and format_big_number(2.5e6) == "2M"
    line = train_line(2000, 16_000, 200.0, 20_000, {"loss": 0.6421, "grad_norm": 31.5, "lr": 1e-5, "update_s": 0.41,
                                                     "data_s": 0.004, "samples_per_s": 19.4, "l1_loss": 0.5})
    assert line == ("step:2K smpl:16K ep:80 epch:0.80 loss:0.642 grdn:31.500 lr:1.0e-05 updt_s:0.410 data_s:0.004 "
                    "smp/s:19.4 l1_loss:0.500")
