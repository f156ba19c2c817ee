"""LeRobotDataset: frames of a v3.0 dataset as dicts of tensors, with delta timestamps and padding masks.

Non-camera columns of the selected episodes are loaded once into tensors (a sample is a few index lookups).
Camera frames come from a FrameSource: the memory-mapped frame cache when it is built, else decoded on the fly
with a per-process decoder cache; with a frame_size, both give them resized to it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from robotrain.configs.default import VIDEO_BACKENDS
from robotrain.datasets.collate import collate
from robotrain.datasets.format import DEFAULT_TOLERANCE_S, DatasetError, read_parquet
from robotrain.datasets.frames import check_frame_size, make_frame_source, resize_frames
from robotrain.datasets.metadata import LeRobotDatasetMetadata

logger = logging.getLogger(__name__)



def check_delta_timestamps(delta_timestamps: dict[str, list[float]], fps: int, tolerance_s: float,
                           features: dict[str, Any]) -> dict[str, list[int]]:
    """Seconds -> frame offsets; each must be a whole number of frames (within tolerance) of a known feature."""
    indices: dict[str, list[int]] = {}
    for key, seconds in delta_timestamps.items():
        if key not in features:
            raise DatasetError(f"delta_timestamps names '{key}', which is not a feature of this dataset "
                               f"(features: {', '.join(features)})")
        offsets = []
        for ts in seconds:
            frames = ts * fps
            if abs(frames - round(frames)) / fps > tolerance_s:
                raise DatasetError(f"delta_timestamps['{key}'] holds {ts} s, which is not a multiple of 1/fps = "
                                   f"{1 / fps:.6g} s (fps {fps}). Fix: use multiples such as "
                                   f"{round(frames) / fps:.6g}, or raise tolerance_s")
            offsets.append(round(frames))
        indices[key] = offsets
    return indices


def arrow_column_to_numpy(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A parquet column of N rows -> (N, *shape) array (fixed-size and variable lists both accepted)."""
    array = column.combine_chunks()
    n = len(array)
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) \
            or pa.types.is_large_list(array.type):
        array = array.flatten()
    values = np.array(array.to_numpy(zero_copy_only=False))  # a writable copy: tensors are made from it
    if values.size != n * int(np.prod(shape)):
        raise DatasetError(f"column holds {values.size // max(n, 1)} values per frame, but the feature's shape is "
                           f"{list(shape)}")
    return values.reshape(n, *shape) if shape != (1,) else values.reshape(n)


