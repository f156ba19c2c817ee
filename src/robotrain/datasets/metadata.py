"""LeRobotDatasetMetadata: info.json, stats.json, tasks and the per-episode table of a v3.0 dataset."""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robotrain.datasets.format import (
    CODEBASE_VERSION,
    EPISODES_DIR,
    INFO_KEYS,
    INFO_PATH,
    LEGACY_EPISODES_PATH,
    OPTIONAL_INFO_KEYS,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    chunk_file_path,
    is_camera,
)
from robotrain.datasets.hub import resolve_dataset_root

logger = logging.getLogger(__name__)

PANDAS_INDEX_COLUMN = "__index_level_0__"  # how pandas stores tasks.parquet's index (the task text)


def convert_command(root: Path) -> str:
    return f"robotrain dataset convert --root={root}"


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked: a v3.0 dataset with every required key (unknown keys ignored with a warning)."""
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
    if int(info["fps"]) <= 0:
        raise DatasetError(f"{path}: fps is {info['fps']}; it must be positive")
    for key, feature in info["features"].items():
        feature["shape"] = tuple(feature["shape"])
        if "/" in key:
            raise DatasetError(f"{path}: feature name '{key}' contains '/', which the format forbids")
    return info


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
    tasks = [""] * table.num_rows
    for index, text in zip(table["task_index"].to_pylist(), table[name].to_pylist(), strict=True):
        tasks[index] = text
    return tasks


def read_episodes(root: Path, with_stats: bool = False) -> pa.Table:
    """Every row of meta/episodes/*/*.parquet, ordered by episode_index (per-episode stats dropped unless asked)."""
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
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


class LeRobotDatasetMetadata:
    """The metadata of a LeRobot v3.0 dataset: features, fps, stats, tasks and episode boundaries."""

    def __init__(self, repo_id: str, root: str | Path | None = None, revision: str | None = None,
                 episodes: list[int] | None = None):
        self.repo_id = repo_id
        self.revision = revision
        self.root = resolve_dataset_root(repo_id, root, revision, episodes)
        self.info = read_info(self.root)
        self.tasks = read_tasks(self.root)
        self.episodes = read_episodes(self.root)
        if self.episodes.num_rows > self.total_episodes:
            # A writer stopped after writing an episode's rows but before committing it to info.json.
            logger.warning("%s: ignoring %d episode(s) past total_episodes=%d (an interrupted recording)",
                           self.root, self.episodes.num_rows - self.total_episodes, self.total_episodes)
            self.episodes = self.episodes.slice(0, self.total_episodes)
        self._check_episode_table()

    def _check_episode_table(self) -> None:
        n = self.episodes.num_rows
        if not np.array_equal(self.episodes["episode_index"].to_numpy(), np.arange(n)):
            raise DatasetError(f"{self.root / EPISODES_DIR}: episode indices are not 0..{n - 1} without gaps. "
                               "Fix: re-download or restore the dataset (`robotrain dataset validate` lists problems)")
        if n != self.info["total_episodes"]:
            raise DatasetError(f"{self.root}: info.json says {self.info['total_episodes']} episodes but meta/episodes "
                               f"holds {n}. Fix: re-download or restore the dataset (`robotrain dataset validate`)")

    @cached_property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        from robotrain.datasets.stats import stats_from_json

        path = self.root / STATS_PATH
        if not path.is_file():
            return {}
        return stats_from_json(json.loads(path.read_text()))

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def total_episodes(self) -> int:
        return int(self.info["total_episodes"])

    @property
    def total_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def total_tasks(self) -> int:
        return int(self.info["total_tasks"])

    @property
    def chunks_size(self) -> int:
        return int(self.info["chunks_size"])

    @property
    def data_path(self) -> str:
        return self.info["data_path"]

    @property
    def video_path(self) -> str | None:
        return self.info["video_path"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if is_camera(f)]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(f["shape"]) for k, f in self.features.items()}

    @property
    def names(self) -> dict[str, Any]:
        return {k: f.get("names") for k, f in self.features.items()}

    def episode_column(self, name: str) -> np.ndarray:
        """One column of the episode table as a numpy array (one value per episode, in episode order)."""
        if name not in self.episodes.column_names:
            raise DatasetError(f"{self.root / EPISODES_DIR}: column '{name}' is missing")
        return self.episodes[name].to_numpy()

    def get_data_file_path(self, episode_index: int) -> Path:
        row = self._row(episode_index)
        return self.root / chunk_file_path(self.data_path, row["data/chunk_index"], row["data/file_index"])

    def get_video_file_path(self, episode_index: int, video_key: str) -> Path:
        row = self._row(episode_index)
        assert self.video_path is not None
        return self.root / chunk_file_path(self.video_path, row[f"videos/{video_key}/chunk_index"],
                                           row[f"videos/{video_key}/file_index"], video_key=video_key)

    def _row(self, episode_index: int) -> dict[str, Any]:
        return self.episodes.slice(episode_index, 1).to_pylist()[0]

    def get_task_index(self, task: str) -> int | None:
        return self.tasks.index(task) if task in self.tasks else None

    def __repr__(self) -> str:
        return (f"LeRobotDatasetMetadata(repo_id={self.repo_id!r}, root={str(self.root)!r}, "
                f"episodes={self.total_episodes}, frames={self.total_frames}, fps={self.fps}, "
                f"features={list(self.features)})")
