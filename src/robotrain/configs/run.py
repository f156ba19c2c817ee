"""One owner for a training run: its folder layout (RunDir) and what `robotrain train` does with it (RunPlan).

    <run>/train_config.json                       the run's settings, written when it starts (a restart reads them)
    <run>/checkpoints/<step>/pretrained_model/    config.json, model.safetensors, train_config.json
                            /training_state/      optimizer, scheduler, RNG, training_step.json
    <run>/checkpoints/last -> <step>              a link; a real directory after `cp -rL` or a sync tool also works
    <run>/metrics.jsonl, plots/, eval/

The plan is decided once, when the command line is read: a new run, a fine-tune (--policy.path), a resume
(--resume=true with a checkpoint) or a restart (--resume=true on a run stopped before its first checkpoint). It
names the output folder and the checkpoint; everything after reads the plan and decides nothing again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotrain.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

TRAIN_CONFIG_NAME = "train_config.json"
POLICY_CONFIG_NAME = "config.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT_LINK = "last"
PRETRAINED_MODEL_DIR = "pretrained_model"
TRAINING_STATE_DIR = "training_state"
TRAINING_STEP = "training_step.json"
TMP_PREFIX = ".tmp-"  # checkpoints being written: renamed into place when complete, removed after a crash

NEW, FINE_TUNE, RESUME, RESTART = "new", "fine-tune", "resume", "restart"


def step_id(step: int, total_steps: int) -> str:
    """Zero-padded to at least 6 digits (or the width of the total), so names sort in step order."""
    return f"{step:0{max(6, len(str(total_steps)))}d}"


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def read_training_step(checkpoint: Path) -> dict[str, Any]:
    """training_state/training_step.json of a checkpoint: {"step": int, "samples": int, ...}; UserError if damaged."""
    path = Path(checkpoint) / TRAINING_STATE_DIR / TRAINING_STEP
    try:
        info = json.loads(path.read_text())
        step = info["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step is {step!r}")
        samples = info.get("samples", step * int(info.get("batch_size", 0)))
        if not isinstance(samples, int) or samples < 0:
            raise ValueError(f"samples is {samples!r}")
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {checkpoint} is not a complete checkpoint. Fix: resume from a complete "
                        f"one (checkpoints/{LAST_CHECKPOINT_LINK} always is), or start a new run") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"{path} is damaged ({exc}). Fix: resume from another checkpoint of the run (or "
                        "restore this one), or start a new run") from None
    return {**info, "step": step, "samples": samples}


class RunDir:
    """A run's folder and the checkpoints in it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT_LINK

    @property
    def config_file(self) -> Path:
        return self.path / TRAIN_CONFIG_NAME

    def checkpoint(self, step: int, total_steps: int) -> Path:
        return self.checkpoints / step_id(step, total_steps)

    def complete_checkpoints(self) -> list[Path]:
        """The numbered checkpoints that hold a config and a training step, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.name.isdigit() and p.is_dir() and is_complete(p)]
        return sorted(found, key=lambda p: int(p.name))

    def latest_checkpoint(self) -> Path | None:
        """What a resume continues from: `last` (a link, or a real directory after a copy that followed links), or
        the newest complete checkpoint when `last` is missing or broken (a crash while it was being switched)."""
        if is_complete(self.last):
            return self.last.resolve() if self.last.is_symlink() else self.last
        complete = self.complete_checkpoints()
        if complete and (self.last.is_symlink() or self.last.exists()):
            logger.warning("%s is broken; resuming from the newest complete checkpoint, %s", self.last, complete[-1])
        return complete[-1] if complete else None


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / PRETRAINED_MODEL_DIR / TRAIN_CONFIG_NAME).is_file() \
        and (checkpoint / TRAINING_STATE_DIR / TRAINING_STEP).is_file()


def run_dir_of(checkpoint: Path) -> RunDir | None:
    """The run a checkpoint belongs to: <run>/checkpoints/<step> -> <run>; None for a checkpoint copied elsewhere."""
    checkpoint = Path(checkpoint)
    return RunDir(checkpoint.parent.parent) if checkpoint.parent.name == CHECKPOINTS_DIR else None


@dataclass(frozen=True)
class ResumeSource:
    """Where a resumed run's settings come from: a checkpoint's train_config.json, or, for a run stopped before its
    first checkpoint, the run's own (checkpoint None: it restarts)."""

    config_file: Path
    checkpoint: Path | None


