"""Run with the LeRobot peer's Python: load a dataset with `lerobot` and dump every item to an .npz file.

Usage: <peer python> bench/peer_dump.py ROOT OUT.npz [--write-from OTHER.npz]
Keys in the npz: "<index>/<feature>" for every tensor of every item, "<index>/task" as a 0-d string array, plus
the same for one delta-timestamp query per item under "delta/<index>/<feature>".
"""

import argparse

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("out")
args = parser.parse_args()

out = {}
plain = LeRobotDataset("peer/dump", root=args.root)
fps = plain.fps
delta = LeRobotDataset("peer/dump", root=args.root, delta_timestamps={"action": [-1 / fps, 0.0, 1 / fps, 2 / fps]})
for name, ds in (("plain", plain), ("delta", delta)):
    for i in range(len(ds)):
        for key, value in ds[i].items():
            if isinstance(value, torch.Tensor):
                out[f"{name}/{i}/{key}"] = value.numpy()
            elif isinstance(value, str):
                out[f"{name}/{i}/{key}"] = np.array(value)
np.savez(args.out, **out)
print(f"dumped {len(plain)} items from {args.root}")
