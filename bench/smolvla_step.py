"""SmolVLA training-step time and memory, robotrain against LeRobot 0.4.4, on CPU, with no download.

Both sides build the same SmolVLA from the same local backbone folder (written here: config.json, a byte-level
tokenizer, and random weights when the VLM is loaded in bfloat16), PushT's shapes (one 96x96 camera, 2-D state and
action, the task text), SmolVLA's defaults otherwise (chunk 50, 512x512 resize-with-pad, frozen VLM, expert and
state projection trained), its AdamW preset and gradient clipping at 10. Configs:
    tiny       the built-in tiny backbone (2 vision layers, 4 text layers), float32
    real       SmolVLM2-500M's published sizes (SigLIP 768x12 at 512px, text 960 wide, first 16 layers), random
               weights, float32 (load_vlm_weights=false, LeRobot's dtype for that)
    real-bf16  the same sizes with load_vlm_weights=true: LeRobot then runs the VLM and the expert in bfloat16
               (fine-tuning lerobot/smolvla_base does this), and so does robotrain on CPUs with native bfloat16
Each side runs in its own process (LeRobot in the peer venv) serving timing requests; they take turns step by step,
so load from other processes hits both alike; with one thread, the CPU time of a step (also printed) is the
steadier measure on a machine shared with other jobs. A step is forward + backward + clipping + AdamW step. LeRobot
gets its batch already through its preprocessor (tokenized, normalized), which its training loop runs outside the
step; robotrain tokenizes (cached) and normalizes inside. Memory: the peak resident set during the timed steps (VmHWM
after resetting it), model and optimizer state included.
Frames: `new` gives every step camera frames never seen before (the first epoch; robotrain's image cache misses
and encodes each frame alone), `seen` repeats one batch (later epochs: with the VLM frozen, robotrain takes the
image tokens from its cache, --policy.image_cache_gb). LeRobot encodes every frame every time in both.

Usage: python bench/smolvla_step.py [--configs tiny,real,real-bf16 --frames new,seen --batch 1 --warmup 1 --steps 3
                                     --threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"
TASK = "Push the T-shaped block onto the target."
FEATURES = {"observation.image": ("VISUAL", (3, 96, 96)), "observation.state": ("STATE", (2,)),
            "action": ("ACTION", (2,))}
# SmolVLM2-500M-Video-Instruct's published sizes, cut to the 16 text layers SmolVLA keeps.
REAL_BACKBONE = {
    "scale_factor": 4, "image_token_id": 4,
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 512, "patch_size": 16},
    "text_config": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 16, "num_attention_heads": 15,
                    "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280, "max_position_embeddings": 8192},
}


def write_backbone(folder: Path, config: str) -> None:
    """The backbone folder both sides read (and random bfloat16 weights for real-bf16)."""
    from robotrain.policies.smolvla.vlm import write_tiny_backbone

    write_tiny_backbone(folder, REAL_BACKBONE if config.startswith("real") else None)
    if config == "real-bf16":
        from transformers import AutoConfig, SmolVLMForConditionalGeneration

        torch.manual_seed(0)
        model = SmolVLMForConditionalGeneration(AutoConfig.from_pretrained(folder)).to(torch.bfloat16)
        model.save_pretrained(folder)


def make_batch(batch: int, chunk: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"observation.image": torch.rand(batch, 3, 96, 96, generator=gen),
            "observation.state": torch.randn(batch, 2, generator=gen),
            "action": torch.randn(batch, chunk, 2, generator=gen),
            "action_is_pad": torch.zeros(batch, chunk, dtype=torch.bool), "task": [TASK] * batch}


def neutral_stats() -> dict:
    out = {}
    for key, (_, shape) in FEATURES.items():
        shape = (shape[0], 1, 1) if len(shape) == 3 else shape
        out[key] = {"mean": torch.zeros(shape), "std": torch.ones(shape), "min": -torch.ones(shape),
                    "max": torch.ones(shape), "count": torch.tensor([100.0])}
    return out


def build_robotrain(backbone: str, load_vlm_weights: bool, batch: int):
    from robotrain.configs.types import FeatureType, PolicyFeature
    from robotrain.policies.smolvla.configuration import SmolVLAConfig
    from robotrain.policies.smolvla.modeling import SmolVLAPolicy

    features = {k: PolicyFeature(FeatureType[t], s) for k, (t, s) in FEATURES.items()}
    config = SmolVLAConfig(input_features={k: f for k, f in features.items() if k != "action"},
                           output_features={"action": features["action"]}, vlm_model_name=backbone,
                           load_vlm_weights=load_vlm_weights, device="cpu")
    policy = SmolVLAPolicy(config)
    policy.load_stats(neutral_stats())
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    return policy, optimizer, make_batch(batch, config.chunk_size)


def build_lerobot(backbone: str, load_vlm_weights: bool, batch: int):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    features = {k: PolicyFeature(FeatureType[t], s) for k, (t, s) in FEATURES.items()}
    config = SmolVLAConfig(input_features={k: f for k, f in features.items() if k != "action"},
                           output_features={"action": features["action"]}, vlm_model_name=backbone,
                           load_vlm_weights=load_vlm_weights, device="cpu", push_to_hub=False)
    policy = SmolVLAPolicy(config)
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=neutral_stats())
    preset = config.get_optimizer_preset()
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=preset.lr, betas=preset.betas, eps=preset.eps,
                                  weight_decay=preset.weight_decay)
    return policy, optimizer, preprocessor(make_batch(batch, config.chunk_size))


def serve(side: str, backbone: str, load_vlm_weights: bool, batch: int, threads: int, new_frames: bool) -> None:
    """Build one side, then answer `train N` (wall seconds per step) and `memory` (peak RSS in MiB) on stdin."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    build = build_robotrain if side == "robotrain" else build_lerobot
    protocol, sys.stdout = sys.stdout, sys.stderr  # LeRobot prints while it builds: keep stdout for answers
    policy, optimizer, data = build(backbone, load_vlm_weights, batch)
    sys.stdout = protocol
    policy.train()
    print(json.dumps({"params": sum(p.numel() for p in policy.parameters())}), flush=True)
    frames = torch.Generator().manual_seed(1)
    for line in sys.stdin:
        command, *arg = line.split()
        if command == "train":
            times = []
            for _ in range(int(arg[0])):
                if new_frames:  # drawn outside the timed part
                    data["observation.image"] = torch.rand(data["observation.image"].shape, generator=frames)
                start, start_cpu = time.perf_counter(), time.process_time()
                loss, _ = policy.forward(data)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append((time.perf_counter() - start, time.process_time() - start_cpu))
            print(json.dumps(times), flush=True)
        elif command == "reset_peak":
            Path("/proc/self/clear_refs").write_text("5")
            print("[]", flush=True)
        elif command == "memory":
            status = Path("/proc/self/status").read_text().split("\n")
            peak = next(int(s.split()[1]) for s in status if s.startswith("VmHWM"))
            print(json.dumps(peak / 1024), flush=True)


