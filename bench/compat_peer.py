"""Compatibility with the real LeRobot, both ways, on the same machine.

1. The peer (lerobot 0.4.4, ../shared/peer) writes a dataset; robotrain reads every item; both must agree.
2. robotrain writes a dataset; the peer reads every item; both must agree.
Agreement: every non-image value equal; camera pixels within --pixel_tol (both decode the same AV1 stream, with
different FFmpeg builds), padding masks and task strings equal. Prints a table; exit 1 on any mismatch.

Usage: python bench/compat_peer.py [--episodes 5 --frames 30] (builds the peer venv first if needed)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = REPO.parent / "shared" / "peer"
PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"


def ensure_peer() -> None:
    if not PEER_PYTHON.exists():
        subprocess.run(["bash", str(PEER_DIR / "setup_lerobot.sh")], check=True)


def robotrain_items(root: Path) -> dict[str, np.ndarray]:
    from robotrain.datasets import LeRobotDataset

    out: dict[str, np.ndarray] = {}
    plain = LeRobotDataset("peer/dump", root=root)
    fps = plain.fps
    delta = LeRobotDataset("peer/dump", root=root, delta_timestamps={"action": [-1 / fps, 0.0, 1 / fps, 2 / fps]})
    for name, ds in (("plain", plain), ("delta", delta)):
        for i in range(len(ds)):
            for key, value in ds[i].items():
                out[f"{name}/{i}/{key}"] = value.numpy() if isinstance(value, torch.Tensor) else np.array(value)
    return out


def peer_items(root: Path, work: Path) -> dict[str, np.ndarray]:
    out = work / f"{root.name}.npz"
    subprocess.run([str(PEER_PYTHON), str(REPO / "bench/peer_dump.py"), str(root), str(out)], check=True,
                   cwd=work, capture_output=True, text=True)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], pixel_tol: float) -> dict[str, float]:
    """Counts of compared values and the worst differences; raises on any key or value mismatch."""
    missing = sorted(set(theirs) ^ set(ours))
    if missing:
        raise AssertionError(f"keys differ between readers: {missing[:8]}")
    worst_pixel, worst_value, n_values = 0.0, 0.0, 0
    for key, theirs_value in theirs.items():
        mine = ours[key]
        if theirs_value.dtype.kind in "US":
            assert str(mine) == str(theirs_value), key
            continue
        assert mine.shape == theirs_value.shape, (key, mine.shape, theirs_value.shape)
        diff = float(np.abs(mine.astype(np.float64) - theirs_value.astype(np.float64)).max()) if mine.size else 0.0
        if "image" in key.split("/")[-1] and not key.endswith("_is_pad"):
            worst_pixel = max(worst_pixel, diff)
            assert diff <= pixel_tol, f"{key}: pixels differ by {diff}"
        else:
            worst_value = max(worst_value, diff)
            assert diff == 0.0, f"{key}: values differ by {diff}"
        n_values += mine.size
    return {"keys": len(theirs), "values": n_values, "max_pixel_diff": worst_pixel, "max_value_diff": worst_value}


def write_with_robotrain(root: Path, episodes: int, frames: int) -> None:
    """The same pusht-like content the peer's script writes, recorded with robotrain's writer."""
    from robotrain.datasets import LeRobotDataset

    size, rng = 96, np.random.default_rng(0)
    features = {
        "observation.image": {"dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["x", "y"]}},
        "action": {"dtype": "float32", "shape": [2], "names": {"motors": ["x", "y"]}},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    writer = LeRobotDataset.create("robotrain/pusht_synth", 10, features, root=root, robot_type="2d pointer")
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(episodes):
        pos, goal = rng.uniform(10, size - 10, 2), rng.uniform(10, size - 10, 2)
        for i in range(frames):
            act = pos + 0.15 * (goal - pos) + rng.normal(0, 1.0, 2)
            img = np.full((size, size, 3), 240, np.uint8)
            img[((yy - goal[1]) ** 2 + (xx - goal[0]) ** 2) < 64] = (60, 200, 60)
            img[((yy - pos[1]) ** 2 + (xx - pos[0]) ** 2) < 25] = (40, 40, 220)
            writer.add_frame({"observation.image": img, "observation.state": pos.astype(np.float32),
                              "action": act.astype(np.float32),
                              "next.reward": np.array([-np.linalg.norm(goal - pos) / 100], np.float32),
                              "next.done": np.array([i == frames - 1]), "task": "Push the T onto the target."})
            pos = np.clip(act, 0, size - 1)
        writer.save_episode()
    writer.finalize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--pixel_tol", type=float, default=2 / 255)
    args = parser.parse_args()
    ensure_peer()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peer_root, our_root = work / "peer_written", work / "robotrain_written"
        started = time.perf_counter()
        subprocess.run([str(PEER_PYTHON), str(PEER_DIR / "make_lerobot_dataset.py"), str(peer_root), "--episodes",
                        str(args.episodes), "--frames", str(args.frames)], check=True, capture_output=True, cwd=work)
        rows.append(("lerobot writes, robotrain reads", compare(robotrain_items(peer_root),
                                                                 peer_items(peer_root, work), args.pixel_tol)))
        write_with_robotrain(our_root, args.episodes, args.frames)
        rows.append(("robotrain writes, lerobot reads", compare(robotrain_items(our_root),
                                                                 peer_items(our_root, work), args.pixel_tol)))
        elapsed = time.perf_counter() - started
    print(f"{'direction':<34}{'keys':>8}{'values':>10}{'max value diff':>16}{'max pixel diff':>16}")
    for name, r in rows:
        print(f"{name:<34}{r['keys']:>8}{r['values']:>10}{r['max_value_diff']:>16.3g}{r['max_pixel_diff']:>16.4f}")
    print(f"both directions agree ({args.episodes} episodes x {args.frames} frames, {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
