"""Simulation envs: build, reset and step headless; observations -> batches; success; the errors a user can hit."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from robotrain.configs.types import FeatureType, PolicyFeature
from robotrain.envs import AlohaEnv, EnvConfig, PushtEnv, XarmEnv, factory
from robotrain.envs.factory import (
    check_policy_features,
    episode_success,
    make_env,
    make_single_env,
    preprocess_observation,
    render_frames,
    task_description,
)
from robotrain.errors import ConfigError, UserError

# xArm's scene files come from a separate install (see docs/envs.md); without them its tests are skipped.
needs_xarm = pytest.mark.skipif(importlib.util.find_spec("gym_xarm") is None,
                                reason="xArm scene files missing: pip install --no-deps gym-xarm==0.1.1")
ALL_CONFIGS = [
    pytest.param(PushtEnv(), id="pusht-pixels"),
    pytest.param(PushtEnv(obs_type="environment_state_agent_pos"), id="pusht-state"),
    pytest.param(AlohaEnv(), id="aloha-insertion"),
    pytest.param(AlohaEnv(task="AlohaTransferCube-v0", obs_type="pixels"), id="aloha-transfer-pixels"),
    pytest.param(XarmEnv(), id="xarm", marks=needs_xarm),
]
VIDEO_SIZE = {"pusht": (384, 384), "aloha": (480, 640), "xarm": (384, 384)}


def assert_batch_matches(batch: dict[str, torch.Tensor], cfg: EnvConfig, n_envs: int) -> None:
    """Keys, shapes, dtypes and ranges as cfg.features declares them."""
    assert set(batch) == set(cfg.input_features)
    for key, feature in cfg.input_features.items():
        tensor = batch[key]
        assert tensor.shape == (n_envs, *feature.shape), key
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), key
        if feature.type is FeatureType.VISUAL:
            assert tensor.min() >= 0.0 and tensor.max() <= 1.0 and tensor.max() > 0.0, key


# -- every env, headless -----------------------------------------------------------------------------------------

@pytest.mark.sim
@pytest.mark.parametrize("cfg", ALL_CONFIGS)
def test_reset_step_render(cfg: EnvConfig):
    env = make_env(cfg, n_envs=1)
    try:
        assert isinstance(env, SyncVectorEnv)
        obs, info = env.reset(seed=0)
        assert_batch_matches(preprocess_observation(obs, cfg), cfg, 1)
        assert episode_success(info).tolist() == [False]
        for _ in range(2):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert_batch_matches(preprocess_observation(obs, cfg), cfg, 1)
        assert reward.shape == terminated.shape == truncated.shape == (1,)
        assert episode_success(info).shape == (1,)
        (frame,) = render_frames(env)
        assert frame.shape == (*VIDEO_SIZE[cfg.type], 3) and frame.dtype == np.uint8
        assert env.action_space.shape == (1, *cfg.output_features["action"].shape)
    finally:
        env.close()


@pytest.mark.sim
@needs_xarm
def test_single_env_seeded_reset_is_reproducible():
    env = make_single_env(XarmEnv())
    try:
        first, _ = env.reset(seed=3)
        env.step(env.action_space.sample())
        again, _ = env.reset(seed=3)
        other, _ = env.reset(seed=4)
    finally:
        env.close()
    np.testing.assert_array_equal(first["agent_pos"], again["agent_pos"])
    np.testing.assert_array_equal(first["pixels"], again["pixels"])
    assert not np.array_equal(first["agent_pos"], other["agent_pos"])


@pytest.mark.sim
def test_aloha_renders_only_the_top_camera_and_observes_the_same():
    cfg = AlohaEnv(task="AlohaTransferCube-v0")
    import gymnasium as gym

    factory.import_sim(cfg)
    stock = gym.make(cfg.gym_id, disable_env_checker=True, **cfg.gym_kwargs)
    ours = make_single_env(cfg)
    try:
        expected, _ = stock.reset(seed=7)
        got, _ = ours.reset(seed=7)
    finally:
        stock.close()
        ours.close()
    np.testing.assert_array_equal(got["agent_pos"], expected["agent_pos"])
    # gym-aloha notes its renders differ slightly between runs even when seeded
    diff = np.abs(got["pixels"]["top"].astype(int) - expected["pixels"]["top"].astype(int))
    assert diff.mean() < 1.0


@pytest.mark.sim
@pytest.mark.slow
@needs_xarm
def test_xarm_scripted_lift_succeeds():
    """Approach from above, descend, close, lift: is_success fires (gym-xarm 0.1.1's never does)."""
    env = make_single_env(XarmEnv(obs_type="pixels"))
    try:
        env.reset(seed=1)
        lift = env.unwrapped
        for step in range(200):
            to_cube = lift.obj - lift.eef
            if step < 40:
                action = np.r_[np.clip((to_cube + [0, 0, 0.08]) * 20, -1, 1), -1]
            elif step < 70:
                action = np.r_[np.clip(to_cube * 20, -1, 1), -1]
            else:
                action = np.r_[0, 0, float(step >= 90), 1]
            _, reward, terminated, _, info = env.step(action.astype(np.float32))
            if terminated:
                break
    finally:
        env.close()
    assert terminated and info["is_success"] and reward > 0.7


# -- vector envs -------------------------------------------------------------------------------------------------

@pytest.mark.sim
def test_sync_vector_env_autoresets_on_the_next_step():
    cfg = PushtEnv(obs_type="environment_state_agent_pos", episode_length=2)
    env = make_env(cfg, n_envs=2)
    try:
        assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        env.reset(seed=[10, 11])
        env.step(env.action_space.sample())
        _, _, _, truncated, info = env.step(env.action_space.sample())
        assert truncated.tolist() == [True, True] and episode_success(info).shape == (2,)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())  # resets, ignores the action
        assert reward.tolist() == [0.0, 0.0] and not terminated.any() and not truncated.any()
        assert preprocess_observation(obs, cfg)["observation.state"].shape == (2, 2)
    finally:
        env.close()


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("cfg", [pytest.param(PushtEnv(), id="pusht"),
                                 pytest.param(XarmEnv(), id="xarm", marks=needs_xarm)])
