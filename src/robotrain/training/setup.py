"""The pieces a run is built from: seeding, the dataset with the policy's time offsets, batches on the device."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robotrain.configs.default import DatasetConfig
from robotrain.configs.policies import PolicyConfig
from robotrain.configs.train import TrainConfig
from robotrain.configs.types import ACTION, OBS_PREFIX, REWARD
from robotrain.datasets.dataset import LeRobotDataset
from robotrain.datasets.format import DatasetError
from robotrain.datasets.metadata import LeRobotDatasetMetadata
from robotrain.errors import ConfigError, UserError
from robotrain.files import WriterLock, acquire_writer_lock, folder_lock_path, human_bytes

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def set_seed(seed: int | None, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices); None leaves them unseeded. Each rank of a multi-process run gets
    its own stream (dropout, noise); the model starts the same everywhere (DDP copies rank 0's weights)."""
    if seed is None:
        return
    seed = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def delta_timestamps(policy: PolicyConfig, meta: LeRobotDatasetMetadata) -> dict[str, list[float]] | None:
    """The time offsets (seconds) each sample holds, from the policy's frame offsets and the dataset's fps."""
    out = {}
    for key in meta.features:
        if key == REWARD:
            indices = policy.reward_delta_indices
        elif key == ACTION:
            indices = policy.action_delta_indices
        elif key.startswith(OBS_PREFIX):
            indices = policy.observation_delta_indices
        else:
            indices = None
        if indices is not None:
            out[key] = [i / meta.fps for i in indices]
    return out or None


def make_datasets(cfg: TrainConfig) -> tuple[LeRobotDataset, LeRobotDataset | None]:
    """The training dataset and, with --dataset.val_episodes or --dataset.val_fraction, the held-out one."""
    meta = LeRobotDatasetMetadata(cfg.dataset.repo_id, cfg.dataset.root, cfg.dataset.revision, cfg.dataset.episodes)
    training, held_out = cfg.dataset.split_episodes(meta.total_episodes)
    dataset = make_dataset(cfg.dataset, cfg.policy, cfg.tolerance_s, training, meta)
    validation = make_dataset(cfg.dataset, cfg.policy, cfg.tolerance_s, held_out, meta) if held_out else None
    if validation is not None:
        logger.info("validation: %d held-out episode(s) (%s frames)", validation.num_episodes, validation.num_frames)
    return dataset, validation


def make_dataset(dataset_cfg: DatasetConfig, policy: PolicyConfig, tolerance_s: float, episodes: list[int] | None,
                 meta: LeRobotDatasetMetadata | None = None) -> LeRobotDataset:
    """A dataset as a policy reads it: frames as uint8 (made float on the device), cached as
    --dataset.frame_cache says, already at the policy's camera_frame_size when it has one (Diffusion's resize), and
    checked for NaN in every column the policy reads."""
    meta = meta or LeRobotDatasetMetadata(dataset_cfg.repo_id, dataset_cfg.root, dataset_cfg.revision, episodes)
    dataset = LeRobotDataset(dataset_cfg.repo_id, root=dataset_cfg.root, episodes=episodes,
                             delta_timestamps=delta_timestamps(policy, meta), tolerance_s=tolerance_s,
                             revision=dataset_cfg.revision, video_backend=dataset_cfg.video_backend,
                             return_uint8=True, frame_cache=dataset_cfg.frame_cache, meta=meta,
                             frame_size=policy.camera_frame_size)
    used = [k for k in dataset.columns if k.startswith(OBS_PREFIX) or k == ACTION
            or (k == REWARD and policy.reward_delta_indices is not None)]
    check_finite(dataset, used)
    return dataset


def check_finite(dataset: LeRobotDataset, keys: list[str]) -> None:
    """Stop before training when a column the policy reads holds NaN or infinite values: the loss would turn NaN
    at some step far from the cause. The message names the feature and the episodes."""
    from robotrain.datasets.validate_metadata import episodes_label

    for key in keys:
        column = dataset.columns[key]
        if not column.is_floating_point():
            continue
        bad = ~torch.isfinite(column.reshape(len(column), -1)).all(dim=1)
        if bad.any():
            episodes = sorted(set(dataset.columns["episode_index"][bad].tolist()))
            raise DatasetError(f"dataset {dataset.repo_id}: '{key}' holds NaN or infinite values in "
                               f"{int(bad.sum())} frame(s) ({episodes_label(episodes)}); the loss would become NaN. "
                               "Fix: leave those episodes out with --dataset.episodes=[...], or re-record them "
                               "(`robotrain dataset validate` lists every one)")


def dataset_stats(cfg: TrainConfig, dataset: LeRobotDataset) -> dict[str, dict[str, Any]]:
    """The dataset's statistics, with ImageNet's for cameras when --dataset.use_imagenet_stats (LeRobot's default)."""
    stats = {key: dict(value) for key, value in dataset.meta.stats.items()}
    if cfg.dataset.use_imagenet_stats:
        for key in dataset.meta.camera_keys:
            stats.setdefault(key, {})
            stats[key]["mean"] = np.array(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
            stats[key]["std"] = np.array(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    return stats


def batch_to_device(batch: dict[str, Any], device: torch.device, camera_keys: list[str]) -> dict[str, Any]:
    """Tensors to `device` (asynchronously from pinned memory); uint8 cameras become float in [0, 1] there."""
    out = {}
    non_blocking = device.type == "cuda"
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=non_blocking)
            if key in camera_keys and value.dtype == torch.uint8:
                value = value.float().div_(255)
        out[key] = value
    return out


def lock_run(output_dir: Path) -> WriterLock:
    """This process as the only one training into `output_dir` (the parser refuses a live holder earlier)."""
    def busy(pid: int | None) -> UserError:
        return ConfigError("output_dir", output_dir, f"is being written by process {pid or 'another process'}, which "
                           "trains into it now", "wait for it to finish or stop it, or choose another --output_dir")

    return acquire_writer_lock(folder_lock_path(output_dir), busy)


def checkpoint_bytes(policy: torch.nn.Module, optimizer_states_per_param: int = 2) -> int:
    """A generous estimate of one checkpoint's size: weights and buffers, plus Adam's two moments per weight."""
    weights = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in policy.parameters() if p.requires_grad)
    return weights + optimizer_states_per_param * trainable


def check_disk_space(output_dir: Path, needed: int) -> None:
    """Stop before training when a checkpoint could not be written (room for two: the new one and the last)."""
    existing = Path(output_dir)
    while not existing.exists():  # the run directory is created only after this check
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < 2 * needed:
        raise UserError(f"--output_dir={output_dir}: only {human_bytes(free)} free, and each checkpoint needs "
                        f"{human_bytes(needed)} (room for two is required). Fix: free disk space or choose an "
                        "--output_dir on a larger disk")
