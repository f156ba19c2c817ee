"""LeRobot's side of the SmolVLA parity test (tests/policies/test_smolvla.py); run with the peer's python.

Builds small SmolVLA policies from a local tiny backbone folder (config.json + tokenizer, written by robotrain's
write_tiny_backbone; LeRobot reads it with transformers' AutoConfig/AutoProcessor), saves each as `lerobot-train`
does (model + pre/post-processors with statistics LeRobot computed from random data) into <out>/<variant>, runs
LeRobot's inference path (preprocessor -> policy -> postprocessor) on fixed observations with fixed noise, and one
training forward with fixed noise and time, then writes <out>/<variant>/io.safetensors:
    step.<t>.<feature>   the raw observation at step t (B, ...); the task texts are in io.json
    noise.<t>            the denoising start passed at step t (B, chunk_size, max_action_dim)
    chunk                predict_action_chunk on step 0 with noise.0, un-normalized (B, chunk_size, A)
    action.<t>           select_action at step t, un-normalized (B, A)
    train.<feature>      a raw training batch (with action), train.noise, train.time
    train.losses         VLAFlowMatching.forward's per-element losses (B, chunk_size, max_action_dim)
and <out>/<variant>/io.json: {"tasks": [...], "params": LeRobot's parameter count}.

Usage: <peer python> tests/policies/peer_smolvla.py <out> <backbone folder>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets.compute_stats import get_feature_stats
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from safetensors.torch import save_file

BATCH, STEPS, STATE_DIM, ACTION_DIM = 2, 4, 3, 2
CAMERAS = {"observation.images.top": (3, 24, 32), "observation.images.wrist": (3, 32, 20)}
TASKS = ["push the block", "pick up the red cube and put it in the bowl\n"]
VARIANTS = {
    "default": {},
    # Special image tokens, a blank camera, padding to max_length, a self-attention layer every 3 layers.
    "variant": {"add_image_special_tokens": True, "empty_cameras": 1, "pad_language_to": "max_length",
                "tokenizer_max_length": 20, "self_attn_every_n_layers": 3, "num_steps": 4},
    # The VLM's weights loaded from the backbone folder: LeRobot then runs the VLM and the expert in bfloat16.
    "bf16": {"load_vlm_weights": True},
}


def with_weights(backbone: str, out: Path) -> str:
    """A copy of the backbone folder with random VLM weights saved in it (what load_vlm_weights reads)."""
    import shutil

    from transformers import AutoConfig, SmolVLMForConditionalGeneration

    folder = out / "backbone_with_weights"
    shutil.copytree(backbone, folder)
    SmolVLMForConditionalGeneration(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    return str(folder)


def build(backbone: str, overrides: dict) -> SmolVLAPolicy:
    inputs = {key: PolicyFeature(FeatureType.VISUAL, shape) for key, shape in CAMERAS.items()}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    fields = {"chunk_size": 6, "n_action_steps": 3, "max_state_dim": 8, "max_action_dim": 8, "num_steps": 3,
              "num_vlm_layers": 4, "resize_imgs_with_padding": (32, 32), **overrides}
    config = SmolVLAConfig(input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION,
                                                                                           (ACTION_DIM,))},
                           device="cpu", push_to_hub=False, vlm_model_name=backbone, **fields)
    return SmolVLAPolicy(config)


def dataset_stats(rng: np.random.Generator) -> dict:
    stats = {}
    for key, shape in CAMERAS.items():
        frames = rng.uniform(0.2, 0.9, size=(40, *shape))
        stats[key] = {k: v if k == "count" else v[0] for k, v in get_feature_stats(frames, (0, 2, 3), True).items()}
    stats["observation.state"] = get_feature_stats(rng.normal(3.0, 2.0, (200, STATE_DIM)), 0, False)
    stats["action"] = get_feature_stats(rng.uniform(-5.0, 40.0, (200, ACTION_DIM)), 0, False)
    return stats


def observation(gen: torch.Generator) -> dict[str, torch.Tensor]:
    step = {key: torch.rand(BATCH, *shape, generator=gen) for key, shape in CAMERAS.items()}
    step["observation.state"] = 3.0 + 2.0 * torch.randn(BATCH, STATE_DIM, generator=gen)
    return step


def run(variant: str, backbone: str, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    if VARIANTS[variant].get("load_vlm_weights"):
        backbone = with_weights(backbone, out.parent)
    policy = build(backbone, VARIANTS[variant]).eval()
    config = policy.config
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=dataset_stats(
        np.random.default_rng(seed)))
    policy.save_pretrained(out)
    preprocessor.save_pretrained(out)
    postprocessor.save_pretrained(out)

    gen = torch.Generator().manual_seed(seed)
    noise_shape = (BATCH, config.chunk_size, config.max_action_dim)
    io = {}
    for t in range(STEPS):
        io.update({f"step.{t}.{key}": value for key, value in observation(gen).items()})
        io[f"noise.{t}"] = torch.randn(*noise_shape, generator=gen)

    def obs(t: int) -> dict:
        return {**{k.split(".", 2)[2]: v for k, v in io.items() if k.startswith(f"step.{t}.")}, "task": list(TASKS)}

    io["chunk"] = postprocessor(policy.predict_action_chunk(preprocessor(obs(0)), noise=io["noise.0"]))
    policy.reset()
    for t in range(STEPS):
        io[f"action.{t}"] = postprocessor(policy.select_action(preprocessor(obs(t)), noise=io[f"noise.{t}"]))

    train = {f"train.{k}": v for k, v in observation(gen).items()}
    train["train.action"] = torch.rand(BATCH, config.chunk_size, ACTION_DIM, generator=gen) * 45 - 5
    train["train.noise"] = torch.randn(*noise_shape, generator=gen)
    train["train.time"] = torch.rand(BATCH, generator=gen) * 0.999 + 0.001
    batch = preprocessor({**{k.removeprefix("train."): v for k, v in train.items()
                             if k not in ("train.noise", "train.time")}, "task": list(TASKS)})
    images, img_masks = policy.prepare_images(batch)
    with torch.no_grad():
        train["train.losses"] = policy.model.forward(
            images, img_masks, batch["observation.language.tokens"], batch["observation.language.attention_mask"],
            policy.prepare_state(batch), policy.prepare_action(batch), train["train.noise"], train["train.time"])
    io.update(train)
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))
    params = sum(p.numel() for p in policy.parameters())
    (out / "io.json").write_text(json.dumps({"tasks": TASKS, "params": params}))


def main() -> None:
    torch.set_num_threads(1)
    out, backbone = Path(sys.argv[1]), sys.argv[2]
    for seed, variant in enumerate(VARIANTS):
        run(variant, backbone, out / variant, seed)


if __name__ == "__main__":
    main()
