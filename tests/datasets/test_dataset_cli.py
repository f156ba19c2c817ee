"""`robotrain dataset ...` as a user runs it: real subprocesses on datasets the tests write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import record
from .v21 import write_v21_dataset

ROBOTRAIN = str(Path(sys.executable).parent / "robotrain")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ROBOTRAIN, "dataset", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow  # several real CLI processes or trainings: over 6 s
def test_info_validate_visualize(tmp_path):
    root = record(tmp_path / "ds", [6, 4])
    info = run("info", "--repo_id=test/synthetic", f"--root={root}", cwd=tmp_path)
    assert info.returncode == 0 and "push the block" in info.stdout and "observation.image" in info.stdout
    valid = run("validate", "--repo_id=test/synthetic", f"--root={root}", cwd=tmp_path)
    assert valid.returncode == 0 and valid.stdout.strip().endswith("test/synthetic: valid")
    page = run("visualize", "--repo_id=test/synthetic", f"--root={root}", "--episode=1", cwd=tmp_path)
    assert page.returncode == 0 and "wrote" in page.stdout
    assert (tmp_path / "test_synthetic_episode_1.html").read_text().count("<video") == 1

    (root / "videos/observation.image/chunk-000/file-000.mp4").unlink()
    broken = run("validate", "--repo_id=test/synthetic", f"--root={root}", cwd=tmp_path)
    assert broken.returncode == 1 and "problem: " in broken.stdout and "file-000.mp4" in broken.stdout


def test_convert_then_load(tmp_path):
    source = write_v21_dataset(tmp_path / "old", [5, 3])
    done = run("convert", f"--root={source}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "converted 2 episodes (8 frames)" in done.stdout
    valid = run("validate", "--repo_id=x/old", f"--root={tmp_path / 'old_v3.0'}", cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout


@pytest.mark.slow  # several real CLI processes or trainings: over 6 s
def test_user_errors(tmp_path):
    wrong = run("info", "--repo_id=test/x", f"--root={tmp_path}", "--episode=3", cwd=tmp_path)
    assert wrong.returncode == 2 and "--episode=3: is not an option" in wrong.stderr
    absent = run("info", "--repo_id=test/x", f"--root={tmp_path / 'nothing'}", cwd=tmp_path)
    assert absent.returncode == 2 and "HF_HUB_OFFLINE" in absent.stderr and "Traceback" not in absent.stderr
    assert "does not exist" in absent.stderr and "point root at the folder that holds meta/info.json" in absent.stderr
    old = write_v21_dataset(tmp_path / "old", [3])
    loaded = run("info", "--repo_id=x/old", f"--root={old}", cwd=tmp_path)
    assert loaded.returncode == 2 and f"robotrain dataset convert --root={old}" in loaded.stderr
