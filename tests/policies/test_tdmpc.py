"""TD-MPC: LeRobot's parameter count and names, the loss against a step-by-step hand computation, padding, the
target EMA, the MPPI planner, action repeats, config errors, the xArm expert, and (slow) parity with LeRobot 0.4.4
on checkpoints it saved."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from robotrain.configs.types import (
    ACTION,
    OBS_ENV_STATE,
    OBS_IMAGE,
    OBS_STATE,
    REWARD,
    FeatureType,
    NormalizationMode,
    PolicyFeature,
    pad_key,
)
from robotrain.errors import ConfigError, UserError
from robotrain.policies import Policy
from robotrain.policies.tdmpc.configuration import TDMPCConfig
from robotrain.policies.tdmpc.modeling import TDMPCPolicy
from robotrain.policies.tdmpc.planner import plan
from robotrain.policies.tdmpc.told import random_shift

VISUAL, STATE, ENV = FeatureType.VISUAL, FeatureType.STATE, FeatureType.ENV
PEER_PYTHON = Path(os.environ.get("LEROBOT_PEER_VENV", "~/.cache/lerobot-peer/venv")).expanduser() / "bin/python"
TINY = {"horizon": 3, "latent_dim": 8, "mlp_dim": 16, "state_encoder_hidden_dim": 16, "image_encoder_hidden_dim": 4,
        "n_gaussian_samples": 16, "n_pi_samples": 4, "n_elites": 4, "cem_iterations": 2, "device": "cpu"}
# LeRobot 0.4.4's TDMPCPolicy at its default config, measured once with the peer venv as
#   sum(p.numel() for p in TDMPCPolicy(TDMPCConfig(input_features=..., output_features=...)).parameters())
# (model + model_target; half of it, the online model, is trainable), e.g. 5474134 total / 2737067 trainable for PushT.
LEROBOT_PARAMETERS = {
    "pusht": ((3, 96, 96), 2, 2, 5_474_134, 2_737_067),  # camera, state dim, action dim, total, trainable
    "xarm": ((3, 84, 84), 4, 4, 5_469_146, 2_734_573),
}


def features(camera: tuple[int, ...] | None = (3, 40, 40), state: int | None = 3, env: int | None = None,
             action: int = 2) -> dict:
    inputs = {}
    if camera is not None:
        inputs[OBS_IMAGE] = PolicyFeature(VISUAL, camera)
    if state is not None:
        inputs[OBS_STATE] = PolicyFeature(STATE, (state,))
    if env is not None:
        inputs[OBS_ENV_STATE] = PolicyFeature(ENV, (env,))
    return {"input_features": inputs, "output_features": {ACTION: PolicyFeature(FeatureType.ACTION, (action,))}}


def make_policy(seed: int = 0, action_range: tuple[float, float] = (-1.0, 1.0), **overrides) -> TDMPCPolicy:
    config = TDMPCConfig(**{**TINY, **features(), **overrides})
    torch.manual_seed(seed)
    policy = TDMPCPolicy(config)
    stats = {key: {"min": torch.full(f.shape, action_range[0]), "max": torch.full(f.shape, action_range[1])}
             for key, f in config.output_features.items()}
    policy.load_stats(stats)
    return policy


def randomize(policy: TDMPCPolicy, seed: int = 1, scale: float = 0.3) -> None:
    """Noise on every weight (the initialization zeroes the reward and Q outputs), the target's apart."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in [*policy.model.parameters(), *policy.model_target.parameters()]:
            param.add_(scale * torch.randn(param.shape, generator=gen))


def batch_for(config: TDMPCConfig, batch_size: int = 3, seed: int = 0) -> dict:
    """A training batch as the dataset gives it; sample 1's episode ends after 2 observations, sample 2 is whole."""
    gen = torch.Generator().manual_seed(seed)
    h = config.horizon
    batch = {}
    for key, feature in config.input_features.items():
        draw = torch.rand if feature.type is VISUAL else torch.randn
        batch[key] = draw(batch_size, h + 1, *feature.shape, generator=gen)
        batch[pad_key(key)] = torch.zeros(batch_size, h + 1, dtype=torch.bool)
        batch[pad_key(key)][1, 2:] = True
    batch[ACTION] = torch.rand(batch_size, h, config.output_features[ACTION].shape[0], generator=gen) * 2 - 1
    batch[pad_key(ACTION)] = torch.zeros(batch_size, h, dtype=torch.bool)
    batch[pad_key(ACTION)][1, 2:] = True
    batch[REWARD] = torch.rand(batch_size, h, generator=gen)
    batch[pad_key(REWARD)] = batch[pad_key(ACTION)].clone()
    return batch


