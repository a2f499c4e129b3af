"""Validate, then apply: a `session.update` (or beta `transcription_session.update`) with a field
of the wrong shape gets one SDK-shaped `error` naming the field, and changes nothing.

The shapes come from the official SDK's types; the tests read the SDK's TypedDicts so a field the
SDK adds cannot slip past the table unnoticed, and hypothesis puts wrong values at every one."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import typing_extensions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.beta.realtime.transcription_session_update_param import (
    Session as BetaSession,
)
from openai.types.realtime.realtime_transcription_session_create_request_param import (
    RealtimeTranscriptionSessionCreateRequestParam as GaSession,
)

from harness.core.session import (
    BETA_UPDATE_FIELDS,
    GA_UPDATE_FIELDS,
    SessionLimits,
    TranscriptionSession,
    invalid_field,
)


def session(dialect: str = "ga") -> TranscriptionSession:
    return TranscriptionSession(
        "sess_v", 0.0, 1.7e9, random.Random(3), SessionLimits(), dialect=dialect
    )


def snapshot(s: TranscriptionSession) -> str:
    """Everything an update may change: the effective configuration and the VAD's settings."""
    vad = None if s.vad is None else (s.vad.level, s.vad.prefix_ms, s.vad.silence_ms)
    return json.dumps([s.session_object(), s.include, vad], sort_keys=True)


def nest(path: str, value: Any) -> dict[str, Any]:
    """`session.audio.input.x` and a value -> {"session": {"audio": {"input": {"x": value}}}}."""
    out: Any = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


def update(dialect: str, session_fields: dict[str, Any], event_id: str | None = None) -> str:
    kind = "transcription_session.update" if dialect == "beta" else "session.update"
    event = {"type": kind, **session_fields}
    if event_id is not None:
        event["event_id"] = event_id
    return json.dumps(event)


# --- the SDK's shapes -------------------------------------------------------------------------
def _typed_dicts(annotation: Any) -> list[Any]:
    """The TypedDicts an annotation may hold (through Required, Optional, Union, List)."""
    if typing_extensions.is_typeddict(annotation):
        return [annotation]
    return [td for arg in typing_extensions.get_args(annotation) for td in _typed_dicts(arg)]


def sdk_paths(td: Any, prefix: str) -> list[str]:
    """Every field path the SDK names under a TypedDict, parents before children."""
    out: list[str] = []
    for name, annotation in typing_extensions.get_type_hints(td).items():
        path = f"{prefix}.{name}"
        if path not in out:
            out.append(path)
        for child in _typed_dicts(annotation):
            out += [p for p in sdk_paths(child, path) if p not in out]
    return out


GA_SDK_PATHS = sdk_paths(GaSession, "session")
BETA_SDK_PATHS = sdk_paths(BetaSession, "session")


def test_the_table_knows_every_field_the_sdk_names() -> None:
    assert "session.audio.input.turn_detection.threshold" in GA_SDK_PATHS  # the walk works
    assert [p for p in GA_SDK_PATHS if p not in GA_UPDATE_FIELDS] == []
    # the beta client secret is the service's to set; its inner fields are not checked
    missing = [p for p in BETA_SDK_PATHS if p not in BETA_UPDATE_FIELDS]
    assert missing == [
        "session.client_secret.expires_at",
        "session.client_secret.expires_at.anchor",
        "session.client_secret.expires_at.seconds",
    ]


def test_the_shapes_a_worker_sends_are_valid() -> None:
    from types import SimpleNamespace

    from harness.core.protocol import session_update

    for dialect in ("ga", "beta"):
        for turn_mode in ("server_vad", "client"):
            protocol = SimpleNamespace(
                model="gpt-4o-transcribe",
                language="en",
                prompt="",
                noise_reduction="near_field",
                logprobs=True,
                dialect=dialect,
            )
            event = session_update(protocol, turn_mode)
            fields = BETA_UPDATE_FIELDS if dialect == "beta" else GA_UPDATE_FIELDS
            assert invalid_field(fields, event) is None
            (reply,) = session(dialect).receive(json.dumps(event), 0.0)
            assert reply["type"].endswith("session.updated"), reply


