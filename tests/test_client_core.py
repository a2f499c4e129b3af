"""The worker's protocol truth without sockets: ClientConnection driven by hand-fed events and
times, as the worker drives it (declared utterances, its own clear/commit), and Speech's
replay rule. The proxy's inferring use is in test_proxy_observer.py."""

from __future__ import annotations

import json

import pytest

from harness.config.audio import Utterance
from harness.config.scenario import scenario_from_doc
from harness.core.client import ClientConnection
from harness.core.outcomes import CloseCause, ClosedBy, ConnState, UtteranceStatus
from harness.core.rows import ConnClose, UttEnd, UttStart
from harness.core.transcript import make_transcript
from harness.edge.speech import Speech

COMPLETED = "conversation.item.input_audio_transcription.completed"
CRC = 0x1234ABCD


def _ev(type_: str, **fields) -> str:
    return json.dumps({"type": type_, **fields})


def _worker_conn(attempt_key: str = "v/1/1") -> ClientConnection:
    """Open and configured, as the worker leaves it before its first utterance."""
    core = ClientConnection(attempt_key, 0.0)
    core.handshake(0.05, 101, "req_1")
    core.sent(0.06, "session.update", 100)
    assert core.state is ConnState.CONFIGURING
    core.server_frame(0.1, _ev("session.updated", session={"id": "sess_1"}))
    assert core.configured and core.state is ConnState.IDLE
    return core


def _say(core: ClientConnection, t: float, key: str = "v/1/7", attempt: int = 1) -> list:
    """begin -> clear -> two seconds of appends (as the send loop counts them) -> commit."""
    rows = core.begin(t, key, name="a", crc32=CRC, nbytes=96_000, audio_ms=2000.0, attempt=attempt)
    rows += core.sent(t + 0.01, "input_audio_buffer.clear", 40)
    core.last_sent, core.uncommitted_ms, core.audio_ms = t + 2.0, 2000.0, core.audio_ms + 2000
    assert core.state is ConnState.STREAMING
    return rows + core.sent(t + 2.02, "input_audio_buffer.commit", 40)


def _ends(rows) -> list[UttEnd]:
    return [r for r in rows if isinstance(r, UttEnd)]


def test_an_utterance_completes_with_its_latency_from_the_commit() -> None:
    core = _worker_conn()
    rows = _say(core, 1.0)
    (start,) = [r for r in rows if isinstance(r, UttStart)]
    assert start.fields["detail"] == {"name": "a", "crc32": CRC, "bytes": 96_000, "attempt": 1}
    assert core.state is ConnState.AWAITING
    core.server_frame(3.1, _ev("input_audio_buffer.committed", item_id="item_1"))
    assert core.uncommitted_ms == 0.0
    rows = core.server_frame(
        3.5, _ev(COMPLETED, item_id="item_1", transcript=make_transcript(96_000, CRC))
    )
    (end,) = _ends(rows)
    assert end.status is UtteranceStatus.COMPLETED and end.key == "v/1/7"
    assert end.latency == pytest.approx(3.5 - 3.02) and end.committed == pytest.approx(3.02)
    assert end.item_id == "item_1" and core.completed == 1
    assert core.state is ConnState.IDLE


def test_a_transcript_of_other_audio_is_a_mismatch_and_a_replay_that_completes_is_retried_ok() -> (
    None
):
    core = _worker_conn()
    _say(core, 1.0)
    core.server_frame(3.1, _ev("input_audio_buffer.committed", item_id="i1"))
    (end,) = _ends(
        core.server_frame(
            3.2, _ev(COMPLETED, item_id="i1", transcript=make_transcript(96_000, CRC ^ 1))
        )
    )
    assert end.status is UtteranceStatus.MISMATCH and core.completed == 0
    _say(core, 4.0, key="v/1/8", attempt=2)
    core.server_frame(6.1, _ev("input_audio_buffer.committed", item_id="i2"))
    (end,) = _ends(
        core.server_frame(
            6.2, _ev(COMPLETED, item_id="i2", transcript=make_transcript(96_000, CRC))
        )
    )
    assert end.status is UtteranceStatus.RETRIED_OK and core.completed == 1


def test_a_drop_mid_utterance_loses_it_and_records_the_state_and_the_buffer() -> None:
    core = _worker_conn()
    core.begin(1.0, "v/1/7", name="a", crc32=CRC, nbytes=96_000, audio_ms=2000.0)
    core.sent(1.01, "input_audio_buffer.clear", 40)
    core.last_sent, core.uncommitted_ms, core.audio_ms = 1.8, 800.0, 800.0
    rows = core.closed(2.5, ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006, "")
    (end,) = _ends(rows)
    assert end.status is UtteranceStatus.LOST and end.uncommitted_ms == 800.0
    close = rows[-1]
    assert isinstance(close, ConnClose) and close.state is ConnState.STREAMING
    assert close.since_sent == pytest.approx(0.7) and close.since_recv == pytest.approx(2.4)
    assert close.fields["detail"]["cause"] == "abnormal" and close.code == 1006


