"""`robotrain tune`: hyperparameter search with optuna over short `robotrain train` runs.

    robotrain tune --study_dir=DIR --trials=N --objective=val_loss|success|train_loss --space='{...}' -- TRAIN FLAGS

config.py   TuneConfig (the flags), the objectives, the study plan checked once before the first trial
space.py    the search space: parsing, checking each key and type against the train config
trial.py    one trial: `robotrain train` in a subprocess, its metrics.jsonl polled, SIGTERM to prune or stop
study.py    optuna's SQLite storage in the study folder, the trial loop, resuming, the results table
command.py  cmd_tune: what the CLI prints

optuna is imported only when a study runs: without it `robotrain tune` says how to install it.
"""

from robotrain.tune.command import cmd_tune
from robotrain.tune.config import TuneConfig

__all__ = ["TuneConfig", "cmd_tune"]
