"""The proxy's pure parts: the observer that turns relayed frames into rows, and the upstream
URL; hostile frames and any order of protocol events."""

from __future__ import annotations

import base64
import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.client import ClientConnection
from harness.core.outcomes import CloseCause, ClosedBy
from harness.core.transcript import make_transcript
from harness.edge.proxy import upstream_url

COMPLETED = "conversation.item.input_audio_transcription.completed"


def _append(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


def _ev(type_: str, **fields) -> str:
    return json.dumps({"type": type_, **fields})


def _open() -> ClientConnection:
    obs = ClientConnection("proxy/1", 0.0, infer=True)
    obs.handshake(0.1, 101, "req_1")
    return obs


def _types(rows, type_):
    return [r for r in rows if r.type == type_]


def test_a_client_committed_turn_is_one_utterance_with_the_crc_of_its_audio() -> None:
    obs = _open()
    obs.server_frame(
        0.2,
        _ev(
            "session.updated",
            session={"id": "sess_1", "audio": {"input": {"turn_detection": None}}},
        ),
    )
    pcm = bytes(range(256)) * 30
    rows = obs.client_frame(1.0, _append(pcm[:3000])) + obs.client_frame(1.02, _append(pcm[3000:]))
    assert obs.state == "streaming" and obs.uncommitted_bytes == len(pcm)
    rows += obs.client_frame(1.1, _ev("input_audio_buffer.commit"))
    (start,) = _types(rows, "utt_start")
    assert start.t == 1.0 and start.fields["detail"]["crc32"] == zlib.crc32(pcm)
    assert start.fields["audio_ms"] == len(pcm) / 48
    obs.server_frame(1.2, _ev("input_audio_buffer.committed", item_id="item_1"))
    assert obs.state == "awaiting_transcript"
    rows = obs.server_frame(
        1.6, _ev(COMPLETED, item_id="item_1", transcript=make_transcript(len(pcm), zlib.crc32(pcm)))
    )
    (end,) = _types(rows, "utt_end")
    assert end.fields["text"] == "completed" and end.fields["detail"]["latency"] == 1.6 - 1.1
    assert obs.state == "idle" and obs.completed == 1


def test_the_servers_late_cleared_ack_does_not_cut_the_next_turn() -> None:
    """clear, append, then the `cleared` answering the clear: the append still counts."""
    obs = _open()
    obs.client_frame(0.5, _ev("input_audio_buffer.clear"))
    obs.client_frame(0.51, _append(b"\x01" * 96))
    obs.server_frame(0.52, _ev("input_audio_buffer.cleared"))
    obs.client_frame(0.53, _append(b"\x02" * 96))
    rows = obs.client_frame(0.6, _ev("input_audio_buffer.commit"))
    (start,) = _types(rows, "utt_start")
    assert start.fields["detail"]["crc32"] == zlib.crc32(b"\x01" * 96 + b"\x02" * 96)
    assert start.t == 0.51 and start.fields["audio_ms"] == 4.0


def test_a_transcript_naming_other_audio_is_a_mismatch_and_a_refused_commit_is_rejected() -> None:
    obs = _open()
    obs.client_frame(0.5, _append(b"\x01\x02" * 100))
    obs.client_frame(0.6, _ev("input_audio_buffer.commit"))
    obs.server_frame(0.7, _ev("input_audio_buffer.committed", item_id="i"))
    rows = obs.server_frame(0.9, _ev(COMPLETED, item_id="i", transcript=make_transcript(200, 7)))
    assert _types(rows, "utt_end")[0].fields["text"] == "mismatch"
    obs.client_frame(1.0, _append(b"\x00\x01" * 10))
    obs.client_frame(1.1, _ev("input_audio_buffer.commit"))
    rows = obs.server_frame(1.2, _ev("error", error={"code": "invalid_value", "message": "x"}))
    assert _types(rows, "utt_end")[0].fields["text"] == "rejected"


def test_server_vad_turns_take_their_length_from_the_speech_events() -> None:
    obs = _open()
    obs.client_frame(0.2, _append(bytes(4800)))
    obs.server_frame(
        0.3, _ev("input_audio_buffer.speech_started", audio_start_ms=100, item_id="v1")
    )
    obs.server_frame(1.0, _ev("input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="v1"))
    rows = obs.server_frame(1.01, _ev("input_audio_buffer.committed", item_id="v1"))
    (start,) = _types(rows, "utt_start")
    assert start.t == 0.3 and start.fields["audio_ms"] == 800 and start.fields["detail"] == {}
    rows = obs.server_frame(1.5, _ev(COMPLETED, item_id="v1", transcript="hello"))
    assert _types(rows, "utt_end")[0].fields["text"] == "completed"


def test_a_drop_loses_what_was_open_and_a_client_close_leaves_it_unfinished() -> None:
    for who, cause, fate in [
        (ClosedBy.TRANSPORT, CloseCause.ABNORMAL, "lost"),
        (ClosedBy.CLIENT, CloseCause.CLIENT_CLOSE, "unfinished"),
    ]:
        obs = _open()
        obs.client_frame(0.5, _append(bytes(960)))
        obs.client_frame(0.6, _ev("input_audio_buffer.commit"))
        obs.client_frame(0.7, _append(bytes(480)))  # the next one, half sent
        rows = obs.closed(2.0, who, cause, 1006, "")
        assert [r.fields["text"] for r in _types(rows, "utt_end")] == [fate, fate]
        (close,) = _types(rows, "conn_close")
        detail = close.fields["detail"]
        assert detail["state"] == "streaming" and detail["uncommitted_ms"] == 10.0
        assert detail["since_sent"] == 2.0 - 0.7 and detail["audio_ms"] == 30.0


frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    ).map(json.dumps),
    st.builds(
        lambda t, item, audio: json.dumps(
            {"type": t, "item_id": item, "audio": audio, "error": {"code": 3}, "session": []}
        ),
        st.sampled_from(
            [
                "input_audio_buffer.append",
                "input_audio_buffer.committed",
                COMPLETED,
                "error",
                "session.updated",
                "input_audio_buffer.speech_stopped",
            ]
        ),
        st.none() | st.integers() | st.text(max_size=4),
        st.none() | st.integers() | st.text(max_size=12),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), frames), max_size=30))
