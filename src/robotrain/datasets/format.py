"""The LeRobotDataset v3.0 on-disk format: paths, constants, the info.json builder and the readers of meta/.

<root>/meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/chunk-XXX/file-XXX.parquet,
data/chunk-XXX/file-XXX.parquet (many episodes per file), videos/<key>/chunk-XXX/file-XXX.mp4 (episodes
concatenated). Paths of data and video files always come from the templates in info.json.

A dataset is data, and data can be hostile: every path this module builds from it (a template of info.json, an
index of the episode table, a journal entry) goes through `dataset_file`, which refuses anything that lands
outside the dataset's folder, and read_info refuses templates with fields the format does not have.
"""

from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from robotrain.errors import UserError
from robotrain.files import atomic_write, path_inside

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk-XXX directory
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
MB = 1024 * 1024
DEFAULT_TOLERANCE_S = 1e-4  # largest gap between a requested and a stored frame time (LeRobot's default)

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
# robotrain's writer: the joins whose episode rows are being switched to the joined files (writer.py). Present only
# after a kill in that step; LeRobotDataset.resume finishes the switch.
JOIN_JOURNAL = "meta/.join-in-progress.json"
DEFAULT_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

# v2.x files, recognized to point at the converter.
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"

STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}

DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
INFO_KEYS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks", "chunks_size",
             "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path", "robot_type", "splits")
OPTIONAL_INFO_KEYS = ("tools",)
# The fields each path template of info.json may use (v3.0). Anything else is refused: it could not be filled in.
TEMPLATE_FIELDS = {"data_path": ("chunk_index", "file_index"),
                   "video_path": ("video_key", "chunk_index", "file_index")}
PANDAS_INDEX_COLUMN = "__index_level_0__"  # how pandas stores tasks.parquet's index (the task text)


class DatasetError(UserError):
    """A dataset that cannot be read or written as asked: names the file (and episode) and the fix."""


def lerobot_home() -> Path:
    """$HF_LEROBOT_HOME, else $HF_HOME/lerobot, else ~/.cache/huggingface/lerobot (as LeRobot resolves it)."""
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return hf_home / "lerobot"


def chunk_file_path(template: str, chunk_index: int, file_index: int, **keys: Any) -> str:
    """A template filled in (relative to the dataset root); dataset_file also checks where it lands."""
    return template.format(chunk_index=chunk_index, file_index=file_index, **keys)


def dataset_file(root: Path, relative: str | Path, what: str) -> Path:
    """root / relative, refused (DatasetError) when it lands outside the dataset folder; `what` names its source."""
    try:
        return path_inside(root, relative, what)
    except UserError as exc:
        raise DatasetError(str(exc)) from None


def check_template(template: Any, key: str, allowed: tuple[str, ...]) -> str:
    """An info.json path template that can only name files inside the dataset: relative, no '..', and only the
    `allowed` fields; a DatasetError naming `key` otherwise."""
    where = f"{INFO_PATH} {key}"
    if not isinstance(template, str) or not template:
        raise DatasetError(f"{where} is {template!r}, not a path template. Fix: restore the file from the dataset's "
                           "source")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise DatasetError(f"{where} '{template}' is not a valid template ({exc}). Fix: restore the file") from None
    unknown = sorted({f for f in fields if f not in allowed})
    if unknown:
        raise DatasetError(f"{where} '{template}' uses the field(s) {', '.join(unknown)}; a v3.0 template may only "
                           f"use {', '.join(allowed)}. Fix: restore the file from the dataset's source")
    parts = Path(template).parts
    if Path(template).is_absolute() or ".." in parts or template.startswith("~"):
        raise DatasetError(f"{where} '{template}' points outside the dataset folder. Fix: restore the file from the "
                           "dataset's source (templates are relative paths below the dataset root)")
    return template


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The file after (chunk, file): a new chunk directory once one holds `chunks_size` files."""
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


def is_camera(feature: dict[str, Any]) -> bool:
    return feature["dtype"] in ("image", "video")


def write_parquet(table: pa.Table, path: Path) -> None:
    """A parquet file as LeRobot writes them (snappy, dictionary encoding), replaced atomically."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="snappy", use_dictionary=True))


def new_info(fps: int, features: dict[str, dict[str, Any]], robot_type: str | None, chunks_size: int,
             data_files_size_in_mb: int, video_files_size_in_mb: int) -> dict[str, Any]:
    """info.json of an empty dataset with these features (the index features are added where absent)."""
    has_video = any(f["dtype"] == "video" for f in features.values())
    defaults = {k: v for k, v in DEFAULT_FEATURES.items() if k not in features}
    return {
        "codebase_version": CODEBASE_VERSION, "fps": fps, "features": {**features, **defaults},
        "total_episodes": 0, "total_frames": 0, "total_tasks": 0, "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb, "video_files_size_in_mb": video_files_size_in_mb,
        "data_path": DEFAULT_DATA_PATH, "video_path": DEFAULT_VIDEO_PATH if has_video else None,
        "robot_type": robot_type, "splits": {},
    }


