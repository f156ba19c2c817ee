"""The search space of `robotrain tune`: one entry per train flag, read from --space (JSON or YAML) or --space_file.

    {"policy.optimizer_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true},
     "batch_size":          {"type": "categorical", "choices": [8, 16]},
     "policy.chunk_size":   {"type": "int", "low": 10, "high": 100, "step": 10}}

Every key must be a flag of the train command the trials share (checked against the resolved TrainConfig, with a
close match for typos), and its type must fit the flag's: a float range for a whole-number flag is refused. A
categorical choice may be any value the flag takes, lists included (optuna stores those as their flag text).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from robotrain.configs.schema import dataclass_fields, is_choice, unwrap_optional
from robotrain.errors import ConfigError, did_you_mean, format_value

KINDS = ("float", "int", "categorical")
SPEC_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
             "categorical": ("type", "choices")}
# Flags a trial's folder and lifetime own: tune sets them itself.
RESERVED = ("output_dir", "resume", "config_path", "policy.path")
EXAMPLE = '{"policy.optimizer_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true}}'


@dataclass(frozen=True)
class Param:
    """One searched flag and its distribution."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value optuna's `trial` picks for this flag (categorical lists come back as their flag text)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, [optuna_choice(c) for c in self.choices])

    def probe_values(self) -> list[Any]:
        """The values that bound this distribution: each is checked with robotrain's parser before any trial."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def as_dict(self) -> dict[str, Any]:
        """The normalized spec, as the study stores it (a rerun must give the same)."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        spec = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return spec | ({"step": self.step} if self.step is not None else {})


def flag_text(value: Any) -> str:
    """A value as a train flag takes it: exact floats, true/false, [a,b] lists."""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly: the reproduced run gets the very value the trial had
    return format_value(value)


def optuna_choice(value: Any) -> Any:
    """optuna's categorical choices are scalars: a list choice travels as its flag text."""
    return flag_text(value) if isinstance(value, (list, tuple, dict)) else value


def read_space(text: str | None, file: Path | None) -> list[Param]:
    """The space of --space (text) or --space_file (path), checked on its own (not yet against the train flags)."""
    flag, shown = ("space", None) if text is not None else ("space_file", file)
    if text is not None:
        try:
            data = json.loads(text)
        except ValueError:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(flag, shown, f"is neither JSON nor YAML ({str(exc).splitlines()[0]})",
                                  f"write it as JSON, e.g. --space='{EXAMPLE}'") from None
    else:
        from robotrain.configs.parser import load_config_file

        data = load_config_file(Path(file), flag)
    if not isinstance(data, dict) or not data:
        raise ConfigError(flag, shown, "must map train flags to distributions", f"e.g. --space='{EXAMPLE}'")
    return [parse_param(str(key).removeprefix("--"), spec, flag, shown) for key, spec in data.items()]


def parse_param(key: str, spec: Any, flag: str, shown: Any) -> Param:
    """One entry of the space: {type, low, high, log, step} or {type: categorical, choices}."""
    def bad(problem: str, fix: str) -> ConfigError:
        return ConfigError(flag, shown, f"{key}: {problem}", fix)

    if not isinstance(spec, dict):
        raise bad(f"is {format_value(spec)}, not a distribution", 'write {"type": "float", "low": ..., "high": ...}')
    kind = spec.get("type")
    if kind not in KINDS:
        guess = did_you_mean(str(kind), KINDS)
        raise bad(f"\"type\" is {format_value(kind)}", f"use \"type\": \"{guess or 'float'}\" (one of "
                  f"{', '.join(KINDS)})")
    unknown = [k for k in spec if k not in SPEC_KEYS[kind]]
    if unknown:
        guess = did_you_mean(str(unknown[0]), SPEC_KEYS[kind])
        raise bad(f"{'an' if kind == 'int' else 'a'} {kind} distribution has no \"{unknown[0]}\"",
                  f"did you mean \"{guess}\"?" if guess else f"use {', '.join(SPEC_KEYS[kind][1:])}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("needs a non-empty list \"choices\"", 'e.g. "choices": [8, 16, 32]')
        texts = [flag_text(c) for c in choices]
        if len(set(texts)) != len(texts):
            raise bad(f"\"choices\" repeats a value ({format_value(choices)})", "list each value once")
        return Param(key, kind, choices=tuple(choices))
    return _range_param(key, kind, spec, bad)