def test_async_vector_env(cfg: EnvConfig):
    env = make_env(cfg, n_envs=2, use_async=True)
    try:
        assert isinstance(env, AsyncVectorEnv)
        obs, _ = env.reset(seed=0)
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert_batch_matches(preprocess_observation(obs, cfg), cfg, 2)
        assert episode_success(info).shape == (2,)
        assert [f.shape for f in render_frames(env)] == [(*VIDEO_SIZE[cfg.type], 3)] * 2
    finally:
        env.close()


# -- errors ------------------------------------------------------------------------------------------------------

def test_unknown_task_names_the_flag():
    with pytest.raises(ConfigError, match=r"--env\.task=AlohaInsert-v0.*did you mean --env\.task=AlohaInsertion-v0"):
        make_env(AlohaEnv(task="AlohaInsert-v0"))


@pytest.mark.parametrize(("cfg", "package", "extra"), [
    (AlohaEnv(), "dm_control", "pip install 'robotrain[sim]'"),
    (PushtEnv(), "pymunk", "pip install 'robotrain[sim]'"),
])
def test_missing_sim_package_names_the_extra(monkeypatch, cfg, package, extra):
    real_import = importlib.import_module

    def failing_import(name, *args):
        if name in factory.SIM_MODULES[cfg.type]:
            raise ModuleNotFoundError(f"No module named '{package}'", name=package)
        return real_import(name, *args)

    monkeypatch.setattr(factory.importlib, "import_module", failing_import)
    with pytest.raises(ConfigError) as caught:
        make_single_env(cfg)
    message = str(caught.value)
    assert f"--env.type={cfg.type}" in message and f"'{package}'" in message and extra in message


def test_missing_xarm_scene_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gym_xarm" else real_find_spec(name, *a))
    with pytest.raises(UserError, match=r"--env\.type=xarm.*pip install --no-deps gym-xarm==0\.1\.1"):
        make_single_env(XarmEnv())


def test_rendering_failure_names_mujoco_gl(monkeypatch):
    def broken(backend):
        raise RuntimeError("Cannot initialize a EGL device display")

    monkeypatch.setattr(factory, "_probe_opengl", broken)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    with pytest.raises(UserError) as caught:
        make_env(AlohaEnv())
    message = str(caught.value)
    assert "MUJOCO_GL=egl" in message and "EGL device" in message and "MUJOCO_GL=osmesa" in message


