"""Policy rollouts in vectorized simulation: fixed seeds, metrics per episode, videos of the first episodes.

Episode i is reset with seed + i, so two evaluations of the same policy see the same scenes. Each sub-env counts
until its first termination or truncation; whatever it does after (auto-reset) is ignored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robotrain.configs.default import EvalConfig
from robotrain.devices import choose_precision
from robotrain.envs.configs import EnvConfig

logger = logging.getLogger(__name__)

MAX_AUTO_ENVS = 64
VIDEO_ENCODING = {"vcodec": "h264", "g": 30, "crf": 23}  # for watching, not random access


@dataclass
class EpisodeResult:
    episode_ix: int
    seed: int | None
    sum_reward: float
    max_reward: float
    success: bool
    length: int
    frames: list[np.ndarray] = field(default_factory=list, repr=False)


def auto_batch_size(n_episodes: int) -> int:
    """min(70% of the CPUs, n_episodes, 64), at least 1."""
    from robotrain.datasets.loader import cpu_count

    return max(1, min(int(0.7 * cpu_count()), n_episodes, MAX_AUTO_ENVS))


class Evaluator:
    """Holds the vector env between evaluations (training evaluates many times) and runs rollouts on it."""

    def __init__(self, env_cfg: EnvConfig, eval_cfg: EvalConfig, seed: int | None):
        self.env_cfg, self.seed = env_cfg, seed
        self.n_episodes = eval_cfg.n_episodes
        self.batch_size = eval_cfg.batch_size or auto_batch_size(eval_cfg.n_episodes)
        self.use_async = eval_cfg.use_async_envs and self.batch_size > 1
        self._env: Any = None

    def check_policy(self, policy: Any) -> None:
        """Stop before any rollout when the env cannot feed the policy's inputs."""
        from robotrain.envs.factory import check_policy_features

        check_policy_features(self.env_cfg, policy.config.input_features)

    @property
    def env(self) -> Any:
        if self._env is None:
            from robotrain.envs.factory import make_env

            self._env = make_env(self.env_cfg, n_envs=self.batch_size, use_async=self.use_async)
        return self._env

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def run(self, policy: Any, videos_dir: Path | None = None, max_videos: int = 0) -> dict[str, Any]:
        """Roll out n_episodes; returns {"per_episode", "aggregated", "video_paths"} as eval_info.json stores it."""
        from tqdm import tqdm

        self.check_policy(policy)
        policy.eval()
        start = time.perf_counter()
        results: list[EpisodeResult] = []
        with tqdm(total=self.n_episodes, desc="Evaluating", unit="episode", leave=False,
                  disable=not _stderr_is_tty()) as progress:
            while len(results) < self.n_episodes:
                count = min(self.batch_size, self.n_episodes - len(results))
                render = max(0, min(max_videos - len(results), count)) if videos_dir is not None else 0
                results += self._rollout(policy, first=len(results), count=count, render=render)
                progress.update(count)
        eval_s = time.perf_counter() - start
        video_paths = self._write_videos(results, videos_dir) if videos_dir is not None else []
        return summarize(results, eval_s, video_paths)

    def _rollout(self, policy: Any, first: int, count: int, render: int) -> list[EpisodeResult]:
        from robotrain.envs.factory import episode_success, preprocess_observation, task_description

        env, n = self.env, self.batch_size
        seeds = None if self.seed is None else [self.seed + first + i for i in range(n)]
        observation, _ = env.reset(seed=seeds)
        policy.reset()
        device = next(policy.parameters()).device
        amp = choose_precision(device, policy.config.use_amp).autocast()
        task = [task_description(self.env_cfg)] * n
        done = np.zeros(n, dtype=bool)
        sum_reward, max_reward = np.zeros(n), np.full(n, -np.inf)
        success, length = np.zeros(n, dtype=bool), np.zeros(n, dtype=int)
        frames: list[list[np.ndarray]] = [[] for _ in range(render)]
        self._capture(frames, env, np.ones(n, dtype=bool))
        for _ in range(self.env_cfg.episode_length):
            if done[:count].all():
                break
            batch = preprocess_observation(observation, self.env_cfg, device=device)
            with torch.inference_mode(), amp:
                action = policy.select_action({**batch, "task": task})
            observation, reward, terminated, truncated, info = env.step(action.float().cpu().numpy())
            live = ~done
            sum_reward[live] += reward[live]
            max_reward[live] = np.maximum(max_reward[live], reward[live])
            success[live] |= episode_success(info)[live]
            length[live] += 1
            self._capture(frames, env, live)  # the frame after this step, terminal frames included
            done |= np.asarray(terminated) | np.asarray(truncated)
        return [EpisodeResult(first + i, None if seeds is None else seeds[i], float(sum_reward[i]),
                              float(max_reward[i]), bool(success[i]), int(length[i]),
                              frames[i] if i < render else []) for i in range(count)]

    @staticmethod
    def _capture(frames: list[list[np.ndarray]], env: Any, live: np.ndarray) -> None:
        """Append the current frame of the first len(frames) sub-envs that are still in their episode."""
        if not frames:
            return
        from robotrain.envs.factory import render_frames

        images = render_frames(env)
        for i, episode_frames in enumerate(frames):
            if live[i]:
                episode_frames.append(images[i])

    def _write_videos(self, results: list[EpisodeResult], videos_dir: Path) -> list[str]:
        from robotrain.datasets.video import VideoEncoding, encode_video

        paths = []
        for result in results:
            if result.frames:
                path = Path(videos_dir) / f"eval_episode_{result.episode_ix}.mp4"
                encode_video(result.frames, path, self.env_cfg.fps, VideoEncoding(**VIDEO_ENCODING))
                paths.append(str(path))
                result.frames = []
        return paths


def summarize(results: list[EpisodeResult], eval_s: float, video_paths: list[str]) -> dict[str, Any]:
    """LeRobot's eval_info.json structure: per-episode rows, aggregated means, video paths."""
    per_episode = [{k: v for k, v in asdict(r).items() if k != "frames"} for r in results]
    n = max(1, len(results))
    aggregated = {
        "avg_sum_reward": float(np.mean([r.sum_reward for r in results])),
        "avg_max_reward": float(np.mean([r.max_reward for r in results])),
        "pc_success": 100.0 * sum(r.success for r in results) / n,
        "eval_s": eval_s,
        "eval_ep_s": eval_s / n,
    }
    return {"per_episode": per_episode, "aggregated": aggregated, "video_paths": video_paths}


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
