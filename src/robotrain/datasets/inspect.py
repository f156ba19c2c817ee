"""`robotrain dataset info`: a human summary of a dataset (counts, tasks, features, size, stats)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotrain.datasets.format import STATS_PATH, read_episodes
from robotrain.datasets.metadata import LeRobotDatasetMetadata
from robotrain.datasets.stats import SKIPPED_DTYPES
from robotrain.files import human_bytes

logger = logging.getLogger(__name__)

MAX_TASKS_SHOWN = 10
MAX_NAMES_CHARS = 60


# ---- info ------------------------------------------------------------------------------------------------
@dataclass
class InfoConfig:
    """Which dataset `robotrain dataset info` summarizes."""

    repo_id: str
    """Dataset id, e.g. lerobot/pusht: a folder under $HF_LEROBOT_HOME, or a Hub repo when online."""
    root: Path | None = None
    """Local folder holding the dataset; overrides the cache lookup (works offline)."""



def dataset_summary(cfg: InfoConfig) -> str:
    """A multi-line human summary: sizes, episode lengths, tasks, features, disk use and which stats exist."""
    meta = LeRobotDatasetMetadata(cfg.repo_id, cfg.root)
    table = read_episodes(meta.root, with_stats=True)
    lines = _overview_lines(meta) + _task_lines(meta) + _feature_lines(meta)
    lines += [_disk_line(meta.root), _stats_line(meta, table.column_names)]
    return "\n".join(lines)


def _overview_lines(meta: LeRobotDatasetMetadata) -> list[str]:
    """The header: repo, root, version, fps, robot, counts, duration and episode lengths."""
    lengths = meta.episode_column("length")
    seconds = round(meta.total_frames / meta.fps)
    rows = [
        ("codebase version", meta.info["codebase_version"]),
        ("fps", str(meta.fps)),
        ("robot type", meta.robot_type or "unknown"),
        ("episodes", str(meta.total_episodes)),
        ("frames", str(meta.total_frames)),
        ("duration", f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"),
    ]
    if len(lengths):
        rows.append(("episode length", f"min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()} frames"))
    return [f"{meta.repo_id}  ({meta.root})"] + [f"  {name:<18} {value}" for name, value in rows]


def _task_lines(meta: LeRobotDatasetMetadata) -> list[str]:
    """Task count, then up to MAX_TASKS_SHOWN texts with the number of episodes using each."""
    per_task = Counter(task for tasks in meta.episodes["tasks"].to_pylist() for task in tasks or [])
    lines = [f"tasks ({len(meta.tasks)})"]
    for index, task in enumerate(meta.tasks[:MAX_TASKS_SHOWN]):
        count = per_task.get(task, 0)
        lines.append(f"  [{index}] {task!r}  ({count} episode{'s' if count != 1 else ''})")
    if len(meta.tasks) > MAX_TASKS_SHOWN:
        lines.append(f"  ... and {len(meta.tasks) - MAX_TASKS_SHOWN} more")
    return lines


def _feature_lines(meta: LeRobotDatasetMetadata) -> list[str]:
    """A table of features: name, dtype, shape, and names or video codec and size."""
    rows = [("name", "dtype", "shape", "names / video")]
    for key, feature in meta.features.items():
        rows.append((key, feature["dtype"], str(list(feature["shape"])), _feature_details(feature)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"features ({len(meta.features)})"]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*padded, row[3]]))
    return [line.rstrip() for line in lines]


def _feature_details(feature: dict[str, Any]) -> str:
    """A video's codec and resolution, else the feature's dimension names (shortened)."""
    video = feature.get("info") or {}
    if feature["dtype"] == "video" and video:
        return (f"{video.get('video.codec', '?')} {video.get('video.width', '?')}x{video.get('video.height', '?')} "
                f"{video.get('video.pix_fmt', '')}").rstrip()
    names = feature.get("names")
    if names is None:
        return ""
    text = ", ".join(flatten_names(names))
    return text if len(text) <= MAX_NAMES_CHARS else text[:MAX_NAMES_CHARS - 3] + "..."


def flatten_names(names: Any) -> list[str]:
    """info.json "names" (a list, nested lists, or a dict of lists as in v2 datasets) as flat strings."""
    if isinstance(names, dict):
        return [name for value in names.values() for name in flatten_names(value)]
    if isinstance(names, (list, tuple)):
        return [name for value in names for name in flatten_names(value)]
    return [str(names)]


def _disk_line(root: Path) -> str:
    """Bytes on disk under data/, videos/ and meta/."""
    sizes = {part: sum(p.stat().st_size for p in (root / part).rglob("*") if p.is_file())
             for part in ("data", "videos", "meta")}
    detail = ", ".join(f"{part} {human_bytes(size)}" for part, size in sizes.items())
    return f"size on disk   {human_bytes(sum(sizes.values()))}  ({detail})"


def _stats_line(meta: LeRobotDatasetMetadata, episode_columns: list[str]) -> str:
    """How many features stats.json and the per-episode stats cover."""
    wanted = [k for k, f in meta.features.items() if f["dtype"] not in SKIPPED_DTYPES]
    path = meta.root / STATS_PATH
    try:
        in_json = set(json.loads(path.read_text())) if path.is_file() else set()
    except (json.JSONDecodeError, UnicodeDecodeError):
        in_json = set()
    per_episode = {c[len("stats/"):].rpartition("/")[0] for c in episode_columns if c.startswith("stats/")}
    in_file = f"{len(in_json & set(wanted))} of {len(wanted)} features" if path.is_file() else "missing"
    episode_stats = f"{len(per_episode & set(wanted))} of {len(wanted)} features"
    return f"stats          stats.json: {in_file}; per-episode: {episode_stats}"