# -- architecture ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", LEROBOT_PARAMETERS)
def test_parameter_count_equals_lerobots_at_the_default_config(task):
    camera, state, action, total, trainable = LEROBOT_PARAMETERS[task]
    policy = TDMPCPolicy(TDMPCConfig(device="cpu", **features(camera, state, action=action)))
    assert sum(p.numel() for p in policy.parameters()) == total
    assert sum(p.numel() for p in policy.get_optim_params()) == trainable
    assert all(not p.requires_grad for p in policy.model_target.parameters())


def test_tensor_names_are_lerobots():
    policy = TDMPCPolicy(TDMPCConfig(device="cpu", **features((3, 84, 84), 4, 5, 4)))
    names = [n for n in policy.state_dict() if not n.startswith("normalizer.")]
    # LeRobot 0.4.4's state dict for these features (measured with the peer): 208 tensors, 104 per model.
    assert len(names) == 208
    for name in ("model._encoder.image_enc_layers.9.weight", "model._encoder.image_enc_layers.10.bias",
                 "model._encoder.state_enc_layers.3.weight", "model._encoder.env_state_enc_layers.0.weight",
                 "model._dynamics.7.bias", "model._reward.6.weight", "model._pi.6.bias", "model._Qs.4.5.weight",
                 "model._V.3.weight", "model_target._Qs.0.0.weight"):
        assert name in names, name
    assert policy.state_dict()["model._encoder.image_enc_layers.9.weight"].shape == (50, 32 * 3 * 3)


# -- loss ------------------------------------------------------------------------------------------------------

def hand_loss(policy: TDMPCPolicy, batch: dict) -> dict[str, float]:
    """The loss step by step, sample by sample, from the paper's equations (q_ensemble_size=2: no random members)."""
    cfg, model, target = policy.config, policy.model, policy.model_target
    norm = policy.normalizer.normalize(batch)
    keys = list(cfg.input_features)
    obs = lambda b, t: {k: norm[k][b, t] for k in keys}  # noqa: E731
    pad = batch[pad_key(keys[0])]
    terms = dict.fromkeys(("consistency", "reward", "q", "v", "pi"), 0.0)
    size, horizon = batch[ACTION].shape[:2]
    with torch.no_grad():
        for b in range(size):
            if pad[b, 0]:
                continue
            z = model.encode(obs(b, 0))
            for t in range(horizon):
                if batch[pad_key(ACTION)][b, t]:
                    continue
                w, a, r = cfg.temporal_decay_coeff ** t, norm[ACTION][b, t], batch[REWARD][b, t]
                z_next, r_hat = model.next_latent_and_reward(z, a)
                if not pad[b, t + 1]:
                    terms["consistency"] += w * ((z_next - target.encode(obs(b, t + 1))) ** 2).mean().item()
                if not batch[pad_key(REWARD)][b, t]:
                    terms["reward"] += w * (r_hat - r).item() ** 2
                    if not pad[b, t + 1]:
                        td_target = r + cfg.discount * model.V(model.encode(obs(b, t + 1)))
                        terms["q"] += w * ((model.Qs(z, a) - td_target) ** 2).sum().item()
                diff = (target.Qs(z, a).min() - model.V(z)).item()  # V's target and the advantage
                terms["v"] += w * (cfg.expectile_weight if diff > 0 else 1 - cfg.expectile_weight) * diff ** 2
                weight = min(math.exp(cfg.advantage_scaling * diff), 100.0)
                terms["pi"] += weight * w * ((model.pi(z) - a) ** 2).sum().item()
                z = z_next
    terms = {k: v / size for k, v in terms.items()}
    terms["pi"] /= horizon  # a mean over steps; the other terms sum over them
    terms["total"] = (cfg.consistency_coeff * terms["consistency"] + cfg.reward_coeff * terms["reward"]
                      + cfg.value_coeff * (terms["q"] + terms["v"]) + cfg.pi_coeff * terms["pi"])
    return terms


