"""Checkpoints in LeRobot's layout, written so that a crash at any moment leaves `last` on a complete one.

    <output_dir>/checkpoints/<step>/pretrained_model/{config.json, model.safetensors, train_config.json}
                                    training_state/{optimizer_param_groups.json, optimizer_state.safetensors,
                                                    rng_state.safetensors, scheduler_state.json, training_step.json}
    <output_dir>/checkpoints/last -> <step>

A checkpoint is written into checkpoints/.tmp-<step>, renamed into place, and only then is `last` switched (a new
symlink renamed over the old one). Renames are atomic, so a reader sees the old checkpoint or the new one, never
half of one. Leftover .tmp-* directories from a crash are removed when training starts. A full disk stops the run
with a message naming the disk and the space needed, and `last` stays where it was. With --keep_last_checkpoints=K
the older checkpoints are deleted after each save (never the one `last` points at).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from robotrain.configs.run import (
    LAST_CHECKPOINT_LINK,
    PRETRAINED_MODEL_DIR,
    TMP_PREFIX,
    TRAIN_CONFIG_NAME,
    TRAINING_STATE_DIR,
    TRAINING_STEP,
    RunDir,
    read_training_step,
)
from robotrain.configs.train import TrainConfig, save_config
from robotrain.errors import UserError
from robotrain.files import atomic_write_json, human_bytes, is_disk_full

logger = logging.getLogger(__name__)

OPTIMIZER_STATE = "optimizer_state.safetensors"
OPTIMIZER_PARAM_GROUPS = "optimizer_param_groups.json"
SCHEDULER_STATE = "scheduler_state.json"
RNG_STATE = "rng_state.safetensors"


def save_checkpoint(output_dir: Path, step: int, cfg: TrainConfig, policy: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, samples: int, rng_states: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint `step` atomically, point `last` at it and prune old ones as asked; returns its directory.

    rng_states: each process's random state, by rank (a single process: this one's).
    """
    run = RunDir(output_dir)
    final = run.checkpoint(step, cfg.steps)
    if final.is_dir():  # the same step saved before (a resumed run that ends where it began): identical state
        _point_last_at(run.checkpoints, final.name)
        return final
    tmp = run.checkpoints / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint(tmp, step, cfg, policy, optimizer, scheduler, samples, rng_states or [rng_state()])
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise _disk_full_error(run, step, policy) from None
        raise
    _fsync_dir(run.checkpoints)
    _point_last_at(run.checkpoints, final.name)
    logger.info("saved checkpoint %s", final)
    if cfg.keep_last_checkpoints > 0:
        _keep_newest(run, cfg.keep_last_checkpoints, final)
    return final


def _write_checkpoint(tmp: Path, step: int, cfg: TrainConfig, policy: Any, optimizer: torch.optim.Optimizer,
                      scheduler: Any, samples: int, rng_states: list[dict[str, torch.Tensor]]) -> None:
    model_dir, state_dir = tmp / PRETRAINED_MODEL_DIR, tmp / TRAINING_STATE_DIR
    policy.save_pretrained(model_dir)
    save_config(cfg, model_dir / TRAIN_CONFIG_NAME)
    state_dir.mkdir(parents=True)
    save_optimizer_state(optimizer, state_dir)
    if scheduler is not None:
        atomic_write_json(state_dir / SCHEDULER_STATE, scheduler.state_dict())
    for rank, state in enumerate(rng_states):
        save_file(state, str(state_dir / rng_file(rank)))
    atomic_write_json(state_dir / TRAINING_STEP, {"step": step, "samples": samples, "batch_size": cfg.batch_size,
                                                  "dp_world_size": len(rng_states),
                                                  "grad_accum_steps": cfg.gradient_accumulation_steps})
    _sync_tree(tmp)


def _disk_full_error(run: RunDir, step: int, policy: Any) -> UserError:
    from robotrain.training.setup import checkpoint_bytes

    free = shutil.disk_usage(run.path).free
    last = run.latest_checkpoint()
    kept = f"checkpoints/last still points at {last.name}" if last is not None else "no earlier checkpoint exists"
    return UserError(f"the disk holding {run.path} is full: checkpoint {step} needs about "
                     f"{human_bytes(checkpoint_bytes(policy))} and {human_bytes(free)} is free, so it was not saved "
                     f"({kept}). Fix: free space on that disk (--keep_last_checkpoints=K keeps fewer checkpoints), "
                     f"then resume with `robotrain train --output_dir={run.path} --resume=true`")


