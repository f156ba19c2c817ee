"""Where camera frames come from: a frame cache decoded once, or on-the-fly decoding.

The frame cache holds every frame of a video camera as uint8 in one memory-mapped file per camera, indexed by
the dataset's global frame `index`. It is keyed by a fingerprint of info.json and the video files (size and
mtime), so an edited dataset gets a fresh cache, and it covers all episodes, so runs on different episode
subsets share it. Decoding happens once, sequentially (fast: no seeks), with a progress bar. After that a sample
costs a memory copy, in any number of DataLoader workers (the OS shares the pages). frame_cache_store.py keeps the
folders on disk: locks that tell "in use" from "abandoned", and the removal of caches a dataset outgrew.

With a frame size (H, W) every camera's frames are resized once, at build, into a cache folder of that size (the
native one stays): a policy that resizes its input (Diffusion's resize_shape) then reads small frames, and a
dataset too large to cache at full resolution may fit. Decoding on the fly resizes the same way, so items are the
same with or without the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from robotrain.configs.default import FRAME_CACHE_MODES
from robotrain.datasets.format import DatasetError
from robotrain.datasets.frame_cache_store import (
    CacheLock,
    cache_directory,
    dataset_fingerprint,
    lock_cache,
    record_owner,
    remove_stale_caches,
)
from robotrain.datasets.video import DecoderCache
from robotrain.errors import ConfigError
from robotrain.files import atomic_write_json

if TYPE_CHECKING:
    from robotrain.datasets.dataset import LeRobotDataset

logger = logging.getLogger(__name__)

_DECODERS = DecoderCache()  # one per process; DataLoader workers get their own after fork
_TORCHCODEC_DECODERS: DecoderCache | None = None  # made on first use: torchcodec is optional


def check_frame_size(frame_size: object) -> tuple[int, int] | None:
    """(height, width) as two positive ints, or None; ConfigError naming frame_size otherwise."""
    if frame_size is None:
        return None
    values = list(frame_size) if isinstance(frame_size, (list, tuple)) else [frame_size]
    whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not whole or min(values) < 1:
        raise ConfigError("frame_size", values if len(values) > 1 else frame_size,
                          "must be two positive whole numbers (height, width)", "e.g. [240,320], or null (native)")
    return int(values[0]), int(values[1])


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, *size, 3) uint8, resized as Diffusion Policy's encoder resizes its input.

    Bilinear with antialiasing on floats in [0, 1], then rounded to uint8: a frame equals the model's own float
    resize of the native frame up to that rounding (at most 0.5/255; per-channel normalization before the resize
    commutes with it, as the weights sum to 1). Frames already at `size` are returned as they are.
    """
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous().float().div_(255)  # (T, 3, H, W)
    resized = F.interpolate(video, size=size, mode="bilinear", antialias=True)  # (T, 3, *size)
    return resized.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class FrameSource(Protocol):
    def get(self, key: str, rows: list[int]) -> np.ndarray:
        """Frames of camera `key` at dataset rows `rows` (one episode): (T, H, W, 3) uint8."""


class DecodingSource:
    """Decode on demand from the mp4 files, keeping recently used files open per process."""

    def __init__(self, dataset: LeRobotDataset):
        self.dataset = dataset

    def get(self, key: str, rows: list[int]) -> np.ndarray:
        path, times = self.dataset.video_timestamps(key, rows)
        decoders = _torchcodec_decoders() if self.dataset.video_backend == "torchcodec" else _DECODERS
        return resize_frames(decoders.get(path).frames_at(times, self.dataset.tolerance_s), self.dataset.frame_size)


def _torchcodec_decoders() -> DecoderCache:
    global _TORCHCODEC_DECODERS
    if _TORCHCODEC_DECODERS is None:
        from robotrain.datasets.torchcodec_backend import TorchcodecDecoder

        _TORCHCODEC_DECODERS = DecoderCache(opener=TorchcodecDecoder)
    return _TORCHCODEC_DECODERS


