"""The timing code shared by both sides of bench/policy_step.py, and its LeRobot side (run with the peer's python).

As a script it builds LeRobot's ACTPolicy / DiffusionPolicy from their default configs (pretrained backbone weights
off) with the input/output features set by hand (one 96x96 camera + 2-D state, 2-D action, as PushT), then serves
timing requests on stdin, one JSON line per answer, so the caller can interleave its own steps with the peer's:
    train N  -> [[wall_s, cpu_s], ...] of N training steps
    infer N  -> [wall_s, ...] of N select_action calls, each right after reset()
LeRobot normalizes in processors outside the policy, so its batches are fed as they are. Only torch is imported at
module level: robotrain's side imports Runner and make_batch from here.

Usage: <peer python> bench/peer_policy_step.py act|diffusion --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
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
            result = self.train(int(n)) if command == "train" else self.infer(int(n))
            print(json.dumps(result), file=stream_out, flush=True)


def make_batch(config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch shaped as a dataset with the policy's delta indices delivers it."""
    gen = torch.Generator().manual_seed(seed)
    n_obs = len(config.observation_delta_indices) if config.observation_delta_indices else 0
    obs_shape = (batch_size, n_obs) if n_obs else (batch_size,)
    horizon = len(config.action_delta_indices)
    return {"observation.image": torch.rand(*obs_shape, 3, 96, 96, generator=gen),
            "observation.state": torch.randn(*obs_shape, 2, generator=gen),
            "action": torch.randn(batch_size, horizon, 2, generator=gen),
            "action_is_pad": torch.zeros(batch_size, horizon, dtype=torch.bool)}


def make_peer_runner(policy_type: str, batch_size: int) -> tuple[Runner, int]:
    """LeRobot's policy at its default config for PushT-like features, and its parameter count."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    if policy_type == "act":
        from lerobot.policies.act.configuration_act import ACTConfig as Config
        from lerobot.policies.act.modeling_act import ACTPolicy as Policy
    else:
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig as Config
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as Policy
    config = Config(pretrained_backbone_weights=None, device="cpu", push_to_hub=False)
    config.input_features = {"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                             "observation.state": PolicyFeature(FeatureType.STATE, (2,))}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (2,))}
    torch.manual_seed(0)
    policy = Policy(config)
    preset = config.get_optimizer_preset()
    runner = Runner(policy, preset.build(policy.get_optim_params()), preset.grad_clip_norm,
                    make_batch(config, batch_size))
    return runner, sum(p.numel() for p in policy.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", choices=["act", "diffusion"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runner, n_params = make_peer_runner(args.policy, args.batch)
    print(json.dumps({"params": n_params}), flush=True)
    runner.serve()


if __name__ == "__main__":
    main()
