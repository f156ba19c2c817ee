"""Training-step and select_action speed of robotrain's policies against LeRobot 0.4.4, on CPU.

Both sides: default config of each policy with pretrained backbone weights off, one 96x96 camera + 2-D state and a
2-D action (PushT's shapes), batch 8, the policy's own optimizer preset, gradient clipping at the preset's norm,
the same number of torch threads, and the same timing code (Runner in bench/peer_policy_step.py). LeRobot runs in
its own venv as a subprocess that serves timing requests, and the two sides take turns step by step, so load from
other processes on a shared machine hits both alike; the ratio column is the median of the per-pair ratios.
A step is forward + backward + clipping + optimizer step; select_action is timed right after reset(), so it
includes a full chunk prediction (batch 1). robotrain normalizes inside the policy, so its step also pays for the
normalization that LeRobot does in processors outside it.

Usage: python bench/policy_step.py [--policies act,diffusion,tdmpc,vqbet --batch 8 --warmup 3 --steps 10 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_policy_step import OVERRIDES, Runner, make_batch  # noqa: E402

PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"


def make_config(policy_type: str):
    """The policy's default config for PushT-like features, pretrained weights off."""
    import robotrain.policies  # noqa: F401  (registers every policy config)
    from robotrain.configs.policies import PolicyConfig
    from robotrain.configs.types import FeatureType, PolicyFeature

    config_class = PolicyConfig.get_choice_class(policy_type)
    options = {"device": "cpu", **OVERRIDES.get(policy_type, {})}
    if "pretrained_backbone_weights" in config_class.__dataclass_fields__:
        options["pretrained_backbone_weights"] = None
    config = config_class(**options)
    config.input_features = {"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                             "observation.state": PolicyFeature(FeatureType.STATE, (2,))}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (2,))}
    config.validate()
    return config


def neutral_stats(config) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics that leave values as they are (mean 0 / std 1, min -1 / max 1), for every feature."""
    stats = {}
    for key, feature in {**config.input_features, **config.output_features}.items():
        shape = (feature.shape[0], 1, 1) if len(feature.shape) == 3 else tuple(feature.shape)
        stats[key] = {"mean": torch.zeros(shape), "std": torch.ones(shape),
                      "min": -torch.ones(shape), "max": torch.ones(shape)}
    return stats


def our_runner(policy_type: str, batch_size: int) -> tuple[Runner, int]:
    """robotrain's policy at its default config for PushT-like features, and its parameter count."""
    from robotrain.policies.factory import get_policy_class

    policy_cls = get_policy_class(policy_type)
    torch.manual_seed(0)
    config = make_config(policy_type)
    policy = policy_cls(config)
    policy.load_stats(neutral_stats(config))
    preset = config.get_optimizer_preset()
    runner = Runner(policy, preset.build(policy.get_optim_params()), preset.grad_clip_norm,
                    make_batch(config, batch_size))
    return runner, sum(p.numel() for p in policy.parameters())


class PeerProcess:
    """LeRobot's side: bench/peer_policy_step.py running in the peer venv, answering `train N` / `infer N`."""

    def __init__(self, policy_type: str, args: argparse.Namespace):
        command = [str(PEER_PYTHON), str(Path(__file__).with_name("peer_policy_step.py")), policy_type,
                   "--batch", str(args.batch), "--threads", str(args.threads)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.params = self._read()["params"]

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the peer exited with code {self.process.wait()}")
        return json.loads(line)

    def train(self, n: int) -> list[tuple[float, float]]:
        self.process.stdin.write(f"train {n}\n")
        self.process.stdin.flush()
        return self._read()

    def infer(self, n: int) -> list[float]:
        self.process.stdin.write(f"infer {n}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def take_turns(ours, peer, method: str, steps: int) -> tuple[list, list]:
    """Alternate single calls (who goes first alternates too) so both sides see the same background load."""
    mine, theirs = [], []
    for i in range(steps):
        first, second = (ours, peer) if i % 2 == 0 else (peer, ours)
        a, b = getattr(first, method)(1)[0], getattr(second, method)(1)[0]
        mine.append(a if first is ours else b)
        theirs.append(b if first is ours else a)
    return mine, theirs


def measure(policy_type: str, args: argparse.Namespace) -> dict:
    """Timings of both sides for one policy; sides that are unavailable are reported as such."""
    try:
        ours, n_params = our_runner(policy_type, args.batch)
    except (ImportError, AttributeError) as exc:
        return {"error": f"not available ({type(exc).__name__}: {exc})"}
    ours.train(args.warmup)
    ours.infer(1)
    if args.skip_peer or not PEER_PYTHON.exists():
        train = ours.train(args.steps)
        infer = ours.infer(args.infer_steps)
        return {"params": n_params, "step_s": statistics.median(w for w, _ in train),
                "select_action_s": statistics.median(infer)}
    peer = PeerProcess(policy_type, args)
    try:
        peer.train(args.warmup)
        peer.infer(1)
        train, peer_train = take_turns(ours, peer, "train", args.steps)
        infer, peer_infer = take_turns(ours, peer, "infer", args.infer_steps)
    finally:
        peer.close()
    return {"params": n_params, "peer_params": peer.params,
            "step_s": statistics.median(w for w, _ in train),
            "peer_step_s": statistics.median(w for w, _ in peer_train),
            "ratio": statistics.median(a[0] / b[0] for a, b in zip(train, peer_train, strict=True)),
            "min_ratio": min(w for w, _ in train) / min(w for w, _ in peer_train),
            "cpu_ratio": statistics.median(c for _, c in train) / statistics.median(c for _, c in peer_train),
            "select_action_s": statistics.median(infer), "peer_select_action_s": statistics.median(peer_infer),
            "select_ratio": statistics.median(a / b for a, b in zip(infer, peer_infer, strict=True))}


def table_row(policy_type: str, r: dict) -> list[str]:
    def ms(key: str) -> str:
        return f"{r[key] * 1000:.0f} ms" if key in r else "-"

    def x(key: str) -> str:
        return f"{r[key]:.2f}x" if key in r else "-"

    return [policy_type, f"{r['params']:,}", f"{r['peer_params']:,}" if "peer_params" in r else "-",
            ms("step_s"), ms("peer_step_s"), x("ratio"), x("min_ratio"), x("cpu_ratio"),
            ms("select_action_s"), ms("peer_select_action_s"), x("select_ratio")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="act,diffusion,tdmpc,vqbet")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--infer_steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip_peer", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"medians of {args.steps} alternating steps after {args.warmup} warm-up")
    header = ("policy", "params robotrain", "params LeRobot", "step robotrain", "step LeRobot", "ratio",
              "min-step ratio", "cpu ratio", "select_action robotrain", "select_action LeRobot", "ratio")
    print(" | ".join(header))
    mismatched = False
    for policy_type in args.policies.split(","):
        result = measure(policy_type, args)
        if "error" in result:
            print(f"{policy_type} | {result['error']}")
            continue
        mismatched |= "peer_params" in result and result["peer_params"] != result["params"]
        print(" | ".join(table_row(policy_type, result)), flush=True)
    if mismatched:
        print("parameter counts differ from LeRobot's")
        sys.exit(1)


if __name__ == "__main__":
    main()
