"""Decoders for what arrives on a Realtime socket: every append's JSON and base64, on both ends.

Each takes the fast C library first (orjson, pybase64: about 1 µs each for a 20 ms append,
against 4-5 µs each for the standard library's) and falls back to the standard library's
decoder wherever the two could differ, so that every answer, value or error, is exactly the
standard library's (tested): when the fast one refuses the input, and for JSON also when the
value holds a float (orjson reads integers beyond 64 bits as floats) or nests deeply (the two
parsers stop at different depths). Appends, all strings, never fall back.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

import orjson
import pybase64

__all__ = ["b64decode_strict", "loads"]


_MAX_DEPTH = 64  # deeper than any Realtime event; both parsers allow far more


def loads(text: str | bytes) -> Any:
    """`json.loads(text)`, faster. Raises what json.loads raises."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN, lone surrogates, byte order marks, ...
        return json.loads(text)
    return json.loads(text) if _may_differ(value) else value


def _may_differ(value: Any, depth: int = 0) -> bool:
    """Whether json.loads could read this text otherwise: a float in it, or deep nesting."""
    if depth > _MAX_DEPTH:
        return True
    if type(value) is dict:
        value = value.values()
    elif type(value) is not list:
        return type(value) is float
    for item in value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _may_differ(item, depth + 1)):
            return True
    return False


def b64decode_strict(text: str) -> bytes:
    """`binascii.a2b_base64(text, strict_mode=True)`, faster. Raises what that raises."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return binascii.a2b_base64(text, strict_mode=True)
