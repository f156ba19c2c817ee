"""DatasetWriter: record episodes into a LeRobot v3.0 dataset (create or resume, add_frame, save_episode).

Invariant: after every save_episode returns, and at any moment a kill can stop it, the files on disk form a valid
v3.0 dataset holding exactly the episodes meta/info.json counts (its last write, the commit point). Every file
that is written is replaced atomically; files that info.json's episodes do not point at may exist after a kill,
are ignored by readers and removed by `resume`.

I/O grows with the data, not its square: a data or video file still being filled is a run of one-file-per-episode
segments that the episode table points at (see segments.py), joined once when the file is full, when the run holds
SEGMENTS_PER_RUN episodes, or at finalize(). Only the current episode-table file (at most EPISODES_PER_FILE rows),
tasks, stats and info.json are rewritten per episode. Joining runs, in order: write each joined file at its reserved
location (nothing points there yet), write the join journal, rewrite the episode-table files that hold the runs'
rows (each row is valid before and after: both files exist), delete the segments, then the journal. A run's rows
may span several episode-table files; a kill between their rewrites leaves the journal, and `resume` repeats the
switch from it (every step can be repeated).
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
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_EPISODES_PATH,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    EPISODES_DIR,
    INFO_PATH,
    JOIN_JOURNAL,
    MB,
    PANDAS_INDEX_COLUMN,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    chunk_file_path,
    dataset_file,
    new_info,
    next_chunk_file,
    read_episodes,
    read_info,
    read_tasks,
    write_parquet,
)
from robotrain.datasets.frame_check import validate_features, validate_frame
from robotrain.datasets.hub import DatasetLocation
from robotrain.datasets.segments import (
    EpisodeFiles,
    Location,
    Run,
    find_open_run,
    join_segments,
    read_join_journal,
    remove_leftovers,
    remove_unreferenced,
)
from robotrain.datasets.stats import (
    FeatureStats,
    aggregate_stats,
    compute_episode_stats,
    flatten_stats,
    stats_to_json,
    unflatten_stats,
)
from robotrain.datasets.video import VideoEncoding, encode_video, video_info
from robotrain.files import WriterLock, acquire_writer_lock, atomic_write_json, folder_lock_path

logger = logging.getLogger(__name__)

# Rows per meta/episodes file. It bounds what each save rewrites (the current episode-table file, ~0.5-3 KB per row).
EPISODES_PER_FILE = 100
# Episodes a data or video file takes before it is joined, if its size cap does not come first. It bounds the
# segment files a killed recorder leaves (each a valid file that LeRobot's reader opens one by one).
SEGMENTS_PER_RUN = 1000
PENDING_NAME = ".pending-episode"  # an episode's file before it is placed (removed by resume after a kill)


def lock_dataset(root: Path) -> WriterLock:
    """This process as the only writer of the dataset folder `root` (a DatasetError naming the one that is)."""
    def busy(pid: int | None) -> DatasetError:
        holder = f"process {pid}" if pid is not None else "another process"
        return DatasetError(f"{root} is being written by {holder} (a recorder or another DatasetWriter). Fix: wait for "
                            "it to finish or stop it, or record into another root/repo_id")

    return acquire_writer_lock(folder_lock_path(root), busy)


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
    write_parquet(table.replace_schema_metadata({"pandas": json.dumps(_PANDAS_TASKS_METADATA)}),
                         root / TASKS_PATH)


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class DatasetWriter:
    """Writes episodes of a LeRobot v3.0 dataset. Use `LeRobotDataset.create(...)` or `LeRobotDataset.resume(...)`."""

    def __init__(self, repo_id: str, root: Path, info: dict[str, Any], tasks: list[str],
                 episode_rows: list[dict[str, Any]], encoding: VideoEncoding, allow_nan: bool, lock: WriterLock):
        self.repo_id, self.root, self.info, self.tasks = repo_id, root, info, tasks
        self.allow_nan = allow_nan
        self.lock = lock  # one writer per dataset folder, until finalize() or discard()
        self.episode_rows = episode_rows  # committed episodes, with per-episode stats
        self.dataset_stats: FeatureStats = {}
        for row in episode_rows:
            self.dataset_stats = fold_stats(self.dataset_stats, episode_stats(row))
        self.encoding = encoding
        self.buffer: list[dict[str, Any]] = []
        self.user_features = {k: f for k, f in info["features"].items() if k not in DEFAULT_FEATURES}
        self.data = EpisodeFiles("data", info["data_path"], info["data_files_size_in_mb"] * MB)
        self.videos = {key: EpisodeFiles(f"videos/{key}", info["video_path"], info["video_files_size_in_mb"] * MB, key)
                       for key, feature in info["features"].items() if feature["dtype"] == "video"}

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, repo_id: str, fps: int, features: dict[str, dict[str, Any]], root: str | Path | None = None,
               robot_type: str | None = None, use_videos: bool = True, vcodec: str = "libsvtav1",
               chunks_size: int = DEFAULT_CHUNK_SIZE, data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB,
               video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB, allow_nan: bool = False) -> DatasetWriter:
        """A new dataset at `root` (default $HF_LEROBOT_HOME/<repo_id>), which must not exist or be empty.

        allow_nan=True records NaN and infinite values (refused by default: they poison statistics and training).
        """
        target = DatasetLocation(repo_id, root).local_dir
        if not isinstance(fps, int) or isinstance(fps, bool) or fps <= 0:
            raise DatasetError(f"fps must be a positive integer, got {fps!r}")
        features = validate_features(features, use_videos)
        lock = lock_dataset(target)
        if target.exists() and any(target.iterdir()):
            lock.release()
            raise DatasetError(f"{target} already exists and is not empty. Fix: choose another root/repo_id, or "
                               "append to it with LeRobotDataset.resume(...)")
        info = new_info(fps, features, robot_type, chunks_size, data_files_size_in_mb, video_files_size_in_mb)
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target / INFO_PATH, info)
        return cls(repo_id, target, info, [], [], VideoEncoding(vcodec=vcodec), allow_nan, lock)

    @classmethod
    def resume(cls, repo_id: str, root: str | Path | None = None, vcodec: str = "libsvtav1",
               allow_nan: bool = False) -> DatasetWriter:
        """Append to an existing dataset: leftovers of an interrupted save are removed, open files reopened."""
        target = DatasetLocation(repo_id, root).local_dir
        lock = lock_dataset(target)
        try:
            info = read_info(target)
            for feature in info["features"].values():
                feature["shape"] = list(feature["shape"])
            total = info["total_episodes"]
            rows = read_episodes(target, with_stats=True).to_pylist()[:total] if total else []
            tasks = read_tasks(target) if total else []
        except BaseException:
            lock.release()
            raise
        writer = cls(repo_id, target, info, tasks, rows, VideoEncoding(vcodec=vcodec), allow_nan, lock)
        writer._finish_interrupted_joins()  # before the cleanup: the joined files may not be referenced yet
        writer._remove_uncommitted()
        for files in writer._all_files():
            files.run = find_open_run(files, rows, target, writer.chunks_size)
        return writer

    def _remove_uncommitted(self) -> None:
        """Delete what a killed save left: temporary files, files and episode-table rows of uncommitted episodes."""
        remove_leftovers(self.root, ["data", "videos", "meta"])
        for files in self._all_files():
            for path in remove_unreferenced(files, self.episode_rows, self.root):
                logger.warning("%s: removed, it belongs to an episode that was never committed", path)
        self._drop_uncommitted_data_rows()
        committed = {self._metadata_path(self._metadata_location(row)) for row in self.episode_rows}
        for path in (self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"):
            if path not in committed:
                dataset_file(self.root, path.relative_to(self.root), "an episode-table file").unlink()
        if self.episode_rows:
            last = self._metadata_location(self.episode_rows[-1])
            rows = sum(1 for row in self.episode_rows if self._metadata_location(row) == last)
            if pq.read_metadata(self._metadata_path(last)).num_rows != rows:
                self._write_episode_rows({last})

    def _drop_uncommitted_data_rows(self) -> None:
        """Rows past total_episodes inside the last data file (an older writer appended to it before committing)."""
        if not self.episode_rows:
            return
        path = self.data.path(self.root, self.data.location(self.episode_rows[-1]))
        table = pq.read_table(path)
        kept = table.filter(pc.less(table["episode_index"], self.info["total_episodes"]))
        if kept.num_rows != table.num_rows:
            logger.warning("%s: removing %d frame(s) of an episode that was never committed", path,
                           table.num_rows - kept.num_rows)
            write_parquet(kept, path)

    # ---- recording ---------------------------------------------------------------------------------------
    def add_frame(self, frame: dict[str, Any]) -> None:
        """Buffer one frame: every feature given to create() plus "task" (str); checked strictly."""
        self.buffer.append(validate_frame(frame, self.user_features, len(self.buffer), self.allow_nan))

    def clear_episode_buffer(self) -> None:
        self.buffer = []

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def chunks_size(self) -> int:
        return int(self.info["chunks_size"])

    def save_episode(self) -> int:
        """Write the buffered frames as the next episode and commit it; returns its episode index."""
        if not self.buffer:
            raise DatasetError("save_episode() called with no frames; call add_frame(...) first")
        episode_index, n = self.info["total_episodes"], len(self.buffer)
        columns = self._episode_columns(episode_index)
        pending = self._write_pending(columns)  # everything that can fail on bad frames, before any change
        metadata_at = self._next_metadata_location()
        self._close_runs([files for files in self._all_files() if files.run is not None and (
            len(files.run.episodes) >= SEGMENTS_PER_RUN
            or files.run.bytes + pending[files.name].stat().st_size >= files.cap_bytes)])

        row: dict[str, Any] = {"episode_index": episode_index, "tasks": sorted({f["task"] for f in self.buffer}),
                               "length": n}
        row.update(self._place(self.data, pending[self.data.name], episode_index))
        row["dataset_from_index"], row["dataset_to_index"] = self.info["total_frames"], self.info["total_frames"] + n
        for key, files in self.videos.items():
            row.update(self._place(files, pending[files.name], episode_index))
            row[f"{files.name}/from_timestamp"], row[f"{files.name}/to_timestamp"] = 0.0, n / self.fps
            if "info" not in self.info["features"][key]:
                path = files.path(self.root, files.location(row))
                self.info["features"][key]["info"] = {**video_info(path), **self.encoding.info(), "is_depth_map": False}
        stats = compute_episode_stats(columns, self.info["features"])
        row.update({f"stats/{k}": v for k, v in flatten_stats(stats).items()})
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = metadata_at
        self.episode_rows.append(row)
        self._write_episode_rows({metadata_at})
        self._commit(n, stats)
        self.buffer = []
        return episode_index

    def _all_files(self) -> list[EpisodeFiles]:
        return [self.data, *self.videos.values()]

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

    def _write_pending(self, columns: dict[str, np.ndarray]) -> dict[str, Path]:
        """The episode's data parquet and encoded videos, in hidden files until they are placed."""
        data = self.root / "data" / f"{PENDING_NAME}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self._data_table(columns), data, compression="snappy", use_dictionary=True)
        pending = {self.data.name: data}
        for files in self.videos.values():
            pending[files.name] = self.root / "videos" / files.video_key / f"{PENDING_NAME}.mp4"

        def encode(files: EpisodeFiles) -> None:
            encode_video(iter(columns[files.video_key]), pending[files.name], self.fps, self.encoding)

        if self.videos:
            with ThreadPoolExecutor(max_workers=len(self.videos)) as pool:  # encoders release the GIL
                list(pool.map(encode, self.videos.values()))
        return pending

    def _place(self, files: EpisodeFiles, pending: Path, episode_index: int) -> dict[str, int]:
        """Move the episode's pending file into its run as the next segment (opening a run if none is open)."""
        if files.run is None:
            last = files.location(self.episode_rows[-1]) if self.episode_rows else None
            files.run = Run(next_chunk_file(*last, self.chunks_size) if last else (0, 0))
            location = next_chunk_file(*files.run.reserved, self.chunks_size)
        else:
            location = next_chunk_file(*files.location(self.episode_rows[files.run.episodes[-1]]), self.chunks_size)
        path = files.path(self.root, location)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(pending, path)
        files.run.episodes.append(episode_index)
        files.run.sizes.append(path.stat().st_size)
        return {f"{files.name}/chunk_index": location[0], f"{files.name}/file_index": location[1]}

    def _close_runs(self, closing: list[EpisodeFiles]) -> None:
        """Join each run into its reserved file, then switch its episodes there (journaled: see the docstring)."""
        if not closing:
            return
        joins = []
        for files in closing:
            assert files.run is not None
            paths = [files.path(self.root, files.location(self.episode_rows[i])) for i in files.run.episodes]
            starts = join_segments(paths, files.path(self.root, files.run.reserved), files.video_key is not None)
            joins.append({"files": files.name, "reserved": list(files.run.reserved), "episodes": files.run.episodes,
                          "starts": starts, "segments": [str(p.relative_to(self.root)) for p in paths]})
            files.run = None
        atomic_write_json(self.root / JOIN_JOURNAL, {"joins": joins})
        self._switch_to_joined(joins)

    def _switch_to_joined(self, joins: list[dict[str, Any]]) -> None:
        """Point the joined episodes at their files, delete the segments, then the journal. Idempotent."""
        kinds = {files.name: files for files in self._all_files()}
        tables = set()
        for join in joins:
            files = kinds[join["files"]]
            for episode, start in zip(join["episodes"], join["starts"], strict=True):
                row = self.episode_rows[episode]
                row[f"{files.name}/chunk_index"], row[f"{files.name}/file_index"] = join["reserved"]
                if files.video_key is not None:
                    row[f"{files.name}/from_timestamp"] = start
                    row[f"{files.name}/to_timestamp"] = start + row["length"] / self.fps
                tables.add(self._metadata_location(row))
        self._write_episode_rows(tables)
        for join in joins:
            for segment in join["segments"]:
                dataset_file(self.root, segment, JOIN_JOURNAL).unlink(missing_ok=True)
        (self.root / JOIN_JOURNAL).unlink()

    def _finish_interrupted_joins(self) -> None:
        """A journal means a kill came while joined runs were being switched: finish the switch."""
        journal = self.root / JOIN_JOURNAL
        if not journal.exists():
            return
        joins = read_join_journal(journal, {files.name: files for files in self._all_files()}, self.root,
                                  len(self.episode_rows))
        logger.warning("%s: finishing the file joins a killed writer had started", journal)
        self._switch_to_joined(joins)

    # ---- the episode table ---------------------------------------------------------------------------------
    @staticmethod
    def _metadata_location(row: dict[str, Any]) -> Location:
        return int(row["meta/episodes/chunk_index"]), int(row["meta/episodes/file_index"])

    def _metadata_path(self, location: Location) -> Path:
        return dataset_file(self.root, chunk_file_path(DEFAULT_EPISODES_PATH, *location), "the episode table")

    def _next_metadata_location(self) -> Location:
        """The episode-table file the next episode's row goes to: the last one until it holds EPISODES_PER_FILE."""
        if not self.episode_rows:
            return 0, 0
        last = self._metadata_location(self.episode_rows[-1])
        rows = sum(1 for row in self.episode_rows[-EPISODES_PER_FILE:] if self._metadata_location(row) == last)
        return last if rows < EPISODES_PER_FILE else next_chunk_file(*last, self.chunks_size)

    def _write_episode_rows(self, locations: set[Location]) -> None:
        """Rewrite the episode-table files at `locations` with every row that belongs in them."""
        for location in sorted(locations):
            rows = [r for r in self.episode_rows if self._metadata_location(r) == location]
            ordered = [{k: r[k] for k in episode_column_order(r)} for r in rows]
            write_parquet(pa.Table.from_pylist(ordered), self._metadata_path(location))

    def _commit(self, n: int, stats: dict[str, dict[str, np.ndarray]]) -> None:
        """Tasks, stats, then info.json: the episode exists once info.json counts it."""
        write_tasks(self.root, self.tasks)
        self.dataset_stats = fold_stats(self.dataset_stats, stats)
        atomic_write_json(self.root / STATS_PATH, stats_to_json(self.dataset_stats))
        info = self.info
        info["total_episodes"] += 1
        info["total_frames"] += n
        info["total_tasks"] = len(self.tasks)
        info["splits"] = {"train": f"0:{info['total_episodes']}"}
        atomic_write_json(self.root / INFO_PATH, info)

    def finalize(self) -> None:
        """Join the open files (every saved episode is already committed); reports frames never saved."""
        if self.buffer:
            logger.warning("finalize(): %d frame(s) added after the last save_episode() were not saved",
                           len(self.buffer))
        self.buffer = []
        self._close_runs([files for files in self._all_files() if files.run is not None])
        self.lock.release()

    @property
    def meta(self):
        from robotrain.datasets.metadata import LeRobotDatasetMetadata

        return LeRobotDatasetMetadata(self.repo_id, self.root)

    def discard(self) -> None:
        """Delete the whole dataset folder (e.g. a recording that produced nothing)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.lock.release()


def episode_stats(row: dict[str, Any]) -> FeatureStats:
    """The per-episode stats stored in an episode-table row."""
    return unflatten_stats({k[len("stats/"):]: v for k, v in row.items() if k.startswith("stats/")})


def fold_stats(dataset: FeatureStats, episode: FeatureStats) -> FeatureStats:
    """Dataset stats with one more episode: the same pooling as aggregate_stats over all episodes, one step at a
    time, so a save costs the same at episode 10 and 10,000 (and a resumed writer, folding the stored episodes in
    order, gets the same bits as one that never stopped)."""
    return aggregate_stats([dataset, episode] if dataset else [episode])


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
