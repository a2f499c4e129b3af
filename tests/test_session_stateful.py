"""Hypothesis drives the session state machine with arbitrary event sequences, good and bad:
it never raises, every bad input gets exactly one `error`, and its state stays consistent."""

from __future__ import annotations

import base64
import json
import random
import zlib

from helpers import vad_off
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from test_session_validation import check_update_invariant, sdk_shaped_updates, update

from harness.core.session import SessionLimits, TranscriptionSession
from harness.core.transcript import parse_transcript

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


class SessionMachine(RuleBasedStateMachine):
    @initialize(dialect=st.sampled_from(["ga", "beta"]), vad=st.booleans())
    def start(self, dialect: str, vad: bool) -> None:
        self.s = TranscriptionSession(
            "sess_h", 0.0, 1.7e9, random.Random(0), SessionLimits(max_duration=1e9), dialect=dialect
        )
        self.now = 0.0
        self.sent = bytearray()  # audio since the last commit or clear (no VAD)
        self.committed: dict[str, int] = {}  # item id -> CRC of what was committed
        self.vad = vad
        self.items: list[str] = []
        out = self.s.open()
        assert out[0]["type"].endswith("session.created")
        if not vad:
            self.feed(vad_off(dialect))

    def feed(self, text) -> list[dict]:
        out = [o for o in self.s.receive(text, self.now) if isinstance(o, dict)]
        for event in out:
            if event["type"] == "input_audio_buffer.committed":
                assert event["previous_item_id"] == (self.items[-1] if self.items else None)
                self.items.append(event["item_id"])
        return out

    @rule(pcm=st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2]))
    def append(self, pcm: bytes) -> None:
        out = self.feed(
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
            )
        )
        if not self.vad:
            assert out == []
            self.sent += pcm

    @rule(level=st.integers(0, 20000))
    def speak(self, level: int) -> None:
        """200 ms of a square wave: enough for a commit, loud or quiet for the VAD."""
        self.append((level.to_bytes(2, "little", signed=False) * 2 + b"\0\0" * 2) * 2400)

    @rule()
    def commit(self) -> None:
        enough = self.s.buffer_ms >= 100
        out = self.feed(json.dumps({"type": "input_audio_buffer.commit"}))
        if enough:
            assert out[0]["type"] == "input_audio_buffer.committed"
            if not self.vad:
                self.committed[out[0]["item_id"]] = zlib.crc32(self.sent)
            self.sent.clear()
        else:
            assert [e["error"]["code"] for e in out] == ["input_audio_buffer_commit_empty"]

    @rule()
    def clear(self) -> None:
        out = self.feed(json.dumps({"type": "input_audio_buffer.clear"}))
        assert [e["type"] for e in out] == ["input_audio_buffer.cleared"]
        self.sent.clear()

    @rule(
        garbage=st.one_of(st.text(max_size=30), st.binary(max_size=30), json_values.map(json.dumps))
    )
    def garbage(self, garbage) -> None:
        try:
            value = json.loads(garbage)
        except (ValueError, UnicodeDecodeError):
            value = None
        if isinstance(value, dict) and value.get("type") in (
            "input_audio_buffer.append",
            "input_audio_buffer.commit",
            "input_audio_buffer.clear",
            "session.update",
            "transcription_session.update",
        ):
            return  # a valid-looking event: the other rules cover those
        out = self.feed(garbage)
        assert [e["type"] for e in out] == ["error"], out

    @rule(field=st.sampled_from(["audio", "session"]), value=json_values)
    def wrong_types(self, field: str, value) -> None:
        kind = (
            "input_audio_buffer.append"
            if field == "audio"
            else "transcription_session.update"
            if self.s.beta
            else "session.update"
        )
        if isinstance(value, str) or isinstance(value, dict):
            return  # possibly valid; not what this rule is about
        out = self.feed(json.dumps({"type": kind, field: value}))
        assert [e["type"] for e in out] == ["error"]

    @rule(data=st.data())
    def nested_session_fields(self, data) -> None:
        """Updates with dicts, lists and wrong scalars at the SDK's own field paths: applied
        whole or refused whole with one error, never a raise."""
        fields = data.draw(sdk_shaped_updates(self.s.dialect))
        reply = check_update_invariant(self.s, update(self.s.dialect, fields))
        if reply["type"] != "error" and (self.s.vad is not None) != self.vad:
            # the model here tracks one turn mode at a time: start the buffer afresh
            self.vad = self.s.vad is not None
            self.clear()

    @rule(seconds=st.floats(0.0, 30.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for event in self.s.poll(self.now):
            if isinstance(event, dict) and event["type"].endswith("transcription.completed"):
                expected = self.committed.get(event["item_id"])
                if expected is not None:
                    assert parse_transcript(event["transcript"]).crc32 == expected

    @invariant()
    def buffer_is_sane(self) -> None:
        if hasattr(self, "s"):
            assert self.s.buffer_bytes >= 0 and self.s.buffer_bytes % 2 == 0
            if not self.vad:
                assert self.s.buffer_bytes == len(self.sent)


SessionMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSessionMachine = SessionMachine.TestCase
