"""The scripted PushT expert: solves fixed seeds, records what the env saw, and is reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from robotrain.envs.configs import AlohaEnv, PushtEnv
from robotrain.errors import UserError

gym = pytest.importorskip("gymnasium")
pytest.importorskip("gym_pusht")

from robotrain.envs.experts import demonstrate  # noqa: E402
from robotrain.envs.experts.pusht_planner import (  # noqa: E402
    MirrorSim,
    PlannerSettings,
    SceneState,
    TravelMap,
    coverage,
    pose_error,
)

# Seeds the expert solves in under 100 steps (measured), so the tests stay short.
QUICK_SEEDS = (14, 15, 17)
MAX_TARGET_STEP = 30.0  # px between consecutive pointer targets: no teleporting.


def _reset(obs_type: str, seed: int):
    env = gym.make("gym_pusht/PushT-v0", obs_type=obs_type)
    raw, _ = env.reset(seed=seed)
    return env, raw


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("seed", QUICK_SEEDS)
def test_expert_solves_fixed_seeds(seed: int):
    demo = demonstrate(PushtEnv(obs_type="environment_state_agent_pos"), seed, render=False)
    assert demo.success and demo.successes[-1] and not demo.successes[:-1].any()  # Ends at success.
    assert demo.rewards[-1] == pytest.approx(1.0)
    steps = np.linalg.norm(np.diff(demo.actions, axis=0), axis=1)
    assert steps.max() <= MAX_TARGET_STEP
    assert demo.actions.min() >= 0.0 and demo.actions.max() <= 512.0
    assert demo.seed == seed and demo.task == "Push the T-shaped block onto the target."


@pytest.mark.sim
@pytest.mark.slow
def test_pixels_episode_shapes_and_first_frame():
    seed = QUICK_SEEDS[0]
    demo = demonstrate(PushtEnv(obs_type="pixels_agent_pos"), seed, render=True)
    n = len(demo)
    assert set(demo.observations) == {"observation.image", "observation.state"}
    image, state = demo.observations["observation.image"], demo.observations["observation.state"]
    assert image.shape == (n, 96, 96, 3) and image.dtype == np.uint8
    assert state.shape == (n, 2) and state.dtype == np.float32
    assert demo.actions.shape == (n, 2) and demo.actions.dtype == np.float32
    assert demo.rewards.shape == (n,) and demo.rewards.dtype == np.float32
    assert demo.successes.shape == (n,) and demo.successes.dtype == bool
    env, raw = _reset("pixels_agent_pos", seed)  # The first frame is the scene gym's own reset gives.
    env.close()
    np.testing.assert_array_equal(image[0], raw["pixels"])
    np.testing.assert_array_equal(state[0], raw["agent_pos"].astype(np.float32))


@pytest.mark.sim
@pytest.mark.slow
def test_keypoint_episode_is_deterministic_and_replays():
    seed = QUICK_SEEDS[1]
    cfg = PushtEnv(obs_type="environment_state_agent_pos")
    first, second = demonstrate(cfg, seed, render=True), demonstrate(cfg, seed, render=True)
    assert set(first.observations) == {"observation.environment_state", "observation.state"}
    assert first.observations["observation.environment_state"].shape == (len(first), 16)
    assert first.observations["observation.environment_state"].dtype == np.float32
    for key in first.observations:
        np.testing.assert_array_equal(first.observations[key], second.observations[key])
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.rewards, second.rewards)
    # The recorded actions replayed on a fresh env reproduce the recorded observations and the success.
    env, raw = _reset("environment_state_agent_pos", seed)
    for t, action in enumerate(first.actions):
        np.testing.assert_allclose(raw["environment_state"], first.observations["observation.environment_state"][t],
                                   atol=1e-3)
        raw, reward, terminated, _, _ = env.step(action)
    env.close()
    assert terminated and reward == pytest.approx(1.0)


@pytest.mark.sim
def test_unrendered_episode_has_no_images():
    demo = demonstrate(PushtEnv(obs_type="pixels_agent_pos", episode_length=5), 0, render=False)
    assert set(demo.observations) == {"observation.state"} and len(demo) == 5 and not demo.success


@pytest.mark.sim
def test_mirror_sim_matches_env_exactly():
    env, _ = _reset("environment_state_agent_pos", 3)
    start = SceneState.from_env(env.unwrapped)
    sim = MirrorSim()
    sim.load(start)
    agent, block = np.array(start.agent), np.array(start.block_pose[:2])
    # A straight run through the block's origin, so the pointer pushes the block and contacts are compared too.
    for t in range(1, 31):
        target = (agent + (block - agent) * t / 20).astype(np.float32)
        env.step(target)
        sim.step(target)
    real = SceneState.from_env(env.unwrapped)
    env.close()
    assert np.linalg.norm(np.array(real.block_pose[:2]) - block) > 10.0  # It was pushed.
    np.testing.assert_allclose(sim.save().block_pose, real.block_pose, atol=1e-6)
    np.testing.assert_allclose(sim.save().agent, real.agent, atol=1e-6)


@pytest.mark.sim
def test_travel_paths_keep_clear_of_the_block():
    settings = PlannerSettings()
    travel = TravelMap((256.0, 256.0, 0.3), settings)
    path = travel.path(np.array([256.0, 470.0]), np.array([256.0, 40.0]))  # From one side of the T to the other.
    assert path is not None and len(path) > 2
    from shapely.geometry import LineString

    assert LineString(path).distance(travel.polygon) >= settings.clearance - 1e-6


def test_goal_pose_scores_perfectly():
    assert pose_error((256.0, 256.0, np.pi / 4)) == pytest.approx(0.0)
    assert coverage((256.0, 256.0, np.pi / 4)) == pytest.approx(1.0)
    assert coverage((256.0, 256.0, np.pi / 4 + np.pi)) < 0.5


def test_expert_refuses_other_envs():
    from robotrain.envs.experts.pusht import demonstrate_pusht

    with pytest.raises(UserError, match="pusht"):
        demonstrate_pusht(AlohaEnv(), 0)
