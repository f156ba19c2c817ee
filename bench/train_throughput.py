"""Training throughput and peak memory: `robotrain train` against the peer's `lerobot-train`, same everything.

Both tools train the same policy config at the same batch size on the same LeRobot v3.0 dataset (a PushT-shaped
96x96 video dataset written here, or --root), each with its own default data loading. Samples/s are measured between
the log line of step `--warmup` and the last step (model building, caching and the first steps excluded); peak RSS
is the largest sum over the process tree (trainer + data workers), sampled every 50 ms.

    python bench/train_throughput.py [--policies act diffusion] [--steps 30] [--warmup 5] [--batch_size 8]
                                     [--amp none|robotrain|both] [--root DIR --repo_id ID]

--amp robotrain trains robotrain with bf16 autocast (--policy.use_amp=true) against LeRobot in fp32, its default;
--amp both turns it on for both (LeRobot autocasts to bf16 on CPU too). Rows say which.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", Path.home() / ".cache/lerobot-peer/venv")) / "bin" / "python"
STEP_LINE = re.compile(r"step:(\d+)\s")
POLICY_FLAGS = {
    # Pretrained ImageNet weights cannot be downloaded here; both sides train the backbone from scratch.
    "act": ["--policy.type=act", "--policy.pretrained_backbone_weights=null"],
    "diffusion": ["--policy.type=diffusion", "--policy.horizon=16", "--policy.n_action_steps=8",
                  "--policy.crop_shape=[84,84]", "--policy.use_group_norm=true",
                  "--policy.pretrained_backbone_weights=null"],
}


def make_dataset(root: Path, episodes: int = 20, length: int = 100) -> Path:
    """A PushT-shaped dataset: 96x96 camera (AV1), 2-D state and action, 10 fps."""
    from robotrain.datasets.dataset import LeRobotDataset

    features = {
        "observation.image": {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    }
    rng = np.random.default_rng(0)
    writer = LeRobotDataset.create("bench/pusht_like", 10, features, root=root)
    for _ in range(episodes):
        for t in range(length):
            image = np.full((96, 96, 3), 40, np.uint8)
            x, y = (np.sin(t / 10) + 1) * 40, (np.cos(t / 13) + 1) * 40
            image[int(y):int(y) + 16, int(x):int(x) + 16] = (220, 60, 60)
            writer.add_frame({"observation.image": image, "observation.state": np.array([x, y], np.float32),
                              "action": (np.array([x, y]) + rng.normal(0, 1, 2)).astype(np.float32),
                              "task": "push the block"})
        writer.save_episode()
    writer.finalize()
    return root


class PeakRss:
    """Largest total resident memory of a process and its descendants."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            parent = frontier.pop()
            try:
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            except OSError:
                continue
            pids += [int(c) for c in children]
            frontier += [int(c) for c in children]
        return pids

    def _poll(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(command: list[str], warmup: int, steps: int, batch_size: int, env: dict[str, str]) -> tuple[float, int]:
    """(samples/s after warmup, peak RSS bytes) of one training command."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    rss = PeakRss(process.pid)
    times: dict[int, float] = {}
    tail: list[str] = []
    for line in process.stdout:
        tail = (tail + [line])[-30:]
        match = STEP_LINE.search(line)
        if match:
            times[int(match.group(1))] = time.perf_counter()
    process.wait()
    peak = rss.stop()
    if process.returncode != 0 or warmup not in times or steps not in times:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{''.join(tail)}")
    return (steps - warmup) * batch_size / (times[steps] - times[warmup]), peak


def commands(policy: str, root: Path, out: Path, steps: int, warmup: int, batch_size: int, amp: str,
             repo_id: str) -> dict[str, list[str]]:
    common = [*POLICY_FLAGS[policy], f"--dataset.repo_id={repo_id}", f"--dataset.root={root}",
              f"--steps={steps}", f"--batch_size={batch_size}", f"--log_freq={warmup}", "--save_checkpoint=false",
              "--eval_freq=0", "--wandb.enable=false", "--policy.device=cpu", "--seed=1000"]
    ours = ["--policy.use_amp=true"] if amp in ("robotrain", "both") else []
    theirs = ["--policy.use_amp=true"] if amp == "both" else []
    return {
        "robotrain": [sys.executable, "-m", "robotrain", "train", *common, *ours, f"--output_dir={out / 'robotrain'}"],
        "lerobot": [str(PEER_PYTHON), "-m", "lerobot.scripts.lerobot_train", *common, *theirs,
                    "--policy.push_to_hub=false", f"--output_dir={out / 'lerobot'}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["act", "diffusion"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--root", type=Path, default=None, help="an existing dataset (default: a PushT-like one)")
    parser.add_argument("--repo_id", default="bench/pusht_like", help="the repo id of --root")
    parser.add_argument("--amp", choices=["none", "robotrain", "both"], default="none",
                        help="bf16 autocast for robotrain only, or for both tools")
    args = parser.parse_args()
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (both tools log every --warmup steps)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.root or make_dataset(tmp / "dataset")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_LEROBOT_HOME": str(tmp / "lerobot_home"),
               "ROBOTRAIN_CACHE_DIR": str(tmp / "robotrain_cache"), "WANDB_MODE": "disabled"}
        print(f"{'policy':<10} {'tool':<10} {'samples/s':>10} {'peak RSS':>10}")
        for policy in args.policies:
            results = {}
            for tool, command in commands(policy, root, tmp / policy, args.steps, args.warmup, args.batch_size,
                                          args.amp, args.repo_id).items():
                results[tool] = run(command, args.warmup, args.steps, args.batch_size, env)
                bf16 = "--policy.use_amp=true" in command
                print(f"{policy:<10} {tool:<10} {results[tool][0]:>10.2f} {results[tool][1] / 2**30:>8.2f} GiB"
                      f"  {'bf16' if bf16 else 'fp32'}", flush=True)
            speed = results["robotrain"][0] / results["lerobot"][0]
            memory = results["robotrain"][1] / results["lerobot"][1]
            print(f"{policy:<10} {'ratio':<10} {speed:>9.2f}x {memory:>9.2f}x   (goals, CPU: ACT >= 2x at 96x96 and "
                  ">= 1.5x at 480x640, Diffusion >= 3x; <= 1.0x memory)")


if __name__ == "__main__":
    main()
