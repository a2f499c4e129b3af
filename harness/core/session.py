"""One Realtime transcription session as a pure state machine, in both dialects.

`receive(text, now)` takes one client frame and returns what the server sends at once;
`poll(now)` returns what has come due since (transcriptions finish after a latency, sessions
expire). Outputs are event dicts to send as JSON, or a `Fault` (here: session expiry) for the
edge to carry out. Nothing here reads a clock or touches a socket.

GA speaks `session.update`/`session.*` and `conversation.item.added`/`.done`; beta (header
`OpenAI-Beta: realtime=v1`) speaks `transcription_session.update`/`transcription_session.*`
and `conversation.item.created`. The configuration is kept in GA shape and shown in either.
"""

from __future__ import annotations

import binascii
import heapq
import math
import random
import string
import zlib
from dataclasses import dataclass
from typing import Any

from harness.core import wire
from harness.core.faults import Fault, FaultKind
from harness.core.protocol import error_event
from harness.core.transcript import BYTES_PER_SECOND, make_transcript
from harness.core.vad import ServerVad

__all__ = [
    "BETA_UPDATE_FIELDS",
    "GA_UPDATE_FIELDS",
    "NO_VAD_MODELS",
    "Field",
    "Output",
    "SessionLimits",
    "TranscriptionSession",
    "invalid_field",
]

Output = dict[str, Any] | Fault

MIN_COMMIT_MS = 100.0
NO_VAD_MODELS = frozenset({"gpt-realtime-whisper"})
LOGPROBS = "item.input_audio_transcription.logprobs"
# random bytes to letters and digits in one `translate`, far cheaper than random.choices at
# about 10 ids a turn; the first 8 letters come up 5/4 as often
_ID_CHARS = bytes((string.ascii_letters + string.digits).encode()[i % 62] for i in range(256))
_GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
_BETA_FORMATS = {beta: ga for ga, beta in _GA_FORMATS.items()}
# The effective configuration the service shows in every session event: what a client left
# out is filled in with the service's defaults (the SDK's types name them), so a client that
# reads its session back sees what is in force, not its own update echoed.
SERVER_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
}
SEMANTIC_VAD = {"type": "semantic_vad", "eagerness": "auto"}
_VAD_DEFAULTS = {"server_vad": SERVER_VAD, "semantic_vad": SEMANTIC_VAD}
_BETA_VAD_FIELDS = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms", "eagerness")


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Service limits, in scenario seconds and bytes; defaults are the GA service's."""

    max_duration: float = 3600.0
    # no client event for this long closes the session (1001, after an `idle_timeout` error);
    # None: never. Generous (half the 2025 session limit) so that only a socket nobody uses
    # meets it; an `idle_timeout` fault policy replaces it (docs/faults.md). Pings don't count.
    max_idle: float | None = 1800.0
    max_append_bytes: int = 15 * 1024 * 1024
    max_buffer_bytes: int = 15 * 60 * BYTES_PER_SECOND  # uncommitted audio (not documented)
    latency_base: float = 0.25  # transcription latency = base + per_audio_second * audio seconds
    latency_per_audio_second: float = 0.08


# --- validation: the service's shapes, checked before anything is applied ------------------
# Shapes follow the official SDK's types (openai.types.realtime.
# RealtimeTranscriptionSessionCreateRequestParam for GA, openai.types.beta.realtime.
# TranscriptionSessionUpdateParam for beta; tests/test_session_validation.py checks that every
# field the SDK names is here). Fields not listed are ignored, as before.


@dataclass(frozen=True, slots=True)
class Field:
    """What one field of a client event may hold. `choices` limit a value (or, for an array,
    each item); `lo`/`hi` bound a number; `required` applies when its parent is an object."""

    kind: str  # object, string, integer, number, boolean, array (of strings)
    null: bool = False
    choices: tuple[Any, ...] = ()
    lo: float | None = None
    hi: float | None = None
    required: bool = False


_KIND_NAMES = {
    "object": "an object",
    "string": "a string",
    "integer": "an integer",
    "number": "a decimal",
    "boolean": "a boolean",
    "array": "an array",
    "null": "null",
}
_OBJECT = Field("object")
_STRING = Field("string")
_NULLABLE_STRING = Field("string", null=True)
_STRINGS = Field("array")
_BOOLEAN = Field("boolean")
_MS = Field("integer", lo=0)
_EAGERNESS = Field("string", choices=("low", "medium", "high", "auto"))
_NOISE_TYPES = ("near_field", "far_field")


