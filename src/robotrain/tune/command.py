"""`robotrain tune` on the command line: parse, plan, run, then print the results table and the best command."""

from __future__ import annotations

import sys

from robotrain.tune.study import TuneResult, results_table

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def cmd_tune(argv: list[str]) -> int:
    """The `robotrain tune` command (registered in robotrain.cli)."""
    from robotrain.tune.config import parse_tune_args, plan_study
    from robotrain.tune.study import require_optuna, run_study

    cfg, train_argv = parse_tune_args(argv)
    require_optuna()
    result = run_study(plan_study(cfg, train_argv))
    print(report_text(result))  # noqa: T201 (the command's output)
    if result.stopped_by is not None:
        note = f"robotrain tune: stopped by {result.stopped_by}; run the same command again to continue the study"
        print(note, file=sys.stderr)  # noqa: T201
        return EXIT_INTERRUPTED
    return EXIT_OK if result.best is not None else EXIT_FAILED


def report_text(result: TuneResult) -> str:
    """The table of trials, the best one and the `robotrain train` command that reproduces it."""
    done = sum(1 for row in result.rows if row.state != "stopped")
    lines = [f"\nstudy {result.study_dir}: {done} of {result.target} trials, objective {result.objective} "
             f"({result.direction})", results_table(result) if result.rows else "(no trials yet)"]
    if result.best is None and result.stopped_by is None:
        lines.append(f"no trial completed; their logs are in {result.study_dir}/trials/<n>.log")
    else:
        lines += [f"best: trial {result.best.number}, {result.objective} {result.best.value:.6g} "
                  f"(run in {result.study_dir}/trials/{result.best.number})",
                  "reproduce it:", f"  {result.best_command}"]
    return "\n".join(lines)
