"""The LeRobotDataset v3.0 on-disk format: paths, constants and the default features every dataset has.

<root>/meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/chunk-XXX/file-XXX.parquet,
data/chunk-XXX/file-XXX.parquet (many episodes per file), videos/<key>/chunk-XXX/file-XXX.mp4 (episodes
concatenated). Paths of data and video files always come from the templates in info.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from robotrain.errors import UserError

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


class DatasetError(UserError):
    """A dataset that cannot be read or written as asked: names the file (and episode) and the fix."""


def lerobot_home() -> Path:
    """$HF_LEROBOT_HOME, else $HF_HOME/lerobot, else ~/.cache/huggingface/lerobot (as LeRobot resolves it)."""
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return hf_home / "lerobot"


def chunk_file_path(template: str, chunk_index: int, file_index: int, **keys: Any) -> str:
    return template.format(chunk_index=chunk_index, file_index=file_index, **keys)


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The file after (chunk, file): a new chunk directory once one holds `chunks_size` files."""
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


def is_camera(feature: dict[str, Any]) -> bool:
    return feature["dtype"] in ("image", "video")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=4) + "\n")
    os.replace(tmp, path)
