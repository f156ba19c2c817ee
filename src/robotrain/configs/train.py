"""The configs of `robotrain train` and `robotrain eval`, their cross-field rules, and train_config.json I/O."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus

import robotrain.envs  # noqa: F401  (registers --env.type choices)
from robotrain.configs.default import DatasetConfig, EvalConfig, WandBConfig
from robotrain.configs.policies import PolicyConfig
from robotrain.configs.run import (
    PRETRAINED_MODEL_DIR,
    ResumeSource,
    RunPlan,
    is_nonempty_dir,
    plan_new_run,
    plan_resume,
)
from robotrain.envs.configs import EnvConfig
from robotrain.errors import ConfigError
from robotrain.files import atomic_write_json, folder_lock_path, lock_holder
from robotrain.hub_upload import check_push_to_hub
from robotrain.optim.optimizers import OptimizerConfig
from robotrain.optim.schedulers import LRSchedulerConfig
from robotrain.policies.registry import policy_spec, policy_specs


@dataclass
class TrainConfig:
    """Everything `robotrain train` needs; saved as train_config.json in every checkpoint."""

    dataset: DatasetConfig
    """The dataset to train on."""
    env: EnvConfig | None = None
    """Simulation env for evaluation during training (--env.type=pusht|aloha|xarm); null: no sim eval."""
    policy: PolicyConfig | None = None
    """The policy: --policy.type=<name> (--help lists them), or --policy.path=DIR to fine-tune."""
    output_dir: Path | None = None
    """Where checkpoints, logs and plots go; default outputs/train/<date>/<time>_<job_name>."""
    job_name: str | None = None
    """Run name; default <env>_<policy> (or <policy> without an env)."""
    resume: bool = False
    """Continue the run of --config_path (a checkpoint's pretrained_model) or of --output_dir."""
    seed: int | None = 1000
    """Seed of model init, data order and eval environments; null: not seeded."""
    num_workers: int | None = None
    """Data loader processes; null picks from the CPU count and whether frames are cached."""
    batch_size: int = 8
    """Samples per batch in each process (per device, as LeRobot); a step uses gradient_accumulation_steps
    batches in every process."""
    gradient_accumulation_steps: int = 1
    """Batches whose gradients are summed before each optimizer step: the update of one batch this many times
    larger, in the memory of one."""
    steps: int = 100_000
    """Optimizer steps to train for (in total, counting resumed steps)."""
    eval_freq: int = 20_000
    """Evaluate every this many steps: in simulation with --env.type, on held-out episodes with
    --dataset.val_episodes or --dataset.val_fraction; 0 disables."""
    log_freq: int = 200
    """Print a log line every this many steps."""
    tolerance_s: float = 1e-4
    """Largest allowed gap (seconds) between a requested and a stored frame timestamp."""
    save_checkpoint: bool = True
    """Save checkpoints (every save_freq steps and at the end)."""
    save_freq: int = 20_000
    """Save a checkpoint every this many steps; 0 saves only at the end."""
    adapt_features: bool = False
    """Fine-tuning (--policy.path) on data whose features differ: rebuild the layers they feed instead of stopping."""
    use_policy_training_preset: bool = True
    """Train with the policy's optimizer and schedule (its optimizer_* and scheduler_* fields)."""
    optimizer: OptimizerConfig | None = None
    """Optimizer when the preset is off: --optimizer.type=adam|adamw|sgd."""
    scheduler: LRSchedulerConfig | None = None
    """LR schedule when the preset is off: --scheduler.type=<name> (--help lists them)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Simulation evaluation settings."""
    wandb: WandBConfig = field(default_factory=WandBConfig)
    """Weights & Biases logging."""
    keep_last_checkpoints: int = 0
    """Keep only the newest K checkpoints (older ones are deleted after each save); 0 keeps every one."""
    plan: RunPlan | None = field(default=None, init=False, repr=False, compare=False)
    # Decided when the command line is read (configs/run.py): new, fine-tune, resume or restart. Not a flag.

    def validate(self) -> None:
        for name in ("batch_size", "steps", "log_freq", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be at least 1", f"use a positive --{name}")
        for name in ("eval_freq", "save_freq", "keep_last_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "cannot be negative",
                                  f"use 0 to disable, or a positive --{name}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError("num_workers", self.num_workers, "cannot be negative",
                              "use 0 (load in the main process) or more")
        if self.tolerance_s <= 0:
            raise ConfigError("tolerance_s", self.tolerance_s, "must be positive", "e.g. --tolerance_s=1e-4")


@dataclass
class EvalPipelineConfig:
    """Everything `robotrain eval` needs: a simulator to roll out in, recorded episodes to compare with, or both."""

    env: EnvConfig | None = None
    """The simulation env: --env.type=pusht|aloha|xarm."""
    dataset: DatasetConfig | None = None
    """Recorded episodes (e.g. held out from training): the policy's loss and action error on them."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How many episodes, how many envs at once."""
    policy: PolicyConfig | None = None
    """The policy to evaluate: --policy.path=<run>/checkpoints/last/pretrained_model (or a Hub id)."""
    output_dir: Path | None = None
    """Where eval_info.json and videos go; default outputs/eval/<date>/<time>_<env>_<policy>."""
    job_name: str | None = None
    """Name of this evaluation; default <env>_<policy>."""
    seed: int | None = 1000
    """Seed of the first episode; episode i uses seed + i."""


def policy_names() -> list[str]:
    """The --policy.type values that have a model."""
    return sorted(name for name, spec in policy_specs().items() if spec.model is not None)


def default_output_dir(kind: str, job_name: str, now: dt.datetime | None = None) -> Path:
    """outputs/<kind>/YYYY-MM-DD/HH-MM-SS_<job_name>, as LeRobot names runs."""
    now = now or dt.datetime.now()
    return Path("outputs") / kind / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{job_name}"


def resolve_train_config(cfg: TrainConfig, cli_flags: set[str], resume: ResumeSource | None) -> TrainConfig:
    """Fill derived fields (presets, job name, output dir), decide the run's plan, and apply the rules that span
    fields or touch disk."""
    if cfg.policy is None:
        raise ConfigError("policy.type", None, "no policy chosen",
                          f"add --policy.type=<{'|'.join(policy_names())}>, or --policy.path=DIR to fine-tune a "
                          "trained policy")
    policy_spec(cfg.policy.type).check_has_model()
    cfg.job_name = cfg.job_name or (f"{cfg.env.type}_{cfg.policy.type}" if cfg.env else cfg.policy.type)
    if resume is not None:
        cfg.plan = plan_resume(resume, cfg.output_dir, "output_dir" in cli_flags, cfg.steps)
        if cfg.plan.checkpoint is not None:
            cfg.policy.pretrained_path = cfg.plan.checkpoint / PRETRAINED_MODEL_DIR
    else:
        output_dir = Path(cfg.output_dir) if cfg.output_dir is not None else default_output_dir("train", cfg.job_name)
        cfg.plan = plan_new_run(output_dir, fine_tune=cfg.policy.pretrained_path is not None)
    cfg.output_dir = cfg.plan.output_dir
    _apply_training_preset(cfg, cli_flags)
    _check_writable(cfg.output_dir)
    _check_not_training(cfg.output_dir)
    check_push_to_hub(cfg)  # when asked for: network, token and repo checked before any work
    return cfg


def _check_not_training(output_dir: Path) -> None:
    """A run folder another live process trains into is refused before any work (training also holds the lock)."""
    holder = lock_holder(folder_lock_path(output_dir))
    if holder is not None:
        raise ConfigError("output_dir", output_dir, f"is being written by process {holder}, which trains into it now",
                          "wait for it to finish or stop it, or choose another --output_dir")


def _apply_training_preset(cfg: TrainConfig, cli_flags: set[str]) -> None:
    """The policy's preset sets optimizer and scheduler, so a flag for either would be silently overridden:
    refuse it instead. A resumed run keeps the optimizer and schedule it was saved with."""
    assert cfg.policy is not None
    if not cfg.use_policy_training_preset:
        if cfg.optimizer is None:
            raise ConfigError("optimizer.type", None, "is needed when --use_policy_training_preset=false",
                              "add --optimizer.type=adamw (or adam, sgd) and its --optimizer.lr")
        return
    overridden = sorted(f for f in cli_flags if f.split(".")[0] in ("optimizer", "scheduler"))
    if overridden:
        raise ConfigError(overridden[0], None,
                          f"is ignored while the policy's training preset is on (the {cfg.policy.type} preset "
                          "sets the optimizer and schedule)",
                          "set the preset's fields instead (e.g. --policy.optimizer_lr=...), or add "
                          "--use_policy_training_preset=false to configure --optimizer.* and --scheduler.* yourself")
    if cfg.plan.resumes and cfg.optimizer is not None:
        return
    cfg.optimizer = cfg.policy.get_optimizer_preset()
    cfg.scheduler = cfg.policy.get_scheduler_preset()


def _check_writable(output_dir: Path) -> None:
    """Fail before any work when the run directory cannot be created or written."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError("output_dir", output_dir, f"cannot be created ({existing} is a file)",
                          "choose a --output_dir whose parent folders are folders")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("output_dir", output_dir, f"cannot be written ({existing} is not writable)",
                          "choose a --output_dir in a folder you can write to")


def resolve_eval_config(cfg: EvalPipelineConfig) -> EvalPipelineConfig:
    """Derived fields and disk rules of `robotrain eval`."""
    if cfg.policy is None:
        raise ConfigError("policy.path", None, "no policy to evaluate",
                          "add --policy.path=<run>/checkpoints/last/pretrained_model (or a Hub id)")
    policy_spec(cfg.policy.type).check_has_model()
    if cfg.env is None and cfg.dataset is None:
        raise ConfigError("env.type", None, "is needed, or a dataset: there is nothing to evaluate on",
                          f"add --env.type=<{'|'.join(sorted(EnvConfig.get_known_choices()))}> to roll out in "
                          "simulation, or --dataset.repo_id=ID (and --dataset.episodes=[...]) to compare with "
                          "recorded episodes")
    cfg.job_name = cfg.job_name or f"{cfg.env.type if cfg.env else 'offline'}_{cfg.policy.type}"
    if cfg.output_dir is None:
        cfg.output_dir = default_output_dir("eval", cfg.job_name)
    elif is_nonempty_dir(cfg.output_dir):
        raise ConfigError("output_dir", cfg.output_dir, "already exists and holds files",
                          "choose a new --output_dir so earlier results are kept")
    _check_writable(cfg.output_dir)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON data with a "type" key for each choice, as train_config.json stores it."""
    data = draccus.encode(cfg)
    if isinstance(cfg, TrainConfig):
        data.pop("plan", None)
    return data


def save_config(cfg: Any, path: Path) -> None:
    """Write `cfg` as indented JSON, atomically (a reader never sees half a file)."""
    atomic_write_json(path, config_to_dict(cfg))


def load_train_config(path: Path) -> TrainConfig:
    """Read a train_config.json written by save_config (or by LeRobot) back into a TrainConfig, exactly."""
    from robotrain.configs.parser import read_config_file

    return read_config_file(TrainConfig, Path(path))
