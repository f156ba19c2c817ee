"""Convert a LeRobot v2.0/v2.1 dataset (one parquet and one mp4 per episode) into a v3.0 dataset.

Three passes. Read the v2.x metadata (info.json, episodes/tasks jsonl, per-episode stats). Check every episode's
files and collect every problem, so one run names all bad files. Then write the v3.0 dataset into a hidden sibling
folder (`.<name>.converting`) and rename it to output_root at the very end: an interrupted conversion leaves no half
dataset behind. Data rows are re-typed into robotrain's parquet schema; videos are remuxed, never re-encoded.
Each output file is written once (a data file's rows are gathered in memory up to its size cap; each camera's
episodes are streamed into its open mp4), so conversion I/O grows linearly with the dataset.

Stats: per-episode stats from episodes_stats.jsonl are kept (the renumbered episode_index/index columns get fresh
ones). A v2.0 dataset has none: numeric and image features get theirs from the data, while video cameras (which
would need decoding) take their dataset stats from the source's meta/stats.json.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from robotrain.datasets.dataset import arrow_column_to_numpy, decode_png
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
    LEGACY_EPISODES_PATH,
    LEGACY_EPISODES_STATS_PATH,
    LEGACY_TASKS_PATH,
    MB,
    STATS_PATH,
    DatasetError,
    chunk_file_path,
    new_info,
    next_chunk_file,
    write_parquet,
)
from robotrain.datasets.stats import (
    FeatureStats,
    aggregate_stats,
    array_stats,
    compute_episode_stats,
    flatten_stats,
    image_stats,
    sample_indices,
    stats_from_json,
    stats_to_json,
)
from robotrain.datasets.video import VideoConcatenator, VideoMismatchError, count_frames, video_info
from robotrain.datasets.writer import (
    arrow_type,
    data_schema,
    episode_column_order,
    numeric_array,
    write_tasks,
)
from robotrain.errors import ConfigError
from robotrain.files import atomic_write_json

logger = logging.getLogger(__name__)

LEGACY_VERSIONS = ("v2.0", "v2.1")
LEGACY_ONLY_INFO_KEYS = ("total_videos", "total_chunks")  # v3.0 has no per-episode files to count
LEGACY_CHUNKS_SIZE = 1000  # v2.x default episodes per chunk, for an info.json that omits it
RENUMBERED = ("episode_index", "index")  # columns rewritten on conversion: their per-episode stats are recomputed
_CHECK_THREADS = 8  # parquet reads and mp4 demuxing release the GIL


@dataclass
class ConvertConfig:
    """Convert a LeRobot v2.0/v2.1 dataset to v3.0 (the format robotrain and LeRobot >= 0.4 read)."""

    root: Path
    """The v2.x dataset folder (the one holding meta/info.json)."""
    output_root: Path | None = None
    """Where to write the v3.0 dataset; must not exist or be empty. Default: <root's parent>/<root name>_v3.0."""
    skip_missing: bool = False
    """Drop episodes whose data or video files are missing or corrupt and convert the rest (renumbered 0..n-1)."""
    data_files_size_in_mb: int = DEFAULT_DATA_FILE_SIZE_IN_MB
    """Start a new data parquet file past this size (0: one file per episode)."""
    video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_SIZE_IN_MB
    """Start a new mp4 per camera past this size (0: one file per episode)."""

    def resolved_output_root(self) -> Path:
        """output_root, or the default <root>_v3.0 next to root."""
        root = Path(self.root).expanduser()
        if self.output_root is not None:
            return Path(self.output_root).expanduser()
        return root.parent / f"{root.name}_v3.0"

    def validate(self) -> None:
        """Raise a ConfigError naming the first unusable value."""
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise ConfigError("root", self.root, "is not a folder" if root.exists() else "does not exist",
                              "point --root at a LeRobot v2.x dataset folder (the one holding meta/info.json)")
        for name in ("data_files_size_in_mb", "video_files_size_in_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(name, value, "must be a whole number of MB, 0 or more",
                                  f"e.g. --{name}=100 (0 puts each episode in a file of its own)")
        out = self.resolved_output_root()
        if out.resolve() == root.resolve():
            raise ConfigError("output_root", out, "is the source dataset",
                              "choose a new folder (the default is <root>_v3.0 next to root)")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError("output_root", out, "already exists and is not empty",
                              "choose another --output_root, or remove that folder")