def _vad_fields(at: str) -> dict[str, Field]:
    """turn_detection: server_vad or semantic_vad (the keys of both, as the SDK's union)."""
    return {
        at: Field("object", null=True),
        f"{at}.type": Field("string", choices=("server_vad", "semantic_vad"), required=True),
        f"{at}.threshold": Field("number", lo=0.0, hi=1.0),
        f"{at}.prefix_padding_ms": _MS,
        f"{at}.silence_duration_ms": _MS,
        f"{at}.idle_timeout_ms": Field("integer", null=True, lo=0),
        f"{at}.create_response": _BOOLEAN,
        f"{at}.interrupt_response": _BOOLEAN,
        f"{at}.eagerness": _EAGERNESS,
    }


def _transcription_fields(at: str) -> dict[str, Field]:
    return {
        at: Field("object", null=True),
        f"{at}.model": _STRING,  # any name: on Azure it is the deployment's
        f"{at}.language": _NULLABLE_STRING,
        f"{at}.prompt": _NULLABLE_STRING,
        f"{at}.languages": _STRINGS,
        f"{at}.keywords": _STRINGS,
        f"{at}.delay": Field("string", choices=("minimal", "low", "medium", "high", "xhigh")),
    }


_INCLUDE = Field("array", null=True, choices=(LOGPROBS,))
_IN = "session.audio.input"
# path -> shape, parents before children; a child is checked only when its parent is an object
GA_UPDATE_FIELDS: dict[str, Field] = {
    "session": Field("object", required=True),
    "session.type": Field("string", choices=("transcription",)),
    "session.include": _INCLUDE,
    "session.audio": _OBJECT,
    _IN: _OBJECT,
    f"{_IN}.format": _OBJECT,
    f"{_IN}.format.type": Field("string", choices=tuple(_GA_FORMATS), required=True),
    f"{_IN}.format.rate": Field("integer", choices=(24000,)),
    f"{_IN}.noise_reduction": Field("object", null=True),
    f"{_IN}.noise_reduction.type": Field("string", choices=_NOISE_TYPES),
    f"{_IN}.noise_reduction.strength": Field("number", lo=0.0),
    **_transcription_fields(f"{_IN}.transcription"),
    **_vad_fields(f"{_IN}.turn_detection"),
}
BETA_UPDATE_FIELDS: dict[str, Field] = {
    "session": Field("object", required=True),
    "session.include": _INCLUDE,
    "session.modalities": Field("array", choices=("text", "audio")),
    "session.client_secret": _OBJECT,
    "session.input_audio_format": Field("string", choices=tuple(_BETA_FORMATS)),
    "session.input_audio_noise_reduction": Field("object", null=True),
    "session.input_audio_noise_reduction.type": Field("string", choices=_NOISE_TYPES),
    **_transcription_fields("session.input_audio_transcription"),
    **_vad_fields("session.turn_detection"),
}
_PATHS = {path: tuple(path.split(".")) for path in (*GA_UPDATE_FIELDS, *BETA_UPDATE_FIELDS)}


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: True is an int to Python, not to JSON
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def invalid_field(fields: dict[str, Field], event: dict[str, Any]) -> tuple[str, str, str] | None:
    """The first field of `event` that breaks `fields`, as (code, message, param) for an
    `error` event, or None when every listed field is well-formed."""
    for path, field in fields.items():
        *parents, key = _PATHS[path]
        node: Any = event
        for part in parents:
            node = node.get(part) if type(node) is dict else None
        if type(node) is not dict:
            continue  # parent absent or null (already judged): nothing to check here
        if key not in node:
            if field.required:
                return (
                    "missing_required_parameter",
                    f"Missing required parameter: '{path}'.",
                    path,
                )
            continue
        if (problem := _problem(field, node[key], path)) is not None:
            return problem
    return None


