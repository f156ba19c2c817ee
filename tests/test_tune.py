"""`robotrain tune`: the space and its one-line errors, objectives read from metrics.jsonl, the study loop (pruning,
failures, Ctrl-C, resume) with a stand-in trainer, and real studies of a tiny ACT (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from robotrain import cli
from robotrain.errors import UserError
from robotrain.tune import trial as trial_module
from robotrain.tune.config import OBJECTIVES, parse_tune_args, plan_study
from robotrain.tune.space import check_against_train, read_space
from robotrain.tune.study import (
    TrialRow,
    TuneResult,
    continuation_argv,
    results_table,
    settings_difference,
)
from robotrain.tune.trial import final_value, objective_series, read_rows
from tests.datasets.helpers import record
from tests.training.test_train_e2e import TINY

TRAIN = [*TINY["act"], "--dataset.repo_id=test/synthetic", "--batch_size=4", "--num_workers=0"]
LR_SPACE = '{"policy.optimizer_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true}}'


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", [12, 9, 14])


@pytest.fixture
def tune_cli():
    """`robotrain tune` through the CLI's main, as a user runs it."""
    return cli.main


def make_plan(dataset: Path, study_dir: Path, *tune_flags: str, train: tuple[str, ...] = ("--steps=4",),
              space: str = LR_SPACE, objective: str = "train_loss", root: Path | None = None):
    cfg, argv = parse_tune_args([f"--study_dir={study_dir}", f"--space={space}", f"--objective={objective}",
                                 *tune_flags, "--", *TRAIN, f"--dataset.root={root or dataset}", *train])
    return plan_study(cfg, argv)


# ---- the space ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space, expected", [
    ("{not json", "is neither JSON nor YAML"),
    ("[1, 2]", "must map train flags to distributions"),
    ('{"batch_size": 8}', "batch_size: is 8, not a distribution"),
    ('{"batch_size": {"type": "categorigal", "choices": [8]}}', 'use "type": "categorical"'),
    ('{"batch_size": {"type": "int", "low": 2, "hihg": 8}}', 'has no "hihg". Fix: did you mean "high"?'),
    ('{"batch_size": {"type": "int", "low": 2}}', 'needs "high"'),
    ('{"batch_size": {"type": "int", "low": 8, "high": 2}}', '"low" (8) must be below "high" (2)'),
    ('{"batch_size": {"type": "int", "low": 2.5, "high": 8}}', '"low" is 2.5, not a whole number'),
    ('{"policy.optimizer_lr": {"type": "float", "low": 0, "high": 1, "log": true}}', "a log scale needs"),
    ('{"policy.optimizer_lr": {"type": "float", "low": 1e-5, "high": 1, "log": true, "step": 0.1}}',
     'cannot have both "step" and "log"'),
    ('{"policy.optimizer_lr": {"type": "float", "low": "small", "high": 1}}', '"low" is small, not a number'),
    ('{"batch_size": {"type": "categorical", "choices": []}}', 'needs a non-empty list "choices"'),
    ('{"batch_size": {"type": "categorical", "choices": [8, 8]}}', '"choices" repeats a value'),
])
def test_a_malformed_space_is_one_line_naming_the_entry(space, expected):
    with pytest.raises(UserError) as caught:
        read_space(space, None)
    message = str(caught.value)
    assert expected in message and "\n" not in message and message.startswith("--space")


def test_space_in_yaml_file_takes_numbers_written_as_text(workdir):
    (workdir / "space.yaml").write_text("policy.optimizer_lr: {type: float, low: 1e-5, high: 1e-3, log: true}\n"
                                        "policy.crop_shape: {type: categorical, choices: [[28, 40], [24, 36]]}\n")
    lr, crop = read_space(None, workdir / "space.yaml")
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)
    assert crop.choices == ([28, 40], [24, 36]) and crop.probe_values() == [[28, 40], [24, 36]]


