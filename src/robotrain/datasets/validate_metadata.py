"""The meta/ half of `robotrain dataset validate`: info.json, tasks, the episode table and the stats.

It also holds what both halves share: the Problems collector and EpisodeRow (one row of meta/episodes as far as
it could be read), which validate.py checks the data and video files against.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from robotrain.datasets.format import (
    CODEBASE_VERSION,
    DEFAULT_DATA_PATH,
    DEFAULT_EPISODES_PATH,
    DEFAULT_FEATURES,
    DEFAULT_TOLERANCE_S,
    DEFAULT_VIDEO_PATH,
    EPISODES_DIR,
    INFO_KEYS,
    INFO_PATH,
    LEGACY_EPISODES_PATH,
    QUANTILES,
    STAT_NAMES,
    STATS_PATH,
    TASKS_PATH,
    TEMPLATE_FIELDS,
    DatasetError,
    check_template,
    chunk_file_path,
    is_camera,
    read_parquet,
    read_tasks,
)
from robotrain.datasets.stats import SKIPPED_DTYPES, stats_from_json

MAX_EPISODES_NAMED = 8  # in one problem line; more are counted, not listed


# ---- problems and episode rows (shared with validate.py) ---------------------------------------------------
def episodes_label(episodes: list[int]) -> str:
    """'episode 3' or 'episodes 0-2, 7' (runs collapsed, long lists cut)."""
    values = sorted(set(episodes))
    if len(values) == 1:
        return f"episode {values[0]}"
    runs: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    more = len(runs) - MAX_EPISODES_NAMED
    return f"episodes {', '.join(runs[:MAX_EPISODES_NAMED])}" + (f" and {more} more runs" if more > 0 else "")


class Problems:
    """Problem lines, each naming a file (relative to the dataset root) and, where known, the episodes."""

    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []

    def add(self, path: Path | str, message: str, episodes: int | list[int] | None = None) -> None:
        """Record one problem about `path` (and `episodes`)."""
        where = self.relative(path)
        if episodes is not None and episodes != []:
            where += ": " + episodes_label([episodes] if isinstance(episodes, int) else episodes)
        self.lines.append(f"{where}: {message}")

    def relative(self, path: Path | str) -> str:
        """`path` relative to the dataset root (as given when it already is)."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:  # already relative to the root
            return str(path)

    def add_error(self, path: Path, exc: Exception, episodes: list[int] | None = None) -> None:
        """A reader's error, whose text starts with the absolute path: shown like the other lines."""
        text = str(exc)
        text = text[len(str(path)):].lstrip(": ") if text.startswith(str(path)) else text
        self.add(path, text.replace(f"{self.root}/", ""), episodes)


@dataclass
class EpisodeRow:
    """One row of meta/episodes as far as it could be read (None where a value is missing)."""

    index: int
    source: str  # the meta/episodes file holding the row
    length: int | None
    start: int | None  # dataset_from_index
    end: int | None  # dataset_to_index
    data_file: str | None
    tasks: list[str]
    videos: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # key -> (file, from_s, to_s)


