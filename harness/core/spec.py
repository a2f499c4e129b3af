"""Typed reading of TOML tables into frozen dataclasses, with errors that name file, field and fix.

Shared by scenario files and fault profiles so both speak the same units ("90s", "25m", "20ms")
and refuse unknown keys with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any

__all__ = ["ConfigError", "parse_duration", "read_section", "spec"]


class ConfigError(Exception):
    """A user mistake in a configuration file: says where, what, and how to fix it."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """'250ms', '90s', '25m', '1.5h' or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '90s', '25m' or 20ms, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"durations cannot be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise ValueError(f"expected a duration such as '90s', '25m', '250ms' or seconds, got {value!r}")


def spec(
    default: Any,
    kind: str = "",
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
    doc: str = "",
) -> Any:
    """A dataclass field with how to read it: kind 'duration' parses units; lo/hi bound numbers;
    choices close a string set."""
    return dataclasses.field(
        default=default,
        metadata={"kind": kind, "lo": lo, "hi": hi, "choices": choices, "doc": doc},
    )


def read_section(cls: type, table: Any, source: str, section: str) -> Any:
    """Build dataclass `cls` from a TOML table, checking every key against the fields."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError(source, section, f"must be a table ([{section}]), got {_kind(table)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in table.items():
        where = f"{section}.{key}"
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else "allowed: " + ", ".join(sorted(fields))
            raise ConfigError(source, where, f"unknown key; {fix}")
        try:
            values[key] = _convert(fields[key], raw)
        except ValueError as exc:
            raise ConfigError(source, where, str(exc)) from None
    built = cls(**values)
    check = getattr(built, "check", None)  # rules that span fields
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(source, section, str(exc)) from None
    return built


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _convert(field: dataclasses.Field, raw: Any) -> Any:
    meta = field.metadata
    kind, default = meta.get("kind", ""), field.default
    if kind == "duration":
        value: Any = parse_duration(raw)
    elif isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        value = raw
    elif isinstance(default, int) and not isinstance(default, bool) and kind != "float":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expected a whole number, got {_kind(raw)} {raw!r}")
        value = raw
    elif isinstance(default, float) or kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"expected a number, got {_kind(raw)} {raw!r}")
        value = float(raw)
    elif isinstance(default, str) or default is None:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {_kind(raw)} {raw!r}")
        value = raw
    else:
        value = raw
    choices = meta.get("choices")
    if choices and value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        fix = f"did you mean '{hint[0]}'? " if hint else ""
        raise ValueError(f"{value!r} is not allowed; {fix}choose one of: {', '.join(choices)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo:
        raise ValueError(f"must be at least {lo}, got {raw!r}")
    if hi is not None and value > hi:
        raise ValueError(f"must be at most {hi}, got {raw!r}")
    return value
