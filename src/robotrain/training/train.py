"""`robotrain train`: the training loop. Setup, then the loop, then the end; every step is visible here.

Exact resume: the checkpoint holds weights, optimizer, scheduler, RNG and the number of samples drawn; the sampler's
order depends only on (seed, epoch), and evaluation runs with its own RNG, so on CPU a resumed run's weights equal
an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robotrain.configs.run import RunPlan, step_id
from robotrain.configs.train import TrainConfig, config_to_dict, save_config
from robotrain.devices import resolve_device
from robotrain.errors import UserError
from robotrain.memory import reuse_freed_memory
from robotrain.signals import StopRequest, shield_helper
from robotrain.training import checkpoint as ckpt
from robotrain.training.metrics import (
    RunLog,
    RunningMeans,
    draw_plots,
    eval_line,
    format_big_number,
    start_wandb,
    train_line,
)
from robotrain.training.sampler import EpisodeAwareSampler
from robotrain.training.setup import (
    batch_to_device,
    check_disk_space,
    checkpoint_bytes,
    dataset_stats,
    lock_run,
    make_dataset,
    set_seed,
)

logger = logging.getLogger(__name__)


class TrainingDiverged(Exception):  # noqa: N818 (an outcome the CLI reports, like UserError)
    """The loss or the gradients stopped being finite; the last good step was saved."""


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    checkpoint: Path | None
    stopped_by: str | None = None  # "SIGINT" or "SIGTERM" when interrupted


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the training `cfg` describes: setup, then the loop, then the end."""
    from robotrain.policies.factory import make_policy

    plan, output_dir = cfg.plan, Path(cfg.output_dir)
    reuse_freed_memory()  # every step reallocates the same large buffers: keep their pages mapped
    set_seed(cfg.seed)
    device = resolve_device(cfg.policy.device)

    dataset = make_dataset(cfg)
    policy = make_policy(cfg.policy, ds_meta=dataset.meta, dataset_stats=dataset_stats(cfg, dataset),
                         use_dataset_stats=not plan.resumes, adapt_features=cfg.adapt_features)
    optimizer = cfg.optimizer.build(policy.get_optim_params())
    scheduler = cfg.scheduler.build(optimizer, cfg.steps) if cfg.scheduler is not None else None
    with lock_run(output_dir):  # nothing is written before this point
        step, samples = _start_run(cfg, plan, policy, optimizer, scheduler)
        return _loop(cfg, output_dir, dataset, policy, optimizer, scheduler, device, step, samples)


def _start_run(cfg: TrainConfig, plan: RunPlan, policy: Any, optimizer: torch.optim.Optimizer,
               scheduler: Any) -> tuple[int, int]:
    """Restore the training state when resuming (a damaged one stops the run before anything is written), then
    prepare the run folder; returns (step, samples)."""
    step, samples = 0, 0
    if plan.resumes:
        step, samples = ckpt.load_training_state(plan.checkpoint, optimizer, scheduler)
        logger.info("resuming from step %d (%s)", step, plan.checkpoint)
    ckpt.remove_partial_checkpoints(plan.output_dir)  # first: their space counts as free
    check_disk_space(plan.output_dir, checkpoint_bytes(policy))
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, plan.run.config_file)  # what a restart reads, should the run stop before its first checkpoint
    logger.info("config:\n%s", json.dumps(config_to_dict(cfg), indent=2, default=str))
    return step, samples


def _loop(cfg: TrainConfig, output_dir: Path, dataset: Any, policy: Any, optimizer: torch.optim.Optimizer,
          scheduler: Any, device: torch.device, step: int, samples: int) -> TrainResult:
    """The training loop: batches, updates, log lines, checkpoints and evaluations until cfg.steps or a signal."""
    starts, ends = dataset.episode_bounds()
    sampler = EpisodeAwareSampler(starts, ends, drop_n_last_frames=cfg.policy.sample_end_margin,
                                  seed=cfg.seed or 0)
    sampler.load_state_dict(sampler.state_after(samples))
    loader = make_loader(cfg, dataset, sampler, device)
    run_log = RunLog(output_dir, start_wandb(cfg, cfg.plan.resumes))
    run_log.truncate_after(step)
    evaluator = make_evaluator(cfg, policy, output_dir)
    _log_banner(cfg, dataset, policy, device)

    camera_keys = list(dataset.meta.camera_keys)
    frames_per_episode = dataset.num_frames / dataset.num_episodes
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.policy.use_amp and device.type == "cuda" \
        else nullcontext()
    means, saved = RunningMeans(), None
    policy.train()
    batches = iter(loader)
    with StopRequest() as stop, _progress(cfg.steps, step) as progress:
        while step < cfg.steps and stop.signal_name is None:
            start = time.perf_counter()
            batch = batch_to_device(next_batch(batches), device, camera_keys)
            data_s = time.perf_counter() - start
            try:
                metrics = update_policy(policy, batch, optimizer, scheduler, cfg.optimizer.grad_clip_norm, amp)
            except TrainingDiverged as diverged:
                saved = ckpt.save_checkpoint(output_dir, step, cfg, policy, optimizer, scheduler, samples)
                raise TrainingDiverged(f"{diverged} at step {step + 1}. The last good step ({step}) is saved in "
                                       f"{saved}. Fix: lower the learning rate (--policy.optimizer_lr or "
                                       "--optimizer.lr) or check the dataset for extreme values, then resume "
                                       "or restart") from None
            update_s = time.perf_counter() - start - data_s
            step, samples = step + 1, samples + cfg.batch_size
            means.add(data_s=data_s, update_s=update_s, samples_per_s=cfg.batch_size / (data_s + update_s), **metrics)
            progress.update(1)
            if step % cfg.log_freq == 0 or step == cfg.steps:
                values = means.means()
                logger.info(train_line(step, samples, frames_per_episode, dataset.num_frames, values))
                run_log.write("train", step, {"samples": samples, **values})
                means.reset()
            if cfg.save_checkpoint and (step == cfg.steps or (cfg.save_freq > 0 and step % cfg.save_freq == 0)):
                saved = ckpt.save_checkpoint(output_dir, step, cfg, policy, optimizer, scheduler, samples)
                draw_plots(output_dir)
            if evaluator is not None and cfg.eval_freq > 0 and step % cfg.eval_freq == 0:
                aggregated = evaluator(step)
                logger.info(eval_line(step, aggregated))
                run_log.write("eval", step, aggregated)
        if stop.signal_name is not None and cfg.save_checkpoint:
            saved = ckpt.save_checkpoint(output_dir, step, cfg, policy, optimizer, scheduler, samples)
    draw_plots(output_dir)
    if run_log.wandb_run is not None:
        run_log.wandb_run.finish()
    return TrainResult(output_dir, step, saved, stop.signal_name)