@pytest.mark.sim
@pytest.mark.slow
@needs_xarm
def test_headless_glfw_gives_the_mujoco_gl_fix(tmp_path):
    """A real failure: GLFW without a display, in a fresh process (MuJoCo reads MUJOCO_GL once, at import)."""
    code = ("from robotrain.envs import XarmEnv\nfrom robotrain.envs.factory import make_single_env\n"
            "make_single_env(XarmEnv())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MUJOCO_GL"] = "glfw"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode != 0
    assert "UserError" in result.stderr and "MUJOCO_GL=glfw" in result.stderr and "MUJOCO_GL=egl" in result.stderr


def test_policy_input_missing_from_env_suggests_obs_type():
    inputs = {"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
              "observation.state": PolicyFeature(FeatureType.STATE, (2,))}
    with pytest.raises(UserError, match=r"observation\.image \(3, 96, 96\).*--env\.obs_type=pixels_agent_pos"):
        check_policy_features(PushtEnv(obs_type="environment_state_agent_pos"), inputs)
    check_policy_features(PushtEnv(), inputs)  # the default obs_type feeds it


def test_policy_input_with_another_shape_names_both_shapes():
    inputs = {"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 84, 84))}
    with pytest.raises(UserError) as caught:
        check_policy_features(PushtEnv(), inputs)
    message = str(caught.value)
    assert "observation.image (3, 84, 84)" in message and "observation.image (3, 96, 96)" in message
    assert "--env.type=xarm" in message  # xArm's camera is 84x84


def test_policy_for_another_env_suggests_it():
    with pytest.raises(UserError, match=r"observation\.images\.top.*--env\.type=aloha"):
        check_policy_features(PushtEnv(), AlohaEnv().input_features)
    check_policy_features(AlohaEnv(obs_type="pixels"), {**AlohaEnv(obs_type="pixels").input_features,
                                                       "task": PolicyFeature(FeatureType.LANGUAGE, (1,))})


# -- pure functions ----------------------------------------------------------------------------------------------

def test_preprocess_nested_observation_converts_once():
    rng = np.random.default_rng(0)
    raw = {"pixels": {"top": rng.integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)},
           "agent_pos": rng.normal(size=(2, 14))}
    batch = preprocess_observation(raw, AlohaEnv())
    assert_batch_matches(batch, AlohaEnv(), 2)
    expected = torch.from_numpy(raw["pixels"]["top"]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(batch["observation.images.top"], expected, rtol=0, atol=0)
    torch.testing.assert_close(batch["observation.state"], torch.from_numpy(raw["agent_pos"]).float())


def test_preprocess_rejects_unbatched_or_mismatched_observations():
    with pytest.raises(ValueError, match=r"observation\.image.*\(B, H, W, 3\) uint8"):
        preprocess_observation({"pixels": np.zeros((96, 96, 3), np.uint8), "agent_pos": np.zeros((1, 2))},
                               PushtEnv())
    with pytest.raises(ValueError, match=r"observation\.state: the env gives shape \(3,\)"):
        preprocess_observation({"pixels": np.zeros((1, 96, 96, 3), np.uint8), "agent_pos": np.zeros((1, 3))},
                               PushtEnv())
    with pytest.raises(ValueError, match=r"'qvel' has no feature"):
        preprocess_observation({"qvel": np.zeros((1, 14))}, AlohaEnv())


def test_episode_success_reads_masks_and_final_info():
    info = {"is_success": np.array([True, True, False]), "_is_success": np.array([True, False, True])}
    assert episode_success(info).tolist() == [True, False, False]
    same_step = {"is_success": np.array([False, False]), "_is_success": np.array([True, True]),
                 "final_info": {"is_success": np.array([False, True]), "_is_success": np.array([False, True])},
                 "_final_info": np.array([False, True])}
    assert episode_success(same_step).tolist() == [False, True]
    with pytest.raises(ValueError, match="is_success"):
        episode_success({})


def test_task_descriptions_and_features_come_from_the_config():
    assert task_description(PushtEnv()) == "Push the T-shaped block onto the target."
    assert task_description(AlohaEnv(task="AlohaTransferCube-v0")).startswith("Pick up the cube")
    assert task_description(AlohaEnv()) == "Insert the peg into the socket."
    assert task_description(XarmEnv()) == "Lift the cube."
    assert set(AlohaEnv().input_features) == {"observation.images.top", "observation.state"}
    assert AlohaEnv().output_features["action"].shape == (14,)
    assert XarmEnv().gym_id == "robotrain/XarmLift-v0"
