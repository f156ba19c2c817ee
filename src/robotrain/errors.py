"""Errors a user can fix. The CLI prints them as one line on stderr and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class UserError(Exception):
    """A mistake in what the user asked for: a flag, a value, a file. Never a bug in robotrain."""


class ConfigError(UserError):
    """A configuration value that cannot be used: names the flag, the value and the fix."""

    def __init__(self, field: str, value: Any, problem: str, fix: str | None = None):
        self.field, self.value, self.problem, self.fix = field, value, problem, fix
        shown = f"--{field}={format_value(value)}" if value is not None else f"--{field}"
        message = f"{shown}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple:
        # Rebuilt from its parts, so it survives pickling between processes (e.g. from an expert's worker).
        return (type(self), (self.field, self.value, self.problem, self.fix))


def format_value(value: Any) -> str:
    """Render a value the way a user would type it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The closest candidate to `word` (a likely typo), or None."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError at the root of an exception chain (draccus wraps errors raised in __post_init__)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
