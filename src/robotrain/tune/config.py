"""`robotrain tune` flags (TuneConfig) and the study plan: the space and the shared train command, checked once with
robotrain's own parser before the first trial, so a typo costs one line, not a trial."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotrain.errors import ConfigError, UserError
from robotrain.tune.space import Param, check_against_train, flag_text, read_space

SEPARATOR = "--"
USAGE = ("usage: robotrain tune --study_dir=DIR --trials=N --objective=val_loss|success|train_loss "
         "--space='{...}' -- TRAIN FLAGS\n"
         "       (the flags after `--` are `robotrain train`'s, shared by every trial)")
DIRECTIONS = ("auto", "minimize", "maximize")
PRUNERS = ("median", "none")
MAX_PROBES = 256  # combinations of bounds tried when checking a space (each parse takes milliseconds)


@dataclass(frozen=True)
class Objective:
    """Where a trial's score is in its metrics.jsonl, and which way is better."""

    kind: str
    key: str
    direction: str
    needs: str


OBJECTIVES = {
    "val_loss": Objective("val", "val_loss", "minimize", "held-out episodes (--dataset.val_fraction=0.1 or "
                          "--dataset.val_episodes=[...]) and --eval_freq=N (a validation every N steps)"),
    "success": Objective("eval", "pc_success", "maximize", "a simulator (--env.type=...) and --eval_freq=N "
                         "(an evaluation every N steps)"),
    "train_loss": Objective("train", "loss", "minimize", ""),
}


