"""Time recording N short episodes (96x96 video + state) into one file and count the bytes written.

    python bench/writer_io.py --episodes 200 --frames 20

Bytes written come from /proc/self/io (write_bytes: what this process sent to the block layer, including page-cache
writes later flushed) and rchar/wchar (every write() call, cached or not). Not a test: prints one line.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def io_counters() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {k: int(v) for k, v in fields.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--vcodec", default="libsvtav1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from robotrain.datasets import LeRobotDataset

    features = {
        "observation.image": {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
    }
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (args.frames, 96, 96, 3), dtype=np.uint8)  # non-trivial frames to encode
    root = Path(tempfile.mkdtemp()) / "ds"
    before, start = io_counters(), time.perf_counter()
    writer = LeRobotDataset.create("bench/io", 10, features, root=root, vcodec=args.vcodec)
    for episode in range(args.episodes):
        for i in range(args.frames):
            writer.add_frame({"observation.image": np.roll(noise[i], episode, axis=0),
                              "observation.state": np.array([episode, i], np.float32),
                              "action": np.array([i, -i], np.float32), "task": "bench"})
        writer.save_episode()
    writer.finalize()
    seconds, after = time.perf_counter() - start, io_counters()
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    files = sum(1 for p in root.rglob("*") if p.is_file())
    print(f"{args.episodes} episodes x {args.frames} frames: {seconds:.1f} s, "
          f"wchar {(after['wchar'] - before['wchar']) / 1e6:.1f} MB, "
          f"write_bytes {(after['write_bytes'] - before['write_bytes']) / 1e6:.1f} MB, "
          f"dataset {on_disk / 1e6:.1f} MB in {files} files")
    len(LeRobotDataset("bench/io", root=root))  # it loads
    shutil.rmtree(root.parent)


if __name__ == "__main__":
    main()