def _problem(field: Field, value: Any, path: str) -> tuple[str, str, str] | None:
    kind = _kind_of(value)
    if kind == "null" and field.null:
        return None
    if kind != field.kind and not (field.kind == "number" and kind == "integer"):
        return (
            "invalid_type",
            f"Invalid type for '{path}': expected {_KIND_NAMES[field.kind]}, "
            f"but got {_KIND_NAMES[kind]} instead.",
            path,
        )
    if field.kind == "array":
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return (
                    "invalid_type",
                    f"Invalid type for '{path}[{i}]': expected a string, "
                    f"but got {_KIND_NAMES[_kind_of(item)]} instead.",
                    f"{path}[{i}]",
                )
            if field.choices and item not in field.choices:
                return _not_a_choice(field, item, f"{path}[{i}]")
        return None
    if field.choices and value not in field.choices:
        return _not_a_choice(field, value, path)
    if field.kind == "number" and not math.isfinite(value):  # Python's json reads NaN
        return ("invalid_value", f"Invalid '{path}': expected a finite number.", path)
    if field.lo is not None and not field.lo <= value:
        return ("invalid_value", f"Invalid '{path}': expected a value >= {field.lo:g}.", path)
    if field.hi is not None and not value <= field.hi:
        return ("invalid_value", f"Invalid '{path}': expected a value <= {field.hi:g}.", path)
    return None


def _not_a_choice(field: Field, value: Any, path: str) -> tuple[str, str, str]:
    supported = ", ".join(repr(c) for c in field.choices)
    return (
        "invalid_value",
        f"Invalid value for '{path}': {value!r}. Supported values are: {supported}.",
        path,
    )


