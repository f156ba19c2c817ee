"""Build simulation envs from an EnvConfig, and turn their observations into policy batches.

    EnvConfig ──validate, import sim, probe OpenGL──> gym.make × n ──> SyncVectorEnv | AsyncVectorEnv (forkserver)
    raw obs {"pixels": {"top": (B,H,W,3) uint8}, "agent_pos": (B,D)} ──preprocess_observation──>
        {"observation.images.top": (B,3,H,W) float32 in [0,1], "observation.state": (B,D) float32}

Vector envs autoreset in gymnasium's NEXT_STEP mode: the step that ends a sub-env's episode returns that episode's
own observation, reward and info (so `info["is_success"]` is read directly), and the following step() resets that
sub-env, ignoring its action. Evaluation keeps each sub-env's steps up to its first termination or truncation.

Success, per env, as `info["is_success"]` reports it (episode_success reads it):
  pusht  the block covers more than 95 % of the target (gym-pusht); the episode terminates there.
  aloha  the task's reward reaches its maximum, 4 (gym-aloha: both tasks); the episode terminates there.
  xarm   the cube's centre is 0.15 m above where it was placed (envs/xarm); the episode terminates there.
"""

from __future__ import annotations

import functools
import importlib
import logging
import multiprocessing
import os
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv  # noqa: E402

from robotrain.configs.types import FeatureType, PolicyFeature  # noqa: E402
from robotrain.envs.configs import EnvConfig  # noqa: E402
from robotrain.errors import ConfigError, UserError  # noqa: E402
from robotrain.signals import shield_helper  # noqa: E402

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

AUTORESET_MODE = AutoresetMode.NEXT_STEP
# Modules to import before gym.make: the package that registers the gym ids, then the module holding the env class,
# so a missing dependency (pymunk, dm_control, ...) is reported here and not deep inside gym.make.
SIM_MODULES = {
    "pusht": ("gym_pusht", "gym_pusht.envs"),
    "aloha": ("gym_aloha", "gym_aloha.env"),
    "xarm": ("robotrain.envs.xarm", "robotrain.envs.xarm.lift"),
}
MUJOCO_ENVS = ("aloha", "xarm")  # rendered through OpenGL (MUJOCO_GL); PushT draws with pygame on the CPU
GL_HINT = ("on a machine without a display use MUJOCO_GL=egl (GPU, or Mesa's EGL on CPU: apt install libegl1) or "
           "MUJOCO_GL=osmesa (CPU only: apt install libosmesa6); with a display, MUJOCO_GL=glfw. Set it before "
           "Python starts (mujoco reads it once, at import)")


# -- building envs ---------------------------------------------------------------------------------------------

def make_env(cfg: EnvConfig, n_envs: int = 1, use_async: bool = False) -> VectorEnv:
    """`n_envs` copies of cfg's env as one vector env (async: one subprocess each, when n_envs > 1)."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}")
    prepare_env(cfg)
    if use_async and n_envs > 1:
        # Each worker ignores the group's stop signals (see robotrain.signals): this process stops them.
        env_fns = [functools.partial(build_env, cfg, os.getpid()) for _ in range(n_envs)]
        # fork would copy this process's OpenGL/EGL state and torch's threads into the children: unsafe.
        methods = multiprocessing.get_all_start_methods()
        context = "forkserver" if "forkserver" in methods else "spawn"
        return AsyncVectorEnv(env_fns, context=context, autoreset_mode=AUTORESET_MODE)
    return SyncVectorEnv([functools.partial(build_env, cfg) for _ in range(n_envs)], autoreset_mode=AUTORESET_MODE)


def make_single_env(cfg: EnvConfig) -> gym.Env:
    """One unvectorized env (for scripted experts and recording), with make_env's checks."""
    prepare_env(cfg)
    return build_env(cfg)


def prepare_env(cfg: EnvConfig) -> None:
    """Everything that can fail with a user-fixable cause, checked once in this process before envs are built."""
    from robotrain.configs.schema import validate_tree  # the config layer; imported late to keep imports acyclic

    validate_tree(cfg, ("env",))
    import_sim(cfg)
    check_rendering(cfg)


def build_env(cfg: EnvConfig, owner_pid: int | None = None) -> gym.Env:
    """gym.make for cfg (module level so AsyncVectorEnv can pickle it into its workers, which pass the pid of the
    process that owns them)."""
    if owner_pid is not None:
        shield_helper(owner_pid)
    import_sim(cfg)  # a fresh worker process must register the gym ids too
    env = gym.make(cfg.gym_id, disable_env_checker=True, **cfg.gym_kwargs)
    if cfg.type == "aloha":
        _render_only_top_camera(env)
    return cfg.wrap(env)


