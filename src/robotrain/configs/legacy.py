"""Spellings from older LeRobot tutorials and configs.

One-to-one renames (`--device`, `--offline.steps`, `--env_eval_freq`, `-p`) are accepted with a note naming the
current flag. Hydra-style words (`policy=act env=aloha hydra.run.dir=...`, LeRobot before 2025) are refused with
the whole command rewritten: their config groups loaded different defaults, so guessing silently could train
something other than what the old tutorial trained.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any

from robotrain.errors import UserError

logger = logging.getLogger(__name__)

# Old flag -> current flag, per command.
FLAG_RENAMES: dict[str, dict[str, str]] = {
    "train": {
        "device": "policy.device",
        "use_amp": "policy.use_amp",
        "offline.steps": "steps",
        "training.offline_steps": "steps",
        "env_eval_freq": "eval_freq",
        "dataset_repo_id": "dataset.repo_id",
    },
    "eval": {
        "device": "policy.device",
        "use_amp": "policy.use_amp",
        "p": "policy.path",
        "pretrained_policy_name_or_path": "policy.path",
    },
}

# Hydra key -> current flag (keys not listed keep their name: `eval.n_episodes=10` -> `--eval.n_episodes=10`).
HYDRA_KEYS = {
    "policy": "policy.type",
    "env": "env.type",
    "dataset_repo_id": "dataset.repo_id",
    "device": "policy.device",
    "use_amp": "policy.use_amp",
    "training.offline_steps": "steps",
    "training.batch_size": "batch_size",
    "training.eval_freq": "eval_freq",
    "training.save_freq": "save_freq",
    "training.log_freq": "log_freq",
    "training.num_workers": "num_workers",
    "training.save_checkpoint": "save_checkpoint",
    "training.lr": "policy.optimizer_lr",
    "hydra.run.dir": "output_dir",
    "hydra.job.name": "job_name",
}

# Keys older files carry that robotrain derives itself: dropped without a warning.
_DERIVED_ENV_KEYS = ("features", "features_map")


def refuse_hydra_words(argv: list[str], command: str) -> None:
    """Raise with the rewritten command when argv holds Hydra-style `key=value` words."""
    words = []
    for i, token in enumerate(argv):
        follows_bare_flag = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
        if not token.startswith("-") and "=" in token and not follows_bare_flag:
            words.append(token)
    if not words:
        return
    rewritten = []
    for token in argv:
        if token in words:
            key, value = token.split("=", 1)
            key = key.lstrip("+~")
            rewritten.append(f"--{HYDRA_KEYS.get(key, key)}={value}")
        else:
            rewritten.append(token)
    raise UserError(f"'{words[0]}' is Hydra-style syntax from older LeRobot; robotrain {command} takes --flags. "
                    f"Run instead: robotrain {command} {shlex.join(rewritten)}")


def split_flag(token: str, command: str) -> tuple[str, str | None]:
    """'--a.b=c' -> ('a.b', 'c'); '--a.b' -> ('a.b', None); '-p' (old eval) -> ('p', None)."""
    if token.startswith("--"):
        key, sep, value = token[2:].partition("=")
        if not key:
            raise UserError(f"'{token}' is not a flag; write --name=value")
        return key, (value if sep else None)
    if token.startswith("-") and len(token) > 1:
        key, sep, value = token[1:].partition("=")
        if key in FLAG_RENAMES.get(command, {}):
            return key, (value if sep else None)
        raise UserError(f"'{token}' is not an option of robotrain {command}; flags are written --name=value "
                        f"(run `robotrain {command} --help`)")
    raise UserError(f"unexpected argument '{token}': robotrain {command} takes --name=value flags "
                    f"(run `robotrain {command} --help`)")


def rename_flag(key: str, command: str) -> str:
    """The current spelling of `key`, with a note when it was an old one."""
    new = FLAG_RENAMES.get(command, {}).get(key)
    if new is None:
        return key
    old = f"-{key}" if len(key) == 1 else f"--{key}"
    logger.warning("note: %s is now spelled --%s (accepted this time)", old, new)
    return new


def upgrade_file(data: dict[str, Any]) -> dict[str, Any]:
    """A config file from an older or newer LeRobot, in robotrain's field names."""
    data = dict(data)
    if "env_eval_freq" in data:  # LeRobot 0.6 renamed eval_freq; robotrain keeps the older, documented name
        data.setdefault("eval_freq", data.pop("env_eval_freq"))
    if isinstance(data.get("env"), dict):
        data["env"] = {k: v for k, v in data["env"].items() if k not in _DERIVED_ENV_KEYS}
    return data
