"""The `robotrain` command: train | eval | dataset | demo. The only module that prints.

Exit codes: 0 done, 1 the command could not do its work, 2 a user error (one line on stderr, nothing written),
130 training stopped by SIGINT/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from robotrain import __version__
from robotrain.errors import UserError, did_you_mean, find_user_error

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

DATASET_COMMANDS = {
    "info": "summary of a dataset: episodes, frames, fps, features, tasks, size",
    "validate": "check every invariant of a dataset and report all problems",
    "visualize": "render an episode's cameras with state and action curves",
    "convert": "convert a v2.1 dataset to v3.0",
    "record-sim": "record scripted-expert demonstrations in simulation as a dataset",
    "cache": "list the frame caches (size, dataset, stale or current) or delete them with --clear",
}
USAGE = f"""usage: robotrain <command> [--flag=value ...]

robotrain {__version__}: train robot policies from demonstrations (LeRobot-compatible).

commands:
  train     train a policy on a dataset (same flags as lerobot-train)
  eval      evaluate a policy in simulation (same flags as lerobot-eval)
  dataset   dataset tools: {', '.join(DATASET_COMMANDS)}
  push      upload a trained policy with a model card to the Hugging Face Hub
  demo      record demonstrations, train and evaluate a small policy, all locally
  tune      search hyperparameters with optuna over short trainings (pip install 'robotrain[tune]')

