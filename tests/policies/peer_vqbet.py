"""LeRobot's side of the slow parity test in tests/policies/test_vqbet.py; run with the peer's python (LeRobot 0.4.4).

For each variant (<out>/parallel: codes sampled together; <out>/sequential: sequentially_select=True) LeRobot builds a
tiny VQ-BeT, saves it untrained into <variant>/init (model + pre/post-processors with statistics LeRobot computed from
the training data), trains it as lerobot-train would (Adam with the policy's parameter groups, clipping at 10)
through its VQ-VAE phase and a few GPT steps, saves it into <variant>/trained, and writes what robotrain must
reproduce into <variant>/io.safetensors:
    batch.<k>.<feature>        the raw training batches (dataset units)
    phase1.loss, phase1.<metric>, phase1.<buffer>, phase1.grad.<param>
                               the init checkpoint's first training forward on batch 0: loss, metrics, the codebook
                               buffers it updated, and the gradients of loss.backward()
    phase2.loss, phase2.<metric>  the trained checkpoint's training loss on batch 0, RNG seeded with 7
    step.<t>.<feature>         raw observations fed to select_action at step t (B, ...)
    action.<t>                 select_action at step t (RNG seeded with 100 + t), un-normalized (B, A)
    logits.<t>, offsets.<t>    the code and offset heads' outputs when step t predicted a new chunk

Dropout is 0 and crops are centered in training too, so the training forward is deterministic given the RNG.
Usage: <peer python> tests/policies/peer_vqbet.py <out>
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets.compute_stats import get_feature_stats
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.vqbet.configuration_vqbet import VQBeTConfig
from lerobot.policies.vqbet.modeling_vqbet import VQBeTPolicy
from safetensors.torch import save_file

FRAME, STATE_DIM, ACTION_DIM = (3, 32, 32), 2, 2
N_OBS, N_TOKENS, CHUNK = 3, 2, 3
ACTION_STEPS = N_OBS - 1 + N_TOKENS + CHUNK - 1
TRAIN_BATCH, N_BATCHES, VQVAE_STEPS, GPT_STEPS = 8, 4, 60, 10
ACT_BATCH, ACT_STEPS = 2, 7


def config(sequential: bool) -> VQBeTConfig:
    return VQBeTConfig(
        input_features={"observation.image": PolicyFeature(FeatureType.VISUAL, FRAME),
                        "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        device="cpu", push_to_hub=False, n_obs_steps=N_OBS, n_action_pred_token=N_TOKENS, action_chunk_size=CHUNK,
        crop_shape=(28, 28), crop_is_random=False, spatial_softmax_num_keypoints=4, n_vqvae_training_steps=VQVAE_STEPS,
        vqvae_n_embed=8, vqvae_embedding_dim=16, vqvae_enc_hidden_dim=32, gpt_block_size=32, gpt_input_dim=32,
        gpt_output_dim=32, gpt_n_layer=2, gpt_n_head=4, gpt_hidden_dim=32, dropout=0.0, sequentially_select=sequential)


def training_batches(gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Smooth 2-D trajectories in dataset units (like PushT's pointer targets), with random frames and states."""
    batches = []
    for _ in range(N_BATCHES):
        steps = torch.randn(TRAIN_BATCH, ACTION_STEPS, ACTION_DIM, generator=gen) * 8.0
        start = torch.rand(TRAIN_BATCH, 1, ACTION_DIM, generator=gen) * 400.0 + 50.0
        batch = {"action": start + steps.cumsum(1),
                 "observation.image": torch.rand(TRAIN_BATCH, N_OBS, *FRAME, generator=gen),
                 "observation.state": torch.rand(TRAIN_BATCH, N_OBS, STATE_DIM, generator=gen) * 500.0}
        batch["action_is_pad"] = torch.zeros(TRAIN_BATCH, ACTION_STEPS, dtype=torch.bool)
        batches.append(batch)
    return batches


def dataset_stats(batches: list[dict[str, torch.Tensor]]) -> dict:
    actions = torch.cat([b["action"].reshape(-1, ACTION_DIM) for b in batches]).numpy()
    states = torch.cat([b["observation.state"].reshape(-1, STATE_DIM) for b in batches]).numpy()
    frames = torch.cat([b["observation.image"].flatten(0, 1) for b in batches]).numpy()
    image = {k: v if k == "count" else v[0] for k, v in get_feature_stats(frames, (0, 2, 3), True).items()}
    return {"action": get_feature_stats(actions, 0, False), "observation.state": get_feature_stats(states, 0, False),
            "observation.image": image}


