"""LeRobot's side of tests/policies/test_lerobot_checkpoint.py; run with the peer's python (LeRobot 0.4.4).

Saves a tiny ACT and Diffusion policy the way `lerobot-train` does (random weights, model + pre/post-processors with
statistics computed by LeRobot from random data) into <out>/act and <out>/diffusion, then runs LeRobot's inference
path (preprocessor -> policy -> postprocessor) on fixed observations and writes inputs and actions to
<out>/<type>/io.safetensors:
    step.<t>.<feature>   the raw observation fed at step t (B, ...)
    noise                Diffusion's initial noise, passed to every sampling call (B, horizon, A)
    chunk                ACT: predict_action_chunk on step 0, un-normalized (B, chunk_size, A)
    action.<t>           select_action at step t, un-normalized (B, A)

Usage: <peer python> tests/policies/peer_lerobot_checkpoint.py <out>
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets.compute_stats import get_feature_stats
from lerobot.policies.factory import make_pre_post_processors
from safetensors.torch import save_file

BATCH, STEPS, STATE_DIM, ACTION_DIM, FRAME = 2, 7, 3, 2, (3, 32, 32)


def features(cameras: list[str]) -> tuple[dict, dict]:
    inputs = {cam: PolicyFeature(FeatureType.VISUAL, FRAME) for cam in cameras}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}


def dataset_stats(cameras: list[str], rng: np.random.Generator) -> dict:
    """Statistics as LeRobot computes them for a dataset (every stat it writes: min, max, mean, std, count, q..)."""
    stats = {}
    for cam in cameras:
        frames = rng.uniform(0.2, 0.9, size=(40, *FRAME))
        stats[cam] = {k: v if k == "count" else v[0] for k, v in get_feature_stats(frames, (0, 2, 3), True).items()}
    stats["observation.state"] = get_feature_stats(rng.normal(3.0, 2.0, (200, STATE_DIM)), 0, False)
    stats["action"] = get_feature_stats(rng.uniform(-5.0, 40.0, (200, ACTION_DIM)), 0, False)
    return stats


def observations(cameras: list[str], gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(STEPS):
        step = {cam: torch.rand(BATCH, *FRAME, generator=gen) for cam in cameras}
        step["observation.state"] = 3.0 + 2.0 * torch.randn(BATCH, STATE_DIM, generator=gen)
        out.append(step)
    return out


def build(policy_type: str, cameras: list[str]):
    inputs, outputs = features(cameras)
    common = {"input_features": inputs, "output_features": outputs, "device": "cpu", "push_to_hub": False,
              "pretrained_backbone_weights": None}
    if policy_type == "act":
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy

        config = ACTConfig(dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=2, n_decoder_layers=1,
                           n_vae_encoder_layers=2, latent_dim=4, chunk_size=6, n_action_steps=3, **common)
        return ACTPolicy(config)
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    config = DiffusionConfig(horizon=8, n_action_steps=4, down_dims=(16, 32), diffusion_step_embed_dim=16,
                             crop_shape=(28, 28), use_separate_rgb_encoder_per_camera=True,
                             noise_scheduler_type="DDIM", num_inference_steps=10, **common)
    return DiffusionPolicy(config)


def run(policy_type: str, cameras: list[str], out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    policy = build(policy_type, cameras).eval()
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, dataset_stats=dataset_stats(cameras, np.random.default_rng(seed)))
    policy.save_pretrained(out)
    preprocessor.save_pretrained(out)
    postprocessor.save_pretrained(out)

    gen = torch.Generator().manual_seed(seed)
    steps = observations(cameras, gen)
    io = {f"step.{t}.{key}": value for t, step in enumerate(steps) for key, value in step.items()}
    extra = {}
    if policy_type == "diffusion":
        io["noise"] = torch.randn(BATCH, policy.config.horizon, ACTION_DIM, generator=gen)
        extra["noise"] = io["noise"]
    else:
        io["chunk"] = postprocessor(policy.predict_action_chunk(preprocessor(dict(steps[0]))))
    policy.reset()
    for t, step in enumerate(steps):
        io[f"action.{t}"] = postprocessor(policy.select_action(preprocessor(dict(step)), **extra))
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    run("act", ["observation.images.top"], out / "act", seed=0)
    run("diffusion", ["observation.images.left", "observation.images.right"], out / "diffusion", seed=1)


if __name__ == "__main__":
    main()