def is_count(value: Any) -> bool:
    """A non-negative int (JSON true/false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_json_object(root: Path, rel: str, missing: str, problems: Problems) -> dict[str, Any] | None:
    """The JSON object in root/rel, or None with the reason added (`missing` when the file is absent)."""
    path = root / rel
    if not path.is_file():
        problems.add(rel, missing)
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.add(rel, f"is not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        problems.add(rel, "does not hold a JSON object")
        return None
    return data


def camera_layout(feature: dict[str, Any]) -> tuple[int, int, int]:
    """(height, width, channels) of a camera feature, read by its names when given, else as (H, W, C)."""
    shape, names = tuple(feature["shape"]), feature.get("names")
    if isinstance(names, list) and len(names) == len(shape) == 3 and {"height", "width", "channels"} <= set(names):
        return shape[names.index("height")], shape[names.index("width")], shape[names.index("channels")]
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
        return shape[1], shape[2], shape[0]  # channels first
    return shape[0], shape[1], shape[2] if len(shape) > 2 else 1


# ---- info.json and tasks -----------------------------------------------------------------------------------
def check_info(root: Path, problems: Problems) -> dict[str, Any] | None:
    """info.json's keys and values; None when it cannot be used to check the rest (with the reason added)."""
    legacy = " (a LeRobot v2.x dataset: convert it with `robotrain dataset convert`)" \
        if (root / LEGACY_EPISODES_PATH).is_file() else ""
    info = read_json_object(root, INFO_PATH, f"is missing: {root} is not a LeRobot v3.0 dataset{legacy}", problems)
    if info is None:
        return None
    missing = [k for k in INFO_KEYS if k not in info and k != "robot_type"]
    if missing:
        problems.add(INFO_PATH, f"lacks the required key(s) {', '.join(missing)}")
    if info.get("codebase_version") != CODEBASE_VERSION:
        problems.add(INFO_PATH, f"codebase_version is {info.get('codebase_version')!r}, expected "
                                f"'{CODEBASE_VERSION}' (convert v2.1 datasets with `robotrain dataset convert`)")
    for key in ("total_episodes", "total_frames", "total_tasks", "chunks_size"):
        if key in info and not is_count(info[key]):
            problems.add(INFO_PATH, f"{key} is {info[key]!r}, not a non-negative integer")
    fps_ok = is_count(info.get("fps")) and info["fps"] > 0
    if "fps" in info and not fps_ok:
        problems.add(INFO_PATH, f"fps is {info['fps']!r}, not a positive integer")
    features = _check_features(info.get("features"), problems)
    if not fps_ok or features is None:
        return None
    # Go on with the default path templates when they are missing (that is reported above).
    data_path = info.get("data_path") if isinstance(info.get("data_path"), str) else DEFAULT_DATA_PATH
    video_path = info.get("video_path") if isinstance(info.get("video_path"), str) else DEFAULT_VIDEO_PATH
    videos = [k for k, f in features.items() if f["dtype"] == "video"]
    if videos and not isinstance(info.get("video_path"), str) and "video_path" in info:
        problems.add(INFO_PATH, f"video_path is {info['video_path']!r}, but {', '.join(videos)} are video features")
    try:  # a template that can name files outside the dataset stops the check: no file it names is opened
        for key, template in (("data_path", data_path), ("video_path", video_path)):
            check_template(template, key, TEMPLATE_FIELDS[key])
    except DatasetError as exc:
        problems.lines.append(str(exc))
        return None
    return {**info, "features": features, "data_path": data_path, "video_path": video_path}


def _check_features(features: Any, problems: Problems) -> dict[str, dict[str, Any]] | None:
    """The well-formed features (shape as a tuple); None when there are none to check the data against."""
    if not isinstance(features, dict) or not features:
        problems.add(INFO_PATH, "features is missing or empty")
        return None
    good = {}
    for key, feature in features.items():
        shape = feature.get("shape") if isinstance(feature, dict) else None
        if not isinstance(feature, dict) or not isinstance(feature.get("dtype"), str) \
                or not isinstance(shape, (list, tuple)) or not all(is_count(s) and s > 0 for s in shape):
            problems.add(INFO_PATH, f"feature '{key}' needs a dtype and a shape of positive integers, got {feature!r}")
            continue
        if "/" in key:
            problems.add(INFO_PATH, f"feature name '{key}' contains '/', which the format forbids")
        good[key] = {**feature, "shape": tuple(shape)}
    absent = [k for k in DEFAULT_FEATURES if k not in good]
    if absent:
        problems.add(INFO_PATH, f"features lack the index feature(s) {', '.join(absent)}")
    return good


def check_tasks(root: Path, info: dict[str, Any], problems: Problems) -> list[str] | None:
    """The task texts by task_index, or None when meta/tasks.parquet cannot be read."""
    path = root / TASKS_PATH
    try:
        table = read_parquet(path, "the task list")
        indices = table["task_index"].to_pylist() if "task_index" in table.column_names else None
        if indices is not None and sorted(indices) != list(range(len(indices))):
            problems.add(TASKS_PATH, f"task_index values are not 0..{len(indices) - 1}, each once")
            return None
        tasks = read_tasks(root)
    except DatasetError as exc:
        problems.add_error(path, exc)
        return None
    if info.get("total_tasks") != len(tasks):
        problems.add(INFO_PATH, f"total_tasks is {info.get('total_tasks')}, but {TASKS_PATH} holds {len(tasks)} tasks")
    duplicated = sorted(t for t, n in Counter(tasks).items() if n > 1)
    if duplicated:
        problems.add(TASKS_PATH, f"lists task(s) more than once: {duplicated}")
    return tasks