@pytest.mark.parametrize("inputs", [{"camera": (3, 40, 40), "state": 3}, {"camera": None, "state": 3, "env": 2}])
def test_loss_matches_a_hand_computation(inputs):
    policy = make_policy(q_ensemble_size=2, max_random_shift_ratio=0.0, **features(**inputs), action_range=(-2, 5))
    randomize(policy)
    batch = batch_for(policy.config)
    batch[ACTION] = batch[ACTION] * 3.5 + 1.5  # dataset units in [-2, 5]
    policy.train()
    loss, metrics = policy.forward(batch)
    expected = hand_loss(policy, batch)
    names = {"consistency": "consistency_loss", "reward": "reward_loss", "q": "Q_value_loss", "v": "V_value_loss",
             "pi": "pi_loss"}
    for ours, theirs in names.items():
        assert metrics[theirs] == pytest.approx(expected[ours], rel=1e-5), ours
    assert loss.item() == pytest.approx(expected["total"], rel=1e-5)
    assert metrics["sum_loss"] == pytest.approx(loss.item() * policy.config.horizon, rel=1e-6)


def test_padded_steps_do_not_count():
    policy = make_policy(q_ensemble_size=2)
    randomize(policy)
    batch = batch_for(policy.config)
    torch.manual_seed(0)
    reference, _ = policy.forward(batch)
    garbage = {k: v.clone() for k, v in batch.items()}
    padded_obs = batch[pad_key(OBS_STATE)]  # (B, H + 1)
    for key in policy.config.input_features:
        garbage[key][padded_obs] = 1e3
    garbage[ACTION][batch[pad_key(ACTION)]] = 0.9
    garbage[REWARD][batch[pad_key(REWARD)]] = -1e3
    torch.manual_seed(0)  # the same image shifts
    assert policy.forward(garbage)[0].item() == pytest.approx(reference.item(), rel=1e-6)
    # A sample whose first observation is padding contributes nothing: only the batch mean's divisor counts it.
    alone = {k: v[2:] for k, v in batch.items()}
    with_empty = {k: torch.cat([v[2:], v[2:]]) for k, v in batch.items()}
    for key in policy.config.input_features:
        with_empty[pad_key(key)][1] = True
    torch.manual_seed(0)
    single, _ = policy.forward(alone)
    assert torch.isfinite(single)
    policy.config.max_random_shift_ratio = 0.0
    assert policy.forward(with_empty)[0].item() == pytest.approx(policy.forward(alone)[0].item() / 2, rel=1e-6)


def test_training_batch_without_rewards_is_refused():
    policy = make_policy()
    batch = batch_for(policy.config)
    del batch[REWARD]
    with pytest.raises(UserError, match="next.reward"):
        policy.forward(batch)
    batch = batch_for(make_policy(horizon=2).config)
    with pytest.raises(UserError, match="horizon=3"):
        policy.forward(batch)


def test_random_shift_crops_the_edge_padded_image():
    images = torch.rand(6, 2, 10, 14)
    torch.manual_seed(0)
    shifted = random_shift(images, 0.2)  # pads 2 rows, 3 columns
    padded = torch.nn.functional.pad(images, (3, 3, 2, 2), mode="replicate")
    offsets = set()
    for i in range(len(images)):
        matches = [(top, left) for top in range(5) for left in range(7)
                   if torch.equal(padded[i, :, top:top + 10, left:left + 14], shifted[i])]
        assert matches, f"image {i} is not a crop of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # drawn per image
    assert random_shift(images, 0.0) is images


# -- target network --------------------------------------------------------------------------------------------

