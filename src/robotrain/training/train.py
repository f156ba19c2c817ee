"""`robotrain train`: the training loop. Setup, then the loop, then the end; every step is visible here.

Exact resume: the checkpoint holds weights, optimizer, scheduler, RNG and the number of samples drawn; the sampler's
order depends only on (seed, epoch), and evaluation runs with its own RNG, so on CPU a resumed run's weights equal
an uninterrupted run's bit for bit.

One step is gradient_accumulation_steps batches of batch_size samples in each of world_size processes
(distributed.py): the same update as one batch of all of them together.
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
from robotrain.datasets.transforms import BatchAugmenter, make_augmenter
from robotrain.devices import Precision, choose_precision, resolve_device, slow_bf16_warning
from robotrain.errors import UserError
from robotrain.memory import reuse_freed_memory
from robotrain.signals import StopRequest, shield_helper
from robotrain.training import checkpoint as ckpt
from robotrain.training import distributed
from robotrain.training.distributed import Topology
from robotrain.training.metrics import (
    RunLog,
    RunningMeans,
    draw_plots,
    eval_line,
    format_big_number,
    start_wandb,
    train_line,
    val_line,
)
from robotrain.training.sampler import EpisodeAwareSampler
from robotrain.training.setup import (
    batch_to_device,
    check_disk_space,
    checkpoint_bytes,
    dataset_stats,
    lock_run,
    make_datasets,
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
    is_main: bool = True  # rank 0 of a multi-process job: the one that reports
    hub_url: str | None = None  # where --policy.push_to_hub uploaded the final checkpoint


@dataclass
class Trainee:
    """What the loop trains: the policy, the module a step calls (the policy, or its DDP wrapper), the optimizer
    and the schedule, and how and where it computes."""

    policy: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    precision: Precision
    topology: Topology
    augment: BatchAugmenter | None = None  # --dataset.image_transforms: batched, on the device, seeded


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the training `cfg` describes: setup, then the loop, then the end."""
    device = resolve_device(cfg.policy.device)
    topology = distributed.start(device)
    try:
        result = _train(cfg, topology, distributed.device_for(device, topology))
    finally:
        distributed.stop()
    # After the process group is gone: a long upload must not hold the other ranks or time out a collective.
    if cfg.policy.push_to_hub and result.is_main and result.stopped_by is None and result.checkpoint is not None:
        from robotrain.hub_upload import push_trained_policy

        result.hub_url = push_trained_policy(cfg, result.checkpoint)
    return result


def _train(cfg: TrainConfig, topology: Topology, device: torch.device) -> TrainResult:
    from robotrain.policies.factory import make_policy

    plan, output_dir = cfg.plan, Path(cfg.output_dir)
    if not topology.is_main:  # one voice: rank 0 reports, the others only warn
        logging.getLogger("robotrain").setLevel(logging.WARNING)
    reuse_freed_memory()  # every step reallocates the same large buffers: keep their pages mapped
    set_seed(cfg.seed, topology.rank)
    precision = choose_precision(device, cfg.policy.use_amp)
    if (warning := slow_bf16_warning(precision)) and topology.is_main:
        logger.warning(warning)

    dataset, validation = make_datasets(cfg)
    policy = make_policy(cfg.policy, ds_meta=dataset.meta, dataset_stats=dataset_stats(cfg, dataset),
                         use_dataset_stats=not plan.resumes, adapt_features=cfg.adapt_features).to(device)
    optimizer = cfg.optimizer.build(policy.get_optim_params())
    scheduler = cfg.scheduler.build(optimizer, cfg.steps) if cfg.scheduler is not None else None
    trainee = Trainee(policy, distributed.wrap(policy, topology), optimizer, scheduler, device, precision, topology,
                      make_augmenter(cfg.dataset.image_transforms, cfg.seed, topology.rank))
    with lock_run(output_dir) if topology.is_main else nullcontext():  # nothing is written before this point
        step, samples = _start_run(cfg, plan, trainee)
        return _loop(cfg, output_dir, dataset, validation, trainee, step, samples)


def _start_run(cfg: TrainConfig, plan: RunPlan, trainee: Trainee) -> tuple[int, int]:
    """Restore the training state when resuming (a damaged one stops the run before anything is written), then
    prepare the run folder (rank 0); returns (step, samples)."""
    step, samples = 0, 0
    if plan.resumes:
        step, samples = ckpt.load_training_state(plan.checkpoint, trainee.optimizer, trainee.scheduler,
                                                 trainee.topology.rank, cfg.seed, trainee.augment)
        logger.info("resuming from step %d (%s)", step, plan.checkpoint)
    if trainee.topology.is_main:
        ckpt.remove_partial_checkpoints(plan.output_dir)  # first: their space counts as free
        check_disk_space(plan.output_dir, checkpoint_bytes(trainee.policy))
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, plan.run.config_file)  # what a restart reads, should the run stop before a checkpoint
        logger.info("config:\n%s", json.dumps(config_to_dict(cfg), indent=2, default=str))
    distributed.barrier(trainee.topology)
    return step, samples


