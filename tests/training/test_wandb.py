"""Weights & Biases in offline mode: no network needed, and a resumed run logs to the same W&B run."""

from __future__ import annotations

import json

import pytest

from tests.training.test_train_e2e import dataset, run_train  # noqa: F401 (dataset is a fixture)

pytest.importorskip("wandb", reason="install the `wandb` extra to test W&B logging")


@pytest.mark.slow
def test_offline_run_resumes_as_the_same_wandb_run(workdir, dataset, monkeypatch):  # noqa: F811
    from robotrain.cli import main

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the suite disables W&B; this test asks for offline explicitly
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=2", "--save_freq=2", f"--output_dir={run}", "--wandb.enable=true",
                     "--wandb.mode=offline") == 0
    config = json.loads((run / "checkpoints/last/pretrained_model/train_config.json").read_text())
    run_id = config["wandb"]["run_id"]
    assert run_id
    assert main(["train", f"--config_path={run}/checkpoints/last/pretrained_model", "--resume=true",
                 "--steps=4"]) == 0
    offline_runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(name.endswith(f"-{run_id}") for name in offline_runs)
