"""The fast decoders answer exactly as the standard library's: same value, or the same error,
for any input, valid or hostile."""

from __future__ import annotations

import base64
import binascii
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.wire import b64decode_strict, loads

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond 64 bits: orjson refuses
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
json_noise = st.text(alphabet='{}[]":,0123456789.eE+-tfnulrsaNI \\/ud\x00\ud800é', max_size=24)


def same(a: object, b: object) -> bool:
    """Equal, with NaN equal to itself (json.loads turns the text NaN into one)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def outcome(decode, text):
    try:
        return "value", decode(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        return "error", type(exc)


def agree(text) -> None:
    (kind, value), (ref_kind, ref_value) = outcome(loads, text), outcome(json.loads, text)
    assert kind == ref_kind
    assert same(value, ref_value) if kind == "value" else value is ref_value


@settings(max_examples=400, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans())
def test_loads_gives_what_json_loads_gives_for_any_json(value, ensure_ascii):
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    agree(text)
    agree(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=1000, deadline=None)
@given(text=json_noise)
def test_loads_fails_exactly_where_json_loads_fails(text):
    agree(text)


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "[Infinity, -Infinity]",
        str(2**64),
        '"\\ud800"',  # a lone surrogate, escaped
        "\ud800",
        "[" * 5000 + "]" * 5000,  # deeper than either parser nests
        "[" * 1010 + "]" * 1010,  # deeper than json.loads nests, not orjson
        b"\xef\xbb\xbf{}",  # UTF-8 with a byte order mark
        '{"a": 1, "a": 2}',
        "1e400",
        "",
    ],
)
def test_loads_edge_cases_match_json(text):
    agree(text)


def b64_outcome(decode, text):
    try:
        return decode(text)
    except (binascii.Error, ValueError) as exc:
        return type(exc)


@settings(max_examples=2000, deadline=None)
@given(text=st.text(alphabet="AQgw+/=Zz09 \n-_é\x00", max_size=16))
def test_b64decode_strict_matches_binascii_strict_mode_for_any_text(text):
    reference = b64_outcome(lambda s: binascii.a2b_base64(s, strict_mode=True), text)
    assert b64_outcome(b64decode_strict, text) == reference


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4000))
def test_b64decode_strict_round_trips_audio(data):
    assert b64decode_strict(base64.b64encode(data).decode()) == data
