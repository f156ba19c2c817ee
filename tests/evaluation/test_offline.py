"""Evaluation on recorded episodes: the action error against a hand computation, `robotrain eval --dataset.*`, and
the validation loss training logs with --dataset.val_episodes / --dataset.val_fraction."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from robotrain.cli import main
from robotrain.configs.default import DatasetConfig
from robotrain.datasets import LeRobotDataset
from robotrain.errors import ConfigError
from robotrain.evaluation.offline import OfflineEvaluator
from tests.datasets.helpers import record
from tests.training.test_train_e2e import TINY

LENGTHS = [12, 9, 14]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", LENGTHS)


class ZeroPolicy(nn.Module):
    """Predicts all-zero chunks of `chunk` actions; its loss is 0.5. Its recorded-action samples start 2 steps
    before the frame (as Diffusion's do), so the alignment of predictions with recorded actions is exercised."""

    def __init__(self, chunk: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(observation_delta_indices=None, action_delta_indices=list(range(-2, chunk)),
                                      reward_delta_indices=None)
        self.chunk = chunk

    def forward(self, batch):
        return torch.tensor(0.5), {}

    def reset(self):
        pass

    def predict_action_chunk(self, batch):
        return torch.zeros(len(batch["observation.state"]), self.chunk, 2)


def test_action_error_matches_a_hand_computation(dataset_root):
    chunk = 4
    policy = ZeroPolicy(chunk)
    seconds = [i / 10 for i in policy.config.action_delta_indices]
    dataset = LeRobotDataset("test/synthetic", root=dataset_root, delta_timestamps={"action": seconds},
                             episodes=[1, 2])
    report = OfflineEvaluator(dataset, batch_size=5, max_samples=None).run(policy)
    # The recorded action of episode e, frame i is (100 e + i, -i); a zero prediction's error is its magnitude.
    errors = np.zeros((chunk, 2)), np.zeros((chunk, 1))
    for episode in (1, 2):
        length = LENGTHS[episode]
        for frame in range(length):
            for step in range(min(chunk, length - frame)):  # steps past the episode's end are left out
                errors[0][step] += [100 * episode + frame + step, frame + step]
                errors[1][step] += 1
    assert report["n_samples"] == LENGTHS[1] + LENGTHS[2] and report["loss"] == pytest.approx(0.5)
    assert report["mae_per_step"] == pytest.approx((errors[0].sum(1) / (2 * errors[1][:, 0])).tolist(), rel=1e-6)
    per_dimension = errors[0].sum(0) / errors[1].sum()
    assert report["mae_per_dimension"] == pytest.approx({"x": per_dimension[0], "y": per_dimension[1]}, rel=1e-6)
    assert report["action_mae"] == pytest.approx(errors[0].sum() / (2 * errors[1].sum()), rel=1e-6)


def test_max_samples_picks_a_fixed_subset(dataset_root):
    dataset = LeRobotDataset("test/synthetic", root=dataset_root, delta_timestamps={"action": [0.0, 0.1]})
    first = OfflineEvaluator(dataset, max_samples=7, seed=3)
    again = OfflineEvaluator(dataset, max_samples=7, seed=3)
    assert first.n_samples == 7 and list(first.loader.sampler) == list(again.loader.sampler)


def test_split_episodes():
    cfg = DatasetConfig(repo_id="u/d", val_fraction=0.25)
    training, held = cfg.split_episodes(8)
    assert len(held) == 2 and sorted(training + held) == list(range(8)) and not set(training) & set(held)
    assert cfg.split_episodes(8) == (training, held), "the split is fixed"
    assert DatasetConfig(repo_id="u/d", episodes=[3, 4, 5], val_episodes=[4]).split_episodes(8) == ([3, 5], [4])
    assert DatasetConfig(repo_id="u/d").split_episodes(8) == (None, [])
    with pytest.raises(ConfigError, match="holds out every one of the 2 episodes"):
        DatasetConfig(repo_id="u/d", episodes=[0, 1], val_episodes=[0, 1]).split_episodes(8)


def train(dataset_root: Path, run: Path, *flags: str) -> int:
    return main(["train", *TINY["act"], "--dataset.repo_id=test/synthetic", f"--dataset.root={dataset_root}",
                 "--batch_size=4", "--num_workers=0", "--log_freq=1", f"--output_dir={run}", *flags])


def test_training_logs_a_validation_loss_on_held_out_episodes(workdir, dataset_root, capsys):
    assert train(dataset_root, workdir / "run", "--steps=4", "--eval_freq=2", "--dataset.val_episodes=[2]") == 0
    err = capsys.readouterr().err
    assert "validation: 1 held-out episode(s) (14 frames)" in err and "dataset test/synthetic: 21 frames" in err
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and all(np.isfinite(r["val_loss"]) for r in val)
    assert "step:2 val_loss:" in err
    assert (workdir / "run" / "plots" / "val_action_mae.png").is_file()


def test_validation_does_not_change_training(workdir, dataset_root):
    """Validation draws random numbers too: training's stream (here ACT's latent sampling) must not notice."""
    from tests.training.test_train_e2e import assert_same_weights, weights

    flags = ["--steps=4", "--eval_freq=1", "--dataset.episodes=[0,1]"]
    assert train(dataset_root, workdir / "with", *flags, "--dataset.val_episodes=[1]") == 0
    assert train(dataset_root, workdir / "without", *flags[:-1], "--dataset.episodes=[0]") == 0
    assert_same_weights(weights(workdir / "with"), weights(workdir / "without"))


def test_eval_on_held_out_episodes_writes_the_report(workdir, dataset_root, capsys):
    assert train(dataset_root, workdir / "run", "--steps=2", "--dataset.episodes=[0,1]") == 0
    policy = workdir / "run" / "checkpoints" / "last" / "pretrained_model"
    command = ["eval", f"--policy.path={policy}", "--dataset.repo_id=test/synthetic",
               f"--dataset.root={dataset_root}", "--dataset.episodes=[2]"]
    assert main([*command, "--output_dir=first"]) == 0
    out = capsys.readouterr().out
    assert "14 recorded frames of test/synthetic: loss" in out and "worst dimension" in out
    info = json.loads((workdir / "first" / "eval_info.json").read_text())["offline"]
    assert info["episodes"] == [2] and set(info["mae_per_dimension"]) == {"x", "y"}
    assert len(info["mae_per_step"]) == 4  # ACT's chunk_size in TINY
    assert main([*command, "--output_dir=second"]) == 0
    again = json.loads((workdir / "second" / "eval_info.json").read_text())["offline"]
    assert {k: v for k, v in again.items() if k != "eval_s"} == {k: v for k, v in info.items() if k != "eval_s"}