def import_sim(cfg: EnvConfig) -> None:
    """Import the simulator of cfg; UserError naming the extra to install when a package is missing."""
    for module in SIM_MODULES.get(cfg.type, (cfg.package_name,)):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = (exc.name or module).split(".")[0]
            if missing == "robotrain":
                raise
            raise ConfigError("env.type", cfg.type, f"needs the Python package '{missing}', which is not installed",
                              cfg.install_hint) from exc
        except Exception as exc:  # MuJoCo and dm_control load their OpenGL backend at import time
            if _is_gl_error(exc):
                raise rendering_error(cfg, exc) from exc
            raise
    if cfg.type == "xarm":
        from robotrain.envs.xarm.lift import scene_path

        scene_path()


def check_rendering(cfg: EnvConfig) -> None:
    """Render one tiny MuJoCo scene with the MUJOCO_GL backend; UserError naming MUJOCO_GL when that fails."""
    if cfg.type not in MUJOCO_ENVS:
        return
    try:
        _probe_opengl(os.environ.get("MUJOCO_GL", ""))
    except Exception as exc:  # any failure here (EGL, OSMesa, GLFW, driver) has the same fix
        raise rendering_error(cfg, exc) from exc


@functools.cache
def _probe_opengl(backend: str) -> None:
    """Create an offscreen context and draw a frame (cached per backend: only a success is remembered)."""
    import mujoco

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
    renderer = mujoco.Renderer(model, height=8, width=8)
    try:
        renderer.update_scene(mujoco.MjData(model))
        renderer.render()
    finally:
        renderer.close()
    logger.debug("OpenGL rendering works with MUJOCO_GL=%r", backend)


def rendering_error(cfg: EnvConfig, exc: BaseException) -> UserError:
    """The message for an OpenGL failure: what failed, the MUJOCO_GL in use, what to try."""
    backend = os.environ.get("MUJOCO_GL", "")
    return UserError(f"--env.type={cfg.type}: offscreen rendering failed with MUJOCO_GL={backend or '(unset)'} "
                     f"({type(exc).__name__}: {exc}). Fix: {GL_HINT}")


def _is_gl_error(exc: BaseException) -> bool:
    """Whether an exception comes from loading OpenGL (by its message, or by the modules it was raised in)."""
    text = f"{type(exc).__name__} {exc}".lower()
    if any(word in text for word in ("mujoco_gl", "egl", "opengl", "osmesa", "glfw", "libgl")):
        return True
    files = [frame.filename.replace("\\", "/") for frame in traceback.extract_tb(exc.__traceback__)]
    return any(part in f for f in files for part in ("/OpenGL/", "/_render/", "/mujoco/egl/", "/mujoco/osmesa/"))


def _render_only_top_camera(env: gym.Env) -> None:
    """gym-aloha renders three 480x640 cameras every step and keeps only 'top': render just that one.

    The observation is unchanged (gym-aloha reads only qpos and images['top']); a CPU step is ~3x faster.
    """
    inner = env.unwrapped
    try:
        task = inner._env.task
        height, width = inner.observation_height, inner.observation_width
        qpos = task.get_qpos
    except AttributeError as exc:  # a gym-aloha whose internals moved: keep its own (slower) observation
        logger.warning("gym-aloha internals changed (%s); every step renders three cameras", exc)
        return

    def observe_top(physics: Any) -> dict[str, Any]:
        return {"qpos": qpos(physics), "images": {"top": physics.render(height=height, width=width, camera_id="top")}}

    task.get_observation = observe_top


# -- observations, frames, success -------------------------------------------------------------------------------

