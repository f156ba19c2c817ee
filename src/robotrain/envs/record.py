"""Record scripted-expert demonstrations in simulation as a LeRobot v3.0 dataset (`robotrain dataset record-sim`).

Experts run in a pool of spawned processes (MuJoCo's EGL context does not survive a fork) on seeds seed, seed+1, ...
The parent writes their episodes in seed order, so the dataset is the same whatever the number of workers. About one
episode per worker is in flight at a time: an ALOHA episode holds 400 frames of 480x640x3 (~370 MB).

Resume: meta/record_sim.json holds the recording's settings, the seed and success of each saved episode, and the
seeds that were tried and dropped. It is rewritten (atomically) just before an episode is saved and just after a
seed is dropped. The dataset's episode count (meta/info.json, the writer's commit point) is the truth: an entry
for an episode that a kill interrupted before its commit is ignored, and its seed is tried again.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np

from robotrain.configs.types import ACTION, DONE, REWARD, SUCCESS, FeatureType
from robotrain.datasets.format import INFO_PATH, read_info
from robotrain.datasets.hub import DatasetLocation
from robotrain.datasets.video import VideoEncoding
from robotrain.datasets.writer import DatasetWriter, lock_dataset
from robotrain.envs import experts
from robotrain.envs.configs import EnvConfig
from robotrain.envs.experts import Demonstration, Expert
from robotrain.errors import ConfigError, UserError
from robotrain.files import atomic_write_json
from robotrain.hub import check_repo_id

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; spawned workers inherit it

logger = logging.getLogger(__name__)

SIDECAR_PATH = "meta/record_sim.json"
VCODECS = ("libsvtav1", "av1", "h264", "libx264", "hevc", "libx265")


@dataclass
class RecordSimConfig:
    """Record scripted-expert demonstrations in simulation as a LeRobot v3.0 dataset."""

    env: EnvConfig
    """The simulated task, e.g. --env.type=aloha --env.task=AlohaTransferCube-v0; aloha, pusht and xarm have
    experts."""
    repo_id: str
    """Dataset id, e.g. local/aloha_sim_transfer_cube_scripted; stored at $HF_LEROBOT_HOME/<repo_id> unless --root."""
    num_episodes: int = 50
    """Episodes the dataset should hold (successful ones unless --keep_failed=true); a rerun continues up to it."""
    root: Path | None = None
    """Folder to write the dataset to (default $HF_LEROBOT_HOME/<repo_id>)."""
    seed: int = 0
    """Seed of the first attempt; attempts use seed, seed+1, ... (same flags, same dataset)."""
    keep_failed: bool = False
    """Keep episodes the expert failed too (next.success stays false); by default they are dropped."""
    num_workers: int | None = None
    """Processes running experts in parallel; null: one per available core; 0: in this process."""
    max_attempts: int | None = None
    """Seeds to try at most, counted over every run of this recording; null: 2 x num_episodes + 10."""
    vcodec: str = "libsvtav1"
    """Video codec: libsvtav1 (AV1, LeRobot's default), h264 or hevc."""
    allow_nan: bool = False
    """Record NaN or infinite values an expert produces instead of stopping with the feature and frame."""

    def validate(self) -> None:
        """Raise a ConfigError naming the first unusable value."""
        check_repo_id(self.repo_id, "repo_id")
        for name, low in (("num_episodes", 1), ("seed", 0), ("num_workers", 0), ("max_attempts", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(name, value, f"must be at least {low}", f"use --{name}={max(low, 1)} or more")
        if self.max_attempts is not None and self.max_attempts < self.num_episodes:
            raise ConfigError("max_attempts", self.max_attempts,
                              f"is below --num_episodes={self.num_episodes}, so the recording could never finish",
                              f"use --max_attempts={2 * self.num_episodes + 10} or drop it")
        if self.vcodec not in VCODECS:
            raise ConfigError("vcodec", self.vcodec, f"is not a supported codec (choose one of {', '.join(VCODECS)})",
                              "use --vcodec=libsvtav1, or --vcodec=h264 for faster encoding")
        root = self.dataset_root()
        if root.exists() and not root.is_dir():
            raise ConfigError("root", root, "is a file", "point --root at a new or existing dataset folder")

    def dataset_root(self) -> Path:
        """--root, or $HF_LEROBOT_HOME/<repo_id>."""
        return DatasetLocation(self.repo_id, self.root).local_dir

    def attempt_limit(self) -> int:
        return self.max_attempts if self.max_attempts is not None else 2 * self.num_episodes + 10

    def workers(self) -> int:
        return self.num_workers if self.num_workers is not None else len(os.sched_getaffinity(0))

    def settings(self) -> dict[str, Any]:
        """What decides the dataset's content: a resumed recording must be asked for with the same values."""
        return {"env": {"type": self.env.type, **draccus.encode(self.env)}, "seed": self.seed,
                "keep_failed": self.keep_failed, "vcodec": VideoEncoding(vcodec=self.vcodec).vcodec}


@dataclass
class RecordReport:
    """What a recording run did and where the dataset is."""

    root: Path
    repo_id: str
    episodes: int
    """Episodes in the dataset."""
    frames: int
    """Frames in the dataset."""
    new_episodes: int
    """Episodes saved by this run."""
    attempts: int
    """Seeds tried by this run."""
    failed_seeds: list[int]
    """Seeds the expert failed, over every run of this recording (dropped, or kept with --keep_failed=true)."""
    seconds: float
    complete: bool
    """Whether the dataset holds num_episodes episodes (false: max_attempts ran out first)."""


@dataclass
class RecordState:
    """The content of meta/record_sim.json."""

    settings: dict[str, Any]
    episodes: list[dict[str, Any]] = field(default_factory=list)  # {"seed": int, "success": bool} per saved episode
    dropped_seeds: list[int] = field(default_factory=list)

    def next_seed(self, first: int) -> int:
        """Seeds are tried and settled in order, so the next one follows the last settled one."""
        return max([e["seed"] for e in self.episodes] + self.dropped_seeds, default=first - 1) + 1

    def failed_seeds(self) -> list[int]:
        return sorted([e["seed"] for e in self.episodes if not e["success"]] + self.dropped_seeds)

    def save(self, root: Path) -> None:
        atomic_write_json(root / SIDECAR_PATH, {"settings": self.settings, "episodes": self.episodes,
                                                "dropped_seeds": self.dropped_seeds})


def dataset_features(env_cfg: EnvConfig) -> dict[str, dict[str, Any]]:
    """The dataset's features: the env's (cameras as HWC video) plus next.reward, next.success and next.done."""
    features: dict[str, dict[str, Any]] = {}
    for key, feature in env_cfg.features.items():
        if feature.type is FeatureType.VISUAL:
            channels, height, width = feature.shape
            features[key] = {"dtype": "video", "shape": [height, width, channels],
                             "names": ["height", "width", "channels"]}
        else:
            names = env_cfg.feature_names.get(key)
            features[key] = {"dtype": "float32", "shape": list(feature.shape), "names": names}
    features[REWARD] = {"dtype": "float32", "shape": [1], "names": None}
    features[SUCCESS] = {"dtype": "bool", "shape": [1], "names": None}
    features[DONE] = {"dtype": "bool", "shape": [1], "names": None}
    return features


def record_sim(cfg: RecordSimConfig, expert: Expert | None = None) -> RecordReport:
    """Record (or continue recording) cfg.num_episodes expert episodes into the dataset at cfg.dataset_root()."""
    start = time.perf_counter()
    expert = expert or experts.get_expert(cfg.env)  # an env without an expert fails before anything is written
    root = cfg.dataset_root()
    features = dataset_features(cfg.env)
    with lock_dataset(root):  # held from the first check to the last write; the writer takes it again inside
        return _record(cfg, root, features, expert, start)


def _record(cfg: RecordSimConfig, root: Path, features: dict[str, dict[str, Any]], expert: Expert,
            start: float) -> RecordReport:
    new_dataset, existed = not (root / INFO_PATH).is_file(), root.is_dir()
    state = open_recording(cfg, root, features)
    writer = DatasetWriter.resume(cfg.repo_id, root, vcodec=cfg.vcodec, allow_nan=cfg.allow_nan)
    state.episodes = state.episodes[: writer.info["total_episodes"]]  # an entry past the count was never committed
    state.save(root)
    first_new = state.next_seed(cfg.seed)
    if state.episodes or state.dropped_seeds:
        logger.info("%s holds %d episode(s); continuing from seed %d", root, len(state.episodes), first_new)
    try:
        saved = _record_episodes(cfg, writer, state, expert, features)
    except BaseException:
        if new_dataset and writer.info["total_episodes"] == 0:  # leave nothing behind when nothing was recorded
            shutil.rmtree(root)
            if existed:
                root.mkdir()
        raise
    writer.finalize()
    return RecordReport(root=root, repo_id=cfg.repo_id, episodes=writer.info["total_episodes"],
                        frames=writer.info["total_frames"], new_episodes=saved,
                        attempts=state.next_seed(cfg.seed) - first_new, failed_seeds=state.failed_seeds(),
                        seconds=time.perf_counter() - start, complete=len(state.episodes) >= cfg.num_episodes)


def open_recording(cfg: RecordSimConfig, root: Path, features: dict[str, dict[str, Any]]) -> RecordState:
    """The recording's state: read from an existing dataset with the same settings, or a new empty dataset."""
    if (root / INFO_PATH).is_file():
        return _read_state(cfg, root)
    if root.is_dir() and any(root.iterdir()):
        raise UserError(f"--root={root} is a folder that is not empty and holds no dataset. "
                        "Fix: choose another --root (or --repo_id), or empty that folder")
    # Built beside root and renamed into place, so a kill leaves either no dataset or one that can be resumed.
    staging = root.parent / f".{root.name}.record-sim"
    shutil.rmtree(staging, ignore_errors=True)
    DatasetWriter.create(cfg.repo_id, cfg.env.fps, features, root=staging, robot_type=cfg.env.type,
                         vcodec=cfg.vcodec).finalize()
    state = RecordState(settings=cfg.settings())
    state.save(staging)
    if root.is_dir():
        root.rmdir()
    os.replace(staging, root)
    logger.info("recording %d episode(s) of %s into %s", cfg.num_episodes, cfg.env.gym_id, root)
    return state


def _read_state(cfg: RecordSimConfig, root: Path) -> RecordState:
    """An existing dataset's state; UserError when record-sim did not write it or wrote it with other settings."""
    path = root / SIDECAR_PATH
    if not path.is_file():
        raise UserError(f"--root={root} holds a dataset that record-sim did not write (no {SIDECAR_PATH}). "
                        "Fix: record into another --repo_id or --root")
    try:
        data = json.loads(path.read_text())
        state = RecordState(data["settings"], list(data["episodes"]), list(data["dropped_seeds"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}). Fix: record into another --repo_id or --root") from None
    differences = _differences(state.settings, cfg.settings())
    if differences:
        raise UserError(f"--root={root} holds a recording made with other settings ({'; '.join(differences)}). "
                        "Fix: repeat the original flags to continue it, or record into another --repo_id or --root")
    total = read_info(root)["total_episodes"]
    if len(state.episodes) < total:
        raise UserError(f"{root} holds {total} episodes but {SIDECAR_PATH} lists {len(state.episodes)}: the dataset "
                        "was changed outside record-sim. Fix: record into another --repo_id or --root")
    return state


def _differences(stored: dict[str, Any], asked: dict[str, Any], prefix: str = "") -> list[str]:
    """'--env.task=A (this run: B)' for each setting that differs."""
    out = []
    for key in sorted(set(stored) | set(asked)):
        old, new = stored.get(key), asked.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(_differences(old, new, f"{prefix}{key}."))
        elif old != new:
            out.append(f"recorded with --{prefix}{key}={_flag_text(old)} (this run: {_flag_text(new)})")
    return out


def _flag_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _record_episodes(cfg: RecordSimConfig, writer: DatasetWriter, state: RecordState, expert: Expert,
                     features: dict[str, dict[str, Any]]) -> int:
    """Run experts on the next seeds and save their episodes in seed order until the dataset is full."""
    from tqdm import tqdm

    limit, first = cfg.attempt_limit(), cfg.seed
    render = any(f["dtype"] == "video" for f in features.values())
    next_seed, saved = state.next_seed(first), 0
    pool = ExpertPool(expert, cfg.env, render, cfg.workers())
    pending: deque[tuple[int, Callable[[], Demonstration]]] = deque()

    def fill(claimed: int) -> None:
        nonlocal next_seed
        while (len(pending) < pool.capacity and len(state.episodes) + claimed + len(pending) < cfg.num_episodes
               and next_seed - first < limit):
            pending.append((next_seed, pool.submit(next_seed)))
            next_seed += 1

    bar = tqdm(total=cfg.num_episodes, initial=min(len(state.episodes), cfg.num_episodes), desc="record-sim",
               unit="episode", dynamic_ncols=True)
    try:
        fill(0)
        while pending:
            seed, wait = pending.popleft()
            demo = wait()
            keep = demo.success or cfg.keep_failed
            fill(1 if keep else 0)  # keep the workers busy while this episode is written
            if keep:
                state.episodes.append({"seed": seed, "success": demo.success})
                state.save(writer.root)  # before the commit: an interrupted save is recognized on resume
                write_episode(writer, demo, features)
                saved += 1
            else:
                state.dropped_seeds.append(seed)
                state.save(writer.root)
            bar.set_postfix_str(_rate_text(state), refresh=False)
            bar.update(int(keep))
            fill(0)
    finally:
        bar.close()
        pool.close()
    return saved


def _rate_text(state: RecordState) -> str:
    """Seeds tried over every run of the recording, and the share the expert solved."""
    tried = len(state.episodes) + len(state.dropped_seeds)
    return f"tried {tried}, success {1 - len(state.failed_seeds()) / max(tried, 1):.0%}"


def write_episode(writer: DatasetWriter, demo: Demonstration, features: dict[str, dict[str, Any]]) -> None:
    """Add the demonstration's frames (with next.* columns and its task) and save them as one episode."""
    columns = _episode_columns(demo, features)
    for t in range(len(demo)):
        frame = {key: values[t] for key, values in columns.items()}
        frame["task"] = demo.task
        writer.add_frame(frame)
    writer.save_episode()


def _episode_columns(demo: Demonstration, features: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per feature, the (T, ...) array; RuntimeError when the expert's output does not match the env's features."""
    n = len(demo)
    done = np.zeros(n, dtype=bool)
    done[-1] = True  # the episode ends after its last action
    columns = {**demo.observations, ACTION: demo.actions, REWARD: np.asarray(demo.rewards, dtype=np.float32),
               SUCCESS: np.asarray(demo.successes, dtype=bool), DONE: done}
    problems = []
    if not demo.task:
        problems.append("no task text")
    for key, feature in features.items():
        value = columns.get(key)
        shape = (n, *feature["shape"]) if feature["shape"] != [1] else (n,)
        if value is None:
            problems.append(f"no '{key}'")
        elif np.shape(value) != shape:
            problems.append(f"'{key}' of shape {np.shape(value)} instead of {shape}")
    if problems:
        raise RuntimeError(f"the expert's episode for seed {demo.seed} does not match the env's features "
                           f"({'; '.join(problems)}); this is a bug in the expert")
    return {key: np.asarray(columns[key]) for key in features}


def _demonstrate(expert: Expert, env_cfg: EnvConfig, seed: int, render: bool) -> Demonstration:
    """Run in a worker process: one expert episode."""
    try:
        return expert(env_cfg, seed, render=render)
    except UserError as exc:
        raise UserError(str(exc)) from None  # ConfigError's extra fields do not survive the trip to the parent


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: leave when the recorder is gone (a SIGKILLed parent would otherwise orphan its workers)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _wait(future: Future, seed: int) -> Demonstration:
    """The worker's episode; a crashed worker process becomes a RuntimeError naming the seed."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise RuntimeError(f"an expert process died while recording seed {seed} (out of memory? each episode is "
                           "held in memory until written; try fewer --num_workers)") from None


class ExpertPool:
    """Runs expert episodes in spawned processes (or, with 0 workers, in this process when their result is asked)."""

    def __init__(self, expert: Expert, env_cfg: EnvConfig, render: bool, workers: int):
        self.expert, self.env_cfg, self.render = expert, env_cfg, render
        self.capacity = max(workers, 1)  # episodes in flight: one per worker bounds memory
        self.executor = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
                         if workers > 0 else None)

    def submit(self, seed: int) -> Callable[[], Demonstration]:
        """Start the episode of `seed`; the returned function waits for it."""
        if self.executor is None:
            return functools.partial(_demonstrate, self.expert, self.env_cfg, seed, self.render)
        return functools.partial(_wait, self.executor.submit(_demonstrate, self.expert, self.env_cfg, seed,
                                                             self.render), seed)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
