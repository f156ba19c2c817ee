"""The study: optuna's SQLite storage in the study folder, the trial loop, and what a killed study leaves behind.

    <study_dir>/study.db        optuna's storage: trials, their values, intermediate values and the study's settings
    <study_dir>/trials/<n>/     trial n's training run (checkpoints/, metrics.jsonl, train_config.json, plots/)
    <study_dir>/trials/<n>.log  its console output

Resuming: running the same command again continues the study. Finished trials (complete, pruned, failed) are kept
as they are. A trial that was running when `robotrain tune` stopped (a kill, Ctrl-C, a crash) is still "running" in
study.db: it continues, same number, same values, from its last checkpoint (`robotrain train --resume=true`), or
from step 0 if it had none. So a study always ends with exactly --trials trials and no trial runs twice. One
`robotrain tune` at a time per folder (a lock beside it): the folder's running trials are its own.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robotrain.errors import UserError
from robotrain.tune.config import StudyPlan, parse_trial_command, trial_flags
from robotrain.tune.trial import (
    StopSignals,
    describe_exit,
    final_value,
    last_error,
    run_trial,
    wait_for_writer,
)

logger = logging.getLogger(__name__)

STUDY_NAME = "robotrain-tune"  # one study per folder: the folder is the study's name
DB_NAME = "study.db"
TRIALS_DIR = "trials"
SETTINGS_ATTR = "robotrain_settings"
USER_ERROR_EXIT = 2  # `robotrain train` exits 2 on a user error (a missing dataset, a refused value)


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("robotrain tune needs optuna. Fix: pip install 'robotrain[tune]' (or pip install "
                        "'optuna>=4,<5')") from None
    return optuna


@dataclass
class TrialRow:
    """One line of the results table."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    wall_s: float
    note: str = ""


@dataclass
class TuneResult:
    """What a study holds when `robotrain tune` ends, and the command that reproduces its best trial."""

    study_dir: Path
    objective: str
    direction: str
    target: int
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_command: str | None = None
    stopped_by: str | None = None


@contextmanager
def lock_study(study_dir: Path) -> Any:
    """This process as the only `robotrain tune` on `study_dir` (its running trials are then its own to continue)."""
    from robotrain.errors import ConfigError
    from robotrain.files import acquire_writer_lock, folder_lock_path

    def busy(pid: int | None) -> UserError:
        return ConfigError("study_dir", study_dir, f"is used by another robotrain tune (process {pid or '?'})",
                           "wait for it to finish, or stop it and run this command again")

    with acquire_writer_lock(folder_lock_path(study_dir), busy):
        yield


def open_study(plan: StudyPlan, pruner: Any = None) -> Any:
    """The study of plan.cfg.study_dir, created on first use; refused in one line when its settings differ."""
    optuna = require_optuna()
    cfg, study_dir = plan.cfg, Path(plan.cfg.study_dir)
    db = study_dir / DB_NAME
    trials_dir = study_dir / TRIALS_DIR
    if not db.is_file() and trials_dir.is_dir() and any(trials_dir.iterdir()):
        raise UserError(f"{study_dir} holds trials but no {DB_NAME} (deleted?), so they cannot be continued. Fix: "
                        f"choose a new --study_dir, or delete {trials_dir}")
    study_dir.mkdir(parents=True, exist_ok=True)
    if pruner is None:
        pruner = optuna.pruners.NopPruner() if cfg.pruner == "none" else optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_steps)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=plan.settings["direction"],
                                pruner=pruner, load_if_exists=True)
    settings = json.loads(json.dumps(plan.settings))  # as the storage gives it back (JSON)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:  # a new study (or one killed before its settings were stored)
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif (difference := settings_difference(stored, settings)) is not None:
        raise UserError(f"--study_dir={study_dir} holds a study with other settings: {difference}. Fix: rerun it "
                        "with the study's settings to continue it, or choose a new --study_dir")
    # Seeded by how far the study is: a resumed study must not draw the values its first trials drew again.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    return study


