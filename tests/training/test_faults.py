"""Real processes, real signals: kill -9 at random moments never breaks `last`, and resuming always completes
with the weights of an uninterrupted run; SIGTERM saves a checkpoint and exits with the resume command."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.datasets.helpers import record
from tests.training.test_train_e2e import TINY, assert_same_weights

pytestmark = pytest.mark.slow
STEPS = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", [12, 9, 14])


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """An uninterrupted run of command(): what every interrupted and resumed run must end equal to."""
    run = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(command(dataset, run), check=True, capture_output=True)
    return run


def command(dataset: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "robotrain", "train", *TINY["act"], "--dataset.repo_id=test/synthetic",
            f"--dataset.root={dataset}", "--batch_size=4", "--num_workers=0", f"--steps={STEPS}", "--save_freq=1",
            "--log_freq=1", f"--output_dir={run}"]


def resume_command(run: Path) -> list[str]:
    return [sys.executable, "-m", "robotrain", "train",
            f"--config_path={run}/checkpoints/last/pretrained_model", "--resume=true"]


def check_last_is_complete(run: Path) -> int:
    """`last` (if any) names a checkpoint whose every file reads back; returns its step (0 when none yet)."""
    last = run / "checkpoints" / "last"
    if not last.exists():
        assert not last.is_symlink(), "last points at a checkpoint that does not exist"
        return 0
    load_file(str(last / "pretrained_model" / "model.safetensors"))
    json.loads((last / "pretrained_model" / "train_config.json").read_text())
    load_file(str(last / "training_state" / "optimizer_state.safetensors"))
    load_file(str(last / "training_state" / "rng_state.safetensors"))
    return json.loads((last / "training_state" / "training_step.json").read_text())["step"]


def wait_for_checkpoint_activity(run: Path, process: subprocess.Popen, mid_checkpoint: bool) -> bool:
    """Block until a checkpoint is being written (mid_checkpoint) or one more has completed; False if the run ends.

    Killing on these events rather than after a fixed delay hits the moments that matter on a fast or a slow machine.
    """
    root = run / "checkpoints"
    complete = lambda: len([p for p in root.glob("0*") if p.is_dir()]) if root.is_dir() else 0  # noqa: E731
    start = complete()
    while process.poll() is None:
        if mid_checkpoint and root.is_dir() and any(root.glob(".tmp-0*")):
            return True
        if not mid_checkpoint and complete() > start:
            return True
        time.sleep(0.005)
    return False


def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(workdir, dataset, reference):
    run, rng, kills, attempt = workdir / "killed", random.Random(0), 0, 0
    while True:
        attempt += 1
        assert attempt < 30, "the run never finished"
        if not (run / "train_config.json").is_file():  # killed before the run began writing: start it anew
            shutil.rmtree(run, ignore_errors=True)
            argv = command(dataset, run)
        else:  # resumes from `last`, or restarts a run killed before its first checkpoint
            argv = [sys.executable, "-m", "robotrain", "train", f"--output_dir={run}", "--resume=true"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 4 and wait_for_checkpoint_activity(run, process, mid_checkpoint=rng.random() < 0.5):
            time.sleep(rng.uniform(0.0, 0.05))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        _, err = process.communicate(timeout=600)
        step = check_last_is_complete(run)
        if process.returncode == 0:
            assert step == STEPS, err
            break
        assert process.returncode == -signal.SIGKILL, err
    assert kills >= 2
    assert_same_weights(load_file(str(run / "checkpoints/last/pretrained_model/model.safetensors")),
                        load_file(str(reference / "checkpoints/last/pretrained_model/model.safetensors")))
    assert not list((run / "checkpoints").glob(".tmp-*"))  # leftovers of killed saves were cleaned up


def test_sigterm_saves_a_checkpoint_and_prints_how_to_resume(workdir, dataset):
    run = workdir / "run"
    process = subprocess.Popen(command(dataset, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # wait until training is under way
        lines.append(line)
        if line.startswith("step:2 "):
            process.send_signal(signal.SIGTERM)
            break
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130, "".join(lines) + rest
    step = check_last_is_complete(run)
    assert 2 <= step < STEPS
    assert f"stopped by SIGTERM at step {step}" in rest
    assert f"robotrain train --output_dir={run} --resume=true" in rest
    finished = subprocess.run(resume_command(run), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert check_last_is_complete(run) == STEPS
    assert os.readlink(run / "checkpoints" / "last") == f"{STEPS:06d}"


def start_in_own_group(cmd: list[str]) -> subprocess.Popen:
    """A run in a process group of its own, as a scheduler starts a job: signals can go to the whole group."""
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_line(process: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError("the run ended before printing " + prefix + ":\n" + "".join(lines))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_saves_with_loader_workers_running(workdir, dataset, reference, signum):
    """Slurm, systemd and `kill -TERM -PGID` signal every process of the job: the two data-loader workers ignore
    it, the trainer finishes its step, saves once and stops them; resuming completes the run exactly."""
    run = workdir / "run"
    cmd = [arg if arg != "--num_workers=0" else "--num_workers=2" for arg in command(dataset, run)]
    process = start_in_own_group([*cmd, "--dataset.frame_cache=off"])
    lines = wait_for_line(process, "step:3 ")
    os.killpg(process.pid, signum)
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130, "".join(lines) + rest
    assert "Traceback" not in rest and "killed by signal" not in rest, rest
    step = check_last_is_complete(run)
    assert 3 <= step < STEPS and rest.count("saved checkpoint") <= 2  # the regular save of its step, the stop's
    finished = subprocess.run(resume_command(run), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert_same_weights(load_file(str(run / "checkpoints/last/pretrained_model/model.safetensors")),
                        load_file(str(reference / "checkpoints/last/pretrained_model/model.safetensors")))


def test_a_second_run_on_the_same_output_dir_is_refused_with_the_first_ones_pid(workdir, dataset):
    run = workdir / "run"
    first = start_in_own_group([*command(dataset, run)[:-4], "--steps=100000", "--save_freq=2", "--log_freq=1",
                                f"--output_dir={run}"])
    try:
        wait_for_line(first, "saved checkpoint")
        second = subprocess.run([sys.executable, "-m", "robotrain", "train", f"--output_dir={run}", "--resume=true",
                                 "--steps=100001"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"--output_dir={run}: is being written by process {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