# ---- the episode table -------------------------------------------------------------------------------------
def read_episode_tables(root: Path, problems: Problems) -> list[tuple[str, pa.Table]]:
    """Each readable meta/episodes file with its path (relative to root)."""
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        problems.add(EPISODES_DIR, "holds no episode files (meta/episodes/chunk-XXX/file-XXX.parquet)")
    tables = []
    for path in files:
        try:
            tables.append((str(path.relative_to(root)), read_parquet(path, "episode metadata")))
        except DatasetError as exc:
            problems.add_error(path, exc)
    return tables


def _required_episode_columns(info: dict[str, Any]) -> list[str]:
    """The meta/episodes columns every episode needs (video ones per video feature)."""
    columns = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
               "dataset_to_index"]
    for key, feature in info["features"].items():
        if feature["dtype"] == "video":
            columns += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    return columns


def _episode_rows(info: dict[str, Any], source: str, table: pa.Table, problems: Problems) -> list[EpisodeRow]:
    """The rows of one meta/episodes file, their missing columns reported."""
    missing = [c for c in _required_episode_columns(info) if c not in table.column_names]
    if missing:
        problems.add(source, f"lacks the column(s) {', '.join(missing)}")
    if "episode_index" not in table.column_names:
        return []
    names = [c for c in table.column_names if not c.startswith("stats/")]
    rows = []
    for row in table.select(names).to_pylist():
        episode = row["episode_index"]
        if not is_count(episode):
            problems.add(source, f"a row has episode_index {episode!r}, not a non-negative integer")
            continue
        data_file = None
        if _file_indices(row, "data", source, episode, problems):
            data_file = chunk_file_path(info["data_path"], row["data/chunk_index"], row["data/file_index"])
        videos = {}
        for key, feature in info["features"].items():
            values = [row.get(f"videos/{key}/{c}") for c in ("chunk_index", "file_index", "from_timestamp",
                                                              "to_timestamp")]
            if feature["dtype"] == "video" and None not in values \
                    and _file_indices(row, f"videos/{key}", source, episode, problems):
                path = chunk_file_path(info["video_path"], values[0], values[1], video_key=key)
                videos[key] = (path, float(values[2]), float(values[3]))
        location = (row.get("meta/episodes/chunk_index"), row.get("meta/episodes/file_index"))
        if None not in location and chunk_file_path(DEFAULT_EPISODES_PATH, *location) != source:
            problems.add(source, f"meta/episodes/chunk_index and file_index point at {location}, not this file",
                         episode)
        rows.append(EpisodeRow(episode, source, row.get("length"), row.get("dataset_from_index"),
                               row.get("dataset_to_index"), data_file, list(row.get("tasks") or []), videos))
    return rows


def _file_indices(row: dict[str, Any], prefix: str, source: str, episode: int, problems: Problems) -> bool:
    """Whether the row's <prefix>/chunk_index and file_index are present and non-negative integers (else said)."""
    values = [row.get(f"{prefix}/{name}") for name in ("chunk_index", "file_index")]
    if None in values:
        return False
    if not all(is_count(v) for v in values):
        problems.add(source, f"{prefix}/chunk_index and file_index are {values}, not non-negative integers", episode)
        return False
    return True


def check_episode_table(info: dict[str, Any], tables: list[tuple[str, pa.Table]], tasks: list[str] | None,
                         problems: Problems) -> list[EpisodeRow]:
    """Indices 0..n-1, totals, contiguous dataset_from/to_index, task texts and video spans of every episode."""
    episodes = sorted((e for source, table in tables for e in _episode_rows(info, source, table, problems)),
                      key=lambda e: e.index)
    counts = Counter(e.index for e in episodes)
    gaps = sorted(set(range(len(episodes))) - set(counts))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if gaps or duplicated:
        problems.add(EPISODES_DIR, f"episode_index values are not 0..{len(episodes) - 1}, each once (missing "
                                   f"{gaps[:MAX_EPISODES_NAMED]}, duplicated {duplicated[:MAX_EPISODES_NAMED]})")
    if tables and info.get("total_episodes") != len(episodes):
        problems.add(INFO_PATH, f"total_episodes is {info.get('total_episodes')}, but {EPISODES_DIR} lists "
                                f"{len(episodes)} episodes")
    expected_start, fps, known = 0, info["fps"], set(tasks or [])
    for e in episodes:
        if not is_count(e.length) or e.length == 0:
            problems.add(e.source, f"length is {e.length!r}, not a positive integer", e.index)
            e.length = None
        if e.start is not None and e.start != expected_start:
            problems.add(e.source, f"dataset_from_index is {e.start}, expected {expected_start} (the previous "
                                   "episode's dataset_to_index)", e.index)
        if None not in (e.start, e.end, e.length) and e.end - e.start != e.length:
            problems.add(e.source, f"dataset_to_index - dataset_from_index is {e.end - e.start}, but length is "
                                   f"{e.length}", e.index)
        expected_start = e.end if e.end is not None else expected_start + (e.length or 0)
        unknown = [t for t in e.tasks if tasks is not None and t not in known]
        if unknown:
            problems.add(e.source, f"lists task(s) {unknown} that are not in {TASKS_PATH}", e.index)
        for key, (_, start_s, end_s) in e.videos.items():
            if e.length is not None and abs((end_s - start_s) - e.length / fps) > DEFAULT_TOLERANCE_S:
                problems.add(e.source, f"videos/{key}: to_timestamp - from_timestamp is {end_s - start_s:.6f}s, but "
                                       f"length / fps is {e.length / fps:.6f}s", e.index)
    return episodes


