"""`robotrain dataset validate`: check every invariant of a v3.0 dataset and report all problems, not the first.

This module runs the checks and holds the file half: data parquet files (columns, rows, images) and videos.
validate_metadata.py checks meta/ (info.json, tasks, the episode table, stats) and collects the problem lines.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa

from robotrain.datasets.dataset import arrow_column_to_numpy, decode_png
from robotrain.datasets.format import (
    DEFAULT_TOLERANCE_S,
    INFO_PATH,
    JOIN_JOURNAL,
    PANDAS_INDEX_COLUMN,
    TASKS_PATH,
    DatasetError,
    dataset_file,
    read_parquet,
)
from robotrain.datasets.hub import DatasetLocation
from robotrain.datasets.segments import EpisodeFiles, read_join_journal
from robotrain.datasets.stats import SKIPPED_DTYPES
from robotrain.datasets.validate_metadata import (
    EpisodeRow,
    Problems,
    camera_layout,
    check_episode_stats,
    check_episode_table,
    check_info,
    check_stats_json,
    check_tasks,
    episodes_label,
    is_count,
    read_episode_tables,
)

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("episode_index", "index", "frame_index", "timestamp", "task_index")


@dataclass
class ValidateConfig:
    """Which dataset `robotrain dataset validate` checks."""

    repo_id: str
    """Dataset id, e.g. lerobot/pusht: a folder under $HF_LEROBOT_HOME, or a Hub repo when online."""
    root: Path | None = None
    """Local folder holding the dataset; overrides the cache lookup (works offline)."""


def validate_dataset(cfg: ValidateConfig) -> list[str]:
    """Every broken invariant of a dataset, one line each naming the file and episode; [] when it is valid."""
    try:
        # An explicit root is checked as it is: downloading into it would hide what is wrong with it.
        location = DatasetLocation(cfg.repo_id, cfg.root)
        root = location.local_dir if cfg.root is not None else location.resolve()
    except DatasetError as exc:
        return [str(exc)]
    problems = Problems(root)
    info = check_info(root, problems)
    if info is None:
        return problems.lines
    if (root / JOIN_JOURNAL).exists():
        _check_join_journal(root, info, problems)
    tasks = check_tasks(root, info, problems)
    tables = read_episode_tables(root, problems)
    episodes = check_episode_table(info, tables, tasks, problems)
    check_episode_stats(info, tables, problems)
    data_rows = _check_data_files(root, info, episodes, tasks, problems)
    _check_total_frames(info, episodes, data_rows, problems)
    _check_videos(root, info, episodes, problems)
    check_stats_json(root, info, problems)
    logger.debug("validated %s: %d problem(s)", root, len(problems.lines))
    return problems.lines


def _check_join_journal(root: Path, info: dict[str, Any], problems: Problems) -> None:
    """A journal left by a killed writer: resumable when every entry is sound, else it names what is wrong."""
    kinds = {"data": EpisodeFiles("data", info["data_path"], 0)}
    kinds.update({f"videos/{key}": EpisodeFiles(f"videos/{key}", info["video_path"], 0, key)
                  for key, feature in info["features"].items() if feature["dtype"] == "video"})
    try:
        read_join_journal(root / JOIN_JOURNAL, kinds, root, int(info.get("total_episodes") or 0))
    except DatasetError as exc:
        problems.add_error(root / JOIN_JOURNAL, exc)
        return
    problems.add(JOIN_JOURNAL, "a writer was killed while switching episodes to joined files, so some episodes' "
                 "rows are in two files. Fix: LeRobotDataset.resume(repo_id, root=...) finishes the switch")


def _group_by_file(placements: list[tuple[str, EpisodeRow]]) -> list[tuple[str, list[EpisodeRow]]]:
    """(file, episode) pairs -> (file, the episodes placed in it), sorted by file."""
    by_file: dict[str, list[EpisodeRow]] = defaultdict(list)
    for rel, e in placements:
        by_file[rel].append(e)
    return sorted(by_file.items())


# ---- data files --------------------------------------------------------------------------------------------
def _check_data_files(root: Path, info: dict[str, Any], episodes: list[EpisodeRow], tasks: list[str] | None,
                      problems: Problems) -> int | None:
    """Check each referenced data file; returns the rows they hold (None when one could not be read)."""
    total: int | None = 0
    for rel, placed in _group_by_file([(e.data_file, e) for e in episodes if e.data_file is not None]):
        try:
            table = read_parquet(dataset_file(root, rel, "info.json data_path"), "frame data")
        except DatasetError as exc:
            problems.add_error(root / rel, exc, [e.index for e in placed])
            total = None
            continue
        total = None if total is None else total + table.num_rows
        _check_data_columns(info, rel, table, problems)
        _check_data_rows(info, rel, table, placed, tasks, problems)
    return total


def _check_data_columns(info: dict[str, Any], rel: str, table: pa.Table, problems: Problems) -> None:
    """The file's columns are info.json's non-video features, each with the feature's values per frame."""
    expected = {k: f for k, f in info["features"].items() if f["dtype"] != "video"}
    present = [c for c in table.column_names if c != PANDAS_INDEX_COLUMN]
    missing = [k for k in expected if k not in present]
    extra = [c for c in present if c not in expected]
    if missing:
        problems.add(rel, f"lacks the column(s) {', '.join(missing)} that info.json lists")
    if extra:
        problems.add(rel, f"has column(s) {', '.join(extra)} that info.json does not list")
    for key, feature in expected.items():
        if key not in present or feature["dtype"] in SKIPPED_DTYPES:
            continue
        if feature["dtype"] == "image":
            column_type = table.schema.field(key).type
            if not (pa.types.is_struct(column_type) and column_type.get_field_index("bytes") >= 0):
                problems.add(rel, f"column '{key}' is {column_type}, not an image struct with PNG bytes")
            continue
        try:
            values = arrow_column_to_numpy(table[key], feature["shape"])
        except (DatasetError, pa.ArrowException, ValueError, TypeError) as exc:
            problems.add(rel, f"column '{key}': {exc}")
            continue
        _check_finite(rel, key, values, table, problems)


