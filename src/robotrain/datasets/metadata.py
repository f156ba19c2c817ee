"""LeRobotDatasetMetadata: info.json, stats.json, tasks and the per-episode table of a v3.0 dataset."""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from robotrain.datasets.format import (
    EPISODES_DIR,
    STATS_PATH,
    DatasetError,
    chunk_file_path,
    dataset_file,
    is_camera,
    read_episodes,
    read_info,
    read_tasks,
)
from robotrain.datasets.hub import DatasetLocation

logger = logging.getLogger(__name__)

class LeRobotDatasetMetadata:
    """The metadata of a LeRobot v3.0 dataset: features, fps, stats, tasks and episode boundaries."""

    def __init__(self, repo_id: str, root: str | Path | None = None, revision: str | None = None,
                 episodes: list[int] | None = None):
        self.repo_id = repo_id
        self.revision = revision
        self.root = DatasetLocation(repo_id, root, revision).resolve(episodes)
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
        try:
            return stats_from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            raise DatasetError(f"{path} is damaged ({type(exc).__name__}: {exc}). Fix: restore it from the dataset's "
                               "source, or delete it (`robotrain dataset validate` checks the rest)") from None

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

    def data_file(self, chunk_index: int, file_index: int) -> Path:
        """The data file at (chunk, file), checked to lie inside the dataset folder."""
        return dataset_file(self.root, chunk_file_path(self.data_path, chunk_index, file_index), "info.json data_path")

    def get_data_file_path(self, episode_index: int) -> Path:
        row = self._row(episode_index)
        return self.data_file(row["data/chunk_index"], row["data/file_index"])

    def get_video_file_path(self, episode_index: int, video_key: str) -> Path:
        row = self._row(episode_index)
        assert self.video_path is not None
        relative = chunk_file_path(self.video_path, row[f"videos/{video_key}/chunk_index"],
                                   row[f"videos/{video_key}/file_index"], video_key=video_key)
        return dataset_file(self.root, relative, "info.json video_path")

    def _row(self, episode_index: int) -> dict[str, Any]:
        return self.episodes.slice(episode_index, 1).to_pylist()[0]

    def get_task_index(self, task: str) -> int | None:
        return self.tasks.index(task) if task in self.tasks else None

    def __repr__(self) -> str:
        return (f"LeRobotDatasetMetadata(repo_id={self.repo_id!r}, root={str(self.root)!r}, "
                f"episodes={self.total_episodes}, frames={self.total_frames}, fps={self.fps}, "
                f"features={list(self.features)})")