# --- the probes' examples ---------------------------------------------------------------------
IN = "session.audio.input"
BAD_UPDATES = [
    ("ga", "session.audio", "x", "invalid_type"),
    ("ga", f"{IN}", "x", "invalid_type"),
    ("ga", f"{IN}.transcription", "x", "invalid_type"),
    ("ga", f"{IN}.transcription.model", [1], "invalid_type"),
    ("ga", f"{IN}.transcription.language", 7, "invalid_type"),
    ("ga", f"{IN}.turn_detection", "x", "invalid_type"),
    ("ga", f"{IN}.turn_detection.threshold", "hi", "invalid_type"),
    ("ga", f"{IN}.turn_detection.threshold", 1.5, "invalid_value"),
    ("ga", f"{IN}.turn_detection.prefix_padding_ms", "abc", "invalid_type"),
    ("ga", f"{IN}.turn_detection.prefix_padding_ms", 2.5, "invalid_type"),
    ("ga", f"{IN}.turn_detection.silence_duration_ms", True, "invalid_type"),
    ("ga", f"{IN}.turn_detection.silence_duration_ms", -1, "invalid_value"),
    ("ga", f"{IN}.turn_detection.type", "loud", "invalid_value"),
    ("ga", f"{IN}.format", None, "invalid_type"),
    ("ga", f"{IN}.format.type", {"a": 1}, "invalid_type"),
    ("ga", f"{IN}.format.rate", 16000, "invalid_value"),
    ("ga", f"{IN}.noise_reduction.type", ["near_field"], "invalid_type"),
    ("ga", "session.include", ["x"], "invalid_value"),
    ("ga", "session.include", "item.input_audio_transcription.logprobs", "invalid_type"),
    ("beta", "session.input_audio_transcription", "x", "invalid_type"),
    ("beta", "session.input_audio_transcription.model", [1], "invalid_type"),
    ("beta", "session.input_audio_format", [1], "invalid_type"),
    ("beta", "session.input_audio_format", "mp3", "invalid_value"),
    ("beta", "session.turn_detection.threshold", "hi", "invalid_type"),
    ("beta", "session.turn_detection.prefix_padding_ms", "abc", "invalid_type"),
    ("beta", "session.input_audio_noise_reduction", 3, "invalid_type"),
    ("beta", "session.modalities", [{"x": 1}], "invalid_type"),
]


def _with_parents(dialect: str, path: str, value: Any) -> dict[str, Any]:
    """The bad value where it belongs, with a valid `type` wherever the shape requires one."""
    fields = nest(path, value)
    node = fields["session"]
    if dialect == "ga":
        node["type"] = "transcription"
    for key in path.split(".")[1:-1]:
        node = node[key]
        if key == "turn_detection":
            node.setdefault("type", "server_vad")
        if key == "format":
            node.setdefault("type", "audio/pcm")
    return fields


@pytest.mark.parametrize(("dialect", "path", "value", "code"), BAD_UPDATES)
def test_a_wrongly_typed_field_is_an_error_naming_it_and_changes_nothing(
    dialect: str, path: str, value: Any, code: str
) -> None:
    s = session(dialect)
    before = snapshot(s)
    out = s.receive(update(dialect, _with_parents(dialect, path, value), "evt_client_1"), 1.0)
    assert len(out) == 1, out
    (error,) = out
    assert error["type"] == "error" and error["event_id"].startswith("event_")
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == code
    assert error["error"]["param"] == path or error["error"]["param"].startswith(path + "[")
    assert path in error["error"]["message"]
    assert error["error"]["event_id"] == "evt_client_1"
    assert snapshot(s) == before


def test_a_bad_field_late_in_an_update_leaves_the_good_ones_unapplied() -> None:
    s = session()
    before = snapshot(s)
    fields = {
        "session": {
            "type": "transcription",
            "include": ["item.input_audio_transcription.logprobs"],
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1", "language": "de"},
                    "turn_detection": {"type": "server_vad", "threshold": "hi"},
                }
            },
        }
    }
    (error,) = s.receive(update("ga", fields), 0.0)
    assert error["error"]["param"] == f"{IN}.turn_detection.threshold"
    assert snapshot(s) == before
    assert s.include is None


