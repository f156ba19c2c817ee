"""Frames at the resolution training uses: cached resized once, equal to resizing on the fly, beside the native
cache."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from robotrain.cli import main
from robotrain.configs.parser import parse_train_config
from robotrain.datasets import LeRobotDataset
from robotrain.datasets.frame_cache_store import cache_root, list_caches
from robotrain.errors import ConfigError
from robotrain.training.setup import make_datasets
from tests.training.test_train_e2e import TINY

from .helpers import H, W, features, frame

REPO = "test/synthetic"
SIZE = (20, 28)  # not a whole fraction of 32x48: every output pixel mixes several input pixels


def textured(episode: int, i: int) -> np.ndarray:
    """A frame with structure a resize must average (a flat frame resizes to itself)."""
    y, x = np.mgrid[0:H, 0:W]
    return ((y * 7 + x * 5 + (x // 4) * 40 + episode * 31 + i * 13) % 256).astype(np.uint8)[..., None].repeat(3, -1)


def record_textured(root: Path, lengths: list[int]) -> Path:
    writer = LeRobotDataset.create(REPO, 10, features(), root=root)
    for episode, length in enumerate(lengths):
        for i in range(length):
            writer.add_frame({**frame(episode, i, length), "observation.image": textured(episode, i)})
        writer.save_episode()
    writer.finalize()
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return record_textured(tmp_path / "ds", [6, 5])


def open_dataset(root: Path, **options) -> LeRobotDataset:
    return LeRobotDataset(REPO, root=root, return_uint8=True,
                          delta_timestamps={"observation.image": [-0.1, 0.0]}, **options)


def images(dataset: LeRobotDataset) -> torch.Tensor:
    return torch.stack([dataset[i]["observation.image"] for i in range(len(dataset))])  # (N, 2, 3, H, W)


def release(dataset: LeRobotDataset) -> Path:
    """Let go of the dataset's cache (and its lock); return the cache folder."""
    directory = dataset.frames.directory
    del dataset
    gc.collect()  # the dataset and its cache point at each other: only the collector frees them (and the lock)
    return directory


def test_resized_cache_equals_resized_decoding_and_the_models_resize(root):
    cached = images(open_dataset(root, frame_cache="on", frame_size=SIZE))
    decoded = images(open_dataset(root, frame_cache="off", frame_size=SIZE))
    assert cached.shape == (11, 2, 3, *SIZE) and cached.dtype == torch.uint8
    assert torch.equal(cached, decoded)

    native = images(open_dataset(root, frame_cache="off")).flatten(0, 1).float() / 255  # (2N, 3, H, W)
    by_model = F.interpolate(native, size=SIZE, mode="bilinear", antialias=True)  # as Diffusion's RgbEncoder
    difference = (cached.flatten(0, 1).float() / 255 - by_model).abs().max().item()
    assert 0 < difference <= 1 / 255 + 1e-6, "equal up to uint8 rounding (and not trivially: values were rounded)"


def test_float_items_are_resized_too(root):
    item = LeRobotDataset(REPO, root=root, frame_size=SIZE)[3]
    assert item["observation.image"].shape == (3, *SIZE) and item["observation.image"].dtype == torch.float32


def test_native_and_resized_caches_coexist_through_cleanups(root, tmp_path):
    native = release(open_dataset(root, frame_cache="on"))
    resized = release(open_dataset(root, frame_cache="on", frame_size=SIZE))
    assert resized.name == f"{native.name}-20x28" and resized.parent == native.parent == cache_root()
    shape = json.loads((resized / "observation.image.json").read_text())["shape"]
    assert shape == [11, *SIZE, 3] and (resized / "observation.image.u8").stat().st_size < \
        (native / "observation.image.u8").stat().st_size

    assert release(open_dataset(root, frame_cache="on")) == native  # opening one runs the cleanup: it keeps the other
    assert (resized / "observation.image.u8").is_file()
    assert {e.directory.name: e.state for e in list_caches()} == {native.name: "current", resized.name: "current"}

    other = record_textured(tmp_path / "other", [4])  # another dataset's resized cache is not touched
    other_resized = release(open_dataset(other, frame_cache="on", frame_size=SIZE))

    info = root / "meta" / "info.json"
    info.write_text(info.read_text() + "\n")  # an edited dataset: a new fingerprint
    grown = release(open_dataset(root, frame_cache="on", frame_size=SIZE))
    assert grown != resized and not resized.exists() and not native.exists(), "both older caches are removed"
    assert other_resized.is_dir()


def test_make_dataset_follows_the_policys_resize_shape(root):
    base = [f"--dataset.repo_id={REPO}", f"--dataset.root={root}", "--output_dir=unused"]
    resized = make_datasets(parse_train_config([*TINY["diffusion"], "--policy.resize_shape=[20,28]", *base]))[0]
    native = make_datasets(parse_train_config([*TINY["diffusion"], *base]))[0]
    act = make_datasets(parse_train_config([*TINY["act"], *base]))[0]
    assert resized.frame_size == SIZE and resized[0]["observation.image"].shape[-2:] == SIZE
    for dataset in (native, act):
        assert dataset.frame_size is None and dataset[0]["observation.image"].shape[-2:] == (H, W)


def test_a_size_equal_to_the_cameras_uses_the_native_frames(root):
    dataset = open_dataset(root, frame_cache="on", frame_size=(H, W))
    assert dataset.frame_size is None and "-" not in dataset.frames.directory.name


@pytest.mark.parametrize("size", [(0, 28), (20, -1), (20.5, 28), (20,), (20, 28, 3), (True, 28), "20x28"])
def test_a_bad_frame_size_is_one_clear_error(root, size):
    with pytest.raises(ConfigError, match=r"^--frame_size=.*must be two positive whole numbers \(height, width\)"):
        open_dataset(root, frame_size=size)


def test_train_diffusion_at_its_resize_shape(workdir, tmp_path):
    dataset = record_textured(tmp_path / "train_ds", [12, 9])
    run = workdir / "run"
    tiny = [flag for flag in TINY["diffusion"] if not flag.startswith("--policy.crop_shape=")]
    assert main(["train", *tiny, "--policy.resize_shape=[24,32]", "--policy.crop_shape=[20,28]",
                 f"--dataset.repo_id={REPO}", f"--dataset.root={dataset}", "--batch_size=4", "--num_workers=0",
                 "--log_freq=1", "--steps=2", f"--output_dir={run}"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert [p.name.partition("-")[2] for p in cache_root().iterdir()] == ["24x32"], "frames cached at 24x32"