def _check_finite(rel: str, key: str, values: np.ndarray, table: pa.Table, problems: Problems) -> None:
    """NaN or infinite numbers in a column, named with the episodes that hold them."""
    if values.dtype.kind != "f":
        return
    bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not bad_rows.any():
        return
    kinds = " and ".join(word for word, present in (("NaN", np.isnan(values).any()),
                                                    ("infinite", np.isinf(values).any())) if present)
    episodes = None
    if "episode_index" in table.column_names:
        episodes = sorted({int(e) for e in table["episode_index"].to_numpy()[bad_rows]})
    problems.add(rel, f"column '{key}' holds {kinds} values in {int(bad_rows.sum())} frame(s); they make the "
                 "statistics and a policy's training NaN. Fix: re-record those episodes, or leave them out with "
                 "--dataset.episodes", episodes)


def _index_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The readable per-frame index columns (a broken one was reported by _check_data_columns)."""
    columns = {}
    for name in INDEX_COLUMNS:
        if name in table.column_names:
            try:
                columns[name] = arrow_column_to_numpy(table[name], (1,))
            except (DatasetError, pa.ArrowException, ValueError, TypeError):
                continue
    return columns


def _check_data_rows(info: dict[str, Any], rel: str, table: pa.Table, placed: list[EpisodeRow],
                     tasks: list[str] | None, problems: Problems) -> None:
    """Rows of each episode placed in this file: count, order, index, frame_index, timestamp, task_index."""
    columns = _index_columns(table)
    if "episode_index" not in columns:
        return
    episode_of_row = columns["episode_index"].astype(np.int64)
    order = np.argsort(episode_of_row, kind="stable")
    values, starts, counts = np.unique(episode_of_row[order], return_index=True, return_counts=True)
    rows_of = {int(v): order[s:s + c] for v, s, c in zip(values, starts, counts, strict=True)}
    strays = sorted(set(rows_of) - {e.index for e in placed})
    if strays:
        problems.add(rel, f"holds rows of {episodes_label(strays)}, which meta/episodes does not place in this file")
    if np.any(np.diff(episode_of_row) < 0):
        problems.add(rel, "rows are not ordered by episode_index")
    for e in placed:
        rows = rows_of.get(e.index, np.zeros(0, np.int64))
        _check_episode_rows(info, rel, e, rows, columns, tasks, problems)
        _check_images(info, rel, e, table, rows, problems)


def _first_mismatch(actual: np.ndarray, expected: np.ndarray, tolerance: float = 0.0) -> int | None:
    """The first position where `actual` differs from `expected` by more than `tolerance`, or None."""
    bad = np.flatnonzero(np.abs(actual.astype(np.float64) - expected) > tolerance)
    return int(bad[0]) if len(bad) else None


def _check_episode_rows(info: dict[str, Any], rel: str, e: EpisodeRow, rows: np.ndarray,
                        columns: dict[str, np.ndarray], tasks: list[str] | None, problems: Problems) -> None:
    """One episode's rows in its data file: count, contiguity, index, frame_index, timestamp, tasks."""
    n = len(rows)
    if e.length is not None and n != e.length:
        problems.add(rel, f"holds {n} rows, but meta/episodes says its length is {e.length}", e.index)
    if n == 0:
        return
    if np.any(np.diff(rows) != 1):
        problems.add(rel, "rows are not contiguous in the file", e.index)
    if "index" in columns and e.start is not None:
        index = columns["index"][rows]
        if (k := _first_mismatch(index, np.arange(e.start, e.start + n))) is not None:
            problems.add(rel, f"index is not {e.start}..{e.start + n - 1} in order (frame {k} has index {index[k]}, "
                              f"expected {e.start + k})", e.index)
    if "frame_index" in columns:
        frame_index = columns["frame_index"][rows]
        if (k := _first_mismatch(frame_index, np.arange(n))) is not None:
            problems.add(rel, f"frame_index is not 0..{n - 1} in order (row {k} of the episode has "
                              f"{frame_index[k]})", e.index)
    if "timestamp" in columns:
        times = columns["timestamp"][rows]
        expected = np.arange(n) / info["fps"]
        bad = np.flatnonzero(np.abs(times.astype(np.float64) - expected) > DEFAULT_TOLERANCE_S)
        if len(bad):
            k = int(bad[0])
            problems.add(rel, f"timestamp is not frame_index / fps for {len(bad)} frame(s) (frame {k}: "
                              f"{float(times[k]):.6f}s, expected {expected[k]:.6f}s)", e.index)
    if "task_index" in columns and tasks is not None:
        task_index = columns["task_index"][rows].astype(np.int64)
        invalid = np.flatnonzero((task_index < 0) | (task_index >= len(tasks)))
        if len(invalid):
            k = int(invalid[0])
            problems.add(rel, f"task_index {task_index[k]} (frame {k}) is not a task: {TASKS_PATH} holds "
                              f"{len(tasks)}", e.index)
        elif {tasks[i] for i in np.unique(task_index)} != set(e.tasks):
            problems.add(rel, f"the frames' tasks {sorted({tasks[i] for i in np.unique(task_index)})} differ from "
                              f"the episode's tasks in meta/episodes {sorted(e.tasks)}", e.index)

