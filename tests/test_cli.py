"""The `robotrain` console script, run as a user runs it (real subprocesses), and its scoped --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robotrain.cli import main

# The console script pip installed next to this interpreter (the venv's bin/), as a user's shell finds it.
ROBOTRAIN = str(Path(sys.executable).parent / "robotrain")


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([ROBOTRAIN, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_version_and_module_entry_point():
    assert run("--version").stdout.startswith("robotrain ")
    out = subprocess.run([sys.executable, "-m", "robotrain", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("robotrain ")


def test_train_without_its_data_says_where_to_get_it_and_writes_nothing(workdir):
    proc = run("train", "--policy.type=act", "--dataset.repo_id=lerobot/aloha_sim_insertion_human", "--env.type=aloha",
               "--output_dir=outputs/train/act_aloha_insertion", cwd=workdir)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--dataset.root=DIR" in proc.stderr
    assert not (workdir / "outputs").exists()


def test_user_error_is_one_line_with_exit_code_2(workdir):
    proc = run("train", "--policy.type=act", "--dataset.repo_id=u/d", "--policy.dim_modle=3", cwd=workdir)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "robotrain train: error: --policy.dim_modle=3: ACTConfig has no option 'dim_modle'. "
        "Fix: did you mean --policy.dim_model?"]
    assert list(workdir.iterdir()) == []


@pytest.mark.slow  # several real CLI processes or trainings: over 6 s
def test_eval_and_other_commands(workdir):
    (workdir / "ckpt").mkdir()
    (workdir / "ckpt" / "config.json").write_text('{"type": "act"}')
    proc = run("eval", "--policy.path=ckpt", "--env.type=aloha", "--env.task=AlohaTransferCube-v0",
               "--eval.n_episodes=50", "--eval.batch_size=10", cwd=workdir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1  # config.json alone is not a policy
    assert "holds no model.safetensors" in proc.stderr
    assert not (workdir / "outputs").exists()
    missing = run("dataset", "info")
    assert missing.returncode == 2 and "--repo_id: is required" in missing.stderr
    record = run("dataset", "record-sim")
    assert record.returncode == 2 and "--env.type" in record.stderr
    listing = run("dataset", "--help")
    assert listing.returncode == 0 and "record-sim" in listing.stdout
    assert run().returncode == 2 and run("--help").returncode == 0


def help_text(argv, capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_help_is_scoped_to_chosen_types(capsys):
    generic = help_text(["train", "--help"], capsys)
    assert "--dataset.repo_id=STR   (required)" in generic
    assert "--policy.type={act|diffusion|mlp|smolvla|tdmpc|vqbet}" in generic
    assert "--policy.chunk_size" not in generic and "add --policy.type=NAME with --help" in generic
    act = help_text(["train", "--policy.type=act", "--help"], capsys)
    assert "--policy.chunk_size=INT   (default: 100)" in act and "Actions predicted per forward pass" in act
    assert "--policy.horizon" not in act
    env = help_text(["train", "--env.type=aloha", "--help"], capsys)
    assert "--env.task=STR   (default: AlohaInsertion-v0)" in env
    assert "--env.obs_type" in help_text(["eval", "--env.type=pusht", "--help"], capsys)


@pytest.mark.parametrize("argv", [["train", "-h"], ["eval", "--help"]])
def test_help_exits_zero_and_writes_nothing(argv, workdir, capsys):
    assert main(argv) == 0 and "usage: robotrain" in capsys.readouterr().out
    assert list(workdir.iterdir()) == []


def test_log_level_shows_debug_lines_and_refuses_unknown_levels(workdir, tmp_path):
    from tests.datasets.helpers import record

    root = record(tmp_path / "ds", [3])
    quiet = run("dataset", "validate", "--repo_id=test/synthetic", f"--root={root}", cwd=workdir)
    loud = run("dataset", "validate", "--repo_id=test/synthetic", f"--root={root}", "--log_level=debug", cwd=workdir)
    assert quiet.returncode == loud.returncode == 0
    assert "problem(s)" not in quiet.stderr and f"validated {root}: 0 problem(s)" in loud.stderr
    wrong = run("dataset", "validate", "--repo_id=test/synthetic", "--log_level", "LOUD", cwd=workdir)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "robotrain dataset: error: --log_level=LOUD: is not a logging level. Fix: use one of DEBUG, INFO, WARNING, "
        "ERROR"]