@dataclass
class TuneConfig:
    """Hyperparameter search with optuna over short `robotrain train` runs; the train flags follow `--`."""

    study_dir: Path
    """The study's folder: study.db (optuna's SQLite storage), trials/<n>/ (each trial's run) and trials/<n>.log
    (its console output). Running the same command again continues the study in it."""
    trials: int = 20
    """Trials the study holds when done, counting those of earlier runs (complete, pruned or failed)."""
    objective: str = "val_loss"
    """What a trial scores: val_loss (held-out episodes), success (simulation success %) or train_loss (the last
    logged training loss)."""
    direction: str = "auto"
    """minimize, maximize, or auto (minimize a loss, maximize success)."""
    space: str | None = None
    """The search space, JSON or YAML: {flag: {type: float|int|categorical, low, high, log, step, choices}}."""
    space_file: Path | None = None
    """A JSON or YAML file holding the search space, instead of --space."""
    pruner: str = "median"
    """median (stop a trial whose objective is worse than the median of earlier trials at the same step) or none."""
    pruner_startup_trials: int = 3
    """Trials that run to their end before any is pruned."""
    pruner_warmup_steps: int = 0
    """Training steps a trial runs before it can be pruned."""
    seed: int = 0
    """Seed of optuna's TPE sampler (the trials' own --seed is a train flag)."""
    poll_s: float = 2.0
    """Seconds between reads of a running trial's metrics.jsonl."""
    stop_grace_s: float = 300.0
    """Seconds a stopped trial (pruned, or Ctrl-C) may take to save its checkpoint before it is killed."""

    def validate(self) -> None:
        for name, allowed in (("objective", tuple(OBJECTIVES)), ("direction", DIRECTIONS), ("pruner", PRUNERS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, getattr(self, name), f"is not one of {', '.join(allowed)}",
                                  f"use --{name}={allowed[0]}")
        if self.trials < 1:
            raise ConfigError("trials", self.trials, "must be at least 1", "e.g. --trials=20")
        for name in ("pruner_startup_trials", "pruner_warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "cannot be negative", f"use 0 or more for --{name}")
        for name in ("poll_s", "stop_grace_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, getattr(self, name), "must be positive", f"e.g. --{name}=2")
        if (self.space is None) == (self.space_file is None):
            raise ConfigError("space", None, "is needed, or --space_file, but not both",
                              "--space='{\"policy.optimizer_lr\": {\"type\": \"float\", \"low\": 1e-5, "
                              "\"high\": 1e-3, \"log\": true}}'")

    def resolved_direction(self) -> str:
        return OBJECTIVES[self.objective].direction if self.direction == "auto" else self.direction


@dataclass(frozen=True)
class StudyPlan:
    """What the study runs, decided once: its space, the train flags every trial shares, and its settings (what a
    rerun must repeat to continue the study)."""

    cfg: TuneConfig
    params: list[Param]
    train_argv: list[str]
    settings: dict[str, Any]

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.cfg.objective]


def parse_tune_args(argv: list[str]) -> tuple[TuneConfig, list[str]]:
    """`robotrain tune` arguments -> (TuneConfig, the shared train flags after `--`)."""
    from robotrain.configs.parser import HelpRequested, parse_command

    head, train_argv = (argv[: argv.index(SEPARATOR)], argv[argv.index(SEPARATOR) + 1:]) \
        if SEPARATOR in argv else (argv, [])
    try:
        cfg = parse_command(TuneConfig, head, "tune")
    except HelpRequested as request:
        raise HelpRequested(USAGE + request.text[request.text.index("\n"):]) from None
    if not train_argv:
        raise UserError("robotrain tune needs the train flags that every trial shares after `--`, e.g. "
                        "`robotrain tune --study_dir=DIR --space=... -- --policy.type=act --dataset.repo_id=ID "
                        "--steps=2000`")
    return cfg, train_argv


def plan_study(cfg: TuneConfig, train_argv: list[str]) -> StudyPlan:
    """Check the space and the train command with robotrain's parser (every bound of every distribution too), and
    that the objective can be measured; nothing is written."""
    from robotrain.configs.parser import read_command_line

    params = read_space(cfg.space, cfg.space_file)
    space_flag = "space" if cfg.space is not None else "space_file"
    line = read_command_line(train_argv, "train")
    for reserved in ("output_dir", "resume"):
        if reserved in line.flags:
            raise ConfigError(reserved, line.flags[reserved], "is set by robotrain tune for each trial",
                              "drop it from the train flags (trials run in <study_dir>/trials/<n>)")
    base = parse_base_command(cfg, train_argv, params)
    check_objective(cfg.objective, base)
    check_against_train(params, base, line.flags, space_flag)
    check_bounds(cfg, train_argv, params, space_flag)
    check_dataset(base)
    train = {"flags": line.flags, "config_path": line.config_path, "policy.path": line.policy_path}
    settings = {"objective": cfg.objective, "direction": cfg.resolved_direction(),
                "space": {p.key: p.as_dict() for p in params},
                "train": {k: v for k, v in train.items() if v is not None}}
    return StudyPlan(cfg, params, list(train_argv), settings)


def trial_flags(params: dict[str, Any]) -> list[str]:
    """A trial's sampled values as train flags."""
    return [f"--{key}={flag_text(value)}" for key, value in params.items()]


def parse_trial_command(cfg: TuneConfig, train_argv: list[str], params: dict[str, Any],
                        output_dir: Path | None = None) -> Any:
    """The TrainConfig a trial would run (checked and resolved; nothing written)."""
    from robotrain.configs.parser import parse_train_config

    output_dir = output_dir or Path(cfg.study_dir) / "trials" / ".check"  # never created: only its rules are
    return parse_train_config([*train_argv, *trial_flags(params), f"--output_dir={output_dir}"])


def _combinations(params: list[Param], fixed: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Bound values of the params not in `fixed`, combined (a bounded number of them), each with `fixed`."""
    free = [[(p.key, v) for v in p.probe_values()] for p in params if p.key not in fixed]
    for combo in itertools.islice(itertools.product(*free), MAX_PROBES):
        yield {**fixed, **dict(combo)}


def parse_base_command(cfg: TuneConfig, train_argv: list[str], params: list[Param]) -> Any:
    """The shared train command, resolved: as it is, or (when only searched values make it valid, e.g.
    n_action_steps within a searched chunk_size) with the first combination of bounds that parses."""
    try:
        return parse_trial_command(cfg, train_argv, {})
    except UserError as shared_error:
        for values in _combinations(params, {}):
            try:
                return parse_trial_command(cfg, train_argv, values)
            except UserError:
                continue
        raise shared_error from None


def check_bounds(cfg: TuneConfig, train_argv: list[str], params: list[Param], space_flag: str) -> None:
    """Every bound of every distribution parses together with some bounds of the others. A space may still hold
    combinations the policy refuses (those trials fail), but never a value no trial could use."""
    for param in params:
        for value in param.probe_values():
            first_error: UserError | None = None
            for values in _combinations(params, {param.key: value}):
                try:
                    parse_trial_command(cfg, train_argv, values)
                    break
                except UserError as exc:
                    first_error = first_error or exc
            else:
                raise ConfigError(space_flag, None, f"{param.key}={flag_text(value)} is refused by robotrain train "
                                  f"({first_error})", "narrow the range, change the choices, or adjust the train "
                                  "flags")


def check_objective(objective: str, train_cfg: Any) -> None:
    """The train command logs the rows the objective reads (a validation or an evaluation before the last step)."""
    if objective == "train_loss":
        return
    has_source = train_cfg.env is not None if objective == "success" else \
        (train_cfg.dataset.val_episodes is not None or train_cfg.dataset.val_fraction > 0)
    if not has_source or not 0 < train_cfg.eval_freq <= train_cfg.steps:
        raise ConfigError("objective", objective, f"needs {OBJECTIVES[objective].needs} in the train flags, with "
                          f"eval_freq at most steps ({train_cfg.steps})",
                          "add them after `--`, or use --objective=train_loss")


def check_dataset(train_cfg: Any) -> None:
    """The dataset's metadata can be read and split as asked (a missing dataset fails here, not in every trial)."""
    from robotrain.datasets.metadata import LeRobotDatasetMetadata

    dataset = train_cfg.dataset
    meta = LeRobotDatasetMetadata(dataset.repo_id, dataset.root, dataset.revision, dataset.episodes)
    dataset.split_episodes(meta.total_episodes)