# ---- readers -----------------------------------------------------------------------------------------------
def convert_command(root: Path) -> str:
    return f"robotrain dataset convert --root={root}"


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked: a v3.0 dataset with every required key, an integer fps and path templates that
    stay inside the dataset (unknown keys ignored with a warning)."""
    path = root / INFO_PATH
    if not path.is_file():
        if (root / LEGACY_EPISODES_PATH).is_file():
            raise DatasetError(f"{root} is a LeRobot v2.x dataset without meta/info.json; convert it with "
                               f"`{convert_command(root)}`")
        raise DatasetError(f"{path} is missing: {root} is not a LeRobot dataset. Fix: point --dataset.root (or "
                           "root=) at the folder that holds meta/info.json")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}). Fix: restore the file from the dataset's "
                           "source") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path} does not hold a JSON object. Fix: restore the file from the dataset's source")
    version = str(info.get("codebase_version", "missing"))
    if version.startswith("v2"):
        raise DatasetError(f"{root} is a LeRobot {version} dataset; robotrain reads v3.0. Fix: convert it with "
                           f"`{convert_command(root)}`")
    if version != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {version} is not supported (robotrain reads {CODEBASE_VERSION})."
                           " Fix: use a v3.0 dataset, or convert a v2.1 one with `robotrain dataset convert`")
    missing = [k for k in INFO_KEYS if k not in info and k != "robot_type"]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}. Fix: restore the file from the dataset's source")
    unknown = sorted(set(info) - set(INFO_KEYS) - set(OPTIONAL_INFO_KEYS))
    if unknown:
        logger.warning("%s: ignoring unknown keys %s", path, ", ".join(unknown))
    info["fps"] = _positive_integer(info["fps"], path, "fps")
    _check_features(info["features"], path)
    info["data_path"] = check_template(info["data_path"], "data_path", TEMPLATE_FIELDS["data_path"])
    if any(f["dtype"] == "video" for f in info["features"].values()) or info["video_path"] is not None:
        info["video_path"] = check_template(info["video_path"], "video_path", TEMPLATE_FIELDS["video_path"])
    return info


def _positive_integer(value: Any, path: Path, key: str) -> int:
    """An integer (a float without a fraction is accepted, as JSON writers produce 30.0); else a DatasetError."""
    whole = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not whole or value <= 0:
        raise DatasetError(f"{path}: {key} is {value!r}; it must be a positive integer (frames per second). Fix: "
                           "restore the file from the dataset's source")
    return int(value)


def _check_features(features: Any, path: Path) -> None:
    if not isinstance(features, dict) or not features:
        raise DatasetError(f"{path}: features is missing or empty. Fix: restore the file from the dataset's source")
    for key, feature in features.items():
        if not isinstance(feature, dict) or "dtype" not in feature or not isinstance(feature.get("shape"), list):
            raise DatasetError(f"{path}: feature '{key}' needs a dtype and a shape list, got {feature!r}. Fix: "
                               "restore the file from the dataset's source")
        feature["shape"] = tuple(feature["shape"])
        if "/" in key:
            raise DatasetError(f"{path}: feature name '{key}' contains '/', which the format forbids")


def read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    """A parquet file, or a DatasetError naming it when it is missing, truncated or corrupt."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing ({what}). Fix: re-download or restore the dataset")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path} is corrupt or truncated ({what}): {exc}. Fix: re-download or restore it") from None


def read_tasks(root: Path) -> list[str]:
    """Task texts by task_index (tasks.parquet stores them as a pandas index column)."""
    table = read_parquet(root / TASKS_PATH, "the task list")
    name = next((c for c in ("task", PANDAS_INDEX_COLUMN) if c in table.column_names), None)
    if name is None or "task_index" not in table.column_names:
        raise DatasetError(f"{root / TASKS_PATH} has no task/task_index columns")
    indices = table["task_index"].to_pylist()
    if sorted(indices) != list(range(len(indices))):
        raise DatasetError(f"{root / TASKS_PATH}: task_index values are not 0..{len(indices) - 1}, each once. Fix: "
                           "restore the file from the dataset's source")
    tasks = [""] * table.num_rows
    for index, text in zip(indices, table[name].to_pylist(), strict=True):
        tasks[index] = text
    return tasks


def read_episodes(root: Path, with_stats: bool = False) -> pa.Table:
    """Every row of meta/episodes/*/*.parquet, ordered by episode_index (per-episode stats dropped unless asked)."""
    files = [dataset_file(root, path.relative_to(root), "a meta/episodes file")
             for path in sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))]
    if not files:
        raise DatasetError(f"{root / EPISODES_DIR} holds no episode files. Fix: re-download or restore the dataset")
    tables = []
    for path in files:
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{path} is corrupt or truncated (episode metadata): {exc}. Fix: re-download or "
                               "restore it") from None
        columns = names if with_stats else [c for c in names if not c.startswith("stats/")]
        tables.append(read_parquet(path, "episode metadata", columns))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by("episode_index")
