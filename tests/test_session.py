"""The fake server's pure session state machine: events in, events out, time injected."""

from __future__ import annotations

import base64
import json
import random
import re
import string
import zlib

from helpers import vad_off

from harness.core.faults import Fault, FaultKind
from harness.core.session import SessionLimits, TranscriptionSession
from harness.core.transcript import parse_transcript


def session(vad: bool = False, dialect: str = "ga", **limits) -> TranscriptionSession:
    """A session as the field's clients use it: their own VAD (turn_detection null)."""
    s = TranscriptionSession(
        "sess_test",
        0.0,
        1_700_000_000.0,
        random.Random(1),
        SessionLimits(**limits),
        dialect=dialect,
    )
    if not vad:
        s.receive(vad_off(dialect), 0.0)
    return s


def append(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


def types(outputs) -> list[str]:
    return [o["type"] if isinstance(o, dict) else "CLOSE" for o in outputs]


def test_open_sends_session_created_with_server_vad_default() -> None:
    s = session(vad=True)
    (created,) = s.open()
    assert created["type"] == "session.created"
    assert created["event_id"].startswith("event_") and len(created["event_id"]) == 28
    assert created["session"]["type"] == "transcription"
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert created["session"]["expires_at"] == 1_700_000_000 + 3600


def test_update_turns_vad_off_and_echoes_effective_config() -> None:
    s = session(vad=True)
    (updated,) = s.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "include": ["item.input_audio_transcription.logprobs"],
                    "audio": {
                        "input": {
                            "turn_detection": None,
                            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        }
                    },
                },
            }
        ),
        0.0,
    )
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert updated["session"]["audio"]["input"]["format"]["rate"] == 24000
    assert updated["session"]["include"] == ["item.input_audio_transcription.logprobs"]


def test_utterance_flow_transcribes_exactly_the_committed_audio() -> None:
    s = session(latency_base=0.5, latency_per_audio_second=0.0)
    pcm = bytes(range(256)) * 48  # 12288 bytes = 256 ms
    assert types(s.receive(json.dumps({"type": "input_audio_buffer.clear"}), 0.0)) == [
        "input_audio_buffer.cleared"
    ]
    assert s.receive(append(pcm[:6000]), 0.1) == []
    assert s.receive(append(pcm[6000:]), 0.2) == []
    out = s.receive(json.dumps({"type": "input_audio_buffer.commit"}), 0.3)
    assert types(out) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    item_id = out[0]["item_id"]
    assert out[0]["previous_item_id"] is None
    assert s.next_deadline() == 0.8
    assert s.poll(0.79) == []
    done = s.poll(0.8)
    assert types(done)[-1] == "conversation.item.input_audio_transcription.completed"
    completed = done[-1]
    assert completed["item_id"] == item_id
    mark = parse_transcript(completed["transcript"])
    assert mark is not None and mark.crc32 == zlib.crc32(pcm)
    assert mark.seconds == round(len(pcm) / 48000, 3)
    assert "".join(d["delta"] for d in done[:-1]) == completed["transcript"]
    assert completed["usage"]["type"] == "tokens"
    assert completed["logprobs"] is None  # not asked for with include


def test_items_chain_with_previous_item_id() -> None:
    s = session()
    ids = []
    for _ in range(2):
        s.receive(append(b"\0" * 9600), 0.0)
        committed = s.receive(json.dumps({"type": "input_audio_buffer.commit"}), 0.0)[0]
        ids.append((committed["item_id"], committed["previous_item_id"]))
    assert ids[1][1] == ids[0][0]


def test_commit_under_100ms_is_an_error_and_session_stays_open() -> None:
    s = session()
    s.receive(append(b"\0" * 480), 0.0)  # 240 samples = 10 ms
    (error,) = s.receive(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c1"}), 0)
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert "10.00ms" in error["error"]["message"]
    assert error["error"]["event_id"] == "c1"
    assert not s.expired


def test_bad_inputs_get_error_events() -> None:
    s = session()
    cases = {
        "not json": "invalid_json",
        "[1, 2]": "invalid_event",
        json.dumps({"no": "type"}): "invalid_event",
        json.dumps({"type": "response.create"}): "invalid_event",
        json.dumps({"type": "input_audio_buffer.append"}): "invalid_event",
        json.dumps({"type": "input_audio_buffer.append", "audio": "!!!"}): "invalid_value",
        append(b"\0\0\0"): "invalid_value",
        json.dumps({"type": "session.update", "session": {"type": "realtime"}}): "invalid_value",
    }
    for text, code in cases.items():
        (error,) = s.receive(text, 0.0)
        assert error["type"] == "error" and error["error"]["code"] == code, text
    assert s.buffer_bytes == 0


def test_session_expires_with_error_then_close_1001() -> None:
    s = session(max_duration=60.0)
    assert s.next_deadline() == 60.0
    out = s.poll(60.0)
    assert out[0]["error"]["code"] == "session_expired"
    assert "maximum duration of 1 minutes" in out[0]["error"]["message"]
    assert out[1] == Fault(FaultKind.CLOSE, "max_duration", 1001, out[0]["error"]["message"])
    assert s.receive(append(b"\0" * 4800), 61.0) == []


def test_ids_are_letters_and_digits_distinct_and_seeded() -> None:
    """Event and item ids as the service shapes them (prefix + 22 letters or digits), never
    repeated within a session, and the same for the same seed: fault draws and logs of a
    seeded run replay exactly."""

    def ids(seed: int) -> list[str]:
        s = TranscriptionSession(
            "sess_test", 0.0, 1_700_000_000.0, random.Random(seed), SessionLimits()
        )
        return [s.error_event("x", "y")["event_id"] for _ in range(2000)]

    first = ids(7)
    assert all(re.fullmatch(r"event_[A-Za-z0-9]{22}", i) for i in first)
    assert len(set(first)) == len(first)
    assert set("".join(i[6:] for i in first)) == set(string.ascii_letters + string.digits)
    assert ids(7) == first and ids(8) != first


def test_a_session_without_client_events_for_max_idle_is_closed_1001_and_frames_reset_it() -> None:
    s = session(max_idle=60.0)
    assert s.poll(59.9) == []
    s.receive(json.dumps({"type": "input_audio_buffer.clear"}), 30.0)
    assert s.poll(89.9) == []  # the event at 30 s moved the deadline to 90 s
    out = s.poll(90.0)
    assert types(out) == ["error", "CLOSE"]
    assert out[0]["error"]["code"] == "idle_timeout"
    assert (out[1].policy, out[1].code) == ("max_idle", 1001)
    assert s.receive(json.dumps({"type": "input_audio_buffer.clear"}), 91.0) == []


def test_the_default_idle_limit_is_generous_and_can_be_turned_off() -> None:
    assert SessionLimits().max_idle == 1800.0  # half the service's 2025 session limit
    s = session(max_idle=None, max_duration=1e9)
    assert s.poll(1e6) == []
