"""`robotrain demo` runs the whole pipeline (record, train, evaluate) on built-in data."""

from __future__ import annotations

import json

import pytest

from robotrain.cli import main


@pytest.mark.sim
@pytest.mark.slow
def test_demo_records_trains_evaluates_and_reuses_its_recording(workdir, capsys):
    root = workdir / "demos"
    flags = ["--num_episodes=2", "--steps=4", "--eval_episodes=1", f"--root={root}"]
    assert main(["demo", *flags, f"--output_dir={workdir / 'first'}"]) == 0
    out = capsys.readouterr().out
    assert "demo done:" in out and "robotrain train --policy.type=mlp" in out
    info = json.loads((workdir / "first" / "eval" / "eval_info.json").read_text())
    assert len(info["per_episode"]) == 1 and len(info["video_paths"]) == 1
    assert (workdir / "first" / "train" / "plots" / "loss.png").is_file()
    assert main(["demo", *flags, f"--output_dir={workdir / 'second'}"]) == 0
    assert "(0 recorded now)" in capsys.readouterr().out  # the demonstrations are recorded once


def test_demo_flags_are_checked_before_any_work(workdir, capsys):
    assert main(["demo", "--steps=0"]) == 2
    assert "--steps=0: must be at least 1" in capsys.readouterr().err
    assert list(workdir.iterdir()) == []