def _effective(changes: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """An update's audio-input fields (already validated) as the service shows them: an object
    given replaces the one in force, with every field it left out at its default; noise
    reduction keeps a strength the update did not name (the SDK: "omitting strength from a
    session update preserves the current strength")."""
    # fields the service does not know are ignored, never echoed back (nor kept)
    changes = {
        k: {f: v for f, v in value.items() if f"{_IN}.{k}.{f}" in GA_UPDATE_FIELDS}
        if isinstance(value, dict)
        else value
        for k, value in changes.items()
    }
    out = dict(changes)
    if "format" in changes:
        fmt = changes["format"]
        out["format"] = {"type": fmt["type"], "rate": 24000} if fmt["type"] == "audio/pcm" else fmt
    if isinstance(changes.get("turn_detection"), dict):
        td = changes["turn_detection"]
        out["turn_detection"] = {**_VAD_DEFAULTS[td["type"]], **td}
    if isinstance(changes.get("transcription"), dict):
        model = (current.get("transcription") or {}).get("model") or "gpt-4o-transcribe"
        out["transcription"] = {
            "model": model,
            "language": None,
            "prompt": "",
            **changes["transcription"],
        }
    if isinstance(changes.get("noise_reduction"), dict):
        before = current.get("noise_reduction") or {}
        kept = {"strength": before["strength"]} if "strength" in before else {}
        out["noise_reduction"] = {"type": "near_field", **kept, **changes["noise_reduction"]}
    return out


def _beta_turn_detection(td: dict[str, Any] | None) -> dict[str, Any] | None:
    """Beta's turn detection: the fields its type knows (no idle_timeout_ms)."""
    if td is None:
        return None
    return {k: v for k, v in td.items() if k in _BETA_VAD_FIELDS}


def _default_input(model: str = "gpt-4o-transcribe") -> dict[str, Any]:
    return {
        "format": {"type": "audio/pcm", "rate": 24000},
        "noise_reduction": None,
        "transcription": {"model": model, "language": None, "prompt": ""},
        "turn_detection": None if model in NO_VAD_MODELS else dict(SERVER_VAD),
    }


class TranscriptionSession:
    """Server-side state of one connection: configuration, the uncommitted audio buffer (its
    length and CRC32; under server VAD also the audio a segment needs), committed items and
    transcriptions in flight."""

    def __init__(
        self,
        session_id: str,
        opened: float,
        wall_opened: float,
        rng: random.Random,
        limits: SessionLimits = SessionLimits(),
        dialect: str = "ga",
    ) -> None:
        self.session_id = session_id
        self.opened = opened
        self.limits = limits
        self.dialect = dialect
        self._rng = rng
        self.include: list[str] | None = None
        self.input = _default_input()
        self.expires_at = int(wall_opened + limits.max_duration)
        self.buffer_bytes = 0
        self.buffer_crc = 0
        self.last_item_id: str | None = None
        self.expired = False
        self.last_pcm: bytes | None = None  # audio of the last accepted append, for fault policies
        self.vad: ServerVad | None = None
        self._vad_item: str | None = None
        self._due: list[tuple[float, int, Any]] = []  # heap of (time, seq, make outputs)
        self._seq = 0
        self.last_seen = opened  # the last client frame (any text or binary message)
        self._configure_vad()
        self._schedule(opened + limits.max_duration, self._expire)
        if limits.max_idle is not None:
            self._schedule_idle_check(opened + limits.max_idle)

    # ids and shapes -------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return prefix + self._rng.randbytes(22).translate(_ID_CHARS).decode()

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": self._id("event_"), **fields}

    def error_event(self, code: str, message: str) -> dict[str, Any]:
        """An `error` event in the service's shape, for faults that complain before acting."""
        return error_event(self._id("event_"), code, message)

    def _error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        type_: str = "invalid_request_error",
    ) -> dict:
        return error_event(
            self._id("event_"), code, message, param=param, client_event_id=event_id, type_=type_
        )

    def _invalid(self, bad: tuple[str, str, str], event_id: str | None) -> dict:
        code, message, param = bad
        return self._error(code, message, param=param, event_id=event_id)

    @property
    def beta(self) -> bool:
        return self.dialect == "beta"

    def session_object(self) -> dict[str, Any]:
        if not self.beta:
            return {
                "type": "transcription",
                "object": "realtime.transcription_session",
                "id": self.session_id,
                "expires_at": self.expires_at,
                "include": self.include,
                "audio": {"input": self.input},
            }
        return {
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "expires_at": self.expires_at,
            "modalities": ["text"],
            "input_audio_format": _GA_FORMATS[self.input["format"]["type"]],
            "input_audio_transcription": self.input["transcription"],
            "turn_detection": _beta_turn_detection(self.input["turn_detection"]),
            "input_audio_noise_reduction": self.input["noise_reduction"],
            "include": self.include,
            # the SDK's beta model requires it; sessions over a socket have no real one
            "client_secret": {
                "value": "ek_fake_" + self.session_id[5:],
                "expires_at": self.expires_at,
            },
        }

    def open(self) -> list[Output]:
        kind = "transcription_session.created" if self.beta else "session.created"
        return [self._event(kind, session=self.session_object())]

    @property
    def buffer_ms(self) -> float:
        return self.buffer_bytes * 1000.0 / BYTES_PER_SECOND

    # inputs ---------------------------------------------------------------------------------
    def receive(self, text: str | bytes, now: float) -> list[Output]:
        self.last_pcm = None
        if self.expired:
            return []
        self.last_seen = now
        try:
            event = wire.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return [self._error("invalid_json", "The message is not valid JSON.")]
        if not isinstance(event, dict):
            return [self._error("invalid_event", "The event must be a JSON object.")]
        type_ = event.get("type")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if type_ is None:
            return [self._error("invalid_event", "The 'type' field is missing.", event_id=event_id)]
        handler = self._HANDLERS.get(type_) if isinstance(type_, str) else None
        if handler is None:
            return [
                self._error(
                    "invalid_event",
                    f"Invalid value: '{type_}'. Supported values are transcription client events.",
                    param="type",
                    event_id=event_id,
                )
            ]
        return handler(self, event, event_id, now)

    def _append(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        audio = event.get("audio")
        if not isinstance(audio, str):
            return [
                self._error(
                    "invalid_event",
                    "Missing required parameter: 'audio'.",
                    param="audio",
                    event_id=event_id,
                )
            ]
        if len(audio) * 3 // 4 > self.limits.max_append_bytes:
            return [
                self._error(
                    "invalid_value",
                    "Audio content exceeds the maximum of 15 MiB per append.",
                    param="audio",
                    event_id=event_id,
                )
            ]
        try:
            pcm = wire.b64decode_strict(audio)
        except (binascii.Error, ValueError):
            return [
                self._error(
                    "invalid_value", "Invalid base64 in 'audio'.", param="audio", event_id=event_id
                )
            ]
        if len(pcm) % 2:
            return [
                self._error(
                    "invalid_value",
                    "PCM16 audio must have an even number of bytes.",
                    param="audio",
                    event_id=event_id,
                )
            ]
        # under server VAD the service holds only what a turn needs (long quiet is trimmed)
        held = self.buffer_bytes if self.vad is None else self.vad.held_bytes
        if held + len(pcm) > self.limits.max_buffer_bytes:
            return [
                self._error(
                    "input_audio_buffer_full",
                    "The input audio buffer is full; commit or clear it.",
                    param="audio",
                    event_id=event_id,
                )
            ]
        self.last_pcm = pcm
        if self.vad is not None:
            return self._vad_feed(pcm, now)
        self.buffer_bytes += len(pcm)
        self.buffer_crc = zlib.crc32(pcm, self.buffer_crc)
        return []

    def _commit(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        if self.buffer_ms < MIN_COMMIT_MS:
            return [
                self._error(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {self.buffer_ms:.2f}ms of audio.",
                    event_id=event_id,
                )
            ]
        nbytes, crc = self.buffer_bytes, self.buffer_crc
        if self.vad is not None:  # every byte since the last commit, clear or VAD turn
            nbytes, crc = self.vad.pending()
        self._reset_buffer()
        return self._committed(self._id("item_"), nbytes, crc, now)

    def _clear(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        self._reset_buffer()
        return [self._event("input_audio_buffer.cleared")]

    def _reset_buffer(self) -> None:
        self.buffer_bytes, self.buffer_crc = 0, 0
        if self.vad is not None:
            self.vad.clear()
            self._vad_item = None

    def _committed(self, item_id: str, nbytes: int, crc: int, now: float) -> list[Output]:
        """committed + the item events, and the transcription scheduled after its latency."""
        previous, self.last_item_id = self.last_item_id, item_id
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        seconds = nbytes / BYTES_PER_SECOND
        latency = self.limits.latency_base + self.limits.latency_per_audio_second * seconds
        self._schedule(now + latency, lambda: self._transcribed(item_id, nbytes, crc))
        events = [
            self._event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        ]
        if self.beta:
            return events + [
                self._event("conversation.item.created", item=item, previous_item_id=previous)
            ]
        return events + [
            self._event("conversation.item.added", item=item, previous_item_id=previous),
            self._event("conversation.item.done", item=item, previous_item_id=previous),
        ]

    # server VAD -----------------------------------------------------------------------------
    def _configure_vad(self) -> None:
        td = self.input.get("turn_detection")
        if isinstance(td, dict) and td.get("type") in ("server_vad", "semantic_vad"):
            self.vad = ServerVad(
                td.get("threshold", 0.5),
                td.get("prefix_padding_ms", 300),
                td.get("silence_duration_ms", 500),
            )
        else:
            self.vad = None

    def _vad_feed(self, pcm: bytes, now: float) -> list[Output]:
        assert self.vad is not None
        out: list[Output] = []
        for kind, value in self.vad.feed(pcm):
            if kind == "started":
                self._vad_item = self._id("item_")
                out.append(
                    self._event(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=value,
                        item_id=self._vad_item,
                    )
                )
                continue
            item_id = self._vad_item or self._id("item_")
            self._vad_item = None
            out.append(
                self._event(
                    "input_audio_buffer.speech_stopped", audio_end_ms=value.end_ms, item_id=item_id
                )
            )
            out += self._committed(item_id, len(value.pcm), zlib.crc32(value.pcm), now)
        self.buffer_bytes = self.vad.pending_bytes  # what a commit now would contain
        return out

    # configuration --------------------------------------------------------------------------
    def _missing_session(self, event_id: str | None) -> dict[str, Any]:
        return self._error(
            "invalid_event",
            "Missing required parameter: 'session'.",
            param="session",
            event_id=event_id,
        )

    def _session_update(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        session = event.get("session")
        if not isinstance(session, dict):
            return [self._missing_session(event_id)]
        if self.beta:
            return [
                self._error(
                    "invalid_event",
                    "This is a beta transcription session: use transcription_session.update.",
                    param="type",
                    event_id=event_id,
                )
            ]
        if (bad := invalid_field(GA_UPDATE_FIELDS, event)) is not None:
            return [self._invalid(bad, event_id)]
        audio_input = session.get("audio", {}).get("input", {})
        changes = {
            k: audio_input[k]
            for k in ("format", "noise_reduction", "transcription", "turn_detection")
            if k in audio_input
        }
        return self._apply(changes, session, event_id, "session.updated", "session.audio.input")

    def _beta_update(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        session = event.get("session")
        if not isinstance(session, dict):
            return [self._missing_session(event_id)]
        if not self.beta:
            return [
                self._error(
                    "invalid_event",
                    "transcription_session.update is the beta "
                    "event; send session.update, or connect with "
                    "OpenAI-Beta: realtime=v1.",
                    param="type",
                    event_id=event_id,
                )
            ]
        if (bad := invalid_field(BETA_UPDATE_FIELDS, event)) is not None:
            return [self._invalid(bad, event_id)]
        changes: dict[str, Any] = {}
        if "input_audio_format" in session:
            fmt = _BETA_FORMATS[session["input_audio_format"]]
            changes["format"] = (
                {"type": fmt, "rate": 24000} if fmt == "audio/pcm" else {"type": fmt}
            )
        for beta_key, key in (
            ("input_audio_transcription", "transcription"),
            ("turn_detection", "turn_detection"),
            ("input_audio_noise_reduction", "noise_reduction"),
        ):
            if beta_key in session:
                changes[key] = session[beta_key]
        return self._apply(changes, session, event_id, "transcription_session.updated", "session")

    def _apply(
        self, changes: dict[str, Any], session: dict, event_id: str | None, reply: str, where: str
    ) -> list[Output]:
        """Apply a partial update whose every field has passed `invalid_field`; the checks that
        span fields come first, so a bad update changes nothing."""
        merged = {**self.input, **_effective(changes, self.input)}
        model = (merged.get("transcription") or {}).get("model")
        if model in NO_VAD_MODELS and merged.get("turn_detection") is not None:
            if "turn_detection" in changes:
                return [
                    self._error(
                        "invalid_value",
                        f"{model} does not support turn detection; set turn_detection to null.",
                        param=f"{where}.turn_detection",
                        event_id=event_id,
                    )
                ]
            merged["turn_detection"] = None
        include = session.get("include", self.include)
        vad_changed = merged.get("turn_detection") != self.input.get("turn_detection")
        self.input, self.include = merged, include
        if vad_changed:
            self._configure_vad()
        return [self._event(reply, session=self.session_object())]

    _HANDLERS = {
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
        "session.update": _session_update,
        "transcription_session.update": _beta_update,
    }

    # time -----------------------------------------------------------------------------------
    def _schedule(self, when: float, make) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, make))

    def next_deadline(self) -> float | None:
        return self._due[0][0] if self._due else None

    def poll(self, now: float) -> list[Output]:
        out: list[Output] = []
        while self._due and self._due[0][0] <= now and not self.expired:
            _, _, make = heapq.heappop(self._due)
            out.extend(make())
        return out

    def _transcribed(self, item_id: str, nbytes: int, crc: int) -> list[Output]:
        text = make_transcript(nbytes, crc)
        words = text.split(" ")
        logprobs = None
        if self.include and LOGPROBS in self.include:
            logprobs = [{"token": w, "logprob": -0.01, "bytes": list(w.encode())} for w in words]
        deltas = [
            self._event(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=(w if i == 0 else " " + w),
                logprobs=None if logprobs is None else [logprobs[i]],
            )
            for i, w in enumerate(words)
        ]
        audio_tokens = max(1, round(nbytes / BYTES_PER_SECOND * 10))
        usage = {
            "type": "tokens",
            "input_tokens": audio_tokens,
            "output_tokens": len(words),
            "total_tokens": audio_tokens + len(words),
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
        }
        return deltas + [
            self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=text,
                usage=usage,
                logprobs=logprobs,
            )
        ]

    def _schedule_idle_check(self, when: float) -> None:
        """One check per idle period, not one timer per frame: at `when`, a session that has
        heard from its client since is checked again at its new deadline."""

        def check() -> list[Output]:
            assert self.limits.max_idle is not None
            due = self.last_seen + self.limits.max_idle
            if due > when:
                self._schedule_idle_check(due)
                return []
            return self._idle()

        self._schedule(when, check)

    def _idle(self) -> list[Output]:
        self.expired = True
        assert self.limits.max_idle is not None
        message = (
            f"The session was closed after {self.limits.max_idle:g} seconds without a client event."
        )
        return [
            self._error("idle_timeout", message),
            Fault(FaultKind.CLOSE, "max_idle", 1001, "idle timeout"),
        ]

    def _expire(self) -> list[Output]:
        self.expired = True
        minutes = round(self.limits.max_duration / 60)
        message = f"Your session hit the maximum duration of {minutes} minutes."
        return [
            self._error("session_expired", message),
            Fault(FaultKind.CLOSE, "max_duration", 1001, message),
        ]