def _range_param(key: str, kind: str, spec: dict[str, Any], bad: Any) -> Param:
    values: dict[str, Any] = {}
    for name in ("low", "high", "step"):
        value = spec.get(name)
        if value is None:
            if name != "step":
                raise bad(f"needs \"{name}\"", f'e.g. {{"type": "{kind}", "low": 1, "high": 10}}')
            continue
        try:  # a YAML file reads 1e-5 as text: take any number written as text too
            number = float(value) if isinstance(value, str) else value
            ok = isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
        except ValueError:
            ok = False
        if not ok:
            raise bad(f"\"{name}\" is {format_value(value)}, not a number", f"give \"{name}\" a number")
        if kind == "int":
            if not float(number).is_integer():
                raise bad(f"\"{name}\" is {format_value(value)}, not a whole number",
                          "use whole numbers, or \"type\": \"float\"")
            number = int(number)
        values[name] = float(number) if kind == "float" else number
    low, high, step, log = values["low"], values["high"], values.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise bad(f"\"log\" is {format_value(log)}", 'use "log": true or false')
    if low >= high:
        raise bad(f"\"low\" ({format_value(low)}) must be below \"high\" ({format_value(high)})", "swap or widen them")
    if log and low <= 0:
        raise bad(f"a log scale needs \"low\" above 0 (it is {format_value(low)})", 'raise "low" or drop "log"')
    if step is not None and step <= 0:
        raise bad(f"\"step\" must be positive (it is {format_value(step)})", 'drop "step" or make it positive')
    if step is not None and log:
        raise bad("cannot have both \"step\" and \"log\" (optuna samples one or the other)", "drop one of them")
    return Param(key, kind, low, high, log, step)


def check_against_train(params: list[Param], train_cfg: Any, shared_flags: dict[str, str], flag: str) -> None:
    """Every key is a leaf flag of the resolved train config, not among the shared flags, of a fitting type."""
    for param in params:
        def bad(problem: str, fix: str, key: str = param.key) -> ConfigError:
            return ConfigError(flag, None, f"{key}: {problem}", fix)

        if param.key in RESERVED:
            raise bad("is set by robotrain tune for each trial, so it cannot be searched", "drop it from the space")
        if param.key in shared_flags:
            raise bad(f"is also among the train flags (--{param.key}={shared_flags[param.key]})",
                      "drop it from the train flags or from the space")
        found, field_type = _locate(train_cfg, param.key, flag)
        if not found:
            guess = suggest_flag(param.key, leaf_flags(train_cfg))
            raise bad("is not a flag of this train command",
                      f"did you mean {guess}?" if guess else "run `robotrain train --help` to list the flags")
        if field_type is None:
            continue  # inside a free-form dict: the parser checks the values
        inner, _ = unwrap_optional(field_type)
        if dataclasses.is_dataclass(inner) or is_choice(inner):
            raise bad("is a group of options, not a value", f"search one of its fields, e.g. {param.key}.<field>")
        _check_kind(param, inner, bad)


def _check_kind(param: Param, inner: Any, bad: Any) -> None:
    if param.kind == "float" and inner is not float:
        fix = 'use "type": "int"' if inner is int else 'use "type": "categorical" with "choices"'
        raise bad(f"a float range does not fit this flag (it takes {getattr(inner, '__name__', inner)})", fix)
    if param.kind == "int" and inner not in (int, float):
        raise bad(f"a whole-number range does not fit this flag (it takes {getattr(inner, '__name__', inner)})",
                  'use "type": "categorical" with "choices"')


def _locate(cfg: Any, key: str, flag: str) -> tuple[bool, Any]:
    """(whether the train config has this flag, its declared type). The type is None for a key inside a free-form
    dict (e.g. image transform arguments); a key under an option group the train flags leave unset (--env.* without
    --env.type) raises ConfigError."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if node is None and i > 0:
            group = ".".join(parts[:i])
            raise ConfigError(flag, None, f"{key}: --{group} is not set by the train flags",
                              f"add --{group}.type=... (or its flags) to the train flags")
        if dataclasses.is_dataclass(node) and part in dataclass_fields(type(node)):
            if last:
                return True, dataclass_fields(type(node))[part][0]
            node = getattr(node, part)
        elif isinstance(node, dict) and part in node:
            if last:
                return True, None
            node = node[part]
        else:
            return False, None
    return False, None


def leaf_flags(node: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every value flag of a resolved config instance (its chosen policy's fields, not every policy's)."""
    flags: list[str] = []
    for name in dataclass_fields(type(node)):
        value = getattr(node, name)
        if dataclasses.is_dataclass(value):
            flags.extend(leaf_flags(value, (*path, name)))
        else:
            flags.append(".".join((*path, name)))
    return flags


def suggest_flag(key: str, flags: list[str]) -> str | None:
    """`chunk_size` -> policy.chunk_size (same last word), `batchsize` -> batch_size (a close spelling)."""
    leaf = key.split(".")[-1]
    same_leaf = [f for f in flags if f.split(".")[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    close = did_you_mean(key, flags)
    if close:
        return close
    by_leaf = did_you_mean(leaf, [f.split(".")[-1] for f in flags])
    return next((f for f in flags if f.split(".")[-1] == by_leaf), None) if by_leaf else None
