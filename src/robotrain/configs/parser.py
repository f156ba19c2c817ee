"""Command line -> config, with LeRobot's grammar.

    --a.b=c            any depth; lists and dicts as YAML ('--dataset.episodes=[0,1]'); `--a.b c` works too
    --config_path=X    a train_config.json (or YAML), a directory holding one, or a Hub repo; flags override it
    --policy.path=X    a pretrained_model directory (or Hub repo); --policy.* flags override its config.json
    --resume=true      continue the run of --config_path, or of --output_dir

Order of precedence: command line > --policy.path > --config_path > defaults. Every mistake is a UserError that
names the flag, the value and the fix; nothing is written to disk here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import yaml

from robotrain.configs import legacy
from robotrain.configs.run import (
    POLICY_CONFIG_NAME,
    PRETRAINED_MODEL_DIR,
    TRAIN_CONFIG_NAME,
    ResumeSource,
    find_resume_source,
)
from robotrain.configs.schema import (
    CliText,
    all_flags,
    coerce_tree,
    coerce_value,
    prune_unknown,
    validate_tree,
)
from robotrain.configs.train import (
    EvalPipelineConfig,
    TrainConfig,
    resolve_eval_config,
    resolve_train_config,
)
from robotrain.errors import ConfigError, UserError, did_you_mean
from robotrain.hub import fetch_hub_file

logger = logging.getLogger(__name__)

HELP_WORDS = ("--help", "-h")
SPECIAL_FLAGS = ("config_path", "policy.path")


class HelpRequested(Exception):  # noqa: N818 (a request, not an error)
    """Raised when --help is among the arguments; carries the scoped help text."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class CommandLine:
    """The flags of one command line, in order, with LeRobot's special flags taken out."""

    flags: dict[str, str] = field(default_factory=dict)
    config_path: str | None = None
    policy_path: str | None = None
    wants_help: bool = False

    def tree(self) -> dict[str, Any]:
        """The flags as a nested dict of CliText leaves."""
        tree: dict[str, Any] = {}
        for key, text in self.flags.items():
            node = tree
            *parents, leaf = key.split(".")
            for i, part in enumerate(parents):
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(".".join(parents[: i + 1]), child.text, "is given both a value and sub-options",
                                      f"keep either --{'.'.join(parents[: i + 1])}=... or --{key}=...")
                node = child
            if isinstance(node.get(leaf), dict):
                raise ConfigError(key, text, "is given both a value and sub-options",
                              f"keep either --{key}=... or its --{key}.* flags")
            node[leaf] = CliText(text)
        return tree


def read_command_line(argv: list[str], command: str) -> CommandLine:
    """Split argv into flags; old spellings are translated (with a note) or refused with the new spelling."""
    legacy.refuse_hydra_words(argv, command)
    line = CommandLine()
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token in HELP_WORDS:
            line.wants_help = True
            continue
        key, text = legacy.split_flag(token, command)
        if text is None and i < len(argv) and not argv[i].startswith("-"):
            text = argv[i]  # `--steps 1000`
            i += 1
        key = legacy.rename_flag(key, command)
        if text is None:
            text = ""  # a bare flag: true for a boolean field, "needs a value" for any other
        if key in line.flags and line.flags[key] != text and key not in SPECIAL_FLAGS:
            raise ConfigError(key, text, f"is given twice (also as --{key}={line.flags[key]})", "keep one of them")
        if key == "config_path":
            line.config_path = text
        elif key == "policy.path":
            line.policy_path = text
        else:
            line.flags[key] = text
    if line.policy_path is not None and "policy.type" in line.flags:
        raise ConfigError("policy.type", line.flags["policy.type"], "cannot be combined with --policy.path "
                          "(the checkpoint's config.json already names the policy type)",
                          "drop --policy.type; --policy.* flags still override the checkpoint's values")
    return line


