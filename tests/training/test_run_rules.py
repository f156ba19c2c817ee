"""One owner for a run: restarts, resumes into an explicit folder, `last` copied as a directory, keeping the last K
checkpoints, a full disk during a save, a metrics log cut short, NaN in the data."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from robotrain.cli import main
from robotrain.datasets import LeRobotDataset
from tests.datasets.helpers import features, frame, record
from tests.training.test_train_e2e import assert_same_weights, run_train, weights


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", [12, 9, 14])


def test_a_run_stopped_before_its_first_checkpoint_restarts_with_one_command(workdir, dataset, capsys):
    full = workdir / "full"
    assert run_train(dataset, "act", "--steps=3", f"--output_dir={full}") == 0
    stopped = workdir / "stopped"  # as a kill during step 2 leaves it: the run's config and one metrics row
    stopped.mkdir()
    shutil.copy(full / "train_config.json", stopped / "train_config.json")
    (stopped / "metrics.jsonl").write_text((full / "metrics.jsonl").read_text().splitlines()[0] + "\n{\"ki")
    assert main(["train", "--output_dir=stopped", "--resume=true"]) == 0
    assert "stopped before its first checkpoint: starting it again from step 0" in capsys.readouterr().err
    assert_same_weights(weights(stopped), weights(full))
    rows = [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]


def test_resume_continues_in_an_explicit_new_folder(workdir, dataset):
    full, half = workdir / "full", workdir / "half"
    assert run_train(dataset, "act", "--steps=4", f"--output_dir={full}") == 0
    assert run_train(dataset, "act", "--steps=2", f"--output_dir={half}") == 0
    config = half / "checkpoints" / "last" / "pretrained_model"
    assert main(["train", f"--config_path={config}", "--resume=true", "--steps=4", "--output_dir=moved"]) == 0
    assert_same_weights(weights(workdir / "moved"), weights(full))
    assert sorted(p.name for p in (half / "checkpoints").iterdir()) == ["000002", "last"], "the source is untouched"


def test_last_copied_as_a_directory_is_resumed_and_replaced_by_a_link(workdir, dataset):
    full = workdir / "full"
    assert run_train(dataset, "act", "--steps=4", "--save_freq=2", f"--output_dir={full}") == 0
    copied = workdir / "copied"  # `cp -rL` of a run stopped at step 2: `last` becomes a real directory
    shutil.copytree(full, copied, symlinks=False)
    shutil.rmtree(copied / "checkpoints" / "000004")
    shutil.rmtree(copied / "checkpoints" / "last")
    shutil.copytree(copied / "checkpoints" / "000002", copied / "checkpoints" / "last")
    assert main(["train", "--output_dir=copied", "--resume=true"]) == 0
    assert os.readlink(copied / "checkpoints" / "last") == "000004"
    assert_same_weights(weights(copied), weights(full))
    assert sorted(p.name for p in (copied / "checkpoints").iterdir()) == ["000002", "000004", "last"]


def test_a_broken_last_link_falls_back_to_the_newest_complete_checkpoint(workdir, dataset, capsys):
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=2", "--save_freq=1", f"--output_dir={run}") == 0
    (run / "checkpoints" / "last").unlink()
    (run / "checkpoints" / "last").symlink_to("000009")  # a crash while `last` was switched to a new target
    assert main(["train", f"--output_dir={run}", "--resume=true", "--steps=3"]) == 0
    assert "is broken; resuming from the newest complete checkpoint" in capsys.readouterr().err
    assert os.readlink(run / "checkpoints" / "last") == "000003"


def test_keep_last_checkpoints(workdir, dataset):
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=5", "--save_freq=1", "--keep_last_checkpoints=2",
                     f"--output_dir={run}") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000004", "000005", "last"]
    assert main(["train", f"--output_dir={run}", "--resume=true", "--steps=6"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000005", "000006", "last"]


def test_a_full_disk_during_a_checkpoint_keeps_last_and_names_the_space(workdir, dataset, monkeypatch, capsys):
    from robotrain.training import checkpoint

    saves = {"n": 0}
    real = checkpoint.save_optimizer_state

    def fills_the_disk(optimizer, directory):
        saves["n"] += 1
        if saves["n"] == 2:
            (directory / "optimizer_state.safetensors").write_bytes(b"\0" * 1000)  # a part was written
            raise OSError(errno.ENOSPC, "No space left on device")
        real(optimizer, directory)

    monkeypatch.setattr(checkpoint, "save_optimizer_state", fills_the_disk)
    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=4", "--save_freq=2", f"--output_dir={run}") == 2
    error = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(error) == 1 and f"the disk holding {run} is full: checkpoint 4 needs about" in error[0]
    assert "MB" in error[0] and "checkpoints/last still points at 000002" in error[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002", "last"], "no partial checkpoint"


def test_plots_skip_a_metrics_line_cut_short(workdir, dataset):
    from robotrain.training.metrics import draw_plots

    run = workdir / "run"
    assert run_train(dataset, "act", "--steps=2", f"--output_dir={run}") == 0
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"kind": "train", "step": 3, "lo')  # the disk filled mid-line
    assert {p.name for p in draw_plots(run)} >= {"loss.png"}
    assert main(["train", f"--output_dir={run}", "--resume=true", "--steps=3"]) == 0
    rows = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]


def test_nan_is_refused_when_recorded_and_named_when_training(workdir, tmp_path):
    from robotrain.datasets.format import DatasetError

    writer = LeRobotDataset.create("test/nan", 10, features(), root=tmp_path / "refused")
    bad = frame(0, 0, 5)
    bad["observation.state"] = np.array([0.0, np.nan], np.float32)
    with pytest.raises(DatasetError, match=r"'observation\.state' holds NaN .*allow_nan=True"):
        writer.add_frame(bad)
    writer.finalize()

    root = tmp_path / "kept"
    writer = LeRobotDataset.create("test/nan", 10, features(), root=root, allow_nan=True)
    for episode, length in enumerate([6, 5]):
        for i in range(length):
            values = frame(episode, i, length)
            if episode == 1 and i == 2:
                values["action"] = np.array([np.inf, 0.0], np.float32)
            writer.add_frame(values)
        writer.save_episode()
    writer.finalize()
    from robotrain.datasets.validate import ValidateConfig, validate_dataset

    problems = validate_dataset(ValidateConfig(repo_id="test/nan", root=root))
    assert any("episode 1: column 'action' holds infinite values in 1 frame(s)" in p for p in problems), problems
    assert run_train(root, "act", "--steps=2", "--output_dir=run") == 2
    assert not (workdir / "run").exists()


def test_a_truncated_video_met_by_a_loader_worker_is_one_line_and_the_run_ends(workdir, tmp_path):
    """Decoding on the fly in 2 worker processes: the worker's error reaches the user as its own line (not the
    worker traceback the DataLoader wraps around it), and the workers are stopped, so the command ends."""
    import subprocess
    import sys

    from tests.training.test_train_e2e import TINY

    root = record(tmp_path / "ds", [12, 9, 14])
    video = next((root / "videos").rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    command = [sys.executable, "-m", "robotrain", "train", *TINY["act"], "--dataset.repo_id=test/synthetic",
               f"--dataset.root={root}", "--batch_size=4", "--num_workers=2", "--dataset.frame_cache=off",
               "--steps=5", "--output_dir=run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=workdir)
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Original" not in errors[0]
    assert f"{video}: cannot open video" in errors[0] and "Fix: re-download or restore the dataset" in errors[0]
