"""DatasetWriter: record episodes into a LeRobot v3.0 dataset (create or resume, add_frame, save_episode).

Crash safety: every file is replaced atomically and meta/info.json is written last, so it is the commit point.
A process killed at any moment leaves a dataset that loads up to its last saved episode; rows a killed
save_episode wrote before committing are ignored by readers and removed by `resume`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from robotrain.datasets.format import (
    CODEBASE_VERSION,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_DATA_PATH,
    DEFAULT_EPISODES_PATH,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_PATH,
    INFO_PATH,
    MB,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    chunk_file_path,
    next_chunk_file,
    write_json_atomic,
)
from robotrain.datasets.frame_check import validate_features, validate_frame
from robotrain.datasets.hub import local_dataset_dir
from robotrain.datasets.metadata import PANDAS_INDEX_COLUMN, read_episodes, read_info, read_tasks
from robotrain.datasets.stats import (
    aggregate_stats,
    compute_episode_stats,
    flatten_stats,
    stats_to_json,
    unflatten_stats,
)
from robotrain.datasets.video import VideoEncoding, append_video, encode_video, video_info

logger = logging.getLogger(__name__)



def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="snappy", use_dictionary=True)
    os.replace(tmp, path)


def arrow_type(feature: dict[str, Any]) -> pa.DataType:
    """The parquet column type of a feature (vectors as fixed-size lists, images as PNG structs)."""
    dtype = feature["dtype"]
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype in ("string", "language"):
        return pa.string()
    value = pa.from_numpy_dtype(np.dtype(dtype))
    shape = tuple(feature["shape"])
    if shape == (1,):
        return value
    for size in reversed(shape):
        value = pa.list_(value, size)
    return value


def hf_feature(feature: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face `datasets` description of a column, stored in the parquet schema for LeRobot's reader."""
    dtype, shape = feature["dtype"], tuple(feature["shape"])
    if dtype == "image":
        return {"_type": "Image"}
    if dtype in ("string", "language"):
        return {"dtype": "string", "_type": "Value"}
    if shape == (1,):
        return {"dtype": dtype, "_type": "Value"}
    if len(shape) == 1:
        return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "List"}
    return {"shape": list(shape), "dtype": dtype, "_type": f"Array{len(shape)}D"}


def data_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """The data parquet schema (videos excluded), with the `datasets` description LeRobot's reader uses."""
    fields = [pa.field(k, arrow_type(f)) for k, f in features.items() if f["dtype"] != "video"]
    hf = {"info": {"features": {f.name: hf_feature(features[f.name]) for f in fields}}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(hf)})