def _loop(cfg: TrainConfig, output_dir: Path, dataset: Any, validation: Any, trainee: Trainee, step: int,
          samples: int) -> TrainResult:
    """The training loop: batches, updates, log lines, checkpoints and evaluations until cfg.steps or a signal."""
    topology, main = trainee.topology, trainee.topology.is_main
    starts, ends = dataset.episode_bounds()
    stream = EpisodeAwareSampler(starts, ends, drop_n_last_frames=cfg.policy.sample_end_margin, seed=cfg.seed or 0)
    stream.load_state_dict(stream.state_after(samples))  # `samples` counts every rank's: the stream is global
    loader = make_loader(cfg, dataset, distributed.ShardedSampler(stream, topology), trainee.device)
    run_log = RunLog(output_dir, start_wandb(cfg, cfg.plan.resumes)) if main else None
    if run_log is not None:
        run_log.truncate_after(step)
    evaluator = make_evaluator(cfg, trainee.policy, output_dir) if main else None
    validator = make_validator(cfg, validation) if main else None
    _log_banner(cfg, dataset, trainee)

    camera_keys = list(dataset.meta.camera_keys)
    frames_per_episode = dataset.num_frames / dataset.num_episodes
    samples_per_step = cfg.batch_size * topology.world_size * cfg.gradient_accumulation_steps
    means, saved, stopping = RunningMeans(), None, False
    trainee.policy.train()
    batches = iter(loader)
    with closing_loader(batches), StopRequest(repeat_acts_at_once=not topology.distributed) as stop, \
            _progress(cfg.steps, step, enabled=main) as progress:
        while step < cfg.steps and not stopping:
            start = time.perf_counter()
            try:
                metrics, data_s = train_step(trainee, batches, camera_keys, cfg)
            except TrainingDiverged as diverged:
                saved = save(cfg, output_dir, trainee, step, samples)
                raise TrainingDiverged(f"{diverged} at step {step + 1}. The last good step ({step}) is saved in "
                                       f"{saved}. Fix: lower the learning rate (--policy.optimizer_lr or "
                                       "--optimizer.lr) or check the dataset for extreme values, then resume "
                                       "or restart") from None
            update_s = time.perf_counter() - start - data_s
            step, samples = step + 1, samples + samples_per_step
            means.add(data_s=data_s, update_s=update_s, samples_per_s=samples_per_step / (data_s + update_s),
                      **metrics)
            progress.update(1)
            if step % cfg.log_freq == 0 or step == cfg.steps:
                values = distributed.mean_over_ranks(means.means(), topology)
                logger.info(train_line(step, samples, frames_per_episode, dataset.num_frames, values))
                if run_log is not None:
                    run_log.write("train", step, {"samples": samples, **values})
                means.reset()
            if cfg.save_checkpoint and (step == cfg.steps or (cfg.save_freq > 0 and step % cfg.save_freq == 0)):
                saved = save(cfg, output_dir, trainee, step, samples)
            if (cfg.env is not None or validation is not None) and cfg.eval_freq > 0 and step % cfg.eval_freq == 0:
                if validator is not None:
                    scores = validator(trainee.policy)
                    logger.info(val_line(step, scores))
                    run_log.write("val", step, scores)
                if evaluator is not None:
                    aggregated = evaluator(step)
                    logger.info(eval_line(step, aggregated))
                    run_log.write("eval", step, aggregated)
                distributed.barrier(topology)
            stopping = distributed.any_rank(stop.signal_name is not None, topology)  # every rank stops together
        if stopping and cfg.save_checkpoint:
            saved = save(cfg, output_dir, trainee, step, samples)
    if run_log is not None:
        draw_plots(output_dir)
        if run_log.wandb_run is not None:
            run_log.wandb_run.finish()
    stopped_by = (stop.signal_name or "a signal to another process") if stopping else None
    return TrainResult(output_dir, step, saved, stopped_by, main)


def train_step(trainee: Trainee, batches: Iterator[dict[str, Any]], camera_keys: list[str],
               cfg: TrainConfig) -> tuple[dict[str, float], float]:
    """One optimizer step over gradient_accumulation_steps batches; returns (metrics, seconds spent waiting for
    data). Raises TrainingDiverged on every rank, the weights untouched, when a loss or the gradient norm is not
    finite."""
    accumulate, data_s, losses, outputs = cfg.gradient_accumulation_steps, 0.0, [], {}
    for micro in range(accumulate):
        start = time.perf_counter()
        batch = batch_to_device(next_batch(batches), trainee.device, camera_keys)
        data_s += time.perf_counter() - start
        if trainee.augment is not None:  # each batch of an accumulation draws its own augmentations
            batch = trainee.augment(batch, camera_keys)
        # Gradients are averaged across ranks once per optimizer step, with the last batch of the accumulation.
        with distributed.sync_gradients(trainee.model, micro == accumulate - 1), trainee.precision.autocast():
            loss, outputs = trainee.model(batch)
        losses.append(loss.item())
        if distributed.any_rank(not math.isfinite(losses[-1]), trainee.topology):
            trainee.optimizer.zero_grad(set_to_none=True)
            bad = next((value for value in losses if not math.isfinite(value)), "not finite on another process")
            raise TrainingDiverged(f"the loss became {bad}")
        (loss / accumulate).backward()  # the mean over every batch of the step, as one batch `accumulate` x larger
    max_norm = cfg.optimizer.grad_clip_norm if cfg.optimizer.grad_clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(trainee.policy.parameters(), max_norm).item()
    if not math.isfinite(grad_norm):  # gradients are averaged across ranks: every rank sees the same norm
        trainee.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"the gradient norm became {grad_norm}")
    trainee.optimizer.step()
    trainee.optimizer.zero_grad(set_to_none=True)
    if trainee.scheduler is not None:
        trainee.scheduler.step()
    trainee.policy.update()
    metrics = {"loss": sum(losses) / accumulate, "grad_norm": grad_norm,
               "lr": trainee.optimizer.param_groups[0]["lr"]}
    metrics.update({k: float(v) for k, v in (outputs or {}).items() if isinstance(v, (int, float, torch.Tensor))})
    return metrics, data_s


