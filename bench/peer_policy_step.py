"""The timing code shared by both sides of bench/policy_step.py, and its LeRobot side (run with the peer's python).

As a script it builds LeRobot's ACT, Diffusion, TD-MPC or VQ-BeT policy from its default config (pretrained
backbone weights off) with the input/output features set by hand (one 96x96 camera + 2-D state, 2-D action, as
PushT), then serves timing requests on stdin, one JSON line per answer, so the caller can interleave its own
steps with the peer's:
    train N  -> [[wall_s, cpu_s], ...] of N training steps
    infer N  -> [wall_s, ...] of N select_action calls, each right after reset()
LeRobot normalizes in processors outside the policy, so its batches are fed as they are. Only torch is imported at
module level: robotrain's side imports Runner and make_batch from here.

Usage: <peer python> bench/peer_policy_step.py act|diffusion|tdmpc|vqbet --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch


class Runner:
    """Times training steps (forward, backward, clipping, optimizer step, zero_grad) and select_action."""

    def __init__(self, policy, optimizer, clip_norm: float, batch: dict):
        self.policy, self.optimizer, self.clip_norm, self.batch = policy, optimizer, clip_norm, batch
        self.observation = {k: v[:1, -1] if v.ndim in (3, 5) else v[:1]  # one observation, last frame
                            for k, v in batch.items() if k.startswith("observation.")}

    def train(self, n: int) -> list[tuple[float, float]]:
        self.policy.train()
        out = []
        for _ in range(n):
            start, start_cpu = time.perf_counter(), time.process_time()
            loss, _ = self.policy.forward(self.batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.clip_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            if callable(getattr(self.policy, "update", None)):  # TD-MPC's target network, as both trainers do
                self.policy.update()
            out.append((time.perf_counter() - start, time.process_time() - start_cpu))
        return out

    def infer(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            self.policy.reset()
            start = time.perf_counter()
            self.policy.select_action(self.observation)
            out.append(time.perf_counter() - start)
        return out

    def serve(self, stream_in=sys.stdin, stream_out=sys.stdout) -> None:
        for line in stream_in:
            command, n = line.split()
            with contextlib.redirect_stdout(sys.stderr):  # a policy's own prints must not break the protocol
                result = self.train(int(n)) if command == "train" else self.infer(int(n))
            print(json.dumps(result), file=stream_out, flush=True)


def make_batch(config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch shaped as a dataset with the policy's delta indices delivers it (padding masks included,
    and rewards for the policies that read them)."""
    gen = torch.Generator().manual_seed(seed)
    n_obs = len(config.observation_delta_indices) if config.observation_delta_indices else 0
    obs_shape = (batch_size, n_obs) if n_obs else (batch_size,)
    horizon = len(config.action_delta_indices)
    batch = {"observation.image": torch.rand(*obs_shape, 3, 96, 96, generator=gen),
             "observation.state": torch.randn(*obs_shape, 2, generator=gen),
             "action": torch.randn(batch_size, horizon, 2, generator=gen).clamp(-1, 1),
             "action_is_pad": torch.zeros(batch_size, horizon, dtype=torch.bool),
             "index": torch.arange(batch_size)}  # LeRobot's TD-MPC reads the batch size from it
    if n_obs:
        batch.update({f"{k}_is_pad": torch.zeros(obs_shape, dtype=torch.bool)
                      for k in ("observation.image", "observation.state")})
    if getattr(config, "reward_delta_indices", None):
        steps = len(config.reward_delta_indices)
        batch["next.reward"] = torch.rand(batch_size, steps, generator=gen)
        batch["next.reward_is_pad"] = torch.zeros(batch_size, steps, dtype=torch.bool)
    return batch


# Both sides' policies in the VQ-BeT phase that dominates training (the GPT's): its VQ-VAE phase ends after 2 steps,
# within the warm-up. Every other setting is the policy's default.
OVERRIDES = {"vqbet": {"n_vqvae_training_steps": 2}}


def make_peer_runner(policy_type: str, batch_size: int) -> tuple[Runner, int]:
    """LeRobot's policy at its default config for PushT-like features, and its parameter count."""
    import importlib

    from lerobot.configs.types import FeatureType, PolicyFeature

    names = {"act": ("act", "ACT"), "diffusion": ("diffusion", "Diffusion"), "tdmpc": ("tdmpc", "TDMPC"),
             "vqbet": ("vqbet", "VQBeT")}
    folder, prefix = names[policy_type]
    package = f"lerobot.policies.{folder}"
    config_class = getattr(importlib.import_module(f"{package}.configuration_{folder}"), f"{prefix}Config")
    policy_class = getattr(importlib.import_module(f"{package}.modeling_{folder}"), f"{prefix}Policy")
    options = {"device": "cpu", "push_to_hub": False, **OVERRIDES.get(policy_type, {})}
    if "pretrained_backbone_weights" in config_class.__dataclass_fields__:
        options["pretrained_backbone_weights"] = None
    config = config_class(**options)
    config.input_features = {"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                             "observation.state": PolicyFeature(FeatureType.STATE, (2,))}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (2,))}
    torch.manual_seed(0)
    policy = policy_class(config)
    preset = config.get_optimizer_preset()
    runner = Runner(policy, preset.build(policy.get_optim_params()), preset.grad_clip_norm,
                    make_batch(config, batch_size))
    return runner, sum(p.numel() for p in policy.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=["act", "diffusion", "tdmpc", "vqbet"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):  # LeRobot's VQ-BeT prints its size as it is built
        runner, n_params = make_peer_runner(args.policy, args.batch)
    print(json.dumps({"params": n_params}), flush=True)
    runner.serve()


if __name__ == "__main__":
    main()