class FrameCache:
    """Every frame of each video camera, decoded once (and resized to dataset.frame_size) into a memory-mapped uint8
    file.

    Once opened it holds a shared lock on its folder until it is garbage-collected (see frame_cache_store.py), so
    no other process deletes it meanwhile.
    """

    def __init__(self, dataset: LeRobotDataset, directory: Path):
        self.dataset, self.directory = dataset, directory
        self._arrays: dict[str, np.memmap] = {}
        self._pid = os.getpid()
        self._lock: CacheLock | None = None

    def __getstate__(self) -> dict:
        # A spawned DataLoader worker maps the files itself, and the parent's lock covers its reads.
        return {**self.__dict__, "_arrays": {}, "_lock": None}

    @staticmethod
    def frame_shape(dataset: LeRobotDataset, key: str) -> tuple[int, ...]:
        """(H, W, 3) of camera `key` as cached: at dataset.frame_size when set, else native."""
        native = tuple(dataset.meta.features[key]["shape"])
        return native if dataset.frame_size is None else (*dataset.frame_size, native[-1])

    @staticmethod
    def nbytes(dataset: LeRobotDataset) -> int:
        meta = dataset.meta
        return sum(meta.total_frames * int(np.prod(FrameCache.frame_shape(dataset, k))) for k in meta.video_keys)

    def file(self, key: str) -> Path:
        return self.directory / f"{key}.u8"

    def is_complete(self) -> bool:
        return all((self.directory / f"{key}.json").is_file() for key in self.dataset.meta.video_keys)

    def open_if_complete(self) -> bool:
        """Hold the cache for reading when it is complete (True); else leave it unlocked (False)."""
        lock = lock_cache(self.directory, exclusive=False)
        if not self.is_complete():
            lock.release()
            return False
        self._lock = lock
        self._record_owner()  # adopts a cache built before owners were recorded, or shared with a copy
        return True

    def _record_owner(self) -> None:
        record_owner(self.directory, self.dataset.repo_id, self.dataset.root, self.dataset.meta.video_keys)

    def build(self) -> None:
        """Decode every camera not cached yet, holding the cache exclusively, then open it for reading.

        When another process holds the cache, it is building it (this one then waits for the result) or reading
        it, complete: waiting for an exclusive lock there would wait for that whole run (two processes of one
        training, or two trainings, starting on a dataset whose cache is not built yet)."""
        while True:
            lock = lock_cache(self.directory, exclusive=True, wait=False)
            if lock is not None:
                try:
                    self._record_owner()  # first, so that an interrupted build is still known to be this dataset's
                    self._decode_missing()
                finally:
                    lock.release()
            if self.open_if_complete():  # a shared lock: it waits for a builder, not for readers
                return
            if lock is not None:
                # Between the release and the shared lock a `--clear` deleted the fresh cache: rare enough to ask
                # the user to start again rather than loop.
                raise DatasetError(f"the frame cache {self.directory} was deleted while it was being opened (by "
                                   "`robotrain dataset cache --clear`?). Fix: run the command again")
            # The process that held it was building and stopped before it finished: build it here.

    def _decode_missing(self) -> None:
        from tqdm import tqdm

        meta = self.dataset.meta
        for key in meta.video_keys:
            if (self.directory / f"{key}.json").is_file():
                continue
            shape = (meta.total_frames, *self.frame_shape(self.dataset, key))  # (N, H, W, 3)
            partial = self.directory / f".{key}.u8.partial"
            array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
            with tqdm(total=meta.total_frames, desc=f"caching {key}", unit="frame", leave=False) as bar:
                for episode in range(meta.total_episodes):
                    bar.update(self._decode_episode(key, episode, array))
            array.flush()
            del array
            os.replace(partial, self.file(key))
            atomic_write_json(self.directory / f"{key}.json", {"shape": shape})  # the commit mark: written last
        _DECODERS.clear()  # the sequential decoders hold all-core threads; workers forked later need none

    def _decode_episode(self, key: str, episode: int, array: np.ndarray) -> int:
        meta = self.dataset.meta
        start = int(meta.episodes["dataset_from_index"][episode].as_py())
        length = int(meta.episodes["length"][episode].as_py())
        from_s = float(meta.episodes[f"videos/{key}/from_timestamp"][episode].as_py())
        decoder = _DECODERS.get(meta.get_video_file_path(episode, key))
        count = 0
        for count, (_, frame) in enumerate(decoder.iter_frames(from_s, from_s + length / meta.fps), start=1):
            if count > length:
                break
            array[start + count - 1] = resize_frames(frame[None], self.dataset.frame_size)[0]
        if count < length:
            raise DatasetError(f"{meta.get_video_file_path(episode, key)}: episode {episode} has {length} frames in "
                               f"meta/episodes but only {count} in the video. Fix: re-download or restore the dataset")
        return length

    def get(self, key: str, rows: list[int]) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker maps the file itself
            self._arrays, self._pid = {}, os.getpid()
        if key not in self._arrays:
            self._arrays[key] = np.load(self.file(key), mmap_mode="r")
        index = self.dataset.columns["index"]
        return np.ascontiguousarray(self._arrays[key][[int(index[r]) for r in rows]])


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes the OS can hand out without swapping: Linux's MemAvailable, which counts reclaimable page cache.

    Not MemFree (sysconf's SC_AVPHYS_PAGES): on a machine that has run a while the page cache holds most memory,
    MemFree is a few GB, and the cache would be turned off for no reason. Elsewhere, free pages are the best guess.
    """
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return 0


def cache_budget(directory: Path) -> int:
    """Bytes the cache may take: half the available memory (so pages stay resident) and half the free disk."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    return min(available_memory() // 2, shutil.disk_usage(existing).free // 2)


def make_frame_source(dataset: LeRobotDataset, mode: str) -> FrameSource:
    """The frame cache when `mode` is on, or auto and it fits the budget; else on-the-fly decoding."""
    if mode not in FRAME_CACHE_MODES:
        raise DatasetError(f"frame_cache '{mode}' is not one of {', '.join(FRAME_CACHE_MODES)}")
    if not dataset.meta.video_keys or mode == "off":
        return DecodingSource(dataset)
    fingerprint = dataset_fingerprint(dataset.root)
    remove_stale_caches(dataset.root, fingerprint)  # first: the space it frees counts towards the budget
    cache = FrameCache(dataset, cache_directory(fingerprint, dataset.frame_size))
    if cache.is_complete() and cache.open_if_complete():  # checked unlocked first: no folder made for nothing
        return cache
    needed, budget = FrameCache.nbytes(dataset), cache_budget(cache.directory)
    if needed > budget:
        if mode == "on":
            raise DatasetError(f"the frame cache needs {needed / 2**30:.1f} GiB but only {budget / 2**30:.1f} GiB "
                               "fit (half the available memory and half the free disk). Fix: frame_cache='off' "
                               "(robotrain train: --dataset.frame_cache=off) to decode on the fly, or free space")
        logger.info("frame cache (%.1f GiB) exceeds the budget (%.1f GiB): decoding on the fly",
                    needed / 2**30, budget / 2**30)
        return DecodingSource(dataset)
    cache.build()
    return cache
