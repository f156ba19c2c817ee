"""LeRobot's side of the TD-MPC parity test in tests/policies/test_tdmpc.py; run with the peer's python (LeRobot 0.4.4).

Saves two tiny TD-MPC policies the way `lerobot-train` does (model.safetensors + config.json + pre/post-processors
with statistics computed by LeRobot from random data) into <out>/mpc and <out>/pi. Their weights are the seeded
initialization plus Gaussian noise (the initialization zeroes the reward and Q outputs, which would make most of the
comparisons trivial); the target network gets its own noise. Then LeRobot's own code computes, on fixed inputs, what
<out>/<name>/io.safetensors holds:
    step.<t>.<feature>   the raw observation fed at step t (B, ...)
    action.<t>           select_action at step t, un-normalized (B, A), after torch.manual_seed(ACTION_SEED) and a
                         reset before step 0 (mpc: the MPPI planner, q_ensemble_size=5; pi: the policy head)
    latent               model.encode of step 0, normalized by the preprocessor (B, latent_dim)
    probe_action         a fixed normalized action (B, A) for the heads below
    q, v, pi, next_latent, reward   Qs(latent, probe_action) (ensemble, B), V(latent), pi(latent) without noise,
                                    latent_dynamics_and_reward(latent, probe_action)
    train.<key>          (pi only) a raw training batch shaped as a dataset gives it, padding included
    loss.<name>          (pi only) forward()'s loss and terms on that batch, which is deterministic there:
                         q_ensemble_size=2 (no random Q members) and max_random_shift_ratio=0

Usage: <peer python> tests/policies/peer_tdmpc.py <out>
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets.compute_stats import get_feature_stats
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.tdmpc.configuration_tdmpc import TDMPCConfig
from lerobot.policies.tdmpc.modeling_tdmpc import TDMPCPolicy
from safetensors.torch import save_file

BATCH, STEPS, STATE_DIM, ENV_DIM, ACTION_DIM, FRAME = 2, 6, 4, 6, 3, (3, 48, 48)
ACTION_SEED = 7
SMALL = {"horizon": 4, "latent_dim": 16, "mlp_dim": 32, "state_encoder_hidden_dim": 32, "image_encoder_hidden_dim": 8,
         "n_gaussian_samples": 32, "n_pi_samples": 8, "n_elites": 6, "cem_iterations": 3}
VARIANTS = {
    "mpc": {"use_mpc": True, "q_ensemble_size": 5},
    "pi": {"use_mpc": False, "q_ensemble_size": 2, "max_random_shift_ratio": 0.0, "n_action_repeats": 1},
}


def features(name: str) -> tuple[dict, dict]:
    inputs = {"observation.image": PolicyFeature(FeatureType.VISUAL, FRAME),
              "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))}
    if name == "pi":
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (ENV_DIM,))
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}


def dataset_stats(rng: np.random.Generator) -> dict:
    """Statistics as LeRobot computes them for a dataset (every stat it writes)."""
    frames = rng.uniform(0.2, 0.9, size=(40, *FRAME))
    stats = {"observation.image": {k: v if k == "count" else v[0]
                                   for k, v in get_feature_stats(frames, (0, 2, 3), True).items()}}
    stats["observation.state"] = get_feature_stats(rng.normal(0.0, 1.0, (200, STATE_DIM)), 0, False)
    stats["observation.environment_state"] = get_feature_stats(rng.normal(0.0, 1.0, (200, ENV_DIM)), 0, False)
    stats["action"] = get_feature_stats(rng.uniform(-5.0, 40.0, (200, ACTION_DIM)), 0, False)
    return stats


def observation(inputs: dict, gen: torch.Generator, lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, feature in inputs.items():
        draw = torch.rand if feature.type is FeatureType.VISUAL else torch.randn
        out[key] = draw(*lead, *feature.shape, generator=gen)
    return out


def training_batch(inputs: dict, horizon: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Raw (B, horizon + 1, ...) observations, (B, horizon, A) actions in dataset units, rewards, padding masks."""
    batch = observation(inputs, gen, (BATCH, horizon + 1))
    for key in inputs:
        batch[f"{key}_is_pad"] = torch.zeros(BATCH, horizon + 1, dtype=torch.bool)
        batch[f"{key}_is_pad"][1, -2:] = True  # the second sample's episode ends one step early
    batch["action"] = -5.0 + 45.0 * torch.rand(BATCH, horizon, ACTION_DIM, generator=gen)
    batch["action_is_pad"] = torch.zeros(BATCH, horizon, dtype=torch.bool)
    batch["action_is_pad"][1, -1] = True
    batch["next.reward"] = torch.rand(BATCH, horizon, generator=gen)
    batch["next.reward_is_pad"] = batch["action_is_pad"].clone()
    batch["index"] = torch.arange(BATCH)
    return batch


def run(name: str, out: Path, seed: int) -> None:
    inputs, outputs = features(name)
    torch.manual_seed(seed)
    config = TDMPCConfig(input_features=inputs, output_features=outputs, device="cpu", push_to_hub=False,
                         **SMALL, **VARIANTS[name])
    policy = TDMPCPolicy(config).eval()
    with torch.no_grad():
        for module, scale in ((policy.model, 0.3), (policy.model_target, 0.3)):
            for param in module.parameters():
                param.add_(scale * torch.randn_like(param))
    preprocessor, postprocessor = make_pre_post_processors(policy.config,
                                                           dataset_stats=dataset_stats(np.random.default_rng(seed)))
    policy.save_pretrained(out)
    preprocessor.save_pretrained(out)
    postprocessor.save_pretrained(out)

    gen = torch.Generator().manual_seed(seed)
    steps = [observation(inputs, gen, (BATCH,)) for _ in range(STEPS)]
    io = {f"step.{t}.{key}": value for t, step in enumerate(steps) for key, value in step.items()}
    with torch.no_grad():
        normalized = preprocessor(dict(steps[0]))
        encode_keys = ["observation.image", "observation.environment_state", "observation.state"]
        io["latent"] = latent = policy.model.encode({k: normalized[k] for k in encode_keys if k in normalized})
        io["probe_action"] = probe = torch.rand(BATCH, ACTION_DIM, generator=gen) * 2 - 1
        io["q"], io["v"], io["pi"] = policy.model.Qs(latent, probe), policy.model.V(latent), policy.model.pi(latent)
        io["next_latent"], io["reward"] = policy.model.latent_dynamics_and_reward(latent, probe)
    torch.manual_seed(ACTION_SEED)
    policy.reset()
    for t, step in enumerate(steps):
        io[f"action.{t}"] = postprocessor(policy.select_action(preprocessor(dict(step))))
    if name == "pi":
        batch = training_batch(inputs, config.horizon, gen)
        io.update({f"train.{key}": value for key, value in batch.items()})
        policy.train()
        loss, info = policy.forward(preprocessor(dict(batch)))
        io["loss.loss"] = loss.detach()
        io.update({f"loss.{key}": torch.tensor(value) for key, value in info.items() if key.endswith("_loss")})
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    run("mpc", out / "mpc", seed=0)
    run("pi", out / "pi", seed=1)


if __name__ == "__main__":
    main()