def settings_difference(stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first difference between a study's settings and this command's, in words; None when they agree."""
    for name in ("objective", "direction"):
        if stored.get(name) != now.get(name):
            return f"--{name}={now.get(name)} (the study's is {stored.get(name)})"
    for name, what in (("space", "the space entry"), ("train", "the train flag")):
        old, new = stored.get(name, {}), now.get(name, {})
        if name == "train":
            old = {**old.get("flags", {}), **{k: v for k, v in old.items() if k != "flags"}}
            new = {**new.get("flags", {}), **{k: v for k, v in new.items() if k != "flags"}}
        for key in [*new, *(k for k in old if k not in new)]:
            if key not in old:
                return f"{what} {key}={_show(new[key])} is new (the study has none)"
            if key not in new:
                return f"{what} {key}={_show(old[key])} of the study is missing"
            if old[key] != new[key]:
                return f"{what} {key} is {_show(new[key])} (the study's is {_show(old[key])})"
    return None


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_study(plan: StudyPlan, pruner: Any = None) -> TuneResult:
    """Run trials until the study holds --trials of them (continuing any a stopped run left running), or until
    SIGINT/SIGTERM; returns the results. `pruner` replaces the one --pruner names (tests force pruning with it)."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log lines say what optuna's would
    with lock_study(Path(plan.cfg.study_dir)):
        study = open_study(plan, pruner)
        with StopSignals() as stop:
            runner = TrialRunner(plan, study, stop)
            for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if stop.count == 0:
                    runner.continue_trial(frozen)
            while stop.count == 0 and counted_trials(study) < plan.cfg.trials:
                runner.new_trial()
        return summarize(plan, study, stop.name)


def counted_trials(study: Any) -> int:
    """Trials that ended: complete, pruned, or failed in their own right (not by a user error that stopped the
    study: fixed, the study goes on without losing a trial to it)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("stopped_study")))


class TrialRunner:
    """Starts, continues and finishes the trials of one study."""

    def __init__(self, plan: StudyPlan, study: Any, stop: StopSignals):
        self.plan, self.study, self.stop = plan, study, stop
        self.trials_dir = Path(plan.cfg.study_dir) / TRIALS_DIR

    def new_trial(self) -> None:
        """Ask optuna for values, check the trial's command in process, then run it (or reuse an identical one)."""
        trial = self.study.ask()
        params = {param.key: param.suggest(trial) for param in self.plan.params}
        run_dir = self.trials_dir / str(trial.number)
        logger.info("trial %d (log: %s.log): %s", trial.number, run_dir, " ".join(trial_flags(params)))
        if self._reuse_twin(trial, params):
            return
        try:
            parse_trial_command(self.plan.cfg, self.plan.train_argv, params, run_dir)
        except UserError as exc:
            self._fail(trial, f"refused by robotrain train: {exc}")
            return
        argv = [*self.plan.train_argv, *trial_flags(params), f"--output_dir={run_dir}"]
        self._run(trial, argv, run_dir, set())

    def continue_trial(self, frozen: Any) -> None:
        """A trial a stopped `robotrain tune` left running: continue its run from its last checkpoint."""
        import optuna

        run_dir = self.trials_dir / str(frozen.number)
        wait_for_writer(run_dir, self.plan.cfg.stop_grace_s)  # its trainer may still be saving after SIGTERM
        trial = optuna.trial.Trial(self.study, frozen._trial_id)  # no public handle reopens a running trial
        argv = continuation_argv(self.plan, frozen.params, run_dir)
        if argv is None:
            logger.info("trial %d: its run had finished; reading its result", frozen.number)
            self._finish(trial, run_dir, exit_code=0)
            return
        resumes = "--resume=true" in argv
        logger.info("trial %d: continuing it (%s)", frozen.number,
                    "from its last checkpoint" if resumes else "from step 0: it had no checkpoint")
        self._run(trial, argv, run_dir, set(frozen.intermediate_values))

    def _run(self, trial: Any, argv: list[str], run_dir: Path, reported: set[int]) -> None:
        def report(step: int, value: float) -> bool:
            if step not in reported:  # a continued trial redoes the steps after its checkpoint: already reported
                reported.add(step)
                trial.report(value, step)
            return trial.should_prune()

        cfg = self.plan.cfg
        log_path = self.trials_dir / f"{trial.number}.log"
        outcome = run_trial(argv, run_dir, log_path, self.plan.objective, report, self.stop, cfg.poll_s,
                            cfg.stop_grace_s)
        trial.set_user_attr("wall_s", self._wall_s(trial) + outcome.wall_s)
        if outcome.pruned:
            self.study.tell(trial, state=_state("PRUNED"))
            logger.info("trial %d: pruned at step %d", trial.number, max(reported, default=0))
        elif outcome.interrupted and outcome.exit_code != 0:
            logger.warning("trial %d: stopped (%s); it continues from its checkpoint when the same command runs "
                           "again", trial.number, describe_exit(outcome.exit_code))
        else:
            self._finish(trial, run_dir, outcome.exit_code)

    def _finish(self, trial: Any, run_dir: Path, exit_code: int) -> None:
        log_path = self.trials_dir / f"{trial.number}.log"
        if exit_code != 0:
            error = last_error(log_path)
            stops = exit_code == USER_ERROR_EXIT
            self._fail(trial, f"{describe_exit(exit_code)}: {error}", stops)
            if stops:
                raise UserError(f"trial {trial.number} ended with a user error ({error}), which the next trials "
                                "would likely meet too, so the study stops. Fix: fix what it names and run the same "
                                "command again (other train flags or another space need a new --study_dir)")
            return
        objective = self.plan.objective
        value = final_value(run_dir, objective)
        if value is None:
            self._fail(trial, f"its {run_dir}/metrics.jsonl holds no {objective.kind} row with {objective.key}")
            return
        self.study.tell(trial, value)
        best = self.study.best_trial
        logger.info("trial %d: %s %.6g in %s (best: trial %d, %.6g)", trial.number, self.plan.cfg.objective,
                    value, format_seconds(self._wall_s(trial)), best.number, best.value)

    def _fail(self, trial: Any, error: str, stopped_study: bool = False) -> None:
        trial.set_user_attr("error", error)
        if stopped_study:
            trial.set_user_attr("stopped_study", True)
        self.study.tell(trial, state=_state("FAIL"))
        logger.warning("trial %d failed: %s", trial.number, error)

    def _reuse_twin(self, trial: Any, params: dict[str, Any]) -> bool:
        """An earlier trial with the very same values (likely in a small categorical space) is not trained again:
        training is deterministic under the shared --seed, so its result is this one's."""
        from optuna.trial import TrialState

        for twin in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if twin.params == params and twin.number != trial.number:
                trial.set_user_attr("same_as", twin.number)
                trial.set_user_attr("wall_s", 0.0)
                if twin.state == TrialState.COMPLETE:
                    self.study.tell(trial, twin.value)
                else:
                    self.study.tell(trial, state=TrialState.PRUNED)
                logger.info("trial %d: same values as trial %d; its result is reused", trial.number, twin.number)
                return True
        return False

    @staticmethod
    def _wall_s(trial: Any) -> float:
        return float(trial.user_attrs.get("wall_s", 0.0))  # a continued trial adds to the time it ran before


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def continuation_argv(plan: StudyPlan, params: dict[str, Any], run_dir: Path) -> list[str] | None:
    """The train flags that continue a trial's run: resume from its checkpoint, restart a run stopped before its
    first checkpoint, start it anew if it never began; None when its run had already finished."""
    from robotrain.configs.run import PRETRAINED_MODEL_DIR, TRAIN_CONFIG_NAME, RunDir, read_training_step

    run = RunDir(run_dir)
    checkpoint = run.latest_checkpoint()
    if checkpoint is not None:
        steps = json.loads((checkpoint / PRETRAINED_MODEL_DIR / TRAIN_CONFIG_NAME).read_text())["steps"]
        if read_training_step(checkpoint)["step"] >= steps:
            return None
    if checkpoint is not None or run.config_file.is_file():
        return [f"--output_dir={run_dir}", "--resume=true"]
    if run_dir.exists():  # started, but wrote not even its config: nothing in it to keep
        shutil.rmtree(run_dir)
    return [*plan.train_argv, *trial_flags(params), f"--output_dir={run_dir}"]


STATE_LABELS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "stopped",
                "WAITING": "waiting"}


