"""Training with --dataset.image_transforms.enable=true: augmentation changes what the policy sees, every process
draws its own, and a resumed run draws the same augmentations as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robotrain.cli import main
from tests.datasets.helpers import record
from tests.training.test_train_e2e import assert_same_weights, run_train, weights

AUGMENT = ["--dataset.image_transforms.enable=true", "--dataset.image_transforms.max_num_transforms=2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", [12, 9, 14])


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_augmented_training_resumes_exactly(workdir, dataset, policy):
    assert run_train(dataset, policy, *AUGMENT, "--steps=4", f"--output_dir={workdir / 'full'}") == 0
    assert run_train(dataset, policy, *AUGMENT, "--steps=2", f"--output_dir={workdir / 'part'}") == 0
    assert main(["train", f"--output_dir={workdir / 'part'}", "--resume=true", "--steps=4"]) == 0
    assert_same_weights(weights(workdir / "part"), weights(workdir / "full"))


def test_augmentation_changes_the_updates(workdir, dataset):
    assert run_train(dataset, "act", *AUGMENT, "--steps=2", f"--output_dir={workdir / 'aug'}") == 0
    assert run_train(dataset, "act", "--steps=2", f"--output_dir={workdir / 'plain'}") == 0
    augmented, plain = weights(workdir / "aug"), weights(workdir / "plain")
    assert any(not torch.equal(augmented[k], plain[k]) for k in plain)


def test_a_checkpoint_without_augmentation_state_resumes_with_a_warning(workdir, dataset, capsys):
    assert run_train(dataset, "act", "--steps=2", f"--output_dir={workdir / 'run'}") == 0
    assert main(["train", f"--output_dir={workdir / 'run'}", "--resume=true", "--steps=3", *AUGMENT]) == 0
    assert "holds no image augmentation state for process 0: reseeding it" in capsys.readouterr().err