def next_batch(batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The next batch; a user error raised in a loader worker comes back as its own one line, not as the worker's
    traceback text that the DataLoader wraps around it."""
    try:
        return next(batches)
    except UserError as exc:
        text = str(exc)
        if "Original Traceback" not in text:
            raise
        last = text.rstrip().splitlines()[-1]  # "<module>.<ErrorType>: <message>", as the traceback ends
        name, _, message = last.partition(": ")
        raise UserError(message if name.endswith(type(exc).__name__) else last) from None


def update_policy(policy: torch.nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                  grad_clip_norm: float, amp: Any) -> dict[str, float]:
    """One optimizer step; raises TrainingDiverged (weights untouched) if the loss or gradients are not finite."""
    with amp:
        loss, outputs = policy(batch)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"the loss became {loss_value}")
    loss.backward()
    max_norm = grad_clip_norm if grad_clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm).item()
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"the gradient norm became {grad_norm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    policy.update()
    metrics = {"loss": loss_value, "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}
    metrics.update({k: float(v) for k, v in (outputs or {}).items() if isinstance(v, (int, float, torch.Tensor))})
    return metrics


def make_loader(cfg: TrainConfig, dataset: Any, sampler: EpisodeAwareSampler,
                device: torch.device) -> torch.utils.data.DataLoader:
    from robotrain.datasets.loader import loader_options

    options = loader_options(dataset, cfg.num_workers, pin_memory=device.type == "cuda")
    if options["num_workers"] > 0:  # a group SIGTERM is for the trainer: it saves, then stops its workers
        options["worker_init_fn"] = functools.partial(shield_worker, os.getpid())
    # A private generator: creating the loader's iterator must not draw from the global RNG (exact resume).
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                       generator=torch.Generator(), **options)


def shield_worker(owner_pid: int, _worker_id: int) -> None:
    """worker_init_fn of the data loader (see robotrain.signals)."""
    shield_helper(owner_pid)


def make_evaluator(cfg: TrainConfig, policy: torch.nn.Module, output_dir: Path) -> Any:
    """A function step -> aggregated eval metrics, or None without --env.type or with --eval_freq=0."""
    if cfg.env is None or cfg.eval_freq == 0:
        return None
    from robotrain.evaluation.rollout import Evaluator

    evaluator = Evaluator(cfg.env, cfg.eval, seed=cfg.seed)
    evaluator.check_policy(policy)

    def evaluate(step: int) -> dict[str, float]:
        videos = output_dir / "eval" / f"videos_step_{step_id(step, cfg.steps)}"
        rng = ckpt.rng_state()  # evaluation draws random numbers too: training's stream must not notice
        try:
            info = evaluator.run(policy, videos_dir=videos, max_videos=4)
        finally:
            ckpt.set_rng_state(rng)
        policy.train()
        return info["aggregated"]

    return evaluate


@contextmanager
def _progress(total: int, initial: int) -> Iterator[Any]:
    """A progress bar on a terminal; log lines are printed above it instead of through it."""
    import sys

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, initial=initial, desc="Training", unit="step", dynamic_ncols=True,
              disable=not sys.stderr.isatty(), leave=False) as bar, \
            logging_redirect_tqdm(loggers=[logging.getLogger("robotrain")]):
        yield bar


def _log_banner(cfg: TrainConfig, dataset: Any, policy: torch.nn.Module, device: torch.device) -> None:
    learnable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.parameters())
    logger.info("output dir: %s", cfg.output_dir)
    logger.info("%s policy on %s: %s learnable / %s parameters", cfg.policy.type, device,
                format_big_number(learnable, 1), format_big_number(total, 1))
    logger.info("dataset %s: %s frames, %d episodes; %d steps of %d samples", cfg.dataset.repo_id,
                format_big_number(dataset.num_frames), dataset.num_episodes, cfg.steps, cfg.batch_size)