@pytest.mark.parametrize("key, spec, expected", [
    ("policy.chunksize", '{"type": "int", "low": 4, "high": 8}', "is not a flag of this train command. Fix: did "
     "you mean policy.chunk_size?"),
    ("dim_model", '{"type": "int", "low": 4, "high": 8}', "did you mean policy.dim_model?"),
    ("log_freq", '{"type": "float", "low": 2, "high": 8}', 'a float range does not fit this flag (it takes int). '
     'Fix: use "type": "int"'),
    ("policy.vision_backbone", '{"type": "int", "low": 2, "high": 8}', "a whole-number range does not fit"),
    ("policy", '{"type": "categorical", "choices": ["act"]}', "is a group of options, not a value"),
    ("env.task", '{"type": "categorical", "choices": ["a"]}', "--env is not set by the train flags"),
    ("output_dir", '{"type": "categorical", "choices": ["a"]}', "is set by robotrain tune for each trial"),
    ("policy.chunk_size", '{"type": "int", "low": 4, "high": 8}', "is also among the train flags "
     "(--policy.chunk_size=4)"),
])
def test_space_keys_are_checked_against_the_train_config(key, spec, expected):
    from robotrain.configs.parser import parse_train_config, read_command_line

    argv = [*TRAIN, "--output_dir=/nonexistent/run"]
    params = read_space(f'{{"{key}": {spec}}}', None)
    with pytest.raises(UserError) as caught:
        check_against_train(params, parse_train_config(argv), read_command_line(argv, "train").flags, "space")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("options, expected", [
    ({"train": ("--stepz=4",)}, "--stepz=4: is not an option of this command. Fix: did you mean --steps?"),
    ({"train": ("--output_dir=x",)}, "--output_dir=x: is set by robotrain tune for each trial"),
    ({"objective": "val_loss"}, "--objective=val_loss: needs held-out episodes"),
    ({"objective": "success"}, "needs a simulator (--env.type=...)"),
    ({"objective": "loss"}, "--objective=loss: is not one of val_loss, success, train_loss"),
    ({"root": Path("/nonexistent/ds")}, "root /nonexistent/ds does not exist"),
])
def test_the_train_command_is_checked_once_before_any_trial(workdir, dataset, options, expected):
    with pytest.raises(UserError) as caught:
        make_plan(dataset, workdir / "study", **options)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not (workdir / "study").exists()


def test_val_loss_needs_held_out_episodes_and_a_validation_before_the_end(workdir, dataset):
    plan = make_plan(dataset, workdir / "study", objective="val_loss",
                     train=("--steps=4", "--dataset.val_episodes=[2]", "--eval_freq=2"))
    assert plan.objective.kind == "val" and plan.settings["direction"] == "minimize"
    with pytest.raises(UserError, match="with eval_freq at most steps"):
        make_plan(dataset, workdir / "study", objective="val_loss",
                  train=("--steps=4", "--dataset.val_episodes=[2]", "--eval_freq=8"))


def test_every_bound_is_parsed_and_the_base_may_need_the_searched_values(workdir, dataset):
    # Without --policy.n_action_steps, ACT's default (100) exceeds chunk_size 4: the shared flags alone are
    # refused, but with the searched n_action_steps every trial is valid.
    train = [flag for flag in TRAIN if not flag.startswith("--policy.n_action_steps")]

    def plan(high: int):
        space = f'{{"policy.n_action_steps": {{"type": "int", "low": 1, "high": {high}}}}}'
        cfg, argv = parse_tune_args([f"--study_dir={workdir / 'study'}", f"--space={space}",
                                     "--objective=train_loss", "--", *train, f"--dataset.root={dataset}"])
        return plan_study(cfg, argv)

    assert [p.key for p in plan(4).params] == ["policy.n_action_steps"]
    with pytest.raises(UserError, match=r"--space: policy.n_action_steps=8 is refused by robotrain train "
                                        r"\(--policy.n_action_steps=8: must not exceed chunk_size"):
        plan(8)