def find_resume_source(config_file: Path | None, output_dir: str | None) -> ResumeSource:
    """--resume=true with --config_path=<checkpoint>/pretrained_model, or with --output_dir=<run>."""
    if config_file is not None:
        checkpoint = config_file.resolve().parent.parent
        if not (checkpoint / TRAINING_STATE_DIR).is_dir():
            raise ConfigError("config_path", config_file, f"is not inside a training checkpoint (no "
                              f"{TRAINING_STATE_DIR}/ next to it), so there is no optimizer state to resume",
                              f"point at <run>/{CHECKPOINTS_DIR}/<step>/{PRETRAINED_MODEL_DIR}, or fine-tune with "
                              "--policy.path instead of --resume")
        return ResumeSource(config_file, checkpoint)
    if not output_dir:
        raise ConfigError("resume", True, "needs to know which run to continue",
                          f"add --output_dir=<run>, or --config_path=<run>/{CHECKPOINTS_DIR}/{LAST_CHECKPOINT_LINK}/"
                          f"{PRETRAINED_MODEL_DIR}")
    run = RunDir(output_dir)
    checkpoint = run.latest_checkpoint()
    if checkpoint is not None:
        return ResumeSource(checkpoint / PRETRAINED_MODEL_DIR / TRAIN_CONFIG_NAME, checkpoint)
    if run.config_file.is_file():  # started, then stopped before its first checkpoint: it starts over
        return ResumeSource(run.config_file, None)
    raise ConfigError("output_dir", output_dir, f"has no checkpoint to resume ({run.last} is missing or incomplete)",
                      "start a new run without --resume, or point --config_path at a checkpoint")


@dataclass(frozen=True)
class RunPlan:
    """What this `robotrain train` does: its mode, its folder, and (resuming) the checkpoint and its step."""

    mode: str
    output_dir: Path
    checkpoint: Path | None = None
    start_step: int = 0
    start_samples: int = 0

    @property
    def resumes(self) -> bool:
        """Optimizer, scheduler, RNG and the checkpoint's statistics are restored (the dataset's are not used)."""
        return self.mode == RESUME

    @property
    def run(self) -> RunDir:
        return RunDir(self.output_dir)


def plan_resume(source: ResumeSource, output_dir: Path | None, explicit_output_dir: bool, steps: int) -> RunPlan:
    """The plan of --resume=true: continue in the checkpoint's run (or in an explicit new --output_dir)."""
    if source.checkpoint is None:
        assert output_dir is not None, "a restart is found through --output_dir"
        logger.warning("%s stopped before its first checkpoint: starting it again from step 0", output_dir)
        return RunPlan(RESTART, Path(output_dir))
    home = run_dir_of(source.checkpoint)
    if explicit_output_dir:
        assert output_dir is not None
        if (home is None or Path(output_dir).resolve() != home.path.resolve()) and is_nonempty_dir(Path(output_dir)):
            raise ConfigError("output_dir", output_dir, "holds files of another run, and a resumed run writes its "
                              f"checkpoints into its own folder{f' ({home.path})' if home else ''} or a new one",
                              "drop --output_dir, or point it at a new folder")
        target = Path(output_dir)
    elif home is None:
        raise ConfigError("config_path", source.config_file, f"belongs to a checkpoint outside a run's "
                          f"{CHECKPOINTS_DIR}/ folder, so there is no run folder to continue writing into",
                          "add --output_dir=<a new folder> to continue the run there")
    else:
        target = home.path
    state = read_training_step(source.checkpoint)
    if state["step"] >= steps:
        raise ConfigError("steps", steps, f"is not above the step {source.checkpoint} was saved at "
                          f"({state['step']}), so a resume would train nothing",
                          f"pass --steps larger than {state['step']} (the total, counting the steps already done)")
    return RunPlan(RESUME, target, source.checkpoint, state["step"], state["samples"])


def plan_new_run(output_dir: Path, fine_tune: bool) -> RunPlan:
    """The plan of a new run (or fine-tune) in `output_dir`, which must be new or empty."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError("output_dir", output_dir, "is a file, not a directory", "choose a new --output_dir")
    if is_nonempty_dir(output_dir):
        run = RunDir(output_dir)
        if run.latest_checkpoint() is None and run.config_file.is_file():
            raise ConfigError("output_dir", output_dir, "holds a run that stopped before its first checkpoint",
                              f"start it again with `robotrain train --output_dir={output_dir} --resume=true`, or "
                              "choose a new --output_dir")
        raise ConfigError("output_dir", output_dir, "already exists and holds files from another run",
                          "add --resume=true to continue that run, or choose a new --output_dir")
    return RunPlan(FINE_TUNE if fine_tune else NEW, output_dir)