def test_a_rotation_while_awaiting_leaves_the_utterance_unfinished_not_lost() -> None:
    core = _worker_conn()
    _say(core, 1.0)
    core.server_frame(3.1, _ev("input_audio_buffer.committed", item_id="i1"))
    rows = core.closed(3.3, ClosedBy.CLIENT, CloseCause.PROACTIVE, 1000, "proactive")
    (end,) = _ends(rows)
    assert end.status is UtteranceStatus.UNFINISHED and end.item_id == "i1"
    assert rows[-1].state is ConnState.AWAITING and rows[-1].closed_by is ClosedBy.CLIENT


def test_a_timeout_ends_the_utterance_once_and_a_late_transcript_is_only_a_frame() -> None:
    core = _worker_conn()
    _say(core, 1.0)
    core.server_frame(3.1, _ev("input_audio_buffer.committed", item_id="i1"))
    (end,) = core.give_up(13.02, "v/1/7", UtteranceStatus.TIMEOUT)
    assert end.status is UtteranceStatus.TIMEOUT and end.latency is None
    late = core.server_frame(14.0, _ev(COMPLETED, item_id="i1", transcript="x"))
    assert _ends(late) == [] and core.give_up(14.1, "v/1/7", UtteranceStatus.TIMEOUT) == []
    assert _ends(core.closed(15, ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006, "")) == []


def test_a_refused_commit_is_rejected_and_session_expired_marks_the_close() -> None:
    core = _worker_conn()
    _say(core, 1.0)
    (end,) = _ends(
        core.server_frame(2.1, _ev("error", error={"code": "input_audio_buffer_commit_empty"}))
    )
    assert end.status is UtteranceStatus.REJECTED
    core.server_frame(2.2, _ev("error", error={"code": "session_expired"}))
    assert core.expired


def test_server_vad_binds_the_first_turn_to_the_declared_utterance_unchecked() -> None:
    core = _worker_conn()
    core.begin(1.0, "v/1/3", name="a", crc32=CRC, nbytes=96_000, audio_ms=2000.0, vad=True)
    core.uncommitted_ms = 2500.0
    core.server_frame(3.4, _ev("input_audio_buffer.committed", item_id="i1"))
    assert core.uncommitted_ms == 0.0
    assert core.server_frame(3.6, _ev("input_audio_buffer.committed", item_id="i2"))[1:] == []
    (end,) = _ends(
        core.server_frame(3.9, _ev(COMPLETED, item_id="i1", transcript=make_transcript(1, CRC ^ 1)))
    )
    assert end.status is UtteranceStatus.COMPLETED and end.latency == pytest.approx(0.5)
    assert _ends(core.server_frame(4.0, _ev(COMPLETED, item_id="i2", transcript="y"))) == []


def test_hostile_server_frames_become_rows_and_never_raise() -> None:
    core = _worker_conn()
    for data in ["{", "[1]", '{"type": 5}', "null", b"\x00\x01", '{"type": "error"}', "[" * 5000]:
        rows = core.server_frame(1.0, data)
        assert rows and rows[0].dir == "recv"
    assert core.last_recv == 1.0


@pytest.mark.parametrize(
    ("status", "attempt", "replayed"),
    [
        (UtteranceStatus.LOST, 1, True),
        (UtteranceStatus.TIMEOUT, 1, True),
        (UtteranceStatus.LOST, 3, False),  # max_attempts = 3
        (UtteranceStatus.FAILED, 1, False),
        (UtteranceStatus.COMPLETED, 1, False),
    ],
)
def test_speech_replays_a_lost_or_timed_out_utterance_up_to_max_attempts(
    status, attempt, replayed
) -> None:
    doc = {
        "run": {"name": "r", "duration": "1m", "workers": 1},
        "reconnect": {"strategy": "on-drop", "replay": True, "max_attempts": 3},
    }
    scenario = scenario_from_doc(doc, "t.toml")

    class Library:
        utterances = [Utterance("a", bytes(4800))]

        def pick(self, rng):
            return self.utterances[0]

    speech = Speech(scenario, Library(), "v", 1)
    first = speech.next()
    assert first.key == "v/1/1" and first.attempt == 1
    turn = type(first)(first.key, first.utterance, attempt)
    speech.ended(turn, status)
    again = speech.next()
    if replayed:
        assert (again.key, again.attempt) == ("v/1/1", attempt + 1)
    else:
        assert (again.key, again.attempt) == ("v/1/2", 1)


def test_a_drop_as_the_run_ends_leaves_its_utterance_unfinished_not_lost() -> None:
    """No replay can follow the run's end, so the drop cuts the utterance short, as a planned
    close would; the connection is still a drop."""
    core = _worker_conn()
    core.begin(1.0, "v/1/7", name="a", crc32=CRC, nbytes=96_000, audio_ms=2000.0)
    rows = core.closed(2.5, ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006, "", run_ended=True)
    (end,) = _ends(rows)
    assert end.status is UtteranceStatus.UNFINISHED
    assert rows[-1].cause is CloseCause.ABNORMAL
