"""Simulation speed: env steps per second for every env, with and without rendering.

    python bench/env_speed.py [--envs pusht aloha xarm] [--scale 1.0]

One unvectorized env per row (make_single_env), random actions from a seeded action space, timed after one warm-up
step. Columns:
  sim only     physics with the camera left out (PushT: its state obs type; ALOHA/xArm: camera replaced by zeros)
  + obs camera step() as evaluation runs it: the observation camera is rendered every step
  + video      step() and render() of a video frame (what an eval episode that is recorded costs)
The ALOHA rows also time gym-aloha as shipped, which renders three cameras per step (robotrain renders one).
Prints a markdown table, the machine and the OpenGL renderer in use.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from robotrain.envs import AlohaEnv, EnvConfig, PushtEnv, XarmEnv  # noqa: E402
from robotrain.envs.factory import import_sim, make_single_env  # noqa: E402

ROWS: dict[str, list[tuple[EnvConfig, int]]] = {  # (config, steps timed per column at --scale 1)
    "pusht": [(PushtEnv(), 300), (PushtEnv(obs_type="environment_state_agent_pos"), 300)],
    "aloha": [(AlohaEnv(), 20), (AlohaEnv(task="AlohaTransferCube-v0"), 20)],
    "xarm": [(XarmEnv(), 60)],
}


def steps_per_second(env: gym.Env, n_steps: int, video: bool) -> float:
    """Seeded reset, one warm-up step, then n_steps timed steps (each followed by render() when video)."""
    env.reset(seed=0)
    env.action_space.seed(0)
    env.step(env.action_space.sample())
    actions = [env.action_space.sample() for _ in range(n_steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if video:
            env.render()
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - start)


def without_camera(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    """The same env with its observation camera replaced by a constant image: what the simulation alone costs."""
    inner = env.unwrapped
    if cfg.type == "aloha":
        task = inner._env.task
        blank = np.zeros((inner.observation_height, inner.observation_width, 3), np.uint8)
        task.get_observation = lambda physics: {"qpos": task.get_qpos(physics), "images": {"top": blank}}
    elif cfg.type == "xarm":
        inner._render = lambda size: np.zeros((*size, 3), np.uint8)  # this column never calls render()
    return env


def measure(cfg: EnvConfig, n_steps: int) -> dict[str, float]:
    """steps/s per column for one config."""
    row = {}
    if cfg.type == "pusht":
        if cfg.obs_type == "environment_state_agent_pos":
            row["sim only"] = _timed(lambda: make_single_env(cfg), n_steps, video=False)
    else:
        row["sim only"] = _timed(lambda: without_camera(make_single_env(cfg), cfg), n_steps, video=False)
    if cfg.type != "pusht" or cfg.obs_type == "pixels_agent_pos":
        row["+ obs camera"] = _timed(lambda: make_single_env(cfg), n_steps, video=False)
    row["+ video"] = _timed(lambda: make_single_env(cfg), n_steps, video=True)
    if cfg.type == "aloha":
        row["gym-aloha as shipped"] = _timed(lambda: _stock_aloha(cfg), n_steps, video=False)
    return row


def _stock_aloha(cfg: EnvConfig) -> gym.Env:
    import_sim(cfg)
    return gym.make(cfg.gym_id, disable_env_checker=True, **cfg.gym_kwargs)


def _timed(build: Callable[[], gym.Env], n_steps: int, video: bool) -> float:
    env = build()
    try:
        return steps_per_second(env, n_steps, video)
    finally:
        env.close()


def gl_renderer() -> str:
    """The OpenGL renderer MuJoCo draws with (e.g. llvmpipe = Mesa on the CPU)."""
    import mujoco
    from OpenGL import GL

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
    renderer = mujoco.Renderer(model, height=8, width=8)
    try:
        return GL.glGetString(GL.GL_RENDERER).decode()
    finally:
        renderer.close()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x{len(names)}"
    except (OSError, IndexError):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of timed steps")
    args = parser.parse_args()

    columns = ["sim only", "+ obs camera", "+ video", "gym-aloha as shipped"]
    print(f"machine: {cpu_name()}, load average {os.getloadavg()[0]:.1f}; MUJOCO_GL={os.environ['MUJOCO_GL']}, "
          f"OpenGL renderer: {gl_renderer()}")
    print("| env | task | obs_type | " + " | ".join(f"{c} (steps/s)" for c in columns) + " |")
    print("|---|---|---|" + "---:|" * len(columns))
    start = time.perf_counter()
    for name in args.envs:
        for cfg, n_steps in ROWS[name]:
            row = measure(cfg, max(2, round(n_steps * args.scale)))
            cells = [f"{row[c]:.1f}" if c in row else "" for c in columns]
            print(f"| {cfg.type} | {cfg.task} | {cfg.obs_type} | " + " | ".join(cells) + " |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