def preprocess_observation(raw: Mapping[str, Any] | np.ndarray, cfg: EnvConfig,
                           device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Batched raw observation -> batch keys: images (B, 3, H, W) float32 in [0, 1], states (B, D) float32.

    With a device, uint8 images are moved before conversion (4x less to transfer than float32).
    """
    import torch  # here, not at the top: async env workers import this module and never need torch (~3 s, 200 MB)

    items = _flatten(raw) if isinstance(raw, Mapping) else iter([("pixels", raw)])
    features, mapping = cfg.features, cfg.features_map
    batch: dict[str, torch.Tensor] = {}
    for raw_key, value in items:
        key = mapping.get(raw_key)
        if key is None or key not in features:
            raise ValueError(f"{cfg.gym_id} observation '{raw_key}' has no feature in {type(cfg).__name__} "
                             f"(obs_type={cfg.obs_type}): features_map and features are out of step")
        array = np.asarray(value)
        if features[key].type is FeatureType.VISUAL:
            tensor = _image_batch(array, key, device)
        else:
            tensor = torch.from_numpy(array).to(device=device, dtype=torch.float32).contiguous()  # (B, D)
        if tuple(tensor.shape[1:]) != tuple(features[key].shape):
            raise ValueError(f"{key}: the env gives shape {tuple(tensor.shape[1:])}, its config declares "
                             f"{tuple(features[key].shape)} (a batched observation is (B, ...))")
        batch[key] = tensor
    return batch


def _image_batch(array: np.ndarray, key: str, device: torch.device | str | None) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) contiguous float32 in [0, 1]: one allocation, one in-place divide."""
    import torch

    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{key}: expected a batch of (B, H, W, 3) uint8 images, got {array.dtype} {array.shape}")
    hwc = torch.from_numpy(array)  # shares memory with the env's buffer
    if device is not None:
        hwc = hwc.to(device, non_blocking=True)
    chw = hwc.permute(0, 3, 1, 2)  # (B, 3, H, W), a view
    return chw.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested observation dicts -> ('pixels/top', array) pairs, the keys features_map uses."""
    for name, value in raw.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", value


def render_frames(env: VectorEnv) -> list[np.ndarray]:
    """One (H, W, 3) uint8 frame per sub-env, at the config's visualization size (for eval videos)."""
    frames = []
    for index, frame in enumerate(env.call("render")):
        if frame is None:
            raise ValueError(f"sub-env {index} rendered nothing: build it with render_mode='rgb_array'")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"sub-env {index} rendered {frame.dtype} {frame.shape}, not (H, W, 3) uint8")
        frames.append(frame)
    return frames


def episode_success(info: Mapping[str, Any]) -> np.ndarray:
    """(B,) bools from a vector env's step info: which sub-envs report success at this step.

    Reads info["is_success"] (masked by "_is_success"); in SAME_STEP autoreset mode, also the ending episodes'
    info["final_info"]["is_success"].
    """
    if "is_success" not in info:
        raise ValueError("the step info has no 'is_success': not an info dict from a robotrain env")
    success = _present(info, "is_success")
    final = info.get("final_info")
    if isinstance(final, Mapping) and "is_success" in final:
        success = success | (_present(final, "is_success") & np.asarray(info["_final_info"], dtype=bool))
    return success


def _present(info: Mapping[str, Any], key: str) -> np.ndarray:
    """info[key] as bools, False where the sub-env did not report the key."""
    values = np.asarray(info[key], dtype=bool)
    mask = info.get(f"_{key}")
    return values & np.asarray(mask, dtype=bool) if mask is not None else values


def task_description(cfg: EnvConfig) -> str:
    """The natural-language task text of cfg.task (the dataset `task` column, a VLA's instruction)."""
    if cfg.task not in cfg.task_descriptions:
        raise ConfigError("env.task", cfg.task, f"is not a {cfg.type} task", f"use one of {', '.join(cfg.tasks)}")
    return cfg.task_descriptions[cfg.task]


# -- policy compatibility ----------------------------------------------------------------------------------------

def check_policy_features(cfg: EnvConfig, input_features: Mapping[str, PolicyFeature]) -> None:
    """UserError when the env cannot feed a policy's inputs: a key it does not provide, or another shape."""
    provided = cfg.input_features
    for key, feature in input_features.items():
        if feature.type is FeatureType.LANGUAGE:
            continue  # the instruction comes from task_description, not from the observation
        want = tuple(feature.shape)
        have = tuple(provided[key].shape) if key in provided else None
        if have == want:
            continue
        where = f"--env.type={cfg.type} --env.obs_type={cfg.obs_type}"
        offered = ", ".join(f"{k} {tuple(f.shape)}" for k, f in provided.items())
        problem = (f"the policy needs {key} {want}, which {where} does not provide (it gives {offered})"
                   if have is None else f"the policy needs {key} {want}, but {where} gives {key} {have}")
        raise UserError(f"{problem}. Fix: {_feature_fix(cfg, input_features)}")


def _feature_fix(cfg: EnvConfig, input_features: Mapping[str, PolicyFeature]) -> str:
    """An env setting that provides every input (another obs_type, else another env), or what else to do."""
    def feeds(candidate: EnvConfig) -> bool:
        have = candidate.input_features
        return all(f.type is FeatureType.LANGUAGE or (k in have and tuple(have[k].shape) == tuple(f.shape))
                   for k, f in input_features.items())

    for obs_type in cfg.obs_types:
        if obs_type != cfg.obs_type and feeds(replace(cfg, obs_type=obs_type)):
            return f"use --env.obs_type={obs_type}"
    for name, cls in EnvConfig.get_known_choices().items():
        if name != cfg.type:
            for obs_type in cls.obs_types:
                if feeds(cls(obs_type=obs_type)):
                    return f"this policy was trained for another env: use --env.type={name} --env.obs_type={obs_type}"
    return ("evaluate a policy trained on data recorded in this env (its dataset features must match the env's: "
            "see docs/envs.md), or train one with --env set to this env")
