"""Diffusion Policy: schedulers against their closed forms, the model's contracts, queues, EMA, cropping rule."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robotrain.configs.types import FeatureType, PolicyFeature
from robotrain.errors import ConfigError, UserError
from robotrain.policies import DiffusionConfig, DiffusionPolicy, make_policy
from robotrain.policies.diffusion.modeling import center_crop, random_crop
from robotrain.policies.diffusion.noise import NoiseScheduler, leading_timesteps, make_betas
from robotrain.policies.diffusion.unet import GemmConv1d
from robotrain.policies.ema import EMA

VISUAL, STATE, ENV, ACTION = FeatureType.VISUAL, FeatureType.STATE, FeatureType.ENV, FeatureType.ACTION
TINY = {"horizon": 8, "n_action_steps": 4, "down_dims": (16, 32), "kernel_size": 3, "n_groups": 4,
        "diffusion_step_embed_dim": 8, "spatial_softmax_num_keypoints": 4, "num_train_timesteps": 10,
        "crop_shape": (20, 20)}
STATS = {"observation.image": {"mean": np.full((3, 1, 1), 0.5), "std": np.full((3, 1, 1), 0.25)},
         "observation.images.left": {"mean": np.full((3, 1, 1), 0.4), "std": np.full((3, 1, 1), 0.2)},
         "observation.state": {"min": -np.ones(3), "max": np.ones(3)},
         "observation.environment_state": {"min": -np.ones(4), "max": 2 * np.ones(4)},
         "action": {"min": -2 * np.ones(2), "max": 2 * np.ones(2)}}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine every parallel op waits for a time slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(image=(3, 24, 24), state=3, action=2, cameras=("observation.image",), env=None):
    inputs = {cam: PolicyFeature(VISUAL, image) for cam in cameras}
    inputs["observation.state"] = PolicyFeature(STATE, (state,))
    if env:
        inputs["observation.environment_state"] = PolicyFeature(ENV, (env,))
    return {"input_features": inputs, "output_features": {"action": PolicyFeature(ACTION, (action,))}}


def tiny_policy(seed: int = 0, **overrides) -> DiffusionPolicy:
    torch.manual_seed(seed)
    config = DiffusionConfig(**{**TINY, **features(), **overrides})
    policy = DiffusionPolicy(config)
    policy.load_stats(STATS)
    return policy


def make_batch(policy: DiffusionPolicy, batch_size: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = policy.config
    batch = {k: torch.rand(batch_size, cfg.n_obs_steps, *f.shape, generator=g) for k, f in cfg.input_features.items()}
    batch["action"] = torch.randn(batch_size, cfg.horizon, cfg.output_features["action"].shape[0], generator=g)
    batch["action_is_pad"] = torch.zeros(batch_size, cfg.horizon, dtype=torch.bool)
    return batch


def observation(batch: dict, step: int) -> dict:
    """One env-like observation (no step axis) taken from a training batch."""
    return {k: v[:, step] for k, v in batch.items() if k.startswith("observation.")}


# ---------------------------------------------------------------------------------------------- noise schedulers
def cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def test_squaredcos_alphas_cumprod_match_the_closed_form():
    sched = NoiseScheduler("DDPM", 100, "squaredcos_cap_v2")
    acp = sched.alphas_cumprod.double()
    # The product of (1 - beta_i) telescopes to alpha_bar((t+1)/T) / alpha_bar(0) while no beta is capped.
    expected = torch.tensor([cosine_alpha_bar((t + 1) / 100) / cosine_alpha_bar(0) for t in range(99)],
                            dtype=torch.float64)
    torch.testing.assert_close(acp[:99], expected, rtol=2e-5, atol=1e-9)
    assert sched.betas[-1].item() == pytest.approx(0.999)  # capped: alpha_bar(1) = 0
    # Values diffusers' DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2") holds.
    reference = [0.99936873, 0.99825251, 0.47826457, 0.00024286, 2.42854e-07]
    assert acp[[0, 1, 50, 98, 99]].tolist() == pytest.approx(reference, rel=2e-5)


def test_linear_and_scaled_linear_betas():
    torch.testing.assert_close(make_betas("linear", 100, 1e-4, 0.02), torch.linspace(1e-4, 0.02, 100))
    torch.testing.assert_close(make_betas("scaled_linear", 10, 1e-4, 0.02),
                               torch.linspace(1e-2, 0.02**0.5, 10) ** 2)
    acp = NoiseScheduler("DDPM", 100, "linear").alphas_cumprod
    assert acp[[0, 50, 99]].tolist() == pytest.approx([0.99989998, 0.76929128, 0.36356324], rel=1e-6)


def test_leading_timestep_spacing():
    assert leading_timesteps(100, 10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert leading_timesteps(100, 100) == list(range(99, -1, -1))
    assert leading_timesteps(100, 30)[:3] == [87, 84, 81] and leading_timesteps(100, 30)[-1] == 0
    assert NoiseScheduler("DDIM", 100).timesteps(4) == [75, 50, 25, 0]


def test_add_noise_closed_form():
    sched = NoiseScheduler("DDPM", 100)
    x0, eps = torch.randn(3, 8, 2), torch.randn(3, 8, 2)
    t = torch.tensor([0, 42, 99])
    acp = sched.alphas_cumprod[t].view(3, 1, 1)
    torch.testing.assert_close(sched.add_noise(x0, eps, t), acp.sqrt() * x0 + (1 - acp).sqrt() * eps)


def test_ddpm_step_on_known_values():
    sched = NoiseScheduler("DDPM", 100, prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)
    x = torch.tensor([[[0.3, -2.0], [1.5, 0.1]]])
    eps = torch.tensor([[[0.2, -0.4], [-1.0, 0.5]]])
    acp = sched.alphas_cumprod.double()
    a, a_prev = acp[50], acp[49]
    beta = 1 - a / a_prev
    x0 = ((x.double() - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    mean = a_prev.sqrt() * beta / (1 - a) * x0 + (a / a_prev).sqrt() * (1 - a_prev) / (1 - a) * x.double()
    std = ((1 - a_prev) / (1 - a) * beta).sqrt()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = sched.step(eps, 50, x, 100, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.double(), mean + std * noise.double(), rtol=1e-5, atol=1e-6)
    # The last step (t = 0) adds no noise and returns the clipped x0 estimate's posterior mean, i.e. x0.
    last = sched.step(eps, 0, x, 100)
    x0_last = ((x.double() - (1 - acp[0]).sqrt() * eps) / acp[0].sqrt()).clamp(-1, 1)
    torch.testing.assert_close(last.double(), x0_last, rtol=1e-5, atol=1e-6)


def test_ddim_step_on_known_values():
    x = torch.tensor([[[0.3, -0.2], [0.5, 0.1]]])
    out_eps = torch.tensor([[[0.2, -0.4], [-1.0, 0.5]]])
    sched = NoiseScheduler("DDIM", 100, prediction_type="epsilon")
    acp = sched.alphas_cumprod.double()
    a, a_prev = acp[90], acp[80]  # 10 steps: 90 -> 80
    x0 = ((x.double() - (1 - a).sqrt() * out_eps) / a.sqrt()).clamp(-1, 1)
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * out_eps  # eta = 0: deterministic
    torch.testing.assert_close(sched.step(out_eps, 90, x, 10).double(), expected, rtol=1e-5, atol=1e-6)
    # Predicting the sample: eps is derived from the unclipped x0; the step before t = 0 lands on alpha_bar = 1.
    sample_sched = NoiseScheduler("DDIM", 100, prediction_type="sample", clip_sample=False)
    x0_pred = torch.tensor([[[0.9, -0.1], [0.2, 0.4]]])
    assert torch.allclose(sample_sched.step(x0_pred, 0, x, 10), x0_pred, atol=1e-6)


def test_sampling_is_seeded_and_deterministic_for_ddim():
    def denoise(x, t):
        return torch.tanh(x) * 0.1

    noise = torch.randn(2, 8, 2)
    ddpm = NoiseScheduler("DDPM", 10)
    a = ddpm.sample(denoise, noise, 10, torch.Generator().manual_seed(0))
    b = ddpm.sample(denoise, noise, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.abs().max() <= 1.0 + 1e-6
    ddim = NoiseScheduler("DDIM", 10)
    assert torch.equal(ddim.sample(denoise, noise, 5), ddim.sample(denoise, noise, 5))


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(5, 1, 2), (3, 2, 1), (1, 1, 0)])
def test_gemm_convolution_equals_conv1d(kernel, stride, padding):
    torch.manual_seed(0)
    gemm = GemmConv1d(6, 4, kernel, stride, padding)
    conv = torch.nn.Conv1d(6, 4, kernel, stride, padding)
    conv.load_state_dict(gemm.state_dict())
    x = torch.randn(3, 6, 8, requires_grad=True)
    torch.testing.assert_close(gemm(x), conv(x))
    (grad_gemm,) = torch.autograd.grad(gemm(x).square().sum(), x)
    (grad_conv,) = torch.autograd.grad(conv(x).square().sum(), x)
    torch.testing.assert_close(grad_gemm, grad_conv)


def test_parameter_count_equals_lerobots_at_the_published_config():
    # LeRobot 0.4.4's DiffusionPolicy with the published diffusion_pusht settings (horizon 16, n_action_steps 8,
    # crop 84x84, group norm, no pretrained weights, one shared encoder) has exactly these many parameters.
    with torch.device("meta"):
        pusht = DiffusionPolicy(DiffusionConfig(**features(image=(3, 96, 96), state=2, action=2)))
        aloha = DiffusionPolicy(DiffusionConfig(**features(image=(3, 480, 640), state=14, action=14,
                                                           cameras=("observation.images.top",))))
    assert sum(p.numel() for p in pusht.parameters()) == 262_709_026
    assert sum(p.numel() for p in aloha.parameters()) == 263_440_174
    assert pusht.config.crop_shape == (84, 84) and aloha.config.crop_shape == (420, 560)


def test_tiny_forward_backward_reaches_every_parameter():
    policy = tiny_policy()
    loss, metrics = policy.forward(make_batch(policy))
    assert loss.ndim == 0 and torch.isfinite(loss) and metrics == {}
    loss.backward()
    for name, param in policy.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_two_cameras_env_state_and_separate_encoders():
    cfg = {**features(cameras=("observation.image", "observation.images.left"), env=4),
           "use_separate_rgb_encoder_per_camera": True, "noise_scheduler_type": "DDIM", "num_inference_steps": 3}
    policy = tiny_policy(**cfg)
    assert len(policy.diffusion.rgb_encoder) == 2
    batch = make_batch(policy, batch_size=3)
    loss, _ = policy.forward(batch)
    loss.backward()
    policy.eval()
    assert policy.select_action(observation(batch, 0)).shape == (3, 2)
    assert policy.predict_action_chunk(batch).shape == (3, 4, 2)


def test_other_state_vectors_are_not_inputs():
    cfg = features()
    cfg["input_features"]["observation.effort"] = PolicyFeature(STATE, (5,))
    policy = tiny_policy(**cfg).eval()  # no statistics for observation.effort are needed
    batch = make_batch(policy)
    loss, _ = policy.forward(batch)
    obs = observation(batch, 0)
    del obs["observation.effort"]
    assert policy.select_action(obs).shape == (2, 2)


def test_crops_are_batched_random_per_image_and_centered_in_eval():
    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    torch.manual_seed(0)
    crops = random_crop(images.repeat(16, 1, 1, 1), (4, 5))
    assert crops.shape == (32, 3, 4, 5) and crops.is_contiguous(memory_format=torch.channels_last)
    tops_lefts = {(int(c[0, 0, 0]) % 48 // 8, int(c[0, 0, 0]) % 8) for c in crops}
    assert len(tops_lefts) > 1  # independent windows
    for crop in crops:  # each is a window of its source image
        top, left = int(crop[0, 0, 0]) % 48 // 8, int(crop[0, 0, 0]) % 8
        source = images[0] if crop[0, 0, 0] < 144 else images[1]
        assert torch.equal(crop, source[:, top:top + 4, left:left + 5])
    assert torch.equal(center_crop(images, (4, 4)), images[..., 1:5, 2:6])  # as torchvision's CenterCrop


def test_save_load_gives_identical_actions(tmp_path):
    policy = tiny_policy()
    batch = make_batch(policy)
    policy.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["type"] == "diffusion" and saved["crop_shape"] == [20, 20]
    loaded = DiffusionPolicy.from_pretrained(tmp_path)
    policy.eval()
    actions = []
    for p in (policy, loaded):
        p.reset()
        torch.manual_seed(7)
        actions.append(torch.stack([p.select_action(observation(batch, i % 2)) for i in range(6)]))
    assert torch.equal(actions[0], actions[1])
    faster = DiffusionPolicy.from_pretrained(tmp_path, noise_scheduler_type="DDIM", num_inference_steps=2)
    assert faster.diffusion.num_inference_steps == 2 and faster.diffusion.noise_scheduler.kind == "DDIM"


def test_select_action_queue_matches_an_offline_computation():
    policy = tiny_policy().eval()
    batch = make_batch(policy, seed=1)
    frames = [{k: v + i for k, v in observation(batch, i % 2).items()} for i in range(6)]

    def seeded():
        return torch.Generator().manual_seed(5)

    policy.reset()
    online = [policy.select_action(frame, generator=seeded()) for frame in frames]

    def history(a, b):
        return {k: torch.stack([a[k], b[k]], dim=1) for k in a}

    # n_obs_steps 2, n_action_steps 4: chunks at steps 0 (first frame duplicated) and 4 (frames 3 and 4).
    first = policy.predict_action_chunk(history(frames[0], frames[0]), generator=seeded())
    second = policy.predict_action_chunk(history(frames[3], frames[4]), generator=seeded())
    expected = [*first.unbind(1), *second.unbind(1)][:6]
    for got, want in zip(online, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_actions_are_taken_from_the_current_observation_on(monkeypatch):
    policy = tiny_policy(**{**features(), "n_obs_steps": 3, "n_action_steps": 5}).eval()
    horizon = policy.config.horizon
    fake = torch.linspace(-1, 1, horizon).view(1, horizon, 1).expand(2, horizon, 2)
    monkeypatch.setattr(policy.diffusion.noise_scheduler, "sample", lambda *args, **kwargs: fake)
    chunk = policy.predict_action_chunk(make_batch(policy))
    torch.testing.assert_close(chunk, policy.normalizer.unnormalize("action", fake[:, 2:7]))


def test_masked_loss_ignores_padding():
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["pred"] = output

    for mask in (True, False):
        policy = tiny_policy(do_mask_loss_for_padding=mask, prediction_type="sample")
        policy.diffusion.unet.register_forward_hook(keep)
        batch = make_batch(policy)
        batch["action_is_pad"][:, -3:] = True
        loss, _ = policy.forward(batch)
        loss.backward()
        pred, target = captured["pred"], policy.normalizer.normalize(batch)["action"]
        weight = (~batch["action_is_pad"]).unsqueeze(-1) if mask else 1.0
        torch.testing.assert_close(loss, ((pred - target) ** 2 * weight).mean())
        padded_grad = pred.grad[:, -3:].abs().sum()
        assert (padded_grad == 0) == mask and pred.grad[:, :-3].abs().sum() > 0


def test_seeded_numeric_regression():
    policy = tiny_policy(seed=0, noise_scheduler_type="DDIM", num_inference_steps=4)
    batch = make_batch(policy, seed=0)
    torch.manual_seed(1)
    loss, _ = policy.forward(batch)
    actions = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(2))
    assert loss.item() == pytest.approx(REGRESSION_LOSS, rel=1e-4)
    assert actions[0, 0].tolist() == pytest.approx(REGRESSION_ACTION, rel=1e-4, abs=1e-5)


# Measured once with this code (CPU, torch 2.13); a change means the model or its random draws changed.
REGRESSION_LOSS = 1.2312665
REGRESSION_ACTION = [-1.6646738, -1.9616029]


def test_missing_inputs_and_wrong_horizon_are_user_errors():
    policy = tiny_policy()
    batch = make_batch(policy)
    with pytest.raises(UserError, match="observation.state"):
        policy.select_action({"observation.image": batch["observation.image"][:, 0]})
    short = {**batch, "action": batch["action"][:, :4], "action_is_pad": batch["action_is_pad"][:, :4]}
    with pytest.raises(UserError, match="horizon is 8"):
        policy.forward(short)


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_decay_schedule_and_swap():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, power=0.75, max_decay=0.9999)
    # As the paper's EMAModel: 0 for the first two updates, then 1 - (1 + step) ** -0.75 up to 0.9999.
    assert ema.decay(0) == ema.decay(1) == 0.0 and ema.decay(2) == pytest.approx(1 - 2**-0.75)
    assert ema.decay(10**9) == 0.9999
    ema.update(model)
    ema.update(model)  # decay 0 twice: the average is the weights
    raw = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = ema.decay(2)
    expected = d * raw + (1 - d) * (raw + 1)
    with ema.applied(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), raw + 1)  # raw weights are back
    assert int(ema.step) == 3


def test_ema_weights_are_saved_used_for_acting_and_optional_in_checkpoints(tmp_path):
    policy = tiny_policy(use_ema=True)
    batch = make_batch(policy)
    optimizer = torch.optim.SGD(policy.get_optim_params(), lr=0.5)
    for _ in range(3):
        policy.forward(batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
        policy.update()
    assert int(policy.ema.step) == 3 and any(k.startswith("ema.") for k in policy.state_dict())
    raw = {n: p.detach().clone() for n, p in policy.diffusion.named_parameters()}
    policy.eval()
    torch.manual_seed(0)
    with_ema = policy.predict_action_chunk(batch)
    assert all(torch.equal(p, raw[n]) for n, p in policy.diffusion.named_parameters())  # swapped back
    policy.save_pretrained(tmp_path)
    loaded = DiffusionPolicy.from_pretrained(tmp_path)
    torch.manual_seed(0)
    assert torch.equal(loaded.predict_action_chunk(batch), with_ema)
    # Fine-tuning with use_ema from weights saved without an average: it starts from the loaded weights.
    plain = tmp_path / "plain"
    tiny_policy().save_pretrained(plain)
    fresh = DiffusionPolicy.from_pretrained(plain, use_ema=True)
    assert int(fresh.ema.step) == 0


# ---------------------------------------------------------------------------------------------- config
def test_cropping_rule(caplog):
    def settled(image, **kw):
        cfg = DiffusionConfig(**features(image=image), **kw)
        cfg.validate()
        cfg.validate_features()
        return cfg.crop_shape

    assert settled((3, 96, 96)) == (84, 84)  # the published setting
    with caplog.at_level(logging.INFO):
        assert settled((3, 480, 640)) == (420, 560)  # 7/8 of each side, as 84/96
    assert "crop_shape not set" in caplog.text
    assert settled((3, 480, 640), crop_shape=(84, 84)) == (84, 84)  # what the user set stays
    assert settled((3, 480, 640), crop_ratio=0.9) == (432, 576)
    assert settled((3, 480, 640), crop_ratio=1.0) is None
    assert settled((3, 480, 640), resize_shape=(240, 320)) == (210, 280)
    assert settled((3, 480, 640), crop_shape=None) is None
    with pytest.raises(ConfigError, match="crop_shape"):
        settled((3, 96, 96), crop_shape=(100, 84))
    with pytest.raises(ConfigError, match="set only one of crop_shape and crop_ratio"):
        settled((3, 96, 96), crop_shape=(80, 80), crop_ratio=0.5)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="horizon"):
        DiffusionConfig(horizon=12).validate()
    with pytest.raises(ConfigError, match="n_action_steps"):
        DiffusionConfig(horizon=16, n_action_steps=16).validate()
    with pytest.raises(ConfigError, match="camera or observation.environment_state"):
        DiffusionConfig(input_features={"observation.state": PolicyFeature(STATE, (2,))},
                        output_features={"action": PolicyFeature(ACTION, (2,))}).validate_features()
    cams = features(cameras=("observation.image", "observation.images.left"))
    cams["input_features"]["observation.images.left"] = PolicyFeature(VISUAL, (3, 32, 32))
    with pytest.raises(ConfigError, match="resize_shape"):
        DiffusionConfig(**cams).validate_features()
    DiffusionConfig(**cams, resize_shape=(24, 24)).validate_features()


def test_make_policy_from_a_pusht_like_dataset():
    meta = SimpleNamespace(
        repo_id="local/pusht",
        features={"observation.image": {"dtype": "video", "shape": [24, 24, 3],
                                        "names": ["height", "width", "channel"]},
                  "observation.state": {"dtype": "float32", "shape": [3], "names": None},
                  "action": {"dtype": "float32", "shape": [2], "names": None}},
        stats=STATS)
    policy = make_policy(DiffusionConfig(device="cpu", **TINY), ds_meta=meta)
    assert isinstance(policy, DiffusionPolicy)
    loss, _ = policy.forward(make_batch(policy))
    loss.backward()
    assert policy.select_action(observation(make_batch(policy), 0)).shape == (2, 2)


def test_aloha_sized_frames_train_with_default_crop():
    policy = tiny_policy(**{**features(image=(3, 480, 640), state=3), "crop_shape": DiffusionConfig().crop_shape})
    assert policy.config.crop_shape == (420, 560)
    batch = make_batch(policy, batch_size=1)
    loss, _ = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss)
