"""Hand-written LeRobot v2.1 (or v2.0) datasets for the converter's tests: frames encode (episode, frame).

Laid out as LeRobot <= 0.3 wrote them: one parquet per episode (vectors as variable-length lists, with the Hugging
Face `datasets` schema metadata), one mp4 per episode and camera (frame i at i/fps), jsonl metadata and a v2.x
info.json. Nothing here goes through robotrain's writer, so the converter is tested against an independent layout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from robotrain.datasets.stats import aggregate_stats, compute_episode_stats, stats_to_json
from robotrain.datasets.video import encode_video

from .helpers import TASKS, gray

DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CAMERA = "observation.image"
V2_STAT_NAMES = ("min", "max", "mean", "std", "count")  # v2.x stats had no quantiles
_HF_TYPES = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}


def v2_features(fps: int, with_video: bool, size: tuple[int, int], version: str) -> dict:
    """info.json features: one camera (an mp4 per episode, or PNGs in the parquet), state, action, reward, done."""
    h, w = size
    camera = {"dtype": "video" if with_video else "image", "shape": [h, w, 3],
              "names": ["height", "width", "channels"]}
    if with_video:
        info = {"video.fps": fps, "video.height": h, "video.width": w, "video.channels": 3, "video.codec": "av1",
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "has_audio": False}
        camera["video_info" if version == "v2.0" else "info"] = info
    return {
        CAMERA: camera,
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["episode", "frame"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def episode_columns(episode: int, length: int, first_index: int, fps: int, size: tuple[int, int]) -> dict:
    """Every feature of one episode as arrays; the camera as (T, H, W, 3) uint8 flat frames of gray(episode, i)."""
    i = np.arange(length)
    return {
        CAMERA: np.stack([np.full((*size, 3), gray(episode, f), np.uint8) for f in i]),
        "observation.state": np.stack([np.full(length, episode), i], axis=1).astype(np.float32),
        "action": np.stack([episode * 100 + i, -i], axis=1).astype(np.float32),
        "next.reward": (i / length).astype(np.float32),
        "next.done": i == length - 1,
        "timestamp": (i / fps).astype(np.float32),
        "frame_index": i.astype(np.int64),
        "episode_index": np.full(length, episode, np.int64),
        "index": (first_index + i).astype(np.int64),
        "task_index": np.full(length, episode % 2, np.int64),
    }


def _png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _column(values: np.ndarray, feature: dict) -> tuple[pa.Array, dict]:
    """A v2.x parquet column and its `datasets` description (vectors as Sequence, images as Image)."""
    if feature["dtype"] == "image":
        array = pa.array([{"bytes": _png(f), "path": None} for f in values],
                         pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        return array, {"_type": "Image"}
    value = _HF_TYPES[feature["dtype"]]
    if feature["shape"] == [1]:
        return pa.array(values, value), {"dtype": feature["dtype"], "_type": "Value"}
    array = pa.array(values.tolist(), pa.list_(value))
    return array, {"feature": {"dtype": feature["dtype"], "_type": "Value"}, "length": feature["shape"][0],
                   "_type": "Sequence"}


def write_episode_parquet(path: Path, columns: dict, features: dict) -> None:
    arrays, described = {}, {}
    for key, feature in features.items():
        if feature["dtype"] != "video":
            arrays[key], described[key] = _column(columns[key], feature)
    table = pa.table(arrays).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": described}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _v2_stats(stats: dict) -> dict:
    return {key: {name: s[name] for name in V2_STAT_NAMES} for key, s in stats.items()}


def write_v21_dataset(root: Path, lengths: list[int], fps: int = 10, with_video: bool = True,
                      size: tuple[int, int] = (32, 48), version: str = "v2.1", chunks_size: int = 1000) -> Path:
    """A v2.1 dataset with one episode per entry of `lengths` (v2.0: meta/stats.json instead of episodes_stats).

    Episode e has task TASKS[e % 2], state [e, i], action [100 e + i, -i] and flat frames of gray(e, i). Without
    video the camera is an `image` feature (PNGs inside the parquet files).
    """
    root = Path(root)
    features = v2_features(fps, with_video, size, version)
    episodes, all_stats, first = [], [], 0
    for episode, length in enumerate(lengths):
        columns = episode_columns(episode, length, first, fps, size)
        chunk = episode // chunks_size
        write_episode_parquet(root / DATA_PATH.format(episode_chunk=chunk, episode_index=episode), columns, features)
        if with_video:
            path = root / VIDEO_PATH.format(episode_chunk=chunk, video_key=CAMERA, episode_index=episode)
            encode_video(iter(columns[CAMERA]), path, fps)
        all_stats.append(_v2_stats(compute_episode_stats(columns, features)))
        episodes.append({"episode_index": episode, "tasks": [TASKS[episode % 2]], "length": length})
        first += length
    tasks = TASKS[:min(len(lengths), len(TASKS))]
    _write_jsonl(root / "meta/episodes.jsonl", episodes)
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
    if version == "v2.0":
        (root / "meta/stats.json").write_text(json.dumps(stats_to_json(aggregate_stats(all_stats)), indent=4))
    else:
        _write_jsonl(root / "meta/episodes_stats.jsonl",
                     [{"episode_index": e, "stats": stats_to_json(s)} for e, s in enumerate(all_stats)])
    info = {
        "codebase_version": version, "robot_type": "test_bot", "total_episodes": len(lengths), "total_frames": first,
        "total_tasks": len(tasks), "total_videos": len(lengths) if with_video else 0,
        "total_chunks": (len(lengths) - 1) // chunks_size + 1, "chunks_size": chunks_size, "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if with_video else None, "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root
