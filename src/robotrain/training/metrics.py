"""What a run reports: LeRobot's console line, metrics.jsonl, PNG plots, and Weights & Biases when enabled.

Console line (LeRobot v0.3 order, then our additions):
    step:2K smpl:16K ep:32 epch:0.81 loss:0.642 grdn:31.508 lr:1.0e-05 updt_s:0.412 data_s:0.004 smp/s:19.4 ...
metrics.jsonl gets one JSON object per logged step and per evaluation, so a run can be read without any service;
plots/ holds loss, lr, grad norm and eval success curves drawn from it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from robotrain.errors import UserError
from robotrain.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
# meter name -> (label in the console line, format)
TRAIN_FIELDS = {
    "loss": ("loss", ".3f"), "grad_norm": ("grdn", ".3f"), "lr": ("lr", "0.1e"), "update_s": ("updt_s", ".3f"),
    "data_s": ("data_s", ".3f"), "samples_per_s": ("smp/s", ".1f"),
}
EVAL_FIELDS = {"avg_sum_reward": ("∑rwrd", ".3f"), "pc_success": ("success", ".1f"), "eval_s": ("eval_s", ".3f")}


def format_big_number(value: float, precision: int = 0) -> str:
    """12345 -> 12K, as LeRobot prints step, sample and episode counts."""
    for suffix in ("", "K", "M", "B", "T"):
        if abs(value) < 1000:
            return f"{value:.{precision}f}{suffix}"
        value /= 1000
    return f"{value:.{precision}f}Q"


class RunningMeans:
    """Averages of each metric since the last log line ('data_s' and 'update_s' keep their maximum, as LeRobot)."""

    MAX_FIELDS = ("data_s", "update_s")

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, **values: float) -> None:
        for key, value in values.items():
            if key in self.MAX_FIELDS:
                self.sums[key] = max(self.sums[key], value)
                self.counts[key] = 1
            else:
                self.sums[key] += value
                self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


def train_line(step: int, samples: int, frames_per_episode: float, num_frames: int, means: dict[str, float]) -> str:
    """The console line of one log step."""
    parts = [f"step:{format_big_number(step)}", f"smpl:{format_big_number(samples)}",
             f"ep:{format_big_number(samples / frames_per_episode)}", f"epch:{samples / num_frames:.2f}"]
    for key, (label, fmt) in TRAIN_FIELDS.items():
        if key in means:
            parts.append(f"{label}:{means[key]:{fmt}}")
    parts += [f"{key}:{value:.3f}" for key, value in means.items() if key not in TRAIN_FIELDS]
    return " ".join(parts)


def val_line(step: int, scores: dict[str, float]) -> str:
    """The console line of a validation on held-out episodes."""
    return (f"step:{format_big_number(step)} val_loss:{scores['val_loss']:.4f} "
            f"val_action_mae:{scores['val_action_mae']:.4f} val_s:{scores['val_s']:.1f}")


def eval_line(step: int, aggregated: dict[str, float]) -> str:
    parts = [f"step:{format_big_number(step)}"]
    parts += [f"{label}:{aggregated[key]:{fmt}}" for key, (label, fmt) in EVAL_FIELDS.items() if key in aggregated]
    return " ".join(parts)


class RunLog:
    """Appends metrics to <output_dir>/metrics.jsonl (kept across resumes) and mirrors them to W&B if enabled."""

    def __init__(self, output_dir: Path, wandb_run: Any = None):
        self.path = Path(output_dir) / METRICS_FILE
        self.wandb_run = wandb_run

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        row = {"kind": kind, "step": step, **{k: v for k, v in values.items() if _is_number(v)}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({f"{kind}/{k}": v for k, v in row.items() if k not in ("kind", "step")}, step=step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows past the checkpoint's step (they came from the part of the run being redone)."""
        if not self.path.is_file():
            return
        kept = [json.dumps(row) for row in read_metrics(self.path) if row.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a line that is not a JSON object (the half line a crash or a full disk left) is
    skipped with a warning: plots and resumes never fail on it."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            logger.warning("%s, line %d: not a metrics row (cut short by a crash?); skipped", path, number)
    return rows


def draw_plots(output_dir: Path) -> list[Path]:
    """PNG curves of loss, lr, grad norm and eval success from metrics.jsonl; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    rows = read_metrics(Path(output_dir) / METRICS_FILE)
    # One plot per name; each holds one or more series (kind, key): the loss plot shows validation beside training.
    curves = {"loss": [("train", "loss"), ("val", "val_loss")], "lr": [("train", "lr")],
              "grad_norm": [("train", "grad_norm")], "val_action_mae": [("val", "val_action_mae")],
              "eval_success": [("eval", "pc_success")], "eval_reward": [("eval", "avg_sum_reward")]}
    plots_dir = Path(output_dir) / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    written = []
    for name, series in curves.items():
        drawn = [(kind, key, [(r["step"], r[key]) for r in rows if r.get("kind") == kind and key in r])
                 for kind, key in series]
        drawn = [(kind, key, points) for kind, key, points in drawn if points]
        if not drawn:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for kind, key, points in drawn:
            ax.plot(*zip(*points, strict=True), marker=None if kind == "train" else "o", linewidth=1.2,
                    label=f"{kind} {key}")
        ax.set_xlabel("step")
        ax.set_ylabel(drawn[0][1])
        if name in ("loss", "grad_norm") and all(v > 0 for _, _, points in drawn for _, v in points):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(drawn) > 1:
            ax.legend()
        ax.set_title(" / ".join(f"{kind} {key}" for kind, key, _ in drawn))
        fig.tight_layout()
        path = plots_dir / f"{name}.png"
        atomic_write(path, functools.partial(fig.savefig, format="png"))
        plt.close(fig)
        written.append(path)
    return written


def start_wandb(cfg: Any, resume: bool) -> Any:
    """A W&B run for this training (same run id when resuming); None when disabled."""
    if not cfg.wandb.enable:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb.enable=true needs the wandb package. Fix: pip install 'robotrain[wandb]', or drop "
                        "--wandb.enable") from None
    from robotrain.configs.train import config_to_dict

    tags = None
    if cfg.wandb.add_tags:
        tags = [f"policy:{cfg.policy.type}", f"seed:{cfg.seed}", f"dataset:{cfg.dataset.repo_id}"]
        tags += [f"env:{cfg.env.type}"] if cfg.env else []
        tags = [tag[:64] for tag in tags]
    run = wandb.init(id=cfg.wandb.run_id, project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.job_name,
                     notes=cfg.wandb.notes, tags=tags, dir=str(cfg.output_dir), config=config_to_dict(cfg),
                     job_type="train_eval", resume="allow" if resume else None, mode=cfg.wandb.mode or "online",
                     save_code=False)
    cfg.wandb.run_id = run.id  # saved in train_config.json, so a resume continues this run
    logger.info("W&B run %s (%s)", run.id, cfg.wandb.mode or "online")
    return run