def test_turn_detection_needs_its_type() -> None:
    s = session()
    (error,) = s.receive(
        update("ga", {"session": {"audio": {"input": {"turn_detection": {"threshold": 0.3}}}}}),
        0.0,
    )
    assert (error["error"]["code"], error["error"]["param"]) == (
        "missing_required_parameter",
        f"{IN}.turn_detection.type",
    )


def test_nan_and_infinity_are_refused() -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        s = session()
        before = snapshot(s)
        text = (
            '{"type": "session.update", "session": {"audio": {"input": {"turn_detection": '
            '{"type": "server_vad", "threshold": ' + literal + "}}}}}"
        )
        (error,) = s.receive(text, 0.0)
        assert error["error"]["param"] == f"{IN}.turn_detection.threshold"
        assert snapshot(s) == before


def test_valid_updates_still_apply_field_by_field() -> None:
    s = session()
    (reply,) = s.receive(
        update(
            "ga",
            {
                "session": {
                    "audio": {
                        "input": {
                            "turn_detection": {
                                "type": "server_vad",
                                "threshold": 1,
                                "prefix_padding_ms": 0,
                                "silence_duration_ms": 200,
                                "idle_timeout_ms": None,
                            },
                            "noise_reduction": {"type": "far_field", "strength": 0.5},
                        }
                    }
                }
            },
        ),
        0.0,
    )
    assert reply["type"] == "session.updated"
    assert s.vad is not None and s.vad.silence_ms == 200
    shown = reply["session"]["audio"]["input"]
    assert shown["noise_reduction"] == {"type": "far_field", "strength": 0.5}


# --- every SDK field, any wrong value ---------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["server_vad", "audio/pcm", "pcm16", "near_field", "whisper-1"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "input", "model", "threshold", "x"]) | st.text(max_size=4),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@st.composite
def sdk_shaped_updates(draw, dialect: str) -> dict[str, Any]:
    """A session update with one to three SDK field paths set to arbitrary JSON values (dicts,
    lists, wrong scalars, sometimes right ones), on top of each other."""
    paths = GA_SDK_PATHS if dialect == "ga" else BETA_SDK_PATHS
    fields: dict[str, Any] = {"session": {}}
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        node = fields
        *parents, key = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[key] = draw(json_values)
    return fields


def check_update_invariant(s: TranscriptionSession, text: str) -> dict[str, Any]:
    """The session never raises, answers with exactly `*session.updated` or one `error`; an
    error changes nothing, and an accepted update leaves a configuration that is itself valid."""
    before = snapshot(s)
    out = s.receive(text, 0.0)
    assert len(out) == 1 and isinstance(out[0], dict), out
    (reply,) = out
    if reply["type"] == "error":
        assert reply["error"]["type"] == "invalid_request_error"
        assert snapshot(s) == before
    else:
        assert reply["type"] in ("session.updated", "transcription_session.updated"), reply
        shown = {"session": {"type": "transcription", "audio": {"input": s.input}}}
        assert invalid_field(GA_UPDATE_FIELDS, shown) is None, s.input
        json.dumps(reply, allow_nan=False)  # the echo is plain JSON
    return reply


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dialect=st.sampled_from(["ga", "beta"]))
def test_any_value_at_any_sdk_field_is_applied_whole_or_refused_whole(data, dialect) -> None:
    s = session(dialect)
    for _ in range(3):
        fields = data.draw(sdk_shaped_updates(dialect))
        check_update_invariant(s, update(dialect, fields))


@pytest.mark.parametrize("section", ["noise_reduction", "transcription", "turn_detection"])
def test_an_unknown_nested_field_is_ignored_never_echoed(section: str) -> None:
    """Hypothesis found `noise_reduction: {input: inf}` echoed back, which is no JSON at all."""
    s = session()
    given_fields = {"noise_reduction": {"type": "near_field"}, "transcription": {}}
    given_fields["turn_detection"] = {"type": "server_vad"}
    value = {**given_fields[section], "input": float("inf")}
    (reply,) = s.receive(update("ga", nest(f"session.audio.input.{section}", value)), 0.0)
    assert reply["type"] == "session.updated"
    echoed = reply["session"]["audio"]["input"][section]
    assert "input" not in echoed
    json.dumps(reply, allow_nan=False)  # what the wire carries