class LeRobotDataset(torch.utils.data.Dataset):
    """A LeRobot v3.0 dataset: `ds[i]` is frame i of the selected episodes as a dict of tensors."""

    def __init__(self, repo_id: str, root: str | Path | None = None, episodes: list[int] | None = None,
                 delta_timestamps: dict[str, list[float]] | None = None,
                 image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 video_backend: str | None = None, tolerance_s: float = DEFAULT_TOLERANCE_S,
                 revision: str | None = None, return_uint8: bool = False, frame_cache: str = "off",
                 meta: LeRobotDatasetMetadata | None = None, frame_size: tuple[int, int] | None = None):
        self.repo_id = repo_id
        # `meta` lets a caller that already read the metadata (e.g. for fps) pass it instead of reading it again.
        self.meta = meta if meta is not None else LeRobotDatasetMetadata(repo_id, root, revision, episodes)
        self.root = self.meta.root
        self.episodes = self._check_episodes(episodes)
        self.image_transforms = image_transforms
        self.video_backend = video_backend or "pyav"
        if self.video_backend not in VIDEO_BACKENDS:
            raise DatasetError(f"video_backend '{self.video_backend}' is not one of {', '.join(VIDEO_BACKENDS)}")
        if self.video_backend == "torchcodec" and self.meta.video_keys:
            from robotrain.datasets.torchcodec_backend import check_available

            check_available()
        self.tolerance_s = tolerance_s
        self.return_uint8 = return_uint8
        self.frame_size = self._check_frame_size(frame_size)
        self.delta_indices = (check_delta_timestamps(delta_timestamps, self.fps, tolerance_s, self.features)
                              if delta_timestamps else None)
        self._delta_offsets = {k: torch.tensor(v) for k, v in (self.delta_indices or {}).items()}
        self._load_columns()
        self._video_locations = self._locate_videos()
        self.frames = make_frame_source(self, frame_cache)

    # ---- loading -----------------------------------------------------------------------------------------
    def _check_episodes(self, episodes: list[int] | None) -> list[int] | None:
        if episodes is None:
            return None
        total = self.meta.total_episodes
        bad = [e for e in episodes if not 0 <= e < total]
        if bad:
            raise DatasetError(f"episodes {bad} do not exist in {self.repo_id} ({total} episodes: 0..{total - 1}). "
                               "Fix: choose indices in that range")
        return sorted(set(episodes))

    def _check_frame_size(self, frame_size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The (H, W) camera frames are resized to; None when every camera has that size already (no resize, and
        the native frame cache serves)."""
        size = check_frame_size(frame_size)
        native = {tuple(self.meta.features[key]["shape"][:2]) for key in self.meta.camera_keys}
        return None if native <= {size} else size

    def _selected(self) -> list[int]:
        return self.episodes if self.episodes is not None else list(range(self.meta.total_episodes))

    def _load_columns(self) -> None:
        """Read the data rows of the selected episodes into tensors; check them against the episode table."""
        meta, selected = self.meta, self._selected()
        chunks, files = meta.episode_column("data/chunk_index"), meta.episode_column("data/file_index")
        placed: dict[tuple[int, int], list[int]] = {}
        for e in selected:
            placed.setdefault((int(chunks[e]), int(files[e])), []).append(e)
        tables = []
        for (chunk, file), episodes in sorted(placed.items()):
            table = read_parquet(meta.data_file(chunk, file), "frame data")
            # Only the episodes the table places in this file: a writer killed while switching joined episodes
            # leaves rows of some of them in two files until it is resumed.
            tables.append(table.filter(pc.is_in(table["episode_index"], value_set=pa.array(episodes, pa.int64()))))
        table = pa.concat_tables(tables, promote_options="permissive").sort_by("index")
        self._check_rows(table, selected)
        self.columns: dict[str, torch.Tensor] = {}
        self.images: dict[str, list[bytes]] = {}
        self.strings: dict[str, list[str]] = {}
        for key, feature in meta.features.items():
            if feature["dtype"] == "video":
                continue
            if key not in table.column_names:
                raise DatasetError(f"{self.root}: feature '{key}' is in info.json but not in the data files")
            if feature["dtype"] == "image":
                self.images[key] = [cell["bytes"] for cell in table[key].to_pylist()]
            elif feature["dtype"] in ("string", "language"):
                self.strings[key] = table[key].to_pylist()
            else:
                self.columns[key] = torch.from_numpy(arrow_column_to_numpy(table[key], tuple(feature["shape"])))
        episode_of_row = self.columns["episode_index"].numpy()
        starts = np.flatnonzero(np.r_[True, episode_of_row[1:] != episode_of_row[:-1]])
        lengths = np.diff(np.r_[starts, len(episode_of_row)])
        self.episode_start = torch.from_numpy(np.repeat(starts, lengths))  # per row: first row of its episode
        self.episode_end = torch.from_numpy(np.repeat(starts + lengths, lengths))  # per row: one past its last

    def _locate_videos(self) -> dict[str, tuple[list[Path], np.ndarray]]:
        """Per video camera: each episode's mp4 and start time in it, read once (not per sample)."""
        meta, locations = self.meta, {}
        for key in meta.video_keys:
            paths = [meta.get_video_file_path(e, key) for e in range(meta.total_episodes)]
            locations[key] = (paths, meta.episode_column(f"videos/{key}/from_timestamp").astype(np.float64))
        return locations

    def _check_rows(self, table: pa.Table, selected: list[int]) -> None:
        counts = dict(zip(*np.unique(table["episode_index"].to_numpy(), return_counts=True), strict=True))
        lengths = self.meta.episode_column("length")
        for episode in selected:
            if counts.get(episode, 0) != lengths[episode]:
                path = self.meta.get_data_file_path(episode)
                raise DatasetError(f"{path}: episode {episode} has {counts.get(episode, 0)} frames, but "
                                   f"meta/episodes says {lengths[episode]}. Fix: re-download or restore the dataset")

    # ---- access ------------------------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, Any]:
        return self.meta.features

    @property
    def num_frames(self) -> int:
        return len(self.columns["index"])

    @property
    def num_episodes(self) -> int:
        return len(self._selected())

    def __len__(self) -> int:
        return self.num_frames

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row, one past the last row) of each selected episode, in this dataset's row numbering."""
        starts = np.unique(self.episode_start.numpy())
        return starts, self.episode_end.numpy()[starts]

    def query_rows(self, rows: int | torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows at `offsets` from each of `rows` (an int, or a (B,) tensor for a batch), clamped to that row's
        episode (edge frames repeat), and the padding mask: each (T,), or (B, T)."""
        rows = torch.as_tensor(rows)
        start, end = self.episode_start[rows].unsqueeze(-1), self.episode_end[rows].unsqueeze(-1)
        wanted = rows.unsqueeze(-1) + offsets
        return torch.minimum(torch.maximum(wanted, start), end - 1), (wanted < start) | (wanted >= end)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"frame {idx} is out of range for a dataset of {len(self)} frames")
        row = idx % len(self)
        item: dict[str, Any] = {}
        deltas = self._delta_offsets
        for key, column in self.columns.items():
            if key in deltas:
                rows, pad = self.query_rows(row, deltas[key])
                item[key], item[f"{key}_is_pad"] = column[rows], pad
            else:
                item[key] = column[row]
        for key in self.meta.camera_keys:
            item.update(self._camera_item(key, row))
        for key, values in self.strings.items():
            item[key] = values[row]
        item["task"] = self.meta.tasks[int(self.columns["task_index"][row])]
        return item

    def get_batch(self, indices: list[int]) -> dict[str, Any]:
        """Samples `indices` as one batch, equal to collating `[ds[i] for i in indices]`: the number columns are
        gathered with one index per key instead of one Python call per sample, which cost ~0.6 ms a sample and,
        on keypoint datasets, as long as a small policy's training step (robotrain's trainer loads this way)."""
        n = len(self)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"frame {bad[0]} is out of range for a dataset of {n} frames")
        rows = torch.as_tensor(indices, dtype=torch.long) % n
        batch: dict[str, Any] = {}
        deltas = self._delta_offsets
        for key, column in self.columns.items():
            if key in deltas:
                at, batch[f"{key}_is_pad"] = self.query_rows(rows, deltas[key])
                batch[key] = column[at]
            else:
                batch[key] = column[rows]
        row_list = rows.tolist()
        if self.meta.camera_keys:  # sample by sample, as __getitem__: per-frame transforms draw in the same order
            batch.update(collate([{name: value for key in self.meta.camera_keys
                                   for name, value in self._camera_item(key, row).items()} for row in row_list]))
        for key, values in self.strings.items():
            batch[key] = [values[row] for row in row_list]
        task_index = self.columns["task_index"][rows].tolist()
        batch["task"] = [self.meta.tasks[int(t)] for t in task_index]
        return batch

    def _camera_item(self, key: str, row: int) -> dict[str, torch.Tensor]:
        """Camera `key`'s entries of sample `row` (its frames, and their padding mask when it has offsets)."""
        if key in self._delta_offsets:
            rows, pad = self.query_rows(row, self._delta_offsets[key])
            return {key: self._camera(key, rows.tolist()), f"{key}_is_pad": pad}
        return {key: self._camera(key, [row])[0]}

    def _camera(self, key: str, rows: list[int]) -> torch.Tensor:
        """Frames of camera `key` at `rows`: (T, C, H, W), float in [0, 1] unless return_uint8."""
        if key in self.images:
            frames = np.stack([decode_png(self.images[key][r]) for r in rows])  # (T, H, W, 3) uint8
            frames = resize_frames(frames, self.frame_size)
        else:
            frames = self.frames.get(key, rows)  # (T, H, W, 3) uint8
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W)
        if not self.return_uint8:
            video = video.float().div_(255)
        if self.image_transforms is not None:
            video = torch.stack([self.image_transforms(frame) for frame in video])
        return video

    def video_timestamps(self, key: str, rows: list[int]) -> tuple[Path, list[float]]:
        """The mp4 holding `rows` of camera `key` and their times inside it (all rows from one episode)."""
        episode = int(self.columns["episode_index"][rows[0]])
        paths, starts = self._video_locations[key]
        times = [float(starts[episode]) + float(self.columns["timestamp"][r]) for r in rows]
        return paths[episode], times

    def __repr__(self) -> str:
        return (f"LeRobotDataset(repo_id={self.repo_id!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"fps={self.fps}, cameras={self.meta.camera_keys})")

    @classmethod
    def create(cls, repo_id: str, fps: int, features: dict[str, dict[str, Any]], root: str | Path | None = None,
               robot_type: str | None = None, use_videos: bool = True, **writer_options: Any):
        """A new, empty dataset to record into: add_frame(...), save_episode(), finalize()."""
        from robotrain.datasets.writer import DatasetWriter

        return DatasetWriter.create(repo_id, fps, features, root=root, robot_type=robot_type, use_videos=use_videos,
                                    **writer_options)

    @classmethod
    def resume(cls, repo_id: str, root: str | Path | None = None, **writer_options: Any):
        """Append episodes to an existing dataset (e.g. after an interrupted recording)."""
        from robotrain.datasets.writer import DatasetWriter

        return DatasetWriter.resume(repo_id, root=root, **writer_options)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