def write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet: task texts as pandas' index column (as LeRobot writes it), task_index as a column."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      PANDAS_INDEX_COLUMN: pa.array(tasks, pa.large_string())})
    write_parquet_atomic(table.replace_schema_metadata({"pandas": json.dumps(_PANDAS_TASKS_METADATA)}),
                         root / TASKS_PATH)


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class DatasetWriter:
    """Writes episodes of a LeRobot v3.0 dataset. Use `LeRobotDataset.create(...)` or `LeRobotDataset.resume(...)`."""

    def __init__(self, repo_id: str, root: Path, info: dict[str, Any], tasks: list[str],
                 episode_rows: list[dict[str, Any]], encoding: VideoEncoding):
        self.repo_id, self.root, self.info, self.tasks = repo_id, root, info, tasks
        self.episode_rows = episode_rows  # committed episodes, with per-episode stats
        self.encoding = encoding
        self.buffer: list[dict[str, Any]] = []
        self.user_features = {k: f for k, f in info["features"].items() if k not in DEFAULT_FEATURES}

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, repo_id: str, fps: int, features: dict[str, dict[str, Any]], root: str | Path | None = None,
               robot_type: str | None = None, use_videos: bool = True, vcodec: str = "libsvtav1",
               chunks_size: int = DEFAULT_CHUNK_SIZE, data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB,
               video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB) -> DatasetWriter:
        """A new dataset at `root` (default $HF_LEROBOT_HOME/<repo_id>), which must not exist or be empty."""
        target = Path(root).expanduser() if root is not None else local_dataset_dir(repo_id)
        if target.exists() and any(target.iterdir()):
            raise DatasetError(f"{target} already exists and is not empty. Fix: choose another root/repo_id, or "
                               "append to it with LeRobotDataset.resume(...)")
        if not isinstance(fps, int) or fps <= 0:
            raise DatasetError(f"fps must be a positive integer, got {fps!r}")
        features = validate_features(features, use_videos)
        has_video = any(f["dtype"] == "video" for f in features.values())
        info = {
            "codebase_version": CODEBASE_VERSION, "fps": fps, "features": {**features, **DEFAULT_FEATURES},
            "total_episodes": 0, "total_frames": 0, "total_tasks": 0, "chunks_size": chunks_size,
            "data_files_size_in_mb": data_files_size_in_mb, "video_files_size_in_mb": video_files_size_in_mb,
            "data_path": DEFAULT_DATA_PATH, "video_path": DEFAULT_VIDEO_PATH if has_video else None,
            "robot_type": robot_type, "splits": {},
        }
        target.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target / INFO_PATH, info)
        return cls(repo_id, target, info, [], [], VideoEncoding(vcodec=vcodec))

    @classmethod
    def resume(cls, repo_id: str, root: str | Path | None = None, vcodec: str = "libsvtav1") -> DatasetWriter:
        """Append to an existing dataset; leftovers of an interrupted save_episode are removed first."""
        target = Path(root).expanduser() if root is not None else local_dataset_dir(repo_id)
        info = read_info(target)
        for feature in info["features"].values():
            feature["shape"] = list(feature["shape"])
        total = info["total_episodes"]
        rows = read_episodes(target, with_stats=True).to_pylist()[:total] if total else []
        tasks = read_tasks(target) if total else []
        writer = cls(repo_id, target, info, tasks, rows, VideoEncoding(vcodec=vcodec))
        writer._drop_uncommitted_rows()
        return writer

    def _drop_uncommitted_rows(self) -> None:
        """Rewrite the last data and episode files without rows of episodes past total_episodes."""
        total = self.info["total_episodes"]
        for path in sorted((self.root / "data").glob("chunk-*/file-*.parquet"))[-1:]:
            table = pq.read_table(path)
            kept = table.filter(pc.less(table["episode_index"], total))
            if kept.num_rows != table.num_rows:
                logger.warning("%s: removing %d frame(s) of an episode that was never committed", path,
                               table.num_rows - kept.num_rows)
                if kept.num_rows:
                    write_parquet_atomic(kept, path)
                else:
                    path.unlink()
        if self.episode_rows:
            self._write_episode_rows()

    # ---- recording ---------------------------------------------------------------------------------------
    def add_frame(self, frame: dict[str, Any]) -> None:
        """Buffer one frame: every feature given to create() plus "task" (str); checked strictly."""
        self.buffer.append(validate_frame(frame, self.user_features, len(self.buffer)))

    def clear_episode_buffer(self) -> None:
        self.buffer = []

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    def save_episode(self) -> int:
        """Write the buffered frames as the next episode and commit it; returns its episode index."""
        if not self.buffer:
            raise DatasetError("save_episode() called with no frames; call add_frame(...) first")
        episode_index, n = self.info["total_episodes"], len(self.buffer)
        columns = self._episode_columns(episode_index)
        row: dict[str, Any] = {"episode_index": episode_index, "tasks": sorted({f["task"] for f in self.buffer}),
                               "length": n}
        row.update(self._write_data(columns, episode_index))
        row["dataset_from_index"], row["dataset_to_index"] = self.info["total_frames"], self.info["total_frames"] + n
        row.update(self._write_videos(columns))
        stats = compute_episode_stats(columns, self.info["features"])
        row.update({f"stats/{k}": v for k, v in flatten_stats(stats).items()})
        self.episode_rows.append(row)
        self._write_episode_rows()
        self._commit(n, stats)
        self.buffer = []
        return episode_index

    def _episode_columns(self, episode_index: int) -> dict[str, np.ndarray]:
        """The buffer as one array per feature, plus the index columns."""
        n, features = len(self.buffer), self.info["features"]
        columns = {key: np.stack([f[key] for f in self.buffer]) for key in self.user_features}
        for task in dict.fromkeys(f["task"] for f in self.buffer):
            if task not in self.tasks:
                self.tasks.append(task)
        frame_index = np.arange(n, dtype=np.int64)
        columns.update({
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(n, episode_index, dtype=np.int64),
            "index": self.info["total_frames"] + frame_index,
            "task_index": np.array([self.tasks.index(f["task"]) for f in self.buffer], dtype=np.int64),
        })
        for key, feature in features.items():
            if feature["dtype"] not in ("image", "video", "string", "language"):
                columns[key] = columns[key].astype(feature["dtype"]).reshape(n, *feature["shape"])
        return columns

    def _data_table(self, columns: dict[str, np.ndarray]) -> pa.Table:
        arrays = []
        for key, feature in self.info["features"].items():
            if feature["dtype"] == "video":
                continue
            values = columns[key]
            if feature["dtype"] == "image":
                array = pa.array([{"bytes": encode_png(f), "path": None} for f in values], arrow_type(feature))
            elif feature["dtype"] in ("string", "language"):
                array = pa.array(values.tolist(), pa.string())
            else:
                array = numeric_array(values, feature)
            arrays.append(array)
        return pa.Table.from_arrays(arrays, schema=data_schema(self.info["features"]))

    def _write_data(self, columns: dict[str, np.ndarray], episode_index: int) -> dict[str, int]:
        """Append the episode's rows to the current data file, or start a new one past the size cap."""
        table = self._data_table(columns)
        chunk, file = self._last_location("data/chunk_index", "data/file_index")
        path = self.root / chunk_file_path(self.info["data_path"], chunk, file)
        if path.exists() and path.stat().st_size + table.nbytes >= self.info["data_files_size_in_mb"] * MB:
            chunk, file = next_chunk_file(chunk, file, self.info["chunks_size"])
            path = self.root / chunk_file_path(self.info["data_path"], chunk, file)
        if path.exists():
            table = pa.concat_tables([pq.read_table(path).cast(table.schema), table])
        write_parquet_atomic(table, path)
        return {"data/chunk_index": chunk, "data/file_index": file}

    def _last_location(self, chunk_column: str, file_column: str) -> tuple[int, int]:
        if not self.episode_rows:
            return 0, 0
        return self.episode_rows[-1][chunk_column], self.episode_rows[-1][file_column]

    def _write_videos(self, columns: dict[str, np.ndarray]) -> dict[str, Any]:
        keys = [k for k, f in self.info["features"].items() if f["dtype"] == "video"]
        if not keys:
            return {}
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:  # encoders release the GIL
            results = list(pool.map(lambda k: self._write_video(k, columns[k]), keys))
        return {k: v for result in results for k, v in result.items()}

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        """Encode the episode, then append it (stream copy) to the camera's current mp4 or a new one."""
        pending = self.root / "videos" / key / ".pending-episode.mp4"
        pending.parent.mkdir(parents=True, exist_ok=True)
        encode_video(iter(frames), pending, self.fps, self.encoding)
        chunk, file = self._last_location(f"videos/{key}/chunk_index", f"videos/{key}/file_index")
        path = self.root / chunk_file_path(self.info["video_path"], chunk, file, video_key=key)
        if path.exists() and path.stat().st_size + pending.stat().st_size >= self.info["video_files_size_in_mb"] * MB:
            chunk, file = next_chunk_file(chunk, file, self.info["chunks_size"])
            path = self.root / chunk_file_path(self.info["video_path"], chunk, file, video_key=key)
        path.parent.mkdir(parents=True, exist_ok=True)
        start = append_video(pending, path)
        if "info" not in self.info["features"][key]:
            self.info["features"][key]["info"] = {**video_info(path), **self.encoding.info(), "is_depth_map": False}
        pending.unlink()
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + len(frames) / self.fps}

    def _write_episode_rows(self) -> None:
        """Rewrite the current meta/episodes file with every row that belongs in it."""
        row = self.episode_rows[-1]
        if "meta/episodes/chunk_index" not in row:
            previous = self.episode_rows[-2] if len(self.episode_rows) > 1 else None
            chunk, file = (previous["meta/episodes/chunk_index"], previous["meta/episodes/file_index"]) \
                if previous else (0, 0)
            row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = chunk, file
        chunk, file = row["meta/episodes/chunk_index"], row["meta/episodes/file_index"]
        rows = [r for r in self.episode_rows
                if (r["meta/episodes/chunk_index"], r["meta/episodes/file_index"]) == (chunk, file)]
        ordered = [{k: r[k] for k in episode_column_order(r)} for r in rows]
        write_parquet_atomic(pa.Table.from_pylist(ordered), self.root / chunk_file_path(DEFAULT_EPISODES_PATH,
                                                                                        chunk, file))

    def _commit(self, n: int, stats: dict[str, dict[str, np.ndarray]]) -> None:
        """Tasks, stats, then info.json: the episode exists once info.json counts it."""
        write_tasks(self.root, self.tasks)
        all_stats = [unflatten_stats({k[len("stats/"):]: v for k, v in r.items() if k.startswith("stats/")})
                     for r in self.episode_rows]
        write_json_atomic(self.root / STATS_PATH, stats_to_json(aggregate_stats(all_stats)))
        info = self.info
        info["total_episodes"] += 1
        info["total_frames"] += n
        info["total_tasks"] = len(self.tasks)
        info["splits"] = {"train": f"0:{info['total_episodes']}"}
        write_json_atomic(self.root / INFO_PATH, info)

    def finalize(self) -> None:
        """Every saved episode is already committed; this only reports frames never saved."""
        if self.buffer:
            logger.warning("finalize(): %d frame(s) added after the last save_episode() were not saved",
                           len(self.buffer))
        self.buffer = []

    @property
    def meta(self):
        from robotrain.datasets.metadata import LeRobotDatasetMetadata

        return LeRobotDatasetMetadata(self.repo_id, self.root)

    def discard(self) -> None:
        """Delete the whole dataset folder (e.g. a recording that produced nothing)."""
        shutil.rmtree(self.root, ignore_errors=True)


def numeric_array(values: np.ndarray, feature: dict[str, Any]) -> pa.Array:
    """(N, *shape) numbers -> an arrow column of arrow_type(feature), without Python objects."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    shape = tuple(feature["shape"])
    if shape == (1,):
        return flat
    array: pa.Array = flat
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def episode_column_order(row: dict[str, Any]) -> list[str]:
    """LeRobot's column order: identity, data location, videos, stats, then the row's own location."""
    head = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
            "dataset_to_index"]
    videos = [k for k in row if k.startswith("videos/")]
    stats = [k for k in row if k.startswith("stats/")]
    return [*head, *videos, *stats, "meta/episodes/chunk_index", "meta/episodes/file_index"]


# pandas' description of tasks.parquet (a RangeIndex-free frame indexed by task text), so LeRobot's
# pd.read_parquet gets the task strings as the index, as it does for files LeRobot writes.
_PANDAS_TASKS_METADATA = {
    "index_columns": ["__index_level_0__"],
    "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                        "metadata": {"encoding": "UTF-8"}}],
    "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
         "metadata": None},
    ],
    "creator": {"library": "robotrain"},
    "pandas_version": "2.2.0",
}