def test_hostile_frames_either_way_never_break_the_observer(sequence) -> None:
    obs = _open()
    for i, (from_client, data) in enumerate(sequence):
        (obs.client_frame if from_client else obs.server_frame)(1.0 + i, data)
    rows = obs.closed(100.0, ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006, "")
    assert rows[-1].type == "conn_close"


turn_events = st.sampled_from(
    [
        "append",
        "commit",
        "clear",
        "committed",
        "completed",
        "failed",
        "error",
        "speech_started",
        "speech_stopped",
        "cleared",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(turn_events, st.integers(0, 3)), max_size=40), st.booleans())
def test_every_utterance_started_is_ended_once_whatever_the_order(sequence, vad) -> None:
    """Each utt_start gets exactly one utt_end by the time the connection closes, and no
    end comes without its start: the frames pair them by key."""
    obs = _open()
    td = {"type": "server_vad"} if vad else None
    obs.server_frame(
        0.5, _ev("session.updated", session={"audio": {"input": {"turn_detection": td}}})
    )
    rows = []
    for i, (kind, n) in enumerate(sequence):
        t, item = 1.0 + i, f"item_{n}"
        if kind == "append":
            rows += obs.client_frame(t, _append(bytes(96)))
        elif kind in ("commit", "clear"):
            rows += obs.client_frame(t, _ev(f"input_audio_buffer.{kind}"))
        elif kind == "completed":
            rows += obs.server_frame(t, _ev(COMPLETED, item_id=item, transcript="x"))
        elif kind == "failed":
            rows += obs.server_frame(
                t,
                _ev(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=item,
                    error={"code": "f"},
                ),
            )
        elif kind == "error":
            rows += obs.server_frame(t, _ev("error", error={"code": "e"}))
        else:
            rows += obs.server_frame(
                t,
                _ev(f"input_audio_buffer.{kind}", item_id=item, audio_start_ms=0, audio_end_ms=500),
            )
    rows += obs.closed(99.0, ClosedBy.SERVER, CloseCause.SERVER_CLOSE, 1011, "")
    starts = [r.fields["item"] for r in rows if r.type == "utt_start"]
    ends = [r.fields["item"] for r in rows if r.type == "utt_end"]
    assert sorted(starts) == sorted(ends) and len(set(starts)) == len(starts)


@given(
    st.dictionaries(
        st.sampled_from(["model", "intent", "api-key", "token", "x"]),
        st.text(max_size=6),
        max_size=5,
    )
)
def test_the_upstream_keeps_its_own_parameters_and_never_gets_a_client_secret(query) -> None:
    from urllib.parse import parse_qsl, urlencode, urlsplit

    url = upstream_url("wss://up.example/v1/realtime?intent=transcription", urlencode(query))
    got = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    assert got["intent"] == "transcription"
    assert "api-key" not in got and "token" not in got
    for name in ("model", "x"):
        assert got.get(name) == query.get(name)
