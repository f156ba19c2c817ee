"""Walks config dataclasses against raw data: coerces values by type, rejects unknown keys with a close match,
resolves `.type` choices, and runs each config's `validate()` with its dotted path.

Values typed on the command line arrive as `CliText` and are parsed by the type of their field, so a string field
keeps exactly what was typed ("1.0", "a: b") while numbers, booleans, lists and dicts are read as YAML. Values
from files arrive already typed (JSON or YAML) and are only checked.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import draccus
import yaml

from robotrain.errors import ConfigError, did_you_mean, format_value

NULL_WORDS = ("null", "none", "~", "")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


@dataclasses.dataclass(frozen=True)
class CliText:
    """A value exactly as typed on the command line, parsed later by the type of its field."""

    text: str


def flag(path: tuple[str, ...]) -> str:
    return ".".join(path)


def is_choice(tp: Any) -> bool:
    """True for a `.type`-selected base class such as PolicyConfig."""
    return isinstance(tp, type) and issubclass(tp, draccus.ChoiceRegistry)


def choice_names(tp: type) -> list[str]:
    return sorted(tp.get_known_choices())


def choice_label(tp: type) -> str:
    """'policy' for PolicyConfig, 'env' for EnvConfig...: how messages name a family of choices."""
    return {"PolicyConfig": "policy", "EnvConfig": "env", "OptimizerConfig": "optimizer",
            "LRSchedulerConfig": "scheduler"}.get(tp.__name__, tp.__name__)


@functools.cache
def dataclass_fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """Field name -> (resolved type, Field) for the init fields of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init}


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, (tp, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def resolve_choice(base: type, data: dict, path: tuple[str, ...]) -> type:
    """The subclass a `type` key (or the default choice) selects."""
    name = data.get("type")
    if isinstance(name, CliText):
        name = name.text
    if name is None:
        default = base.default_choice_name() if hasattr(base, "default_choice_name") else None
        if default is None:
            first = next(iter(k for k in data if k != "type"), None)
            raise ConfigError(flag((*path, first)) if first else flag((*path, "type")), None,
                              f"choose the {choice_label(base)} first",
                              f"add --{flag((*path, 'type'))}=<{'|'.join(choice_names(base))}>")
        name = default
    known = base.get_known_choices()
    if name not in known:
        guess = did_you_mean(str(name), known)
        fix = f"did you mean --{flag((*path, 'type'))}={guess}?" if guess else \
            f"use --{flag((*path, 'type'))}={choice_names(base)[0]}"
        raise ConfigError(flag((*path, "type")), name,
                          f"is not a {choice_label(base)} type (choose one of {', '.join(choice_names(base))})", fix)
    return known[name]


def _scalar_from_text(text: str, path: tuple[str, ...]) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(flag(path), text, f"cannot be read as a value ({reason})",
                          "quote lists and dicts in YAML form, e.g. '[0,1]' or '{a: 1}'") from None


def _type_name(tp: Any) -> str:
    tp, optional = unwrap_optional(tp)
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    origin = typing.get_origin(tp)
    if origin in (list, tuple, dict):
        name = str(tp).replace("typing.", "")
    return f"{name} or null" if optional else name


def coerce_value(value: Any, tp: Any, path: tuple[str, ...]) -> Any:
    """`value` converted to the plain data draccus decodes into `tp`; ConfigError naming the flag otherwise."""
    inner, optional = unwrap_optional(tp)
    if isinstance(value, CliText):
        if inner is bool and value.text == "":
            return True  # `--resume` alone means `--resume=true`
        if value.text == "" and not optional and inner is not str:
            raise ConfigError(flag(path), None, "needs a value", f"write --{flag(path)}=<{_type_name(tp)}>")
        if optional and value.text.strip().lower() in NULL_WORDS:
            return None
        if inner in (str, Path):
            return value.text
        value = _scalar_from_text(value.text, path)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(flag(path), None, f"cannot be null (expects {_type_name(tp)})",
                          f"give --{flag(path)} a value")
    return _coerce_typed(value, inner, path)


def _bad(path: tuple[str, ...], value: Any, expected: str, example: str) -> ConfigError:
    return ConfigError(flag(path), value, f"is not {expected}", f"write e.g. --{flag(path)}={example}")


def _coerce_typed(value: Any, tp: Any, path: tuple[str, ...]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise _bad(path, value, "true or false", "true")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(path, value, "a whole number", "8")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise _bad(path, value, "a whole number", "8") from None
        if not number.is_integer():
            raise _bad(path, value, "a whole number", str(int(number)))
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(path, value, "a number", "0.1")
        try:
            return float(str(value).replace("_", "")) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise _bad(path, value, "a number", "1e-4") from None
    if tp in (str, Path):
        if isinstance(value, (dict, list)):
            raise _bad(path, format_value(value), "a single word or path", "value")
        return str(value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        names = {m.name.lower(): m.value for m in tp} | {str(m.value).lower(): m.value for m in tp}
        if str(value).lower() in names:
            return names[str(value).lower()]
        raise ConfigError(flag(path), value, f"is not one of {', '.join(m.name for m in tp)}",
                          f"use one of {', '.join(m.name for m in tp)}")
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(path, value, "a mapping", "'{key: value}'")
        _, value_tp = typing.get_args(tp)
        return {str(k): coerce_value(v, value_tp, (*path, str(k))) for k, v in value.items()}
    if is_choice(tp) or dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(flag(path), value, "is a group of options, not a value",
                              f"set its fields, e.g. --{flag(path)}.<field>=...")
        return coerce_tree(tp, value, path)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return value  # a multi-type union: draccus tries each member
    raise TypeError(f"robotrain config field {flag(path)} has an unsupported type {tp!r}")


def _coerce_sequence(value: Any, tp: Any, path: tuple[str, ...]) -> list:
    args = typing.get_args(tp)
    if isinstance(value, str) and "," in value:  # `--x=84,84` reads as the list [84, 84]
        value = [_scalar_from_text(part, path) for part in value.split(",")]
    if not isinstance(value, (list, tuple)):
        raise _bad(path, value, "a list", "[1,2]")
    if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(flag(path), list(value), f"needs exactly {len(args)} values",
                              f"write e.g. --{flag(path)}=[{','.join('1' for _ in args)}]")
        return [coerce_value(v, a, (*path, str(i))) for i, (v, a) in enumerate(zip(value, args, strict=True))]
    item_tp = args[0] if args else Any
    return [coerce_value(v, item_tp, (*path, str(i))) for i, v in enumerate(value)]


def coerce_tree(cls: type, data: dict, path: tuple[str, ...] = ()) -> dict:
    """Check every key of `data` against dataclass `cls` and coerce every value; returns draccus-ready data."""
    target = resolve_choice(cls, data, path) if is_choice(cls) else cls
    known = dataclass_fields(target)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type" and is_choice(cls):
            out["type"] = target.get_choice_name(target)
            continue
        if key not in known:
            raise unknown_key_error(target, cls, key, value, path)
        tp, field = known[key]
        coerced = coerce_value(value, tp, (*path, key))
        default = _default_of(field)
        if isinstance(coerced, dict) and isinstance(default, dict) and default and _typed_on_cli_only(value):
            # `--dataset.image_transforms.tfs.hue.weight=2` refines the default dict instead of replacing it.
            coerced = deep_merge(draccus.encode(default), coerced)
        out[key] = coerced
    missing = [n for n, (_, f) in known.items() if n not in out and _is_required(f)]
    if missing:
        raise missing_field_error(target, (*path, missing[0]))
    return out


def missing_field_error(cls: type, path: tuple[str, ...]) -> ConfigError:
    """Names the first required leaf: a missing `dataset` is reported as `--dataset.repo_id`."""
    tp, _ = dataclass_fields(cls)[path[-1]]
    inner, _ = unwrap_optional(tp)
    if dataclasses.is_dataclass(inner) and not is_choice(inner):
        required = [n for n, (_, f) in dataclass_fields(inner).items() if _is_required(f)]
        if required:
            return missing_field_error(inner, (*path, required[0]))
    doc = field_doc(cls, path[-1])
    if is_choice(inner):
        return ConfigError(flag((*path, "type")), None, f"is required ({doc})",
                           f"add --{flag((*path, 'type'))}=<{'|'.join(choice_names(inner))}>")
    example = next((w.rstrip(".,:;)") for w in doc.split() if "/" in w and not w.startswith("$")), "...")
    return ConfigError(flag(path), None, f"is required ({doc})", f"add --{flag(path)}={example}")


def _typed_on_cli_only(value: Any) -> bool:
    """True when every leaf of a nested dict was typed on the command line (none came from a file)."""
    if isinstance(value, dict):
        return bool(value) and all(_typed_on_cli_only(v) for v in value.values())
    return isinstance(value, CliText)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, recursively for nested dicts."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def unknown_key_error(target: type, base: type, key: str, value: Any, path: tuple[str, ...]) -> ConfigError:
    """The message for a key `target` does not have: a close sibling, or which choices do have it."""
    shown = value.text if isinstance(value, CliText) else (None if isinstance(value, dict) else value)
    where = f"{target.__name__} has no option '{key}'"
    guess = did_you_mean(key, dataclass_fields(target))
    if guess:
        return ConfigError(flag((*path, key)), shown, where, f"did you mean --{flag((*path, guess))}?")
    if is_choice(base):
        owners = [n for n, c in sorted(base.get_known_choices().items()) if key in dataclass_fields(c)]
        if owners:
            return ConfigError(flag((*path, key)), shown, f"{where}; it belongs to {', '.join(owners)}",
                               f"use --{flag((*path, 'type'))}={owners[0]}, or drop --{flag((*path, key))}")
    return ConfigError(flag((*path, key)), shown, where,
                       f"run with --help to list the options of {'--' + flag(path) if path else 'this command'}")


def prune_unknown(cls: type, data: dict, path: tuple[str, ...], source: tuple[str, Any],
                  dropped: list[str]) -> dict:
    """For data from a file written by another tool or version: drop keys `cls` lacks (noted in `dropped`),
    but refuse a key that looks like a typo of a real one."""
    target = resolve_choice(cls, data, path) if is_choice(cls) else cls
    known = dataclass_fields(target)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type" and is_choice(cls):
            out[key] = value
            continue
        if key not in known:
            guess = did_you_mean(key, known, cutoff=0.8)
            if guess and guess not in data:
                source_flag, source_file = source
                raise ConfigError(source_flag, source_file,
                                  f"has no setting '{flag((*path, key))}' ({target.__name__})",
                                  f"did you mean '{flag((*path, guess))}'? Correct the file")
            dropped.append(flag((*path, key)))
            continue
        tp, _ = known[key]
        inner, _ = unwrap_optional(tp)
        if isinstance(value, dict) and (is_choice(inner) or dataclasses.is_dataclass(inner)):
            value = prune_unknown(inner, value, (*path, key), source, dropped)
        out[key] = value
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and its bases): the text --help shows."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_doc(cls: type, name: str) -> str:
    return field_docs(cls).get(name, "").rstrip(".") or name


def validate_tree(obj: Any, path: tuple[str, ...] = ()) -> None:
    """Run `validate()` on `obj` and every nested config, re-raising ConfigError with the full dotted flag."""
    if not dataclasses.is_dataclass(obj):
        return
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as exc:
            if not path:
                raise
            raise ConfigError(flag((*path, exc.field)), exc.value, exc.problem, exc.fix) from None
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            validate_tree(child, (*path, f.name))
        elif isinstance(child, dict):
            for key, item in child.items():
                validate_tree(item, (*path, f.name, str(key)))


def all_flags(cls: type, path: tuple[str, ...] = ()) -> list[str]:
    """Every dotted flag of `cls` (every choice's fields included): the pool for 'did you mean'."""
    flags: list[str] = []
    classes = list(cls.get_known_choices().values()) if is_choice(cls) else [cls]
    for klass in classes:
        for name, (tp, _) in dataclass_fields(klass).items():
            inner, _ = unwrap_optional(tp)
            flags.append(flag((*path, name)))
            if is_choice(inner) or dataclasses.is_dataclass(inner):
                flags.extend(all_flags(inner, (*path, name)))
    if is_choice(cls):
        flags.append(flag((*path, "type")))
    return sorted(set(flags))