def _point_last_at(root: Path, name: str) -> None:
    """Switch `last` to checkpoint `name` in one rename. A `last` that is a real directory (a copy that followed
    links, or a sync tool) is set aside first and deleted after: the new checkpoint is complete by then."""
    link = root / LAST_CHECKPOINT_LINK
    tmp_link = root / f"{TMP_PREFIX}{LAST_CHECKPOINT_LINK}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(name)  # relative: the run directory can be moved
    aside = None
    if link.is_dir() and not link.is_symlink():
        aside = root / f"{TMP_PREFIX}{LAST_CHECKPOINT_LINK}-copy"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(link, aside)
    os.replace(tmp_link, link)
    _fsync_dir(root)
    if aside is not None:
        shutil.rmtree(aside)


def _keep_newest(run: RunDir, keep: int, current: Path) -> None:
    """Delete all but the newest `keep` complete checkpoints (`current`, which `last` points at, always stays)."""
    for old in run.complete_checkpoints()[:-keep]:
        if old != current:
            logger.info("removing %s (--keep_last_checkpoints=%d)", old, keep)
            shutil.rmtree(old)


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete .tmp-* leftovers of a checkpoint that a crash interrupted (the complete ones are untouched)."""
    root = RunDir(output_dir).checkpoints
    if not root.is_dir():
        return
    for leftover in root.glob(f"{TMP_PREFIX}*"):
        logger.info("removing %s, left by an interrupted checkpoint", leftover)
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


# ---- optimizer ---------------------------------------------------------------------------------------------
def save_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Tensors to safetensors ('state.<param>.<name>'), param groups and scalars to JSON, as LeRobot splits them."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{name}"] = value
    save_file(tensors, str(directory / OPTIMIZER_STATE))
    atomic_write_json(directory / OPTIMIZER_PARAM_GROUPS, {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    groups = _read_json(directory / OPTIMIZER_PARAM_GROUPS)
    if isinstance(groups, list):  # LeRobot writes the list of groups alone
        groups = {"param_groups": groups, "scalars": {}}
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in read_safetensors(directory / OPTIMIZER_STATE).items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    for key, value in groups["scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})
    _match_parameter_layouts(optimizer)


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor its parameter's memory layout (files hold them contiguous).

    Fused Adam/AdamW walk a parameter and its state as flat memory, so a channels-last convolution weight next to
    a contiguous `exp_avg` would pair the wrong elements and a resumed run would drift from an uninterrupted one.
    """
    for param, entries in optimizer.state.items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                entries[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


# ---- random number generators -----------------------------------------------------------------------------
AUGMENT_RNG = "image_transforms_generator"  # robotrain's own key: LeRobot reads only py*/np*/torch* keys


def rng_state(augmenter: Any = None) -> dict[str, torch.Tensor]:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors, with LeRobot's key names, and the image
    augmentation's generator when training augments."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "py_rng_version": torch.tensor([version], dtype=torch.int64),
        "py_rng_state": torch.tensor(py_state, dtype=torch.int64),
        "py_rng_gauss_next": torch.tensor([np.nan if gauss is None else gauss], dtype=torch.float64),
        "np_rng_state_values": torch.from_numpy(np_keys.astype(np.int64)),
        "np_rng_state_index": torch.tensor([np_pos], dtype=torch.int64),
        "np_rng_has_gauss": torch.tensor([np_has_gauss], dtype=torch.int64),
        "np_rng_cached_gaussian": torch.tensor([np_gauss], dtype=torch.float64),
        "torch_rng_state": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda_rng_state"] = torch.cuda.get_rng_state()
    if augmenter is not None:
        state[AUGMENT_RNG] = augmenter.state_dict()["generator"]
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    gauss = float(state["py_rng_gauss_next"][0]) if "py_rng_gauss_next" in state else float("nan")
    random.setstate((int(state["py_rng_version"][0]), tuple(int(v) for v in state["py_rng_state"]),
                     None if np.isnan(gauss) else gauss))
    np.random.set_state(("MT19937", state["np_rng_state_values"].numpy().astype(np.uint32),
                         int(state["np_rng_state_index"][0]), int(state["np_rng_has_gauss"][0]),
                         float(state["np_rng_cached_gaussian"][0])))
    torch.set_rng_state(state["torch_rng_state"])
    if "torch_cuda_rng_state" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda_rng_state"])


# ---- resume ------------------------------------------------------------------------------------------------
def rng_file(rank: int) -> str:
    """rng_state.safetensors (LeRobot's name) for rank 0, rng_state_rank<r>.safetensors for the others."""
    return RNG_STATE if rank == 0 else f"rng_state_rank{rank}.safetensors"


def load_training_state(checkpoint: Path, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0,
                        seed: int | None = None, augmenter: Any = None) -> tuple[int, int]:
    """Restore optimizer, scheduler and this rank's RNG from `checkpoint`; returns (step, samples drawn so far).

    A rank the checkpoint has no random state for (it was saved by fewer processes) continues from rank 0's state
    reseeded for (seed, rank, step): the run goes on correctly, but is no longer a replay of a longer one.
    """
    state_dir = Path(checkpoint) / TRAINING_STATE_DIR
    for name in (TRAINING_STEP, OPTIMIZER_STATE, OPTIMIZER_PARAM_GROUPS, RNG_STATE):
        if not (state_dir / name).is_file():
            raise UserError(f"cannot resume from {checkpoint}: {TRAINING_STATE_DIR}/{name} is missing. Fix: resume "
                            "from a complete checkpoint (checkpoints/last always is one), or start a new run")
    info = read_training_step(checkpoint)
    try:
        load_optimizer_state(optimizer, state_dir)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot resume from {checkpoint}: its optimizer state does not fit this run ({exc}). "
                        "Fix: resume with the same policy and optimizer settings") from None
    if scheduler is not None and (state_dir / SCHEDULER_STATE).is_file():
        scheduler.load_state_dict(_read_json(state_dir / SCHEDULER_STATE))
    own = state_dir / rng_file(rank)
    rng = read_safetensors(own if own.is_file() else state_dir / RNG_STATE)
    set_rng_state(rng)
    if augmenter is not None:
        _restore_augmenter(augmenter, rng if own.is_file() else {}, checkpoint, rank, seed, info["step"])
    if not own.is_file():
        from robotrain.training.setup import set_seed

        logger.warning("%s holds no random state for process %d (saved by %d process(es)): reseeding it", checkpoint,
                       rank, info.get("dp_world_size", 1))
        set_seed(int(np.random.SeedSequence([seed or 0, rank, info["step"]]).generate_state(1)[0]))
    return info["step"], info["samples"]


def _restore_augmenter(augmenter: Any, rng: dict[str, torch.Tensor], checkpoint: Path, rank: int, seed: int | None,
                       step: int) -> None:
    """The augmentation generator of this rank; reseeded (with a warning) when the checkpoint has none (saved
    without augmentation, by fewer processes, or by LeRobot): the run goes on, no longer a replay."""
    if AUGMENT_RNG in rng:
        augmenter.load_state_dict({"generator": rng[AUGMENT_RNG]})
        return
    logger.warning("%s holds no image augmentation state for process %d: reseeding it", checkpoint, rank)
    augmenter.generator.manual_seed(int(np.random.SeedSequence([seed or 0, rank, step, 1]).generate_state(1)[0]))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a UserError naming it when it is truncated or not safetensors."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (no common base with OSError)
        raise UserError(f"{path} is damaged ({str(exc).splitlines()[0]}). Fix: resume from another checkpoint of "
                        "the run, or restore the file") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc}). Fix: resume from another checkpoint of the run, or restore "
                        "the file") from None


# ---- files -------------------------------------------------------------------------------------------------
def _sync_tree(root: Path) -> None:
    """fsync every file, so a renamed checkpoint is on disk even after a power loss, not only a process crash."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
