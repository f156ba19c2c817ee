"""Small real datasets written with robotrain's writer: frames encode (episode, frame) so reads can be checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robotrain.datasets.dataset import LeRobotDataset

H, W = 32, 48
TASKS = ["push the block", "lift the cube"]


def gray(episode: int, frame: int) -> int:
    """The flat gray level of a frame: distinct per frame, far from neighbours (robust to lossy video)."""
    return 20 + (episode * 53 + frame * 11) % 210


def features(camera_dtype: str = "video") -> dict:
    return {
        "observation.image": {"dtype": camera_dtype, "shape": [H, W, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["episode", "frame"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }


def frame(episode: int, i: int, length: int) -> dict:
    return {
        "observation.image": np.full((H, W, 3), gray(episode, i), np.uint8),
        "observation.state": np.array([episode, i], np.float32),
        "action": np.array([episode * 100 + i, -i], np.float32),
        "next.reward": np.array([i / length], np.float32),
        "next.done": np.array([i == length - 1]),
        "task": TASKS[episode % 2],
    }


def record(root: Path, lengths: list[int], fps: int = 10, use_videos: bool = True, **options) -> Path:
    """A dataset with one episode per entry of `lengths`."""
    writer = LeRobotDataset.create("test/synthetic", fps, features(), root=root, use_videos=use_videos, **options)
    for episode, length in enumerate(lengths):
        for i in range(length):
            writer.add_frame(frame(episode, i, length))
        writer.save_episode()
    writer.finalize()
    return root