def summarize(plan: StudyPlan, study: Any, stopped_by: str | None) -> TuneResult:
    """The results table's rows, the best trial and the command that reproduces it."""
    direction = plan.settings["direction"]
    result = TuneResult(Path(plan.cfg.study_dir), plan.cfg.objective, direction, plan.cfg.trials,
                        stopped_by=stopped_by)
    for t in study.get_trials(deepcopy=False):
        value = t.value
        note = t.user_attrs.get("error", "")
        if t.state.name == "PRUNED" and t.intermediate_values:
            last = max(t.intermediate_values)
            value, note = t.intermediate_values[last], f"pruned at step {last}"
        if "same_as" in t.user_attrs:
            note = f"same values as trial {t.user_attrs['same_as']}"
        if t.state.name == "RUNNING":
            note = "continues when the same command runs again"
        result.rows.append(TrialRow(t.number, STATE_LABELS.get(t.state.name, t.state.name.lower()), value,
                                    dict(t.params), float(t.user_attrs.get("wall_s", 0.0)), note))
    complete = [row for row in result.rows if row.state == "complete" and row.value is not None]
    if complete:
        pick = min if direction == "minimize" else max
        result.best = pick(complete, key=lambda row: row.value)
        result.best_command = shlex.join(["robotrain", "train", *plan.train_argv, *trial_flags(result.best.params)])
    return result


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def results_table(result: TuneResult) -> str:
    """Trial, state, objective, wall time and values, one row per trial; the best marked with '*'."""
    keys = list(dict.fromkeys(key for row in result.rows for key in row.params))
    header = ["trial", "state", result.objective, "wall", *keys, "note"]
    lines = [header]
    for row in result.rows:
        mark = "*" if result.best is not None and row.number == result.best.number else ""
        value = "-" if row.value is None else f"{row.value:.6g}"
        shown = [_short(row.params[k]) if k in row.params else "-" for k in keys]
        lines.append([f"{row.number}{mark}", row.state, value, format_seconds(row.wall_s), *shown, row.note[:80]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
