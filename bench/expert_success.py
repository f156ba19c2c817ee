"""Success rate of a scripted expert over many seeds, run in parallel processes.

    python bench/expert_success.py --env.type=aloha --env.task=AlohaTransferCube-v0 --n_seeds=50 [--start_seed=0]
        [--workers=2] [--render]

Each seed runs `robotrain.envs.experts.demonstrate(env_cfg, seed, render=False)` (cameras rendered only with
--render, to time recording). Prints the success rate, the failed seeds and the seconds per episode.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time

from robotrain.envs.configs import EnvConfig
from robotrain.errors import UserError


def build_env_config(env_type: str, task: str | None) -> EnvConfig:
    """The env config for --env.type (with its default task unless --env.task is given), validated."""
    choices = sorted(EnvConfig.get_known_choices())
    if env_type not in choices:
        raise UserError(f"--env.type={env_type}: unknown env. Fix: use one of {', '.join(choices)}")
    cls = EnvConfig.get_choice_class(env_type)
    cfg = cls(task=task) if task else cls()
    cfg.validate()
    return cfg


def run_seed(job: tuple[str, str, int, bool]) -> tuple[int, bool, float]:
    """(env type, task, seed, render) -> (seed, success, seconds); runs in a worker process."""
    from robotrain.envs.experts import demonstrate

    env_type, task, seed, render = job
    cfg = build_env_config(env_type, task)
    start = time.perf_counter()
    demo = demonstrate(cfg, seed, render=render)
    return seed, demo.success, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env.type", dest="env_type", required=True, help="pusht or aloha")
    parser.add_argument("--env.task", dest="env_task", default=None, help="gym task id (default: the env's)")
    parser.add_argument("--n_seeds", type=int, default=50, help="number of consecutive seeds")
    parser.add_argument("--start_seed", type=int, default=0, help="first seed")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes")
    parser.add_argument("--render", action="store_true", help="render cameras too (to time recording)")
    args = parser.parse_args(argv)
    try:
        cfg = build_env_config(args.env_type, args.env_task)
        if args.n_seeds < 1 or args.workers < 1:
            raise UserError("--n_seeds and --workers must be at least 1")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    jobs = [(cfg.type, cfg.task, seed, args.render) for seed in range(args.start_seed, args.start_seed + args.n_seeds)]
    print(f"{cfg.type} {cfg.task}: {len(jobs)} seeds from {args.start_seed}, {args.workers} workers, "
          f"render={args.render}", flush=True)
    start = time.perf_counter()
    # spawn: workers import mujoco / pygame afresh instead of inheriting a forked interpreter's state.
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = sorted(pool.imap_unordered(run_seed, jobs))
    wall = time.perf_counter() - start

    failed = [seed for seed, success, _ in results if not success]
    per_episode = sum(seconds for _, _, seconds in results) / len(results)
    print(f"success: {len(results) - len(failed)}/{len(results)} = {100 * (1 - len(failed) / len(results)):.1f}%")
    print(f"failed seeds: {failed}")
    print(f"seconds per episode: {per_episode:.2f} (one process); wall {wall:.1f} s with {args.workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