def test_the_shared_train_flags_follow_a_separator(tune_cli, capsys):
    assert tune_cli(["tune", "--study_dir=s", f"--space={LR_SPACE}"]) == 2
    assert "needs the train flags that every trial shares after `--`" in capsys.readouterr().err
    assert tune_cli(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: robotrain tune --study_dir=DIR") and "--objective=STR" in out


def test_without_optuna_the_command_says_how_to_install_it(tune_cli, monkeypatch, capsys, workdir):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    assert tune_cli(["tune", "--study_dir=s", f"--space={LR_SPACE}", "--", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'robotrain[tune]'" in err


# ---- objectives from metrics.jsonl ----------------------------------------------------------------------------
def test_objectives_are_read_from_metrics_rows(tmp_path):
    rows = [{"kind": "train", "step": 2, "loss": 3.0}, {"kind": "val", "step": 2, "val_loss": 0.9, "val_s": 0.1},
            {"kind": "eval", "step": 2, "pc_success": 10.0}, {"kind": "train", "step": 4, "loss": 2.0},
            {"kind": "val", "step": 4, "val_loss": 0.7}, {"kind": "eval", "step": 4, "pc_success": 30.0},
            {"kind": "val", "step": 4, "val_loss": 0.6}]  # a step redone after a resume: its last row counts
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (tmp_path / "metrics.jsonl").write_text(text + "not json\n" + '{"kind": "val", "step": 6, "val_lo')
    assert len(read_rows(tmp_path / "metrics.jsonl")) == len(rows)  # the bad line and the half-written one skipped
    read = read_rows(tmp_path / "metrics.jsonl")
    assert objective_series(read, OBJECTIVES["val_loss"]) == [(2, 0.9), (4, 0.6)]
    assert objective_series(read, OBJECTIVES["success"]) == [(2, 10.0), (4, 30.0)]
    assert objective_series(read, OBJECTIVES["train_loss"]) == [(2, 3.0), (4, 2.0)]
    assert final_value(tmp_path, OBJECTIVES["val_loss"]) == 0.6
    assert final_value(tmp_path, OBJECTIVES["success"]) == 30.0
    assert final_value(tmp_path / "missing", OBJECTIVES["train_loss"]) is None


# ---- the study: storage, settings, results --------------------------------------------------------------------
def test_settings_difference_names_the_first_one():
    base = {"objective": "val_loss", "direction": "minimize", "space": {"a": {"type": "int", "low": 1, "high": 2}},
            "train": {"flags": {"steps": "100", "policy.type": "act"}}}
    assert settings_difference(base, json.loads(json.dumps(base))) is None
    assert settings_difference(base, {**base, "objective": "success"}) == \
        "--objective=success (the study's is val_loss)"
    steps = {**base, "train": {"flags": {"steps": "200", "policy.type": "act"}}}
    assert settings_difference(base, steps) == "the train flag steps is 200 (the study's is 100)"
    extra = {**base, "train": {"flags": {**base["train"]["flags"], "seed": "3"}}}
    assert settings_difference(base, extra) == "the train flag seed=3 is new (the study has none)"
    assert settings_difference(base, {**base, "space": {}}).startswith("the space entry a=")


def test_a_study_refuses_other_settings_in_one_line(workdir, dataset):
    pytest.importorskip("optuna")
    from robotrain.tune.study import open_study

    study = open_study(make_plan(dataset, workdir / "study", train=("--steps=4",)))
    assert study.user_attrs["robotrain_settings"]["train"]["flags"]["steps"] == "4"
    assert open_study(make_plan(dataset, workdir / "study", "--trials=50")).trials == []  # --trials may grow
    with pytest.raises(UserError) as caught:
        open_study(make_plan(dataset, workdir / "study", train=("--steps=8",)))
    assert str(caught.value).startswith(f"--study_dir={workdir / 'study'} holds a study with other settings: the "
                                        "train flag steps is 8 (the study's is 4)")
    with pytest.raises(UserError, match="the space entry policy.optimizer_lr is"):
        open_study(make_plan(dataset, workdir / "study", space=LR_SPACE.replace("1e-3", "1e-2")))


def test_continuing_a_trial_resumes_restarts_or_only_reads_it(workdir, dataset):
    plan = make_plan(dataset, workdir / "study")
    run = workdir / "study" / "trials" / "0"
    fresh = continuation_argv(plan, {"policy.optimizer_lr": 1e-4}, run)
    assert fresh[-2:] == ["--policy.optimizer_lr=0.0001", f"--output_dir={run}"]
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")  # began, wrote no config: started anew, folder cleared
    assert continuation_argv(plan, {"policy.optimizer_lr": 1e-4}, run) == fresh and not run.exists()
    checkpoint = run / "checkpoints" / "000002"
    (checkpoint / "pretrained_model").mkdir(parents=True)
    (checkpoint / "training_state").mkdir()
    (checkpoint / "pretrained_model" / "train_config.json").write_text('{"steps": 4}')
    (checkpoint / "training_state" / "training_step.json").write_text('{"step": 2, "samples": 8}')
    assert continuation_argv(plan, {}, run) == [f"--output_dir={run}", "--resume=true"]
    (checkpoint / "training_state" / "training_step.json").write_text('{"step": 4, "samples": 16}')
    assert continuation_argv(plan, {}, run) is None  # finished before tune was stopped: only its result is read


def test_results_table_marks_the_best():
    result = TuneResult(Path("s"), "val_loss", "minimize", 3, rows=[
        TrialRow(0, "complete", 0.5, {"batch_size": 8, "policy.optimizer_lr": 1.2345678e-4}, 75.0),
        TrialRow(1, "pruned", 0.9, {"batch_size": 16, "policy.optimizer_lr": 1e-3}, 12.0, "pruned at step 4"),
        TrialRow(2, "failed", None, {"batch_size": 8, "policy.optimizer_lr": 1e-5}, 3.0, "exit code 1: stopped")])
    result.best = result.rows[0]
    lines = results_table(result).splitlines()
    assert lines[0].split() == ["trial", "state", "val_loss", "wall", "batch_size", "policy.optimizer_lr", "note"]
    assert lines[1].split() == ["0*", "complete", "0.5", "1m15s", "8", "0.0001235"]
    assert lines[2].split()[:3] == ["1", "pruned", "0.9"] and lines[2].endswith("pruned at step 4")
    assert lines[3].split()[:3] == ["2", "failed", "-"]


# ---- the study loop, with a stand-in trainer (fast) ------------------------------------------------------------
# Writes a train row per step into --output_dir/metrics.jsonl as `robotrain train` does, stops on SIGTERM with exit
# code 130 as the trainer does, and fails as told. What each trial does comes from $FAKE_PLAN, by trial number.
FAKE_TRAINER = r"""
import json, os, signal, sys, time
flags = dict(arg[2:].split("=", 1) for arg in sys.argv[2:] if "=" in arg)
out = flags["output_dir"]
plan = json.loads(os.environ["FAKE_PLAN"]).get(os.path.basename(out), {})
os.makedirs(out, exist_ok=True)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
print("fake trainer:", " ".join(sys.argv[2:]), flush=True)
for step in range(1, plan.get("steps", 3) + 1):
    if stopping:
        print("SIGTERM received", flush=True)
        sys.exit(130)
    with open(os.path.join(out, "metrics.jsonl"), "a") as handle:
        handle.write(json.dumps({"kind": "train", "step": step, "loss": plan.get("loss", 1.0)}) + "\n")
    time.sleep(plan.get("sleep", 0.01))
if "exit" in plan:
    print(plan["error"], flush=True)
    sys.exit(plan["exit"])
"""


@pytest.fixture
def fake_trainer(monkeypatch):
    """Trials run FAKE_TRAINER instead of `robotrain train`; returns a setter for their plan."""
    pytest.importorskip("optuna")
    monkeypatch.setattr(trial_module, "train_command", lambda argv: [sys.executable, "-c", FAKE_TRAINER, "train",
                                                                     *argv])

    def set_plan(plan: dict) -> None:
        monkeypatch.setenv("FAKE_PLAN", json.dumps(plan))

    set_plan({})
    return set_plan


def load_trials(study_dir: Path) -> list:
    import optuna

    return optuna.load_study(study_name="robotrain-tune", storage=f"sqlite:///{study_dir / 'study.db'}").trials


def test_median_pruner_stops_a_worse_trial_and_failures_do_not_stop_the_study(workdir, dataset, fake_trainer):
    from robotrain.tune.study import run_study

    fake_trainer({"0": {"loss": 1.0, "steps": 3}, "1": {"loss": 10.0, "steps": 1000, "sleep": 0.02},
                  "2": {"exit": 1, "error": "robotrain train: stopped: the loss became nan at step 3"}})
    plan = make_plan(dataset, workdir / "study", "--trials=3", "--pruner_startup_trials=1", "--poll_s=0.05")
    result = run_study(plan)
    assert [(row.number, row.state) for row in result.rows] == [(0, "complete"), (1, "pruned"), (2, "failed")]
    assert result.best.number == 0 and result.best.value == 1.0
    assert "SIGTERM received" in (workdir / "study" / "trials" / "1.log").read_text()
    assert "the loss became nan" in result.rows[2].note and "exit code 1" in result.rows[2].note
    assert result.best_command.startswith("robotrain train --policy.type=act") and \
        f"--policy.optimizer_lr={result.best.params['policy.optimizer_lr']!r}" in result.best_command
    assert "--output_dir" not in result.best_command


def test_a_user_error_in_a_trial_stops_the_study_without_costing_a_trial(workdir, dataset, fake_trainer):
    from robotrain.tune.study import run_study

    fake_trainer({"0": {"exit": 2, "error": "robotrain train: error: dataset test/synthetic: info.json is damaged"}})
    plan = make_plan(dataset, workdir / "study", "--trials=2", "--poll_s=0.05")
    with pytest.raises(UserError, match=r"trial 0 ended with a user error \(robotrain train: error: dataset "
                                        r"test/synthetic: info.json is damaged\)"):
        run_study(plan)
    fake_trainer({})  # fixed: the study goes on and still gets its 2 trials
    result = run_study(plan)
    assert [row.state for row in result.rows] == ["failed", "complete", "complete"]


def test_ctrl_c_stops_the_running_trial_and_a_rerun_continues_it(workdir, dataset, fake_trainer):
    from robotrain.tune.study import run_study

    fake_trainer({"0": {"steps": 2000, "sleep": 0.02}})
    plan = make_plan(dataset, workdir / "study", "--trials=2", "--poll_s=0.05")
    metrics = workdir / "study" / "trials" / "0" / "metrics.jsonl"

    def press_ctrl_c() -> None:
        while not metrics.is_file():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    stopped = run_study(plan)
    assert stopped.stopped_by == "SIGINT" and [row.state for row in stopped.rows] == ["stopped"]
    assert "SIGTERM received" in (workdir / "study" / "trials" / "0.log").read_text()
    fake_trainer({})
    result = run_study(plan)
    assert [(row.number, row.state) for row in result.rows] == [(0, "complete"), (1, "complete")]
    assert result.rows[0].params == stopped.rows[0].params and len(load_trials(workdir / "study")) == 2


# ---- real studies of a tiny ACT (slow) --------------------------------------------------------------------------
@pytest.mark.slow
def test_real_study_survives_a_sigkill_and_resumes_without_repeating_a_trial(workdir, dataset, tune_cli, capsys,
                                                                            monkeypatch):
    pytest.importorskip("optuna")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainers' torch: one thread each on a shared machine
    study = workdir / "study"
    argv = ["tune", f"--study_dir={study}", "--trials=3", "--objective=train_loss", "--poll_s=0.2",
            f"--space={LR_SPACE}", "--", *TRAIN, f"--dataset.root={dataset}", "--steps=6", "--save_freq=3",
            "--log_freq=2"]
    tune = subprocess.Popen([sys.executable, "-m", "robotrain", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (study / "trials" / "1" / "checkpoints" / "last").exists():  # trial 1 is running, checkpointed
        assert tune.poll() is None and time.monotonic() < deadline, tune.stderr.read() if tune.poll() else "slow"
        time.sleep(0.05)
    tune.kill()
    tune.wait()
    tune.stderr.close()
    first = (study / "trials" / "0" / "metrics.jsonl").read_text()
    assert {t.state.name for t in load_trials(study)} >= {"COMPLETE", "RUNNING"}

    assert tune_cli(argv) == 0
    out = capsys.readouterr()
    trials = load_trials(study)
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(p.name for p in (study / "trials").iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert (study / "trials" / "0" / "metrics.jsonl").read_text() == first  # trial 0 did not run again
    assert "trial 1: continuing it" in out.err
    # Its trainer outlived the killed tune only to save: Linux sent it SIGTERM when its parent died.
    assert "SIGTERM received" in (study / "trials" / "1.log").read_text()
    steps = [row["step"] for row in read_rows(study / "trials" / "1" / "metrics.jsonl") if row["kind"] == "train"]
    assert steps == [2, 4, 6]  # resumed from its checkpoint: no step logged twice
    best = min(trials, key=lambda t: t.value)
    command = out.out.split("reproduce it:\n", 1)[1].strip()
    assert f"--policy.optimizer_lr={best.params['policy.optimizer_lr']!r}" in command and \
        command.startswith("robotrain train ")

    assert tune_cli(argv) == 0  # a finished study: the same command only reports it
    assert len(load_trials(study)) == 3 and "best: trial" in capsys.readouterr().out


@pytest.mark.slow
def test_real_trial_that_the_pruner_stops_gets_sigterm_saves_and_is_marked_pruned(workdir, dataset, monkeypatch):
    optuna = pytest.importorskip("optuna")
    from robotrain.tune.study import run_study

    class PruneAtOnce(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return bool(trial.intermediate_values)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = make_plan(dataset, workdir / "study", "--trials=1", "--poll_s=0.1",
                     train=("--steps=5000", "--log_freq=1", "--save_freq=0"))
    result = run_study(plan, pruner=PruneAtOnce())
    assert [row.state for row in result.rows] == ["pruned"] and result.best is None
    assert "SIGTERM received" in (workdir / "study" / "trials" / "0.log").read_text()
    saved = json.loads((workdir / "study" / "trials" / "0" / "checkpoints" / "last" / "training_state" /
                        "training_step.json").read_text())
    assert 1 <= saved["step"] < 5000