def test_update_moves_the_target_by_ema_and_the_optimizer_never_does():
    policy = make_policy()
    randomize(policy)
    optimizer = torch.optim.Adam(policy.get_optim_params(), lr=1e-2)
    before = {n: p.clone() for n, p in policy.model_target.named_parameters()}
    loss, _ = policy.forward(batch_for(policy.config))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in policy.model_target.parameters())
    assert all(torch.equal(p, before[n]) for n, p in policy.model_target.named_parameters())
    online = dict(policy.model.named_parameters())
    policy.update()
    momentum = policy.config.target_model_momentum
    for name, param in policy.model_target.named_parameters():
        torch.testing.assert_close(param, momentum * before[name] + (1 - momentum) * online[name], rtol=0, atol=1e-7)
    assert any(not torch.equal(p, before[n]) for n, p in policy.model_target.named_parameters())


# -- inference -------------------------------------------------------------------------------------------------

def observation(config: TDMPCConfig, batch_size: int = 2, seed: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {key: (torch.rand if f.type is VISUAL else torch.randn)(batch_size, *f.shape, generator=gen)
            for key, f in config.input_features.items()}


def test_planner_returns_seeded_actions_within_the_action_range():
    policy = make_policy(action_range=(0.0, 10.0)).eval()
    randomize(policy)
    obs = observation(policy.config)
    torch.manual_seed(0)
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (2, policy.config.horizon, 2)
    assert chunk.min() >= 0.0 and chunk.max() <= 10.0 + 1e-5  # [-1, 1] in the network's units
    assert policy._prev_mean is not None  # warm start for the next call
    policy.reset()
    assert policy._prev_mean is None
    torch.manual_seed(0)
    assert torch.equal(policy.predict_action_chunk(obs), chunk)
    policy.reset()
    torch.manual_seed(1)
    assert not torch.equal(policy.predict_action_chunk(obs), chunk)


class _QuadraticWorld:
    """A stand-in world model: the latent never changes, reward = -|a - goal|^2, every Q and pi are zero."""

    def __init__(self, goal: torch.Tensor, ensemble: int):
        self.goal, self.ensemble = goal, ensemble

    def pi(self, z, std=0.0):
        return torch.zeros(*z.shape[:-1], len(self.goal)) + std * torch.randn(*z.shape[:-1], len(self.goal))

    def next_latent(self, z, action):
        return z

    def next_latent_and_reward(self, z, action):
        return z, -((action - self.goal) ** 2).sum(-1)

    def Qs(self, z, action):  # noqa: N802
        return torch.zeros(self.ensemble, *z.shape[:-1])


def test_mppi_finds_the_rewarded_actions():
    config = TDMPCConfig(**{**TINY, **features(), "n_gaussian_samples": 256, "n_elites": 32, "cem_iterations": 6})
    goal = torch.tensor([0.6, -0.3])
    torch.manual_seed(0)
    actions, mean = plan(_QuadraticWorld(goal, config.q_ensemble_size), torch.zeros(3, 4), config)
    assert actions.shape == mean.shape == (config.horizon, 3, 2)
    torch.testing.assert_close(mean, goal.expand_as(mean), rtol=0, atol=0.1)
    torch.testing.assert_close(actions, goal.expand_as(actions), rtol=0, atol=0.25)


def test_action_repeats_replay_one_plan():
    policy = make_policy(use_mpc=False, n_action_repeats=3).eval()
    randomize(policy)
    calls = []
    predict = policy.predict_action_chunk
    policy.predict_action_chunk = lambda batch: calls.append(1) or predict(batch)
    obs = [observation(policy.config, seed=s) for s in range(6)]
    actions = [policy.select_action(o) for o in obs]
    assert len(calls) == 2
    assert torch.equal(actions[0], actions[2]) and torch.equal(actions[3], actions[5])
    assert not torch.equal(actions[2], actions[3])
    torch.testing.assert_close(actions[3], predict(obs[3])[:, 0])
    policy.reset()
    policy.select_action(obs[1])
    assert len(calls) == 3  # reset empties the queue


def test_n_action_steps_executes_the_plan():
    policy = make_policy(n_action_repeats=1, n_action_steps=3).eval()
    randomize(policy)
    obs = observation(policy.config)
    torch.manual_seed(0)
    chunk = policy.predict_action_chunk(obs)
    torch.manual_seed(0)
    policy.reset()
    steps = torch.stack([policy.select_action(obs) for _ in range(3)], dim=1)
    assert torch.equal(steps, chunk[:, :3])


def test_policy_runs_without_a_camera_or_a_state():
    for inputs in ({"camera": None, "state": 3}, {"camera": (3, 39, 50), "state": None}):
        policy = make_policy(**features(**inputs))
        loss, _ = policy.forward(batch_for(policy.config))
        assert torch.isfinite(loss)
        assert policy.eval().select_action(observation(policy.config)).shape == (2, 2)


# -- configuration ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "field"), [
    ({"n_obs_steps": 2}, "n_obs_steps"),
    ({"n_action_steps": 2}, "n_action_steps"),  # with n_action_repeats=2
    ({"n_action_steps": 2, "n_action_repeats": 1, "use_mpc": False}, "n_action_steps"),
    ({"n_action_steps": 4, "n_action_repeats": 1}, "n_action_steps"),  # > horizon
    ({"n_elites": 21}, "n_elites"),
    ({"q_ensemble_size": 1}, "q_ensemble_size"),
    ({"expectile_weight": 1.5}, "expectile_weight"),
    ({"min_std": 3.0}, "min_std"),
    ({"cem_iterations": 0}, "cem_iterations"),
    ({"normalization_mapping": {"ACTION": NormalizationMode.MEAN_STD}}, "normalization_mapping"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        TDMPCConfig(**{**TINY, **features(), **overrides}).validate()
    assert info.value.field == field and "Fix:" in str(info.value)


@pytest.mark.parametrize(("inputs", "problem"), [
    ({OBS_IMAGE: (VISUAL, (3, 48, 48)), "observation.images.wrist": (VISUAL, (3, 48, 48))}, "one camera"),
    ({OBS_IMAGE: (VISUAL, (3, 32, 32))}, "at least 39x39"),
    ({OBS_STATE: (STATE, (3,)), "observation.velocity": (STATE, (3,))}, "observation.velocity"),
    ({}, "needs a camera or a state"),
])
def test_features_it_cannot_use_are_refused(inputs, problem):
    config = TDMPCConfig(**TINY, input_features={k: PolicyFeature(t, s) for k, (t, s) in inputs.items()},
                         output_features=features()["output_features"])
    with pytest.raises(ConfigError, match=problem) as info:
        TDMPCPolicy(config)
    assert info.value.field == "policy.input_features" and "Fix:" in str(info.value)


# -- xArm expert -----------------------------------------------------------------------------------------------

def _require_xarm() -> None:
    """Skip without MuJoCo or gym-xarm's scene files; found without importing mujoco, which must see MUJOCO_GL
    (robotrain's env modules set it) at its first import."""
    if importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("gym_xarm") is None:
        pytest.skip("xArm needs mujoco and `pip install --no-deps gym-xarm==0.1.1`")


@pytest.mark.sim
@pytest.mark.parametrize("seed", [0, 1000])
def test_xarm_expert_lifts_the_cube(seed):
    _require_xarm()
    from robotrain.envs.configs import XarmEnv
    from robotrain.envs.experts import demonstrate

    demo = demonstrate(XarmEnv(), seed, render=False)
    assert demo.success and demo.successes[-1] and not demo.successes[:-1].any()  # the env ends at success
    assert len(demo) < 150 and demo.actions.shape == (len(demo), 4) and np.abs(demo.actions).max() <= 1.0
    assert demo.observations[OBS_STATE].shape == (len(demo), 4) and OBS_IMAGE not in demo.observations
    assert demo.rewards[-1] > 0.7 > demo.rewards[0]  # the shaped reward grows as the cube rises
    again = demonstrate(XarmEnv(), seed, render=False)
    assert np.array_equal(again.actions, demo.actions)


@pytest.mark.sim
@pytest.mark.slow
def test_xarm_recording_feeds_tdmpc(tmp_path):
    """Two short expert episodes recorded with their camera (through the env a policy is evaluated in), then one
    TD-MPC training step on them: the dataset carries next.reward and the policy's time windows."""
    _require_xarm()
    from robotrain.datasets.dataset import LeRobotDataset
    from robotrain.envs.configs import XarmEnv
    from robotrain.envs.experts import demonstrate
    from robotrain.envs.record import RecordSimConfig, record_sim
    from robotrain.policies.factory import make_policy as build
    from robotrain.training.setup import delta_timestamps

    env = XarmEnv(episode_length=20)
    rendered = demonstrate(env, 3)
    assert np.array_equal(rendered.actions, demonstrate(env, 3, render=False).actions)  # same simulation
    assert rendered.observations[OBS_IMAGE].shape == (20, 84, 84, 3)
    report = record_sim(RecordSimConfig(env=env, repo_id="local/xarm", root=tmp_path / "xarm", num_episodes=2,
                                        keep_failed=True, num_workers=0, vcodec="h264"))
    assert report.episodes == 2
    config = TDMPCConfig(**{**TINY, "horizon": 5})
    dataset = LeRobotDataset("local/xarm", root=tmp_path / "xarm")
    policy = build(config, ds_meta=dataset.meta)
    windows = LeRobotDataset("local/xarm", root=tmp_path / "xarm",
                             delta_timestamps=delta_timestamps(config, dataset.meta))
    batch = torch.utils.data.default_collate([windows[i] for i in (0, 17, 25)])
    assert batch[REWARD].shape == (3, 5) and batch[pad_key(REWARD)][1, 3:].all()
    loss, _ = policy.forward(batch)
    assert torch.isfinite(loss)


# -- LeRobot parity --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_matches_lerobot_on_checkpoints_it_saved(tmp_path):
    """LeRobot saves two tiny TD-MPC checkpoints (mpc: planner, 5 Qs; pi: policy head, env state, deterministic loss)
    and computes latents, heads, seeded actions and (pi) the training loss; robotrain loads the same directories."""
    if not PEER_PYTHON.exists():
        pytest.skip(f"the LeRobot peer venv is absent ({PEER_PYTHON}); build it with ../shared/peer/setup_lerobot.sh")
    script = Path(__file__).with_name("peer_tdmpc.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(PEER_PYTHON), str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    for name in ("mpc", "pi"):
        io = load_file(tmp_path / name / "io.safetensors")
        policy = Policy.from_pretrained(tmp_path / name)
        assert isinstance(policy, TDMPCPolicy)
        steps = sorted({int(key.split(".")[1]) for key in io if key.startswith("step.")})
        observations = [{key.split(".", 2)[2]: value for key, value in io.items() if key.startswith(f"step.{t}.")}
                        for t in steps]
        close = {"rtol": 0, "atol": 1e-5}
        with torch.no_grad():
            z = policy.encode_observation(observations[0])
            torch.testing.assert_close(z, io["latent"], **close)
            probe = io["probe_action"]
            torch.testing.assert_close(policy.model.Qs(z, probe), io["q"], **close)
            torch.testing.assert_close(policy.model.V(z), io["v"], **close)
            torch.testing.assert_close(policy.model.pi(z), io["pi"], **close)
            next_z, reward = policy.model.next_latent_and_reward(z, probe)
            torch.testing.assert_close(next_z, io["next_latent"], **close)
            torch.testing.assert_close(reward, io["reward"], **close)
        assert io["q"].abs().max() > 0.1  # not the zero-initialized heads
        torch.manual_seed(7)  # the peer's ACTION_SEED: the planner draws the same numbers in the same order
        policy.reset()
        normalize = policy.normalizer.normalize
        for t, obs in enumerate(observations):
            ours, theirs = policy.select_action(obs), io[f"action.{t}"]
            assert np.abs(theirs.numpy()).max() > 1  # in dataset units
            torch.testing.assert_close(normalize({ACTION: ours})[ACTION], normalize({ACTION: theirs})[ACTION],
                                       **close)
        if name == "pi":
            batch = {key.split(".", 1)[1]: value for key, value in io.items() if key.startswith("train.")}
            policy.train()
            loss, metrics = policy.forward(batch)
            assert loss.item() == pytest.approx(io["loss.loss"].item(), rel=1e-5)
            for key in ("consistency_loss", "reward_loss", "Q_value_loss", "V_value_loss", "pi_loss"):
                assert metrics[key] == pytest.approx(io[f"loss.{key}"].item(), rel=1e-5), key