def _check_images(info: dict[str, Any], rel: str, e: EpisodeRow, table: pa.Table, rows: np.ndarray,
                  problems: Problems) -> None:
    """Each image camera's first frame of the episode decodes to the feature's size (all decode: too slow)."""
    if len(rows) == 0:
        return
    for key, feature in info["features"].items():
        if feature["dtype"] != "image" or key not in table.column_names:
            continue
        cell = table[key][int(rows[0])].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            problems.add(rel, f"'{key}' of frame 0 holds no PNG bytes", e.index)
            continue
        try:
            size = decode_png(data).shape[:2]
        except (OSError, ValueError) as exc:
            problems.add(rel, f"'{key}' of frame 0 is not a readable image ({exc})", e.index)
            continue
        expected = camera_layout(feature)[:2]
        if tuple(size) != expected:
            problems.add(rel, f"'{key}' of frame 0 is {size[0]}x{size[1]} (HxW), info.json says "
                              f"{expected[0]}x{expected[1]}", e.index)


def _check_total_frames(info: dict[str, Any], episodes: list[EpisodeRow], data_rows: int | None,
                        problems: Problems) -> None:
    """info.json's total_frames against the episode lengths and the rows in the data files."""
    total = info.get("total_frames")
    lengths = sum(e.length for e in episodes if e.length is not None)
    found = [f"the episodes' lengths sum to {lengths}"] if episodes and lengths != total else []
    if data_rows is not None and data_rows != total:
        found.append(f"the data files hold {data_rows} rows")
    if found and is_count(total):
        problems.add(INFO_PATH, f"total_frames is {total}, but {' and '.join(found)}")


