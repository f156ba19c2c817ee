"""`--help`: every flag with its type, default and docstring; a `.type` choice shows its fields only once chosen."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import draccus

from robotrain.configs.schema import choice_names, dataclass_fields, field_docs, is_choice, unwrap_optional
from robotrain.errors import format_value

USAGE = {
    "train": ("robotrain train --dataset.repo_id=ID --policy.type=TYPE [--env.type=ENV] [--flag=value ...]\n"
              "       robotrain train --config_path=RUN/checkpoints/last/pretrained_model --resume=true\n"
              "       robotrain train --policy.path=DIR_OR_HUB_ID --dataset.repo_id=ID   (fine-tune)"),
    "eval": "robotrain eval --policy.path=DIR_OR_HUB_ID --env.type=ENV [--env.task=TASK] [--eval.n_episodes=N]",
}
SPECIAL = {
    "train": [("config_path", "PATH", "A train_config.json (JSON or YAML), a checkpoint's pretrained_model "
               "directory holding one, or a Hub repo; flags given here override it.")],
    "eval": [("config_path", "PATH", "A JSON or YAML file of eval settings; flags given here override it.")],
}
POLICY_PATH_DOC = ("A trained policy: a pretrained_model directory or a Hub repo id. --policy.* flags override "
                   "its config.json. Not combinable with --policy.type.")
WIDTH = 100


def type_label(tp: Any) -> str:
    inner, optional = unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        label = "BOOL"
    elif inner is int:
        label = "INT"
    elif inner is float:
        label = "FLOAT"
    elif inner is Path:
        label = "PATH"
    elif isinstance(inner, type) and issubclass(inner, Enum):
        label = "|".join(m.name for m in inner)
    elif origin in (list, tuple):
        label = "LIST"
    elif origin is dict:
        label = "DICT"
    else:
        label = "STR"
    return label


def _entry(name: str, label: str, doc: str, default: str | None) -> list[str]:
    head = f"  --{name}={label}"
    if default == "required":
        head += "   (required)"
    elif default is not None:
        head += f"   (default: {default})"
    body = textwrap.wrap(doc, WIDTH - 6, initial_indent="      ", subsequent_indent="      ") if doc else []
    return [head, *body]


def _default_text(field: dataclasses.Field) -> str | None:
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return "required"
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if dataclasses.is_dataclass(value) or (isinstance(value, dict) and value and
                                           dataclasses.is_dataclass(next(iter(value.values())))):
        return None
    encoded = draccus.encode(value)
    text = format_value(encoded) if not isinstance(encoded, dict) else str(encoded)
    return text if len(text) <= 60 else text[:57] + "..."


def _section(cls: type, path: tuple[str, ...], chosen: dict[str, str], lines: list[str]) -> None:
    docs = field_docs(cls)
    nested: list[tuple[str, type, tuple[str, ...]]] = []
    for name, (tp, field) in dataclass_fields(cls).items():
        inner, _ = unwrap_optional(tp)
        full = ".".join((*path, name))
        if is_choice(inner):
            nested.append((name, inner, (*path, name)))
            continue
        if dataclasses.is_dataclass(inner):
            nested.append((name, inner, (*path, name)))
            continue
        lines.extend(_entry(full, type_label(tp), docs.get(name, ""), _default_text(field)))
    for name, inner, sub in nested:
        full = ".".join(sub)
        lines.append("")
        if is_choice(inner):
            selected = chosen.get(full)
            names = "|".join(choice_names(inner))
            lines.extend(_entry(f"{full}.type", "{" + names + "}", field_docs(cls).get(name, ""), None))
            if full == "policy":
                lines.extend(_entry("policy.path", "PATH", POLICY_PATH_DOC, None))
            if selected in inner.get_known_choices():
                lines.append(f"  options of --{full}.type={selected}:")
                _section(inner.get_known_choices()[selected], sub, chosen, lines)
            else:
                lines.append(f"      (add --{full}.type=NAME with --help to list its options)")
        else:
            lines.append(f"  {full}: {field_docs(cls).get(name, '')}")
            _section(inner, sub, chosen, lines)


def render_help(config_cls: type, line: Any, command: str) -> str:
    """The help of `robotrain <command>`, scoped to the `.type` choices already on the command line."""
    chosen = {key[: -len(".type")]: text for key, text in line.flags.items() if key.endswith(".type")}
    usage = USAGE.get(command, f"robotrain {command} [--flag=value ...]")
    lines = [f"usage: {usage}", "",
             "Flags are --name=value, at any depth (--policy.dim_model=256). Lists and dicts are YAML",
             "(--dataset.episodes=[0,1]). Booleans accept true/false in any case. Errors exit with code 2.", ""]
    for name, label, doc in SPECIAL.get(command, []):
        lines.extend(_entry(name, label, doc, None))
    _section(config_cls, (), chosen, lines)
    return "\n".join(lines) + "\n"