# ---- statistics: per episode and meta/stats.json -----------------------------------------------------------
REQUIRED_STATS = ("min", "max", "mean", "std", "count")


def missing_stats(present: list[str]) -> list[str]:
    """Stats a feature lacks: the moments always; quantiles only when some are there (LeRobot < 0.4 and
    converted v2.1 datasets have none, which is valid)."""
    missing = [s for s in REQUIRED_STATS if s not in present]
    if any(q in present for q in QUANTILES):
        missing += [q for q in QUANTILES if q not in present]
    return missing


def _expected_stat_shape(feature: dict[str, Any], stat: str) -> tuple[int, ...]:
    """count is (1,); cameras have per-channel stats (C, 1, 1); other features the feature's shape."""
    if stat == "count":
        return (1,)
    if is_camera(feature):
        return (camera_layout(feature)[2], 1, 1)
    return tuple(feature["shape"])


def _stat_problem(value: Any, stat: str, feature: dict[str, Any]) -> str | None:
    """What is wrong with one stat's value, or None."""
    if value is None:
        return f"{stat} is null"
    try:
        array = stats_from_json({"f": {stat: value}})["f"][stat]
    except (ValueError, TypeError):
        return f"{stat} is not a numeric array"
    expected = _expected_stat_shape(feature, stat)
    return None if array.shape == expected else f"{stat} has shape {array.shape}, expected {expected}"


def check_episode_stats(info: dict[str, Any], tables: list[tuple[str, pa.Table]], problems: Problems) -> None:
    """Every stats/<feature>/<stat> column is present, and each episode's value has the feature's shape."""
    features = {k: f for k, f in info["features"].items() if f["dtype"] not in SKIPPED_DTYPES}
    for source, table in tables:
        if "episode_index" not in table.column_names:
            continue
        episodes = table["episode_index"].to_pylist()
        bad: dict[tuple[int, str], list[str]] = defaultdict(list)
        for key, feature in features.items():
            present = [s for s in STAT_NAMES if f"stats/{key}/{s}" in table.column_names]
            absent = missing_stats(present)
            if absent:
                problems.add(source, f"per-episode stats of '{key}' lack the column(s) "
                                     f"{', '.join(f'stats/{key}/{s}' for s in absent)}")
            for stat in present:
                for episode, value in zip(episodes, table[f"stats/{key}/{stat}"].to_pylist(), strict=True):
                    if (problem := _stat_problem(value, stat, feature)) is not None:
                        bad[(episode, key)].append(problem)
        for (episode, key), found in sorted(bad.items()):
            problems.add(source, f"stats of '{key}': {'; '.join(found)}", episode)


def check_stats_json(root: Path, info: dict[str, Any], problems: Problems) -> None:
    """stats.json has every stat of every numeric and camera feature, shaped like the feature."""
    data = read_json_object(root, STATS_PATH, "is missing (training normalizes with it)", problems)
    if data is None:
        return
    for key, feature in info["features"].items():
        if feature["dtype"] in SKIPPED_DTYPES:
            continue
        entry = data.get(key)
        if not isinstance(entry, dict):
            problems.add(STATS_PATH, f"has no stats for feature '{key}'")
            continue
        absent = missing_stats(list(entry))
        if absent:
            problems.add(STATS_PATH, f"stats of '{key}' lack {', '.join(absent)}")
        found = [p for s in STAT_NAMES if s in entry and (p := _stat_problem(entry[s], s, feature)) is not None]
        if found:
            problems.add(STATS_PATH, f"stats of '{key}': {'; '.join(found)}")