Run `robotrain <command> --help` for its flags. Every command takes --log_level=DEBUG|INFO|WARNING|ERROR.
"""


class _CliFormatter(logging.Formatter):
    """Notes print as they are; other warnings and errors get a 'warning:' / 'error:' prefix."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and not message.startswith("note:"):
            return f"{record.levelname.lower()}: {message}"
        return message


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter())
    root = logging.getLogger("robotrain")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def take_log_level(argv: list[str]) -> tuple[str, list[str]]:
    """--log_level=LEVEL (or --log_level LEVEL) anywhere on the command line, taken out; INFO when absent."""
    level, rest, i = "INFO", [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--log_level" and i + 1 < len(argv):
            token, i = f"--log_level={argv[i + 1]}", i + 1
        if token.startswith("--log_level="):
            level = token.split("=", 1)[1].upper()
            if level not in LOG_LEVELS:
                raise UserError(f"--log_level={token.split('=', 1)[1]}: is not a logging level. Fix: use one of "
                                f"{', '.join(LOG_LEVELS)}")
        else:
            rest.append(token)
        i += 1
    return level, rest

def cmd_train(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_train_config
    from robotrain.training.train import TrainingDiverged, train

    cfg = parse_train_config(argv)
    try:
        result = train(cfg)
    except TrainingDiverged as diverged:
        print(f"robotrain train: stopped: {diverged}", file=sys.stderr)
        return EXIT_FAILED
    if not result.is_main:  # rank 0 of a multi-process job reports for all
        return EXIT_OK if result.stopped_by is None else EXIT_INTERRUPTED
    resume = f"robotrain train --output_dir={result.output_dir} --resume=true"
    if result.stopped_by is not None:
        where = f"checkpoint saved at {result.checkpoint}" if result.checkpoint else "no checkpoint (saving is off)"
        print(f"stopped by {result.stopped_by} at step {result.step}; {where}. Continue with:\n  {resume}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: {result.step} steps in {result.output_dir}")
    if result.checkpoint is not None:
        print(f"  checkpoint: {result.checkpoint}/pretrained_model")
    if result.hub_url:
        print(f"  hub:        {result.hub_url}")
    print(f"  metrics:    {result.output_dir}/metrics.jsonl, plots in {result.output_dir}/plots")
    return EXIT_OK


def cmd_eval(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_eval_config
    from robotrain.evaluation.eval import EVAL_INFO_NAME, run_eval

    cfg = parse_eval_config(argv)
    info = run_eval(cfg)
    if "offline" in info:
        offline = info["offline"]
        worst = max(offline["mae_per_dimension"].items(), key=lambda item: item[1])
        print(f"{offline['n_samples']} recorded frames of {offline['dataset']}: loss {offline['loss']:.4f}, action "
              f"MAE {offline['action_mae']:.4f} (worst dimension {worst[0]}: {worst[1]:.4f}), RMSE "
              f"{offline['action_rmse']:.4f}, {offline['eval_s']:.1f} s")
    if "aggregated" in info:
        aggregated = info["aggregated"]
        print(f"{len(info['per_episode'])} episodes: success {aggregated['pc_success']:.1f}%, "
              f"avg sum reward {aggregated['avg_sum_reward']:.3f}, avg max reward "
              f"{aggregated['avg_max_reward']:.3f}, {aggregated['eval_s']:.1f} s")
    print(f"  results: {cfg.output_dir}/{EVAL_INFO_NAME}")
    if info.get("video_paths"):
        print(f"  videos:  {cfg.output_dir}/videos ({len(info['video_paths'])})")
    return EXIT_OK


def _dataset_info(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.datasets.inspect import InfoConfig, dataset_summary

    print(dataset_summary(parse_command(InfoConfig, argv, "dataset info")))
    return EXIT_OK


def _dataset_validate(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.datasets.validate import ValidateConfig, validate_dataset

    cfg = parse_command(ValidateConfig, argv, "dataset validate")
    problems = validate_dataset(cfg)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{cfg.repo_id}: {len(problems)} problem(s) found" if problems else f"{cfg.repo_id}: valid")
    return EXIT_FAILED if problems else EXIT_OK


def _dataset_visualize(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.datasets.visualize import VisualizeConfig, visualize_episode

    path = visualize_episode(parse_command(VisualizeConfig, argv, "dataset visualize"))
    print(f"wrote {path} (open it in a web browser)")
    return EXIT_OK


def _dataset_convert(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.datasets.convert import ConvertConfig, convert_dataset

    report = convert_dataset(parse_command(ConvertConfig, argv, "dataset convert"))
    for line in report.skipped:
        print(f"skipped: {line}")
    print(f"converted {report.episodes} episodes ({report.frames} frames) to v3.0 at {report.output_root}")
    return EXIT_OK


def _dataset_record_sim(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.envs.record import RecordSimConfig, record_sim

    cfg = parse_command(RecordSimConfig, argv, "dataset record-sim")
    try:
        report = record_sim(cfg)
    except KeyboardInterrupt:
        print("robotrain dataset record-sim: interrupted; the episodes saved so far are kept. Run the same command "
              "again to continue", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    shown = ", ".join(map(str, report.failed_seeds[:10])) + (", ..." if len(report.failed_seeds) > 10 else "")
    failed = f"; the expert failed {len(report.failed_seeds)} seed(s): {shown}" if report.failed_seeds else ""
    print(f"recorded {report.new_episodes} new episode(s) from {report.attempts} seed(s) in {report.seconds:.1f} s"
          f"{failed}\n{report.root} holds {report.episodes} episodes ({report.frames} frames)")
    if not report.complete:
        print(f"robotrain dataset record-sim: only {report.episodes} of {cfg.num_episodes} episodes after "
              f"{cfg.attempt_limit()} seeds; rerun with a larger --max_attempts to continue", file=sys.stderr)
        return EXIT_FAILED
    env = f"--env.type={cfg.env.type} --env.task={cfg.env.task} --env.obs_type={cfg.env.obs_type}"
    print(f"train on it: robotrain train --dataset.repo_id={cfg.repo_id} --dataset.root={report.root} "
          f"--policy.type={cfg.env.suggested_policy} {env}")
    return EXIT_OK


def _dataset_cache(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.datasets.frame_cache_store import CacheConfig, manage_caches

    print(manage_caches(parse_command(CacheConfig, argv, "dataset cache")))
    return EXIT_OK


DATASET_TOOLS: dict[str, Callable[[list[str]], int]] = {
    "info": _dataset_info, "validate": _dataset_validate, "visualize": _dataset_visualize,
    "convert": _dataset_convert, "record-sim": _dataset_record_sim, "cache": _dataset_cache,
}


def cmd_dataset(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"  {name:<11} {doc}" for name, doc in DATASET_COMMANDS.items()]
        print("usage: robotrain dataset <tool> [--flag=value ...]\n\ntools:\n" + "\n".join(lines))
        return EXIT_OK if argv else EXIT_USER_ERROR
    tool = argv[0]
    if tool not in DATASET_TOOLS:
        guess = did_you_mean(tool, DATASET_COMMANDS)
        hint = f"did you mean `robotrain dataset {guess}`?" if guess else f"choose one of {', '.join(DATASET_COMMANDS)}"
        raise UserError(f"'{tool}' is not a dataset tool; {hint}")
    return DATASET_TOOLS[tool](argv[1:])


def cmd_push(argv: list[str]) -> int:
    from robotrain.hub_upload import parse_push_config, push_policy

    url = push_policy(parse_push_config(argv))
    print(f"pushed to {url}")
    return EXIT_OK


def cmd_tune(argv: list[str]) -> int:
    from robotrain.tune import cmd_tune as run_tune

    return run_tune(argv)


def cmd_demo(argv: list[str]) -> int:
    from robotrain.configs.parser import parse_command
    from robotrain.demo import DemoConfig, run_demo

    result = run_demo(parse_command(DemoConfig, argv, "demo"))
    if result["stopped_by"] is not None:
        print(f"demo stopped by {result['stopped_by']}; run it again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    aggregated = result["eval"]
    print(f"""
demo done:
  demonstrations  {result['dataset']} ({result['recorded']} recorded now)
  checkpoint      {result['checkpoint']}
  plots           {result['plots']}
  evaluation      {result['eval_dir']}/eval_info.json: success {aggregated['pc_success']:.0f}%, \
avg max reward {aggregated['avg_max_reward']:.2f}
  videos          {result['eval_dir']}/videos ({len(result['videos'])})
each step on its own:
  {result['commands']['record']}
  {result['commands']['train']}
  {result['commands']['eval']}""")
    return EXIT_OK


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train, "eval": cmd_eval, "dataset": cmd_dataset, "push": cmd_push, "demo": cmd_demo,
    "tune": cmd_tune,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `robotrain` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return EXIT_OK if argv else EXIT_USER_ERROR
    if argv[0] == "--version":
        print(f"robotrain {__version__}")
        return EXIT_OK
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        guess = did_you_mean(command, COMMANDS)
        hint = f"did you mean `robotrain {guess}`?" if guess else f"choose one of {', '.join(COMMANDS)}"
        print(f"robotrain: '{command}' is not a command; {hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    from robotrain.configs.parser import HelpRequested

    try:
        level, rest = take_log_level(rest)
        _setup_logging(level)
        return COMMANDS[command](rest)
    except HelpRequested as request:
        print(request.text, end="")
        return EXIT_OK
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        print(f"robotrain {command}: error: {user_error}", file=sys.stderr)
        return EXIT_USER_ERROR