@dataclass
class ConversionReport:
    """What convert_dataset wrote, and which source episodes it dropped."""

    output_root: Path
    episodes: int
    frames: int
    skipped: list[str] = field(default_factory=list)  # one line per dropped episode: its file(s) and why


# ---- reading the v2.x dataset --------------------------------------------------------------------------------
@dataclass
class LegacyDataset:
    """The metadata of a v2.0/v2.1 dataset and the paths of its per-episode files."""

    root: Path
    info: dict[str, Any]
    episodes: list[dict[str, Any]]  # episodes.jsonl rows, by episode_index
    tasks: list[str]  # by task_index
    episode_stats: dict[int, FeatureStats]  # episodes_stats.jsonl (v2.1); empty for v2.0
    stats: FeatureStats  # meta/stats.json, or {}

    @property
    def chunks_size(self) -> int:
        return int(self.info.get("chunks_size") or LEGACY_CHUNKS_SIZE)

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.info["features"].items() if f["dtype"] == "video"]

    @property
    def data_keys(self) -> list[str]:
        """The features stored as parquet columns."""
        return [k for k, f in self.info["features"].items() if f["dtype"] != "video"]

    def data_file(self, episode_index: int) -> str:
        chunk = episode_index // self.chunks_size
        return self.info["data_path"].format(episode_chunk=chunk, episode_index=episode_index)

    def video_file(self, episode_index: int, key: str) -> str:
        chunk = episode_index // self.chunks_size
        return self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=episode_index)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, or a DatasetError naming the file (and line) that is missing or bad."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing. Fix: re-download or restore the dataset")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}, line {number}: not valid JSON ({exc}). Fix: restore the file") from None
    return rows


def _read_legacy_info(root: Path) -> dict[str, Any]:
    """meta/info.json of a v2.0/v2.1 dataset; a DatasetError for anything else (v3.0 included)."""
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{path} is missing: {root} is not a LeRobot dataset. Fix: point --root at the folder "
                           "that holds meta/info.json")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}). Fix: restore it from the dataset's source") from None
    version = str(info.get("codebase_version", "missing"))
    if version == CODEBASE_VERSION:
        raise DatasetError(f"{root} is already {CODEBASE_VERSION}: there is nothing to convert. Fix: train on it as "
                           "it is (--dataset.root)")
    if version not in LEGACY_VERSIONS:
        raise DatasetError(f"{path}: codebase_version {version} cannot be converted (only "
                           f"{', '.join(LEGACY_VERSIONS)}). Fix: convert it to v2.1 with LeRobot first")
    missing = [k for k in ("fps", "features", "data_path") if k not in info]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}. Fix: restore the file from the dataset's source")
    return info


def _read_legacy_tasks(root: Path) -> list[str]:
    """tasks.jsonl as a list by task_index (which must run 0..n-1)."""
    path = root / LEGACY_TASKS_PATH
    by_index = {int(row["task_index"]): row["task"] for row in _read_jsonl(path)}
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"{path}: task indices are {sorted(by_index)}, not 0..{len(by_index) - 1}. Fix: restore "
                           "the file from the dataset's source")
    return [by_index[i] for i in range(len(by_index))]


def read_legacy_dataset(root: Path) -> LegacyDataset:
    """Everything about a v2.0/v2.1 dataset except its per-episode files."""
    info = _read_legacy_info(root)
    episodes = sorted(_read_jsonl(root / LEGACY_EPISODES_PATH), key=lambda row: int(row["episode_index"]))
    if not episodes:
        raise DatasetError(f"{root / LEGACY_EPISODES_PATH} lists no episodes: there is nothing to convert")
    stats_path = root / LEGACY_EPISODES_STATS_PATH
    episode_stats = {int(row["episode_index"]): stats_from_json(row["stats"]) for row in _read_jsonl(stats_path)} \
        if stats_path.is_file() else {}
    stats = stats_from_json(json.loads((root / STATS_PATH).read_text())) if (root / STATS_PATH).is_file() else {}
    if info.get("video_path") is None and any(f["dtype"] == "video" for f in info["features"].values()):
        raise DatasetError(f"{root / INFO_PATH} has video features but no video_path. Fix: restore the file")
    return LegacyDataset(root, info, episodes, _read_legacy_tasks(root), episode_stats, stats)