def save(cfg: TrainConfig, output_dir: Path, trainee: Trainee, step: int, samples: int) -> Path | None:
    """Checkpoint `step`. Every rank calls it; rank 0 writes, with every rank's random state, and gets the
    checkpoint's folder back (the others get None)."""
    rng_states = distributed.gather_objects(ckpt.rng_state(trainee.augment), trainee.topology)
    saved = None
    if trainee.topology.is_main:
        saved = ckpt.save_checkpoint(output_dir, step, cfg, trainee.policy, trainee.optimizer, trainee.scheduler,
                                     samples, rng_states)
        draw_plots(output_dir)
    distributed.barrier(trainee.topology)
    return saved


@contextmanager
def closing_loader(batches: Iterator[dict[str, Any]]) -> Iterator[None]:
    """Stop the loader's workers when the loop ends, however it ends. Left to garbage collection after an error,
    they would be stopped by multiprocessing's exit handler instead, whose SIGTERM workers ignore unless this
    process sends it (robotrain.signals) -- done here, in order, and before the process exits."""
    try:
        yield
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # PyTorch's own: done-event, then join
        if shutdown is not None:
            shutdown()


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


def make_loader(cfg: TrainConfig, dataset: Any, sampler: torch.utils.data.Sampler[int],
                device: torch.device) -> torch.utils.data.DataLoader:
    from robotrain.datasets.loader import batch_loader

    # Workers (if any) ignore a group SIGTERM: it is for the trainer, which saves, then stops them. A private
    # generator: creating the loader's iterator must not draw from the global RNG (exact resume).
    return batch_loader(dataset, sampler, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator(), worker_init_fn=functools.partial(shield_worker, os.getpid()))


def shield_worker(owner_pid: int, _worker_id: int) -> None:
    """worker_init_fn of the data loader (see robotrain.signals)."""
    shield_helper(owner_pid)


def make_validator(cfg: TrainConfig, validation: Any) -> Any:
    """A function policy -> validation scores ({val_loss, val_action_mae, ...}), or None without held-out episodes
    or with --eval_freq=0."""
    if validation is None or cfg.eval_freq == 0:
        return None
    from robotrain.evaluation.offline import OfflineEvaluator

    evaluator = OfflineEvaluator(validation, seed=cfg.seed, max_samples=cfg.eval.max_samples)

    def validate(policy: Any) -> dict[str, float]:
        report = evaluator.run(policy)
        return {"val_loss": report["loss"], "val_action_mae": report["action_mae"],
                "val_action_rmse": report["action_rmse"], "val_s": report["eval_s"]}

    return validate


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
def _progress(total: int, initial: int, enabled: bool) -> Iterator[Any]:
    """A progress bar on a terminal (rank 0's); log lines are printed above it instead of through it."""
    import sys

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, initial=initial, desc="Training", unit="step", dynamic_ncols=True,
              disable=not (enabled and sys.stderr.isatty()), leave=False) as bar, \
            logging_redirect_tqdm(loggers=[logging.getLogger("robotrain")]):
        yield bar


def _log_banner(cfg: TrainConfig, dataset: Any, trainee: Trainee) -> None:
    policy, topology = trainee.policy, trainee.topology
    learnable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.parameters())
    logger.info("output dir: %s", cfg.output_dir)
    logger.info("%s policy on %s, %s: %s learnable / %s parameters", cfg.policy.type, trainee.device,
                trainee.precision.label, format_big_number(learnable, 1), format_big_number(total, 1))
    processes = f" in each of {topology.world_size} processes" if topology.distributed else ""
    accumulated = f", {cfg.gradient_accumulation_steps} batches per step" if cfg.gradient_accumulation_steps > 1 \
        else ""
    logger.info("dataset %s: %s frames, %d episodes; %d steps of %d samples%s%s", cfg.dataset.repo_id,
                format_big_number(dataset.num_frames), dataset.num_episodes, cfg.steps, cfg.batch_size, processes,
                accumulated)