class Side:
    def __init__(self, python: str, side: str, backbone: Path, config: str, frames: str, args: argparse.Namespace):
        command = [python, __file__, "--serve", side, "--backbone", str(backbone), "--batch", str(args.batch),
                   "--threads", str(args.threads), "--frames", frames]
        command += ["--load-vlm-weights"] if config == "real-bf16" else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_VERBOSITY": "error"}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.params = json.loads(self._read())["params"]

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a benchmark process died (exit {self.proc.wait()})")
        return line

    def ask(self, command: str):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench(config: str, frames: str, args: argparse.Namespace, root: Path) -> dict:
    backbone = root / config
    if not backbone.exists():
        write_backbone(backbone, config)
    ours = Side(sys.executable, "robotrain", backbone, config, frames, args)
    theirs = Side(str(PEER_PYTHON), "lerobot", backbone, config, frames, args)
    try:
        for side in (ours, theirs):
            side.ask(f"train {args.warmup}")
            side.ask("reset_peak")
        pairs = [(ours.ask("train 1")[0], theirs.ask("train 1")[0]) for _ in range(args.steps)]
        memory = ours.ask("memory"), theirs.ask("memory")
    finally:
        ours.close()
        theirs.close()

    def median_ms(side: int, clock: int) -> float:
        return 1e3 * statistics.median(p[side][clock] for p in pairs)

    return {"config": config, "params": (ours.params, theirs.params),
            "step_ms": (median_ms(0, 0), median_ms(1, 0)), "ratio": statistics.median(a[0] / b[0] for a, b in pairs),
            "cpu_ms": (median_ms(0, 1), median_ms(1, 1)), "cpu_ratio": statistics.median(a[1] / b[1] for a, b in pairs),
            "peak_mib": memory, "memory_ratio": memory[0] / memory[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,real,real-bf16")
    parser.add_argument("--frames", default="new,seen")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", choices=("robotrain", "lerobot"))
    parser.add_argument("--backbone")
    parser.add_argument("--load-vlm-weights", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.backbone, args.load_vlm_weights, args.batch, args.threads, args.frames == "new")
        return
    if not PEER_PYTHON.exists():
        sys.exit(f"the LeRobot peer venv is absent ({PEER_PYTHON})")
    print(f"batch {args.batch}, {args.threads} threads, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'config':<10} {'frames':<6} {'params (both)':>14} {'step robotrain':>15} {'step LeRobot':>13} "
          f"{'ratio':>6} {'CPU robotrain':>14} {'CPU LeRobot':>12} {'ratio':>6} {'peak MiB robotrain':>19} "
          f"{'peak MiB LeRobot':>17} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="smolvla_bench_") as root:
        for config, frames in itertools.product(args.configs.split(","), args.frames.split(",")):
            r = bench(config, frames, args, Path(root))
            params = f"{r['params'][0]:,}" if r["params"][0] == r["params"][1] else f"{r['params']}"
            print(f"{config:<10} {frames:<6} {params:>14} {r['step_ms'][0]:>12.0f} ms {r['step_ms'][1]:>10.0f} ms "
                  f"{r['ratio']:>5.2f}x {r['cpu_ms'][0]:>11.0f} ms {r['cpu_ms'][1]:>9.0f} ms {r['cpu_ratio']:>5.2f}x "
                  f"{r['peak_mib'][0]:>19.0f} {r['peak_mib'][1]:>17.0f} {r['memory_ratio']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