# ---- checking every episode's files ------------------------------------------------------------------------
def _check_data_file(source: LegacyDataset, episode_index: int, length: int) -> list[str]:
    """Problems with an episode's parquet file: missing, unreadable, wrong row count, missing columns."""
    rel = source.data_file(episode_index)
    path = source.root / rel
    if not path.is_file():
        return [f"{rel} is missing"]
    try:
        table = pq.read_table(path)  # the whole file: a good footer says nothing about the column chunks
    except (pa.ArrowException, OSError) as exc:
        return [f"{rel} cannot be read ({exc})"]
    problems = []
    if table.num_rows != length:
        problems.append(f"{rel} has {table.num_rows} rows, episodes.jsonl says {length}")
    if missing := [k for k in source.data_keys if k not in table.column_names]:
        problems.append(f"{rel} lacks column(s) {', '.join(missing)}")
    return problems


def _check_video_file(source: LegacyDataset, episode_index: int, key: str, length: int) -> list[str]:
    """Problems with an episode's mp4 of camera `key`: missing, unopenable, wrong frame count."""
    rel = source.video_file(episode_index, key)
    path = source.root / rel
    if not path.is_file():
        return [f"{rel} is missing"]
    try:
        frames = count_frames(path)
    except (DatasetError, av.FFmpegError, OSError):
        return [f"{rel} cannot be opened as a video (truncated or corrupt)"]
    return [] if frames == length else [f"{rel} has {frames} frames, episodes.jsonl says {length}"]


def _check_episode(source: LegacyDataset, episode: dict[str, Any]) -> list[str]:
    """Every problem with one episode's parquet and mp4 files (empty when they are fine)."""
    index, length = int(episode["episode_index"]), int(episode["length"])
    problems = _check_data_file(source, index, length)
    for key in source.video_keys:
        problems += _check_video_file(source, index, key, length)
    return problems