def load_config_file(path: Path, flag: str) -> dict[str, Any]:
    """A JSON or YAML mapping from `path`; ConfigError naming the file when it is unreadable or malformed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(flag, path, f"cannot be read ({exc.strerror})",
                          "check the path and its permissions") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(flag, path, f"is not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({reason})",
                          "fix the file, or point at another one") from None
    if not isinstance(data, dict):
        raise ConfigError(flag, path, "does not hold a mapping of settings", "point at a config file") from None
    return data


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    is_file_name = text.endswith((".json", ".yaml", ".yml"))
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not is_file_name


def locate_train_config(text: str) -> Path:
    """--config_path: a file, a directory holding train_config.json, or a Hub repo id."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / TRAIN_CONFIG_NAME).is_file():
            return path / TRAIN_CONFIG_NAME
        raise ConfigError("config_path", text, f"is a directory without {TRAIN_CONFIG_NAME}",
                          f"point at a checkpoint's {PRETRAINED_MODEL_DIR} directory, or at a config file")
    if _looks_like_repo_id(text):
        return fetch_hub_file(text, TRAIN_CONFIG_NAME, "config_path")
    raise ConfigError("config_path", text, "does not exist",
                      f"point at a checkpoint's {PRETRAINED_MODEL_DIR} directory or a {TRAIN_CONFIG_NAME} file")


def locate_policy_dir(text: str) -> tuple[Path, Path]:
    """--policy.path: (the directory to load weights from, its config.json). Hub ids resolve via the cache, which
    receives every file loading needs (weights, LeRobot processor files), not only config.json."""
    path = Path(text).expanduser()
    if path.is_file() and path.name == POLICY_CONFIG_NAME:
        path = path.parent
    if path.is_dir():
        if not (path / POLICY_CONFIG_NAME).is_file():
            raise ConfigError("policy.path", text, f"holds no {POLICY_CONFIG_NAME}",
                              f"point at a checkpoint's {PRETRAINED_MODEL_DIR} directory")
        return path, path / POLICY_CONFIG_NAME
    if _looks_like_repo_id(text):
        from robotrain.policies.base import locate_pretrained  # here: robotrain.policies imports the configs

        directory, _ = locate_pretrained(text)
        return directory, directory / POLICY_CONFIG_NAME
    raise ConfigError("policy.path", text, "does not exist",
                      f"point at a checkpoint's {PRETRAINED_MODEL_DIR} directory")


def merge_sources(file_data: dict[str, Any], cli_tree: dict[str, Any]) -> dict[str, Any]:
    """CLI over file; a CLI `.type` that differs from the file's discards the file's fields of that choice."""
    merged = dict(file_data)
    for key, value in cli_tree.items():
        base = merged.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            new_type = value.get("type")
            if isinstance(new_type, CliText) and new_type.text != base.get("type"):
                base = {}
            merged[key] = merge_sources(base, value)
        else:
            merged[key] = value
    return merged


def _cli_bool(line: CommandLine, key: str) -> bool:
    return key in line.flags and bool(coerce_value(CliText(line.flags[key]), bool, (key,)))


def _load_sources(line: CommandLine, config_cls: type,
                  resume: ResumeSource | None) -> tuple[dict, Path | None]:
    """The file layer (config file and/or policy config.json); returns (data, policy dir)."""
    config_file = resume.config_file if resume is not None else (
        locate_train_config(line.config_path) if line.config_path else None)
    data: dict[str, Any] = {}
    dropped: list[str] = []
    if config_file is not None:
        data = prune_unknown(config_cls, legacy.upgrade_file(load_config_file(config_file, "config_path")), (),
                             ("config_path", config_file), dropped)
        if config_cls is TrainConfig and not resume:
            # A finished run's location, W&B run and Hub repo belong to that run; a new run gets its own.
            data.pop("output_dir", None)
            data.get("wandb", {}).pop("run_id", None)
            for key in ("push_to_hub", "repo_id"):
                data.get("policy", {}).pop(key, None)
        data.pop("resume", None)  # only the command line decides whether this run resumes
    policy_dir = None
    if line.policy_path is not None:
        policy_dir, policy_file = locate_policy_dir(line.policy_path)
        policy_data = load_config_file(policy_file, "policy.path")
        # Where a run publishes is its command line's choice: a policy pushed once must not make every fine-tune
        # of it push to (and overwrite) the same repo.
        for key in ("push_to_hub", "repo_id"):
            policy_data.pop(key, None)
        if "type" not in policy_data:
            raise ConfigError("policy.path", line.policy_path, f"{policy_file} has no \"type\" key",
                              "point at a policy saved by robotrain or LeRobot")
        from robotrain.configs.policies import PolicyConfig

        data["policy"] = prune_unknown(PolicyConfig, policy_data, ("policy",), ("policy.path", policy_file), dropped)
    if dropped:
        logger.warning("ignored %d setting(s) robotrain does not use: %s", len(dropped), ", ".join(dropped))
    return data, policy_dir


