"""PushT in the T's frame (`--env.obs_type=block_frame`): what is observed, how actions are read, recording."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robotrain.configs.types import OBS_ENV_STATE, OBS_STATE
from robotrain.envs.configs import PushtEnv

gym = pytest.importorskip("gymnasium")
pytest.importorskip("gym_pusht")

from robotrain.envs.experts import demonstrate  # noqa: E402
from robotrain.envs.factory import make_single_env  # noqa: E402
from robotrain.envs.pusht_block_frame import block_pose, from_frame, to_frame  # noqa: E402

pytestmark = pytest.mark.sim
CFG = PushtEnv(obs_type="block_frame")


def test_frame_round_trip_and_known_points():
    pose = (300.0, 200.0, math.pi / 2)
    # The T's origin is the frame's origin; a point one unit along the world's y lies on the T's x axis when the
    # T is turned a quarter turn counter-clockwise.
    np.testing.assert_allclose(to_frame(np.array([300.0, 200.0]), pose), [0, 0], atol=1e-12)
    np.testing.assert_allclose(to_frame(np.array([300.0, 201.0]), pose), [1, 0], atol=1e-12)
    points = np.random.default_rng(0).uniform(0, 512, (5, 2))
    np.testing.assert_allclose(from_frame(to_frame(points, pose), pose), points, atol=1e-9)


def test_observation_is_the_scene_seen_from_the_t():
    env = make_single_env(CFG)
    raw, _ = env.reset(seed=3)
    inner = env.unwrapped
    pose = block_pose(env)
    agent = np.array(inner.agent.position)
    np.testing.assert_allclose(raw["agent_pos"], to_frame(agent, pose), atol=1e-9)
    goal_x, goal_y, goal_angle = inner.goal_pose
    np.testing.assert_allclose(raw["environment_state"][:2], to_frame(np.array([goal_x, goal_y]), pose), atol=1e-9)
    turn = goal_angle - pose[2]
    np.testing.assert_allclose(raw["environment_state"][2:], [math.sin(turn), math.cos(turn)], atol=1e-12)
    # At the goal pose the goal is at the frame's origin with nothing left to turn.
    _place(env, (100.0, 100.0), (goal_x, goal_y, goal_angle))
    np.testing.assert_allclose(env.observe()["environment_state"], [0, 0, 0, 1], atol=1e-9)
    env.close()


def _place(env, agent: tuple[float, float], pose: tuple[float, float, float]) -> None:
    """Put the pointer and the T (origin and angle exactly: the angle first, as it turns about the T's centre of
    gravity) where asked."""
    inner = env.unwrapped
    inner.agent.position = agent
    inner.block.angle = pose[2]
    inner.block.position = pose[:2]


def test_observation_does_not_change_when_the_whole_scene_moves():
    """Moving and turning the T and the pointer together changes nothing the T sees but where the goal is."""
    env = make_single_env(CFG)
    env.reset(seed=0)
    _place(env, (200.0, 150.0), (250.0, 250.0, 0.3))
    first = env.observe()
    # The same scene turned by 0.5 rad about the T's origin and moved by (40, -30).
    pose = (250.0 + 40.0, 250.0 - 30.0, 0.8)
    agent = from_frame(to_frame(np.array([200.0, 150.0]), (250.0, 250.0, 0.3)), pose)
    _place(env, tuple(agent), pose)
    second = env.observe()
    np.testing.assert_allclose(second["agent_pos"], first["agent_pos"], atol=1e-9)
    assert not np.allclose(second["environment_state"], first["environment_state"])
    env.close()


def test_action_is_a_target_in_the_frame_of_the_last_observation():
    env = make_single_env(CFG)
    env.reset(seed=5)
    pose = block_pose(env)
    target_world = np.array([256.0, 400.0])
    action = env.world_to_action(target_world)
    np.testing.assert_allclose(from_frame(action.astype(np.float64), pose), target_world, atol=1e-3)
    plain = gym.make("gym_pusht/PushT-v0", obs_type="environment_state_agent_pos")
    plain.reset(seed=5)
    for _ in range(3):  # the same world target, given in each step's frame, moves the pointer as in the world env
        env.step(env.world_to_action(target_world))
        plain.step(target_world)
    np.testing.assert_allclose(np.array(env.unwrapped.agent.position), np.array(plain.unwrapped.agent.position),
                               atol=1e-2)
    plain.close()
    env.close()


def test_step_before_reset_is_refused():
    env = make_single_env(CFG)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(2, np.float32))
    env.close()


def test_features_match_what_the_env_gives():
    assert CFG.features[OBS_STATE].shape == (2,) and CFG.features[OBS_ENV_STATE].shape == (4,)
    env = make_single_env(CFG)
    raw, _ = env.reset(seed=1)
    assert raw["agent_pos"].shape == (2,) and raw["environment_state"].shape == (4,)
    assert env.observation_space.contains(raw)
    env.close()


@pytest.mark.slow
def test_expert_records_in_the_frame_and_its_actions_replay():
    seed = 15  # solved in under 100 steps
    demo = demonstrate(CFG, seed, render=False)
    assert demo.success
    assert demo.observations[OBS_ENV_STATE].shape == (len(demo), 4)
    env = make_single_env(CFG)
    raw, _ = env.reset(seed=seed)
    for t, action in enumerate(demo.actions):
        np.testing.assert_allclose(raw["agent_pos"], demo.observations[OBS_STATE][t], atol=1e-3)
        raw, reward, terminated, _, info = env.step(action)
    env.close()
    assert terminated and info["is_success"]


def test_recorded_datasets_name_each_dimension():
    from robotrain.envs.record import dataset_features

    features = dataset_features(CFG)
    assert features[OBS_ENV_STATE]["names"] == ["goal_x", "goal_y", "sin_turn", "cos_turn"]
    assert features[OBS_STATE]["names"] == ["x", "y"] and features["action"]["names"] == ["x", "y"]
    assert len(dataset_features(PushtEnv(obs_type="environment_state_agent_pos"))[OBS_ENV_STATE]["names"]) == 16


def test_record_sim_suggests_the_policy_that_fits_the_observations():
    from robotrain.envs.configs import AlohaEnv

    assert CFG.suggested_policy == "mlp"
    assert PushtEnv(obs_type="environment_state_agent_pos").suggested_policy == "diffusion"
    assert AlohaEnv().suggested_policy == "act"