# ---- videos ------------------------------------------------------------------------------------------------
@dataclass
class VideoScan:
    """What one pass over a video file's packets found."""

    times: np.ndarray  # presentation time of every intact packet, sorted (s)
    cut_short: int  # packets whose data ends early: a truncated file
    size: tuple[int, int]  # (height, width)
    error: str | None  # a demuxing or decoding error, if any


def scan_video(path: Path) -> VideoScan:
    """Every packet's time (no decoding), then one decoded frame to show that the file really plays."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("it holds no video stream")
        stream = container.streams.video[0]
        tick, times, cut_short, error = float(stream.time_base), [], 0, None
        try:
            for packet in container.demux(stream):
                if packet.dts is None or packet.is_discard:  # the demuxer's empty flush packet
                    continue
                if packet.is_corrupt:  # flagged when the file ends inside the packet's data
                    cut_short += 1
                    continue
                times.append((packet.pts if packet.pts is not None else packet.dts) * tick)
            if times:
                container.seek(0, stream=stream, backward=True)
                if next(container.decode(stream), None) is None:
                    error = "no frame could be decoded"
        except av.FFmpegError as exc:
            error = str(exc)
        size = (stream.codec_context.height, stream.codec_context.width)
    return VideoScan(np.sort(np.array(times, np.float64)), cut_short, size, error)


def _check_videos(root: Path, info: dict[str, Any], episodes: list[EpisodeRow], problems: Problems) -> None:
    """Check every video file that episodes reference, camera by camera."""
    for key, feature in info["features"].items():
        if feature["dtype"] != "video":
            continue
        for rel, placed in _group_by_file([(e.videos[key][0], e) for e in episodes if key in e.videos]):
            try:
                path = dataset_file(root, rel, "info.json video_path")
            except DatasetError as exc:
                problems.add(rel, str(exc), [e.index for e in placed])
                continue
            _check_video_file(path, key, feature, placed, problems)


def _check_video_file(path: Path, key: str, feature: dict[str, Any], placed: list[EpisodeRow],
                      problems: Problems) -> None:
    """The file opens and decodes, has the feature's size, and each episode's span holds `length` frames."""
    indices = [e.index for e in placed]
    if not path.is_file():
        problems.add(path, f"is missing (camera '{key}')", indices)
        return
    try:
        scan = scan_video(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        problems.add(path, f"cannot be opened as a video ({exc})", indices)
        return
    if scan.error is not None:
        problems.add(path, f"cannot be read to the end ({scan.error})", indices)
    if scan.cut_short:
        problems.add(path, f"{scan.cut_short} frame(s) are cut short: the file is truncated", indices)
    expected = camera_layout(feature)[:2]
    if scan.size != expected:
        problems.add(path, f"frames are {scan.size[0]}x{scan.size[1]} (HxW), info.json says "
                           f"{expected[0]}x{expected[1]}")
    needed = sum(e.length for e in placed if e.length is not None)
    if len(scan.times) < needed:
        problems.add(path, f"holds {len(scan.times)} frames, fewer than the {needed} of its episodes", indices)
    for e in placed:
        _, start_s, end_s = e.videos[key]
        count = int(np.searchsorted(scan.times, end_s - DEFAULT_TOLERANCE_S)
                    - np.searchsorted(scan.times, start_s - DEFAULT_TOLERANCE_S))
        if e.length is not None and count != e.length:
            problems.add(path, f"holds {count} frames in [from_timestamp {start_s:.4f}s, to_timestamp "
                               f"{end_s:.4f}s), but the episode's length is {e.length}", e.index)


