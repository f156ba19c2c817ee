"""Dataset, evaluation and Weights & Biases settings (field names and defaults as LeRobot's)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robotrain.errors import ConfigError
from robotrain.hub import check_repo_id

VIDEO_BACKENDS = ("pyav", "torchcodec")
FRAME_CACHE_MODES = ("auto", "on", "off")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class ImageTransformConfig:
    """One augmentation: a transform type, its arguments and how often it is picked (LeRobot's names)."""

    weight: float = 1.0
    """Relative probability of picking this transform for a sample; 0 or less disables it."""
    type: str = "Identity"
    """Transform: ColorJitter, SharpnessJitter, RandomAffine or Identity (checked when image_transforms.enable)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the transform, as torchvision names them: ColorJitter {brightness, contrast, saturation, hue},
    SharpnessJitter {sharpness}, RandomAffine {degrees, translate, scale, shear, interpolation, fill}; a range is
    [low, high], e.g. --dataset.image_transforms.tfs.brightness.kwargs.brightness=[0.5,1.5]."""

    def validate(self) -> None:
        if not abs(self.weight) < float("inf"):  # NaN or infinite (NaN compares false)
            raise ConfigError("weight", self.weight, "must be a finite number",
                              "use a relative probability such as 1.0, or 0 to disable this transform")


def _default_image_transforms() -> dict[str, ImageTransformConfig]:
    return {
        # Lists, not tuples: kwargs are free-form, so JSON gives lists back and a saved config must equal its load.
        "brightness": ImageTransformConfig(1.0, "ColorJitter", {"brightness": [0.8, 1.2]}),
        "contrast": ImageTransformConfig(1.0, "ColorJitter", {"contrast": [0.8, 1.2]}),
        "saturation": ImageTransformConfig(1.0, "ColorJitter", {"saturation": [0.5, 1.5]}),
        "hue": ImageTransformConfig(1.0, "ColorJitter", {"hue": [-0.05, 0.05]}),
        "sharpness": ImageTransformConfig(1.0, "SharpnessJitter", {"sharpness": [0.5, 1.5]}),
        "affine": ImageTransformConfig(1.0, "RandomAffine", {"degrees": [-5.0, 5.0], "translate": [0.05, 0.05]}),
    }


@dataclass
class ImageTransformsConfig:
    """Camera augmentations in training (off by default): for each sample and camera, a random subset of the
    transforms below, batched on the training device (robotrain.datasets.transforms)."""

    enable: bool = False
    """Augment camera frames during training (every time step of a sample gets the same draw)."""
    max_num_transforms: int = 3
    """How many of the transforms below apply to each sample at most (picked by weight, without replacement)."""
    random_order: bool = False
    """Apply the picked transforms in the order drawn instead of the order listed."""
    tfs: dict[str, ImageTransformConfig] = field(default_factory=_default_image_transforms)
    """The available transforms by name."""

    def validate(self) -> None:
        if self.max_num_transforms < 1:
            raise ConfigError("max_num_transforms", self.max_num_transforms, "must be at least 1",
                              "pick how many transforms apply per frame, e.g. 3, or set enable=false")
        if self.enable:  # only then: a LeRobot config may name transforms robotrain lacks, unused while disabled
            from robotrain.datasets.transforms import FIELD, check_transforms  # late: keeps `--help` light

            try:
                check_transforms(self)
            except ConfigError as exc:  # its fix names full flags; the field goes back relative, the parser prefixes it
                raise ConfigError(exc.field.removeprefix(f"{FIELD}."), exc.value, exc.problem, exc.fix) from None


@dataclass
class DatasetConfig:
    """Which LeRobot dataset to train on and how to read it."""

    repo_id: str
    """Dataset id, e.g. lerobot/pusht: a folder under $HF_LEROBOT_HOME, or a Hub repo when online."""
    root: Path | None = None
    """Local folder holding the dataset; overrides the cache lookup (works offline)."""
    episodes: list[int] | None = None
    """Use these episode indices only, e.g. [0,1,2]; null uses every episode."""
    val_episodes: list[int] | None = None
    """Training: hold these episodes out and report a validation loss on them every eval_freq steps."""
    val_fraction: float = 0.0
    """Training: hold out this fraction of the episodes (picked with a fixed seed) for validation; 0: none."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to download; null means the format's tag, v3.0."""
    image_transforms: ImageTransformsConfig = field(default_factory=ImageTransformsConfig)
    """Camera augmentations used in training."""
    video_backend: str = "pyav"
    """Video decoder: pyav (bundled with PyAV) or torchcodec (if installed)."""
    use_imagenet_stats: bool = True
    """Normalize cameras with ImageNet mean/std instead of the dataset's (suits pretrained backbones)."""
    frame_cache: str = "auto"
    """Decoded-frame cache (robotrain): auto (used when it fits half the free memory and disk), on (build it or stop
    with the sizes), off (decode video on the fly)."""

    def validate(self) -> None:
        check_repo_id(self.repo_id, "repo_id", root_flag="dataset.root")
        if self.episodes is not None:
            _check_indices("episodes", self.episodes)
        self._validate_split()
        if self.frame_cache not in FRAME_CACHE_MODES:
            raise ConfigError("frame_cache", self.frame_cache,
                              f"is not a frame cache mode (choose one of {', '.join(FRAME_CACHE_MODES)})",
                              "use --dataset.frame_cache=auto, on or off")
        if self.video_backend not in VIDEO_BACKENDS:
            raise ConfigError("video_backend", self.video_backend,
                              f"is not a video backend (choose one of {', '.join(VIDEO_BACKENDS)})",
                              "use --dataset.video_backend=pyav")

    def _validate_split(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", self.val_fraction, "must be at least 0 and below 1",
                              "e.g. --dataset.val_fraction=0.1 holds out a tenth of the episodes")
        if self.val_episodes is None:
            return
        _check_indices("val_episodes", self.val_episodes)
        if self.val_fraction:
            raise ConfigError("val_fraction", self.val_fraction, "cannot be combined with --dataset.val_episodes",
                              "keep one of them")
        if self.episodes is not None and (outside := sorted(set(self.val_episodes) - set(self.episodes))):
            raise ConfigError("val_episodes", self.val_episodes, f"holds episodes outside --dataset.episodes "
                              f"({outside})", "hold out episodes of the selected ones")

    def split_episodes(self, total: int) -> tuple[list[int] | None, list[int]]:
        """(training episodes, validation episodes) among `total`; training None means every episode (no split)."""
        selected = self.episodes if self.episodes is not None else list(range(total))
        if self.val_episodes is not None:
            held = sorted(self.val_episodes)
        elif self.val_fraction:
            count = max(1, round(self.val_fraction * len(selected)))
            # A fixed seed, not --seed: the split stays the same when only the training seed changes.
            held = sorted(random.Random(0).sample(selected, count))
        else:
            return self.episodes, []
        training = [e for e in selected if e not in set(held)]
        if not training:
            raise ConfigError("val_episodes" if self.val_episodes is not None else "val_fraction",
                              self.val_episodes if self.val_episodes is not None else self.val_fraction,
                              f"holds out every one of the {len(selected)} episodes", "keep some for training")
        return training, held


def _check_indices(name: str, indices: list[int]) -> None:
    negative = [e for e in indices if e < 0]
    if negative:
        raise ConfigError(name, indices, f"episode indices cannot be negative ({negative[0]})",
                          f"list indices from 0, e.g. --dataset.{name}=[0,1,2]")
    if len(set(indices)) != len(indices):
        raise ConfigError(name, indices, "lists an episode twice", "list each episode index once")


@dataclass
class EvalConfig:
    """Evaluation: rollouts in simulation (episodes, environments at once) and on recorded episodes."""

    n_episodes: int = 50
    """Number of episodes to roll out."""
    batch_size: int = 0
    """Environments stepped together; 0 picks min(70% of CPU cores, n_episodes, 64)."""
    use_async_envs: bool = True
    """Step environments in subprocesses (faster for slow simulators) instead of in this process."""
    max_episodes_rendered: int = 10
    """Save videos of the first this many episodes (`robotrain eval`; training evaluations save up to 4)."""
    max_samples: int | None = 1000
    """Evaluation on recorded episodes (held-out data, validation): at most this many frames, picked once with a
    fixed seed; null: every frame."""

    def validate(self) -> None:
        if self.n_episodes < 1:
            raise ConfigError("n_episodes", self.n_episodes, "must be at least 1", "e.g. --eval.n_episodes=50")
        if self.max_episodes_rendered < 0:
            raise ConfigError("max_episodes_rendered", self.max_episodes_rendered, "cannot be negative",
                              "use 0 for no videos, or a positive count")
        if self.batch_size < 0:
            raise ConfigError("batch_size", self.batch_size, "cannot be negative",
                              "use 0 for automatic, or a positive number of environments")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError("max_samples", self.max_samples, "must be at least 1",
                              "use a positive count, or null for every frame")
        if self.batch_size > self.n_episodes:
            raise ConfigError("batch_size", self.batch_size,
                              f"is more environments than episodes (n_episodes={self.n_episodes})",
                              f"set it to at most {self.n_episodes}, or 0 for automatic")


@dataclass
class WandBConfig:
    """Weights & Biases logging (optional extra `wandb`)."""

    enable: bool = False
    """Log metrics, videos and checkpoints to Weights & Biases."""
    disable_artifact: bool = False
    """Do not upload checkpoints as W&B artifacts (saves bandwidth and storage)."""
    project: str = "robotrain"
    """W&B project name."""
    entity: str | None = None
    """W&B team or user; null uses your default entity."""
    notes: str | None = None
    """Free-text notes attached to the run."""
    run_id: str | None = None
    """Run id; set automatically so that a resumed training continues the same W&B run."""
    mode: str | None = None
    """online, offline (no network: sync later with `wandb sync`) or disabled; null means online."""
    add_tags: bool = True
    """Tag the run with the policy, dataset, env and seed."""

    def validate(self) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError("mode", self.mode, f"is not a W&B mode (choose one of {', '.join(WANDB_MODES)})",
                              "use --wandb.mode=offline to log without network")
