"""ALOHA scripted experts: they succeed, are deterministic, and record the scene gym-aloha's own env shows."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("gym_aloha")

from robotrain.envs.configs import AlohaEnv  # noqa: E402
from robotrain.envs.experts import demonstrate  # noqa: E402
from robotrain.envs.experts.aloha import TASKS, _JointSpaceEnv, _keep_obs_type, demonstrate_aloha  # noqa: E402
from robotrain.errors import ConfigError  # noqa: E402

TRANSFER, INSERTION = "AlohaTransferCube-v0", "AlohaInsertion-v0"


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize(("task", "seed"), [(TRANSFER, 0), (TRANSFER, 13), (INSERTION, 0), (INSERTION, 21)])
def test_expert_succeeds_on_fixed_seeds(task: str, seed: int) -> None:
    demo = demonstrate(AlohaEnv(task=task), seed, render=False)
    assert demo.success, f"{task} seed {seed}: rewards reached only {demo.rewards.max()}"
    assert demo.successes[-1], "the task must still count as solved when the episode ends"
    assert len(demo) == 400 and demo.seed == seed and demo.task == TASKS[task].description
    assert set(demo.observations) == {"observation.state"}  # no cameras without render
    assert demo.observations["observation.state"].shape == (400, 14)
    assert demo.observations["observation.state"].dtype == np.float32
    assert demo.actions.shape == (400, 14) and demo.actions.dtype == np.float32
    assert demo.rewards.shape == (400,) and demo.rewards.dtype == np.float32
    assert demo.successes.dtype == bool
    np.testing.assert_array_equal(demo.successes, demo.rewards == 4)


@pytest.mark.sim
@pytest.mark.slow
def test_same_seed_same_episode() -> None:
    cfg = AlohaEnv(task=INSERTION)
    first, second = demonstrate_aloha(cfg, 5, render=False), demonstrate_aloha(cfg, 5, render=False)
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.rewards, second.rewards)
    np.testing.assert_array_equal(first.observations["observation.state"], second.observations["observation.state"])
    other = demonstrate_aloha(cfg, 6, render=False)
    assert not np.array_equal(first.actions, other.actions)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("task", [TRANSFER, INSERTION])
def test_demonstration_replays_in_gym_aloha(task: str) -> None:
    """gym-aloha's env reset with the seed shows the expert's scene, and its actions give the same states."""
    seed, steps = 3, 8
    demo = demonstrate_aloha(AlohaEnv(task=task), seed, render=False)
    env = gym.make(f"gym_aloha/{task}", obs_type="pixels_agent_pos")
    obs, _ = env.reset(seed=seed)
    ours = _JointSpaceEnv(TASKS[task], render=True).reset(seed)
    np.testing.assert_array_equal(obs["pixels"]["top"], ours["pixels"]["top"])
    np.testing.assert_allclose(obs["agent_pos"], demo.observations["observation.state"][0], atol=1e-6)
    for t in range(steps):
        obs, reward, *_ = env.step(demo.actions[t])
        np.testing.assert_allclose(obs["agent_pos"], demo.observations["observation.state"][t + 1], atol=1e-6)
        assert reward == demo.rewards[t]
    env.close()


@pytest.mark.sim
@pytest.mark.slow
def test_rendered_episode_has_top_camera_frames() -> None:
    demo = demonstrate_aloha(AlohaEnv(task=TRANSFER), 1, render=True)
    frames = demo.observations["observation.images.top"]
    assert frames.shape == (400, 480, 640, 3) and frames.dtype == np.uint8
    assert demo.success
    assert not np.array_equal(frames[0], frames[200])  # the arms moved


@pytest.mark.sim
def test_pixels_obs_type_records_no_state() -> None:
    env = _JointSpaceEnv(TASKS[TRANSFER], render=False)
    assert "agent_pos" in env.reset(0)
    assert "agent_pos" not in _keep_obs_type(env.reset(0), "pixels")


@pytest.mark.sim
@pytest.mark.parametrize(("field", "value", "needle"), [
    ("fps", 30, "--env.fps=30"),
    ("episode_length", 100, "--env.episode_length=100"),
    ("task", "AlohaTransferCubee-v0", "--env.task=AlohaTransferCubee-v0"),
])
def test_config_mistakes_are_user_errors(field: str, value: object, needle: str) -> None:
    cfg = AlohaEnv(task=TRANSFER)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=needle):
        demonstrate_aloha(cfg, 0, render=False)