def save(policy, preprocessor, postprocessor, directory: Path) -> None:
    policy.save_pretrained(directory)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)


def phase_one_forward(policy, batch: dict, io: dict) -> None:
    """The untrained policy's first training forward and backward: loss, metrics, updated codebooks, gradients."""
    policy.train()
    loss, metrics = policy.forward(batch)
    loss.backward()
    io["phase1.loss"] = loss.detach().reshape(1)
    io.update({f"phase1.{k}": torch.tensor([float(v)]) for k, v in metrics.items()})
    vqvae = policy.vqbet.action_head.vqvae_model
    io.update({f"phase1.{k}": v.clone() for k, v in vqvae.vq_layer.state_dict().items() if "._codebook." in k})
    io.update({f"phase1.grad.{k}": p.grad.clone() for k, p in vqvae.named_parameters() if p.grad is not None})
    policy.zero_grad(set_to_none=True)


def train(policy, preprocessor, batches: list[dict]) -> None:
    policy.train()
    optimizer = torch.optim.Adam(policy.get_optim_params(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8,
                                 weight_decay=1e-6)
    for step in range(VQVAE_STEPS + GPT_STEPS):
        loss, _ = policy.forward(preprocessor(dict(batches[step % N_BATCHES])))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad()
    assert policy.vqbet.action_head.vqvae_model.discretized.item()


def record_rollout(policy, preprocessor, postprocessor, gen: torch.Generator, io: dict) -> None:
    head = policy.vqbet.action_head
    captured: dict[str, torch.Tensor] = {}
    bins = [head.map_to_cbet_preds_primary_bin, head.map_to_cbet_preds_secondary_bin] \
        if policy.config.sequentially_select else [head.map_to_cbet_preds_bin]
    for i, module in enumerate(bins):
        module.register_forward_hook(lambda m, args, out, i=i: captured.__setitem__(f"logits{i}", out.detach()))
    head.map_to_cbet_preds_offset.register_forward_hook(
        lambda m, args, out: captured.__setitem__("offsets", out.detach()))
    policy.eval()
    policy.reset()
    for t in range(ACT_STEPS):
        step = {"observation.image": torch.rand(ACT_BATCH, *FRAME, generator=gen),
                "observation.state": torch.rand(ACT_BATCH, STATE_DIM, generator=gen) * 500.0}
        io.update({f"step.{t}.{k}": v for k, v in step.items()})
        captured.clear()
        torch.manual_seed(100 + t)
        io[f"action.{t}"] = postprocessor(policy.select_action(preprocessor(dict(step))))
        if captured:
            io[f"logits.{t}"] = torch.cat([captured[f"logits{i}"] for i in range(len(bins))], dim=-1)
            io[f"offsets.{t}"] = captured["offsets"]


def run(out: Path, sequential: bool, seed: int) -> None:
    torch.manual_seed(seed)
    policy = VQBeTPolicy(config(sequential))
    gen = torch.Generator().manual_seed(seed)
    batches = training_batches(gen)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=dataset_stats(batches))
    io = {f"batch.{k}.{key}": value for k, batch in enumerate(batches) for key, value in batch.items()}
    save(policy, preprocessor, postprocessor, out / "init")
    phase_one_forward(copy.deepcopy(policy), preprocessor(dict(batches[0])), io)
    train(policy, preprocessor, batches)
    save(policy, preprocessor, postprocessor, out / "trained")
    policy.train()
    torch.manual_seed(7)
    loss, metrics = policy.forward(preprocessor(dict(batches[0])))
    io["phase2.loss"] = loss.detach().reshape(1)
    io.update({f"phase2.{k}": torch.tensor([float(v)]) for k, v in metrics.items()})
    record_rollout(policy, preprocessor, postprocessor, gen, io)
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    run(out / "parallel", sequential=False, seed=0)
    run(out / "sequential", sequential=True, seed=1)


if __name__ == "__main__":
    main()