def _build(config_cls: type, line: CommandLine, file_data: dict[str, Any]) -> Any:
    unknown_top = [k for k in line.flags if k.split(".")[0] not in set(_top_fields(config_cls))]
    if unknown_top:
        key = unknown_top[0]
        guess = _suggest_flag(config_cls, key)
        raise ConfigError(key, line.flags[key] or None, "is not an option of this command",
                          f"did you mean --{guess}?" if guess else "run with --help to list the options")
    return _decode_checked(config_cls, merge_sources(file_data, line.tree()))


def _top_fields(config_cls: type) -> list[str]:
    from robotrain.configs.schema import dataclass_fields

    return list(dataclass_fields(config_cls))


def _suggest_flag(config_cls: type, key: str) -> str | None:
    """A close flag anywhere in the config: `--dim_model` -> `--policy.dim_model`, `--batchsize` -> `--batch_size`."""
    flags = all_flags(config_cls)
    by_leaf = [f for f in flags if f.split(".")[-1] == key.split(".")[-1]]
    if by_leaf:
        return by_leaf[0]
    return did_you_mean(key, flags)


def read_config_file(config_cls: type, path: Path) -> Any:
    """A config file as it is, checked: what load_train_config returns (no new-run or resume rules)."""
    dropped: list[str] = []
    data = prune_unknown(config_cls, legacy.upgrade_file(load_config_file(path, "config_path")), (),
                         ("config_path", path), dropped)
    if dropped:
        logger.warning("ignored %d setting(s) robotrain does not use: %s", len(dropped), ", ".join(dropped))
    return _decode_checked(config_cls, data)


def _decode_checked(config_cls: type, data: dict[str, Any]) -> Any:
    """Check and coerce every key and value, build the dataclasses, and run every validate()."""
    checked = coerce_tree(config_cls, data)
    try:
        cfg = draccus.decode(config_cls, checked)
    except Exception as exc:  # coerce_tree checked every key and type, so this is a robotrain bug
        raise RuntimeError(f"robotrain could not build {config_cls.__name__} from checked data: {exc}") from exc
    validate_tree(cfg)
    return cfg


def parse_train_config(argv: list[str]) -> TrainConfig:
    """`robotrain train` arguments -> a checked TrainConfig (resolved: presets, output dir, resume checkpoint)."""
    line = read_command_line(argv, "train")
    if line.wants_help:
        from robotrain.configs.help import render_help

        raise HelpRequested(render_help(TrainConfig, line, "train"))
    resume = None
    if _cli_bool(line, "resume"):
        if line.policy_path is not None:
            raise ConfigError("policy.path", line.policy_path, "cannot be combined with --resume=true (a resumed run "
                              "reloads its own policy from the checkpoint)",
                              "drop --policy.path, or drop --resume to fine-tune from it as a new run")
        config_file = locate_train_config(line.config_path) if line.config_path else None
        resume = find_resume_source(config_file, line.flags.get("output_dir"))
    file_data, policy_dir = _load_sources(line, TrainConfig, resume)
    cfg = _build(TrainConfig, line, file_data)
    if policy_dir is not None:
        cfg.policy.pretrained_path = policy_dir
    return resolve_train_config(cfg, set(line.flags), resume)


def parse_eval_config(argv: list[str]) -> EvalPipelineConfig:
    """`robotrain eval` arguments -> a checked, resolved EvalPipelineConfig."""
    line = read_command_line(argv, "eval")
    if line.wants_help:
        from robotrain.configs.help import render_help

        raise HelpRequested(render_help(EvalPipelineConfig, line, "eval"))
    file_data, policy_dir = _load_sources(line, EvalPipelineConfig, resume=None)
    cfg = _build(EvalPipelineConfig, line, file_data)
    if policy_dir is not None:
        cfg.policy.pretrained_path = policy_dir
    return resolve_eval_config(cfg)


def parse_command(config_cls: type, argv: list[str], command: str) -> Any:
    """Arguments of a simple command (a `robotrain dataset` tool) -> its checked config dataclass."""
    line = read_command_line(argv, command)
    if line.wants_help:
        from robotrain.configs.help import render_help

        raise HelpRequested(render_help(config_cls, line, command))
    for flag, value in (("config_path", line.config_path), ("policy.path", line.policy_path)):
        if value is not None:
            raise ConfigError(flag, value, "is not an option of this command", f"run `robotrain {command} --help`")
    return _build(config_cls, line, {})


__all__ = ["HelpRequested", "UserError", "parse_command", "parse_eval_config", "parse_train_config"]