def check_episodes(source: LegacyDataset) -> dict[int, list[str]]:
    """{episode_index: problems} for every episode whose files are missing, unreadable or of the wrong length."""
    with ThreadPoolExecutor(max_workers=min(_CHECK_THREADS, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda episode: _check_episode(source, episode), source.episodes)
        problems = list(tqdm(results, total=len(source.episodes), desc="checking episodes", unit="episode",
                             leave=False))
    return {int(e["episode_index"]): p for e, p in zip(source.episodes, problems, strict=True) if p}


def _problem_lines(problems: dict[int, list[str]]) -> list[str]:
    """One line per bad episode: its index, then each bad file and why."""
    return [f"episode {index}: {'; '.join(found)}" for index, found in sorted(problems.items())]


def _bad_files_error(source: LegacyDataset, problems: dict[int, list[str]]) -> DatasetError:
    """One error listing every bad file, with the fix."""
    total, bad = len(source.episodes), len(problems)
    lines = "\n".join(f"  {line}" for line in _problem_lines(problems))
    return DatasetError(f"{source.root}: {bad} of {total} episodes have missing or corrupt files:\n{lines}\n"
                        f"Fix: restore those files, or pass --skip_missing=true to convert the other {total - bad} "
                        "episodes without them")


# ---- writing the v3.0 dataset ------------------------------------------------------------------------------
def v3_features(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The v2.x features as v3.0 declares them: non-video features gain "fps", v2.0's "video_info" becomes "info"."""
    fps = int(info["fps"])
    features: dict[str, dict[str, Any]] = {}
    for key, feature in info["features"].items():
        feature = {**feature, "shape": list(feature["shape"])}
        if feature["dtype"] == "video":
            legacy = feature.pop("video_info", None)
            if legacy is not None:
                feature.setdefault("info", legacy)
        else:
            feature["fps"] = fps  # LeRobot's own converter adds it; its v3.0 reader expects it
        features[key] = feature
    for key, default in DEFAULT_FEATURES.items():
        features.setdefault(key, {**default, "fps": fps})
    return features


def episode_table(table: pa.Table, features: dict[str, dict[str, Any]], episode_index: int,
                  first_index: int) -> pa.Table:
    """One v2.x episode's rows in robotrain's v3.0 data schema, renumbered as episode `episode_index`."""
    n, arrays = table.num_rows, []
    for key, feature in features.items():
        dtype = feature["dtype"]
        if dtype == "video":
            continue
        if key == "episode_index":
            array = pa.array(np.full(n, episode_index, dtype=np.int64))
        elif key == "index":
            array = pa.array(np.arange(first_index, first_index + n, dtype=np.int64))
        elif dtype == "image":
            array = table[key].combine_chunks().cast(arrow_type(feature))
        elif dtype in ("string", "language"):
            array = table[key].combine_chunks().cast(pa.string())
        else:
            # v2.x stored vectors as variable-length lists; v3.0 as fixed-size ones of the declared dtype.
            values = arrow_column_to_numpy(table[key], tuple(feature["shape"])).astype(dtype)
            array = numeric_array(values, feature)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=data_schema(features))


def _numeric_columns(table: pa.Table, features: dict[str, dict[str, Any]], keys: list[str]) -> dict[str, np.ndarray]:
    """The parquet columns `keys` as (T, *shape) arrays."""
    return {k: arrow_column_to_numpy(table[k], tuple(features[k]["shape"])) for k in keys}


def compute_stats_from_data(table: pa.Table, features: dict[str, dict[str, Any]]) -> FeatureStats:
    """Per-episode stats of numeric and image features from v3.0 rows; video cameras are left out (no decoding)."""
    numeric = [k for k, f in features.items() if f["dtype"] not in ("video", "image", "string", "language")]
    stats = compute_episode_stats(_numeric_columns(table, features, numeric), features)
    for key in (k for k, f in features.items() if f["dtype"] == "image"):
        cells = table[key].to_pylist()
        # Only the sampled frames are decoded: PNG decoding dominates the cost.
        frames = np.stack([decode_png(cells[i]["bytes"]) for i in sample_indices(len(cells))])
        stats[key] = image_stats(frames)
    return stats


def episode_stats(kept: FeatureStats | None, table: pa.Table, features: dict[str, dict[str, Any]]) -> FeatureStats:
    """The source's stats of an episode (index columns recomputed after renumbering), or stats from its data."""
    if kept is None:
        return compute_stats_from_data(table, features)
    stats = {k: v for k, v in kept.items() if k in features}
    for key in RENUMBERED:
        fresh = array_stats(_numeric_columns(table, features, [key])[key])
        names = stats.get(key, fresh)  # the stat names the source has (v2.1: no quantiles), for uniform columns
        stats[key] = {name: fresh[name] for name in names if name in fresh}
    return stats


class V3Writer:
    """Appends v2.x episodes, in order, to a v3.0 dataset being built in `root`; finish() writes the metadata."""

    def __init__(self, source: LegacyDataset, root: Path, cfg: ConvertConfig):
        self.source, self.root, self.cfg = source, root, cfg
        self.features = v3_features(source.info)
        self.fps = int(source.info["fps"])
        self.rows: list[dict[str, Any]] = []
        self.stats: list[FeatureStats] = []
        self.frames = 0
        self.data_at = (0, 0)  # the data file being filled
        self.pending: list[pa.Table] = []  # its episodes, written once it is full (one write per file)
        self.pending_bytes = 0
        self.video_at = dict.fromkeys(source.video_keys, (0, 0))
        self.video_out: dict[str, VideoConcatenator] = {}  # each camera's open file, joined as episodes come
        self.files = {"data": 0, "video": 0}

    def add(self, episode: dict[str, Any]) -> None:
        """Convert one source episode into the next v3.0 episode."""
        old_index, new_index = int(episode["episode_index"]), len(self.rows)
        source_table = pq.read_table(self.source.root / self.source.data_file(old_index))
        table = episode_table(source_table, self.features, new_index, self.frames)
        n = table.num_rows
        row: dict[str, Any] = {"episode_index": new_index, "tasks": list(episode.get("tasks") or []), "length": n}
        row.update(self._add_data(table))
        row["dataset_from_index"], row["dataset_to_index"] = self.frames, self.frames + n
        for key in self.source.video_keys:
            row.update(self._add_video(key, old_index, n))
        stats = episode_stats(self.source.episode_stats.get(old_index), table, self.features)
        row.update({f"stats/{k}": v for k, v in flatten_stats(stats).items()})
        self.rows.append(row)
        self.stats.append(stats)
        self.frames += n

    def _add_data(self, table: pa.Table) -> dict[str, int]:
        """Queue the rows for the current data file, closing it first if they would take it past the size cap."""
        if self.pending and self.pending_bytes + table.nbytes >= self.cfg.data_files_size_in_mb * MB:
            self._flush_data()
            self.data_at = next_chunk_file(*self.data_at, DEFAULT_CHUNK_SIZE)
        self.pending.append(table)
        self.pending_bytes += table.nbytes  # in-memory size: an upper bound of the compressed file's
        return {"data/chunk_index": self.data_at[0], "data/file_index": self.data_at[1]}

    def _flush_data(self) -> None:
        """Write the queued episodes as the current data file."""
        if self.pending:
            path = self.root / chunk_file_path(DEFAULT_DATA_PATH, *self.data_at)
            write_parquet(pa.concat_tables(self.pending), path)
            self.files["data"] += 1
        self.pending, self.pending_bytes = [], 0

    def _video_path(self, key: str) -> Path:
        return self.root / chunk_file_path(DEFAULT_VIDEO_PATH, *self.video_at[key], video_key=key)

    def _add_video(self, key: str, old_index: int, length: int) -> dict[str, Any]:
        """Append the episode's mp4 (stream copy) to the camera's open file, or a new one past the size cap."""
        src = self.source.root / self.source.video_file(old_index, key)
        out = self.video_out.get(key)
        if out is not None and out.bytes_in + src.stat().st_size >= self.cfg.video_files_size_in_mb * MB:
            out = self._next_video_file(key)
        out = out or self._open_video_file(key)
        try:
            start = out.append(src)
        except VideoMismatchError as exc:
            if not out.bytes_in:
                raise
            # Episodes encoded with other settings cannot share a stream: give this one a file of its own.
            logger.info("%s: starting a new file (%s)", key, exc)
            start = self._next_video_file(key).append(src)
        return {f"videos/{key}/chunk_index": self.video_at[key][0], f"videos/{key}/file_index": self.video_at[key][1],
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + length / self.fps}

    def _open_video_file(self, key: str) -> VideoConcatenator:
        self.video_out[key] = VideoConcatenator(self._video_path(key))
        return self.video_out[key]

    def _next_video_file(self, key: str) -> VideoConcatenator:
        """Close camera `key`'s file and open its next one."""
        self.video_out.pop(key).close()
        self.video_at[key] = next_chunk_file(*self.video_at[key], DEFAULT_CHUNK_SIZE)
        return self._open_video_file(key)

    def abort(self) -> None:
        """Drop the unfinished video files (the caller removes the folder)."""
        for out in self.video_out.values():
            out.abort()
        self.video_out.clear()

    def finish(self) -> None:
        """Write the last data and video files, then episodes, tasks, stats and (last) info.json."""
        self._flush_data()
        for out in self.video_out.values():
            out.close()
        self.video_out.clear()
        self.files["video"] = sum(1 for _ in (self.root / "videos").rglob("*.mp4")) if self.video_at else 0
        for key in self.video_at:
            first = self.root / chunk_file_path(DEFAULT_VIDEO_PATH, 0, 0, video_key=key)
            self.features[key]["info"] = {**self.features[key].get("info", {}), **video_info(first)}
        self._write_episode_rows()
        write_tasks(self.root, self.source.tasks)
        atomic_write_json(self.root / STATS_PATH, stats_to_json(self._dataset_stats()))
        atomic_write_json(self.root / INFO_PATH, self._info())

    def _write_episode_rows(self) -> None:
        """meta/episodes/chunk-000/file-000.parquet: one row per episode (a few KB each, so one file)."""
        every_key: dict[str, None] = {}
        for row in self.rows:
            row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
            every_key.update(dict.fromkeys(row))
        order = episode_column_order(every_key)
        table = pa.Table.from_pylist([{k: row.get(k) for k in order} for row in self.rows])
        write_parquet(table, self.root / chunk_file_path(DEFAULT_EPISODES_PATH, 0, 0))

    def _dataset_stats(self) -> FeatureStats:
        """Aggregated per-episode stats; features no episode has stats for (v2.0 videos) from the source's."""
        stats = aggregate_stats(self.stats)
        for key, feature_stats in self.source.stats.items():
            if key in self.features and key not in stats:
                stats[key] = feature_stats
        if missing := [k for k in self.features if k not in stats and self.features[k]["dtype"] not in
                       ("string", "language")]:
            logger.warning("no stats for %s (the source has none); normalization will need them", ", ".join(missing))
        return stats

    def _info(self) -> dict[str, Any]:
        """The v3.0 info.json: the writer's, with totals set; keys only v2.x had dropped, other keys kept."""
        info = new_info(self.fps, self.features, self.source.info.get("robot_type"), DEFAULT_CHUNK_SIZE,
                        self.cfg.data_files_size_in_mb, self.cfg.video_files_size_in_mb)
        info.update(total_episodes=len(self.rows), total_frames=self.frames, total_tasks=len(self.source.tasks),
                    splits={"train": f"0:{len(self.rows)}"})
        kept = {k: v for k, v in self.source.info.items() if k not in LEGACY_ONLY_INFO_KEYS and k not in info}
        return {**info, **kept}


# ---- the conversion ----------------------------------------------------------------------------------------
def _kept_episodes(source: LegacyDataset, cfg: ConvertConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """The episodes to convert and one line per dropped one; a DatasetError if any is bad and skipping is off."""
    problems = check_episodes(source)
    if problems and not cfg.skip_missing:
        raise _bad_files_error(source, problems)
    kept = [e for e in source.episodes if int(e["episode_index"]) not in problems]
    if not kept:
        raise DatasetError(f"{source.root}: every episode has missing or corrupt files; there is nothing to convert. "
                           "Fix: re-download or restore the dataset")
    skipped = _problem_lines(problems)
    for line in skipped:
        logger.warning("skipping %s", line)
    return kept, skipped


def _temporary_dir(output_root: Path) -> Path:
    """A fresh hidden sibling of output_root to build the dataset in (a leftover of a killed run is removed)."""
    tmp = output_root.parent / f".{output_root.name}.converting"
    if tmp.exists():
        logger.warning("removing %s, left by an interrupted conversion", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _write_dataset(source: LegacyDataset, episodes: list[dict[str, Any]], tmp: Path, cfg: ConvertConfig) -> V3Writer:
    """Every kept episode, then the metadata, into `tmp`."""
    writer = V3Writer(source, tmp, cfg)
    try:
        for episode in tqdm(episodes, desc="converting", unit="episode", leave=False):
            writer.add(episode)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return writer


def convert_dataset(cfg: ConvertConfig) -> ConversionReport:
    """Convert the v2.0/v2.1 dataset at cfg.root into a v3.0 dataset at cfg's output root."""
    cfg.validate()
    root, output_root = Path(cfg.root).expanduser(), cfg.resolved_output_root()
    source = read_legacy_dataset(root)
    episodes, skipped = _kept_episodes(source, cfg)
    tmp = _temporary_dir(output_root)
    try:
        writer = _write_dataset(source, episodes, tmp, cfg)
        if output_root.exists():
            output_root.rmdir()  # validate() saw it empty; rename cannot replace a folder on every platform
        os.replace(tmp, output_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s (%s, %d episodes) to %s: %d episodes, %d frames, %d data file(s), %d video file(s)%s",
                root, source.info["codebase_version"], len(source.episodes), output_root, len(writer.rows),
                writer.frames, writer.files["data"], writer.files["video"],
                f"; skipped {len(skipped)} episode(s) with missing or corrupt files" if skipped else "")
    return ConversionReport(output_root, len(writer.rows), writer.frames, skipped)
