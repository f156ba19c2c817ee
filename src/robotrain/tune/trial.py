"""One trial: a real `robotrain train` in a subprocess, watched through its metrics.jsonl.

The trainer runs in a process of its own (a crash, an out-of-memory kill or a diverged loss ends that trial, not the
study) and in a session of its own, so a Ctrl-C at the terminal reaches `robotrain tune` only, which then stops the
trial once with SIGTERM: the trainer saves a checkpoint and exits. Should `robotrain tune` itself be killed, Linux
sends the trainer SIGTERM too (PR_SET_PDEATHSIG), so no orphan keeps training; the next `robotrain tune` continues
the trial from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotrain.tune.config import Objective

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a metrics.jsonl that may be being written: a last line without its newline is not read
    yet, and a line that is not a JSON object is skipped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def objective_series(rows: list[dict[str, Any]], objective: Objective) -> list[tuple[int, float]]:
    """(step, value) of every row of the objective's kind, in step order; a step logged twice keeps its last row."""
    by_step: dict[int, float] = {}
    for row in rows:
        value, step = row.get(objective.key), row.get("step")
        if row.get("kind") == objective.kind and isinstance(step, int) and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            by_step[step] = float(value)
    return sorted(by_step.items())


def final_value(run_dir: Path, objective: Objective) -> float | None:
    """A finished trial's score: its objective at the last step it was measured (the weights the run ends with)."""
    series = objective_series(read_rows(Path(run_dir) / METRICS_FILE), objective)
    return series[-1][1] if series else None


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making Linux send the child SIGTERM when `robotrain tune` dies; None elsewhere. libc is looked
    up here, in the parent: between fork and exec the child should only call, not import."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # tune died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def train_command(train_argv: list[str]) -> list[str]:
    """`robotrain train` through this interpreter (the venv's `robotrain` script may not be on PATH)."""
    return [sys.executable, "-m", "robotrain", "train", *train_argv]


@dataclass
class Outcome:
    """How a trial's process ended."""

    exit_code: int
    wall_s: float
    pruned: bool = False
    interrupted: bool = False  # stopped because `robotrain tune` was asked to stop


class StopSignals:
    """SIGINT/SIGTERM to `robotrain tune`: each one is counted; the running trial is stopped once per signal (the
    first lets it save; a second makes the trainer stop at once)."""

    def __init__(self) -> None:
        self.count = 0
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        self.name = signal.Signals(signum).name
        logger.warning("%s received: stopping the running trial (it saves a checkpoint); run the same command "
                       "again to continue the study", self.name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_trial(argv: list[str], run_dir: Path, log_path: Path, objective: Objective,
              report: Callable[[int, float], bool], stop: StopSignals, poll_s: float, grace_s: float) -> Outcome:
    """Run `robotrain train argv` until it ends. Each new objective value goes to `report(step, value)`; when it
    answers True (prune) the trial gets SIGTERM, saves and stops. A stop signal to tune is forwarded the same way."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(train_command(argv), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent())
    outcome = Outcome(exit_code=0, wall_s=0.0)
    forwarded, reported, stopped_at = 0, -1, None
    try:
        while True:
            try:
                exit_code = process.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                exit_code = None
            for step, value in objective_series(read_rows(run_dir / METRICS_FILE), objective):
                if step > reported and not outcome.pruned:
                    reported = step
                    outcome.pruned = report(step, value)
            wants = int(outcome.pruned) if stop.count == 0 else stop.count
            outcome.interrupted = outcome.interrupted or stop.count > 0
            if exit_code is not None:
                break
            while forwarded < wants:  # one SIGTERM per request: a second one makes the trainer stop at once
                process.send_signal(signal.SIGTERM)
                forwarded += 1
                stopped_at = stopped_at or time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > grace_s:
                logger.warning("trial in %s did not stop %.0f s after SIGTERM: killing it", run_dir, grace_s)
                process.kill()
    except BaseException:
        process.kill()  # tune itself fails: leave no trainer behind (its checkpoints stay whole)
        process.wait()
        raise
    outcome.exit_code, outcome.wall_s = exit_code, time.monotonic() - start
    return outcome


def last_error(log_path: Path) -> str:
    """The line a failed trial ended with (the trainer's one-line error, or the last line of a traceback)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no output"
    errors = [line for line in lines if "error:" in line or line.startswith("stopped")]
    return (errors or lines or ["no output"])[-1]


def describe_exit(exit_code: int) -> str:
    if exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        return f"killed by {name}" + (" (out of memory?)" if -exit_code == signal.SIGKILL else "")
    return f"exit code {exit_code}"


def wait_for_writer(run_dir: Path, limit_s: float) -> None:
    """Wait until no process trains into `run_dir` (a trainer left by a killed `robotrain tune` saving its
    checkpoint after SIGTERM); UserError naming it after `limit_s`."""
    from robotrain.errors import UserError
    from robotrain.files import folder_lock_path, lock_holder

    deadline = time.monotonic() + limit_s
    while (holder := lock_holder(folder_lock_path(run_dir))) is not None:
        if time.monotonic() > deadline:
            raise UserError(f"{run_dir} is still being trained into by process {holder} (a trial of a `robotrain "
                            f"tune` that was killed?). Fix: wait for it to end, or stop it (kill {holder}), then "
                            "run the same command again")
        time.sleep(0.2)
