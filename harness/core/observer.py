"""One relayed connection as its client sees it: frames both ways in, recorder rows out.

Pure: no sockets, time passed in. It keeps what rtsoak's frames need to classify a drop (state,
the last frame each way, uncommitted audio) and turns the client's audio turns into utterances
(start, commit, transcript, and the CRC of the audio it sent), so a proxied connection loads
and reports like one of rtsoak's own workers. A client that commits its own turns gets one
utterance per commit; under server VAD each `input_audio_buffer.committed` the service sends is
one (its CRC unknown: the service chose the audio).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from harness.core import wire
from harness.core.outcomes import CENSORING_CAUSES, CloseCause, ClosedBy, ConnState, UtteranceStatus
from harness.core.protocol import COMPLETED, CREATED, FAILED, UPDATED, error_text, text_field
from harness.core.transcript import BYTES_PER_SECOND, parse_transcript

__all__ = ["RelayObserver", "Row"]

UPDATES = frozenset({"session.update", "transcription_session.update"})
# audio bytes per millisecond of each input format (PCM16 at 24 kHz; else G.711 at 8 kHz)
_BYTES_PER_MS = {"audio/pcm": BYTES_PER_SECOND / 1000, "pcm16": BYTES_PER_SECOND / 1000}
_G711_BYTES_PER_MS = 8.0


@dataclass(frozen=True, slots=True)
class Row:
    """A recorder row of this connection: when (scenario s), direction, type, the rest."""

    t: float
    dir: str
    type: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Utterance:
    key: str
    started: float
    crc: int | None = 0  # None: the service chose the audio (server VAD)
    nbytes: int = 0
    audio_ms: float | None = None  # set when the service's VAD says how long it was
    committed: float | None = None
    item_id: str | None = None
    speech_start_ms: float | None = None  # server VAD: where in the audio stream it began


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _audio_format(session: Any) -> str | None:
    if not isinstance(session, dict):
        return None
    audio = session.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
        fmt = audio["input"].get("format")
        if isinstance(fmt, dict):
            return text_field(fmt.get("type"))
    return text_field(session.get("input_audio_format"))


class RelayObserver:
    """Watches one connection; every method returns the rows to record."""

    def __init__(self, key_prefix: str, opened: float) -> None:
        self.key_prefix = key_prefix  # utterance keys: `variant/worker/n`
        self.opened = opened
        self.established: float | None = None
        self.configured = False
        self.bytes_per_ms = _BYTES_PER_MS["audio/pcm"]
        self.session_id: str | None = None
        self.request_id: str | None = None
        self.expired = False  # the service said session_expired
        self.last_sent: float | None = None
        self.last_recv: float | None = None
        self.last_pcm: bytes | None = None  # audio of the last append, for fault policies
        self.uncommitted_bytes = 0
        self.audio_bytes = 0
        self.completed = 0
        self._utterances = 0
        self._current: _Utterance | None = None  # audio appended since the last commit/clear
        self._awaiting_ack: deque[_Utterance | None] = deque()  # commits sent, not yet answered
        self._by_item: dict[str, _Utterance] = {}  # committed, awaiting their transcript
        self._speech: _Utterance | None = None  # server VAD heard speech start

    # what the client is doing -------------------------------------------------------------
    @property
    def state(self) -> ConnState:
        if self.established is None:
            return ConnState.CONNECTING
        if self.uncommitted_bytes:
            return ConnState.STREAMING
        if self._awaiting_ack or self._by_item:
            return ConnState.AWAITING
        return ConnState.IDLE if self.configured else ConnState.CONFIGURING

    def _ms(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_ms

    # the connection's life ----------------------------------------------------------------
    def handshake(
        self, now: float, status: int | None, request_id: str | None, error: str | None = None
    ) -> list[Row]:
        self.request_id = request_id
        if status == 101:
            self.established = now
        fields: dict[str, Any] = {
            "code": status,
            "item": request_id,
            "detail": {"latency": now - self.opened},
        }
        if error is not None:
            fields["text"] = error
        return [Row(now, "meta", "handshake", fields)]

    def closed(
        self, now: float, closed_by: ClosedBy, cause: CloseCause, code: int | None, reason: str
    ) -> list[Row]:
        """The connection ended: utterances still open end too (lost, or unfinished when the
        client or the proxy itself closed), then the connection's summary."""
        censored = cause in CENSORING_CAUSES
        fate = UtteranceStatus.UNFINISHED if censored else UtteranceStatus.LOST
        state = self.state
        rows: list[Row] = []
        open_utts = [u for u in self._awaiting_ack if u is not None] + list(self._by_item.values())
        if self._current is not None and self._current.nbytes:
            open_utts.append(self._current)
            rows += self._start_rows(self._current)
        for utt in open_utts:
            rows.append(self._end(utt, now, fate))
        self._awaiting_ack.clear()
        self._by_item.clear()
        self._current = None
        rows.append(
            Row(
                now,
                "meta",
                "conn_close",
                {
                    "code": code,
                    "item": self.request_id,
                    "text": reason,
                    "detail": {
                        "closed_by": str(closed_by),
                        "cause": str(cause),
                        "state": str(state),
                        "since_sent": None if self.last_sent is None else now - self.last_sent,
                        "since_recv": None if self.last_recv is None else now - self.last_recv,
                        "uncommitted_ms": self._ms(self.uncommitted_bytes),
                        "audio_ms": self._ms(self.audio_bytes),
                        "completed": self.completed,
                        "session_id": self.session_id,
                    },
                },
            )
        )
        return rows

    # frames -------------------------------------------------------------------------------
    def control(self, now: float, dir_: str, kind: str, nbytes: int) -> list[Row]:
        """A ping or pong, either way. Recorded, but not a frame for the quiet-before-drop
        times: those count events, as for rtsoak's own workers (whose pings go unrecorded)."""
        return [Row(now, dir_, kind, {"bytes_": nbytes})]

    def client_frame(self, now: float, data: str | bytes) -> list[Row]:
        """A frame the client sent (it is recorded whether or not it reaches the service)."""
        self.last_sent, self.last_pcm = now, None
        if isinstance(data, bytes):
            return [Row(now, "send", "binary", {"bytes_": len(data)})]
        event = _parse(data)
        if event is None:
            return [Row(now, "send", "unparseable", {"bytes_": len(data)})]
        type_ = event["type"]
        fields: dict[str, Any] = {"bytes_": len(data)}
        rows: list[Row] = []
        if type_ == "input_audio_buffer.append":
            pcm = _decode(event.get("audio"))
            if pcm is not None:
                self._append(now, pcm)
                fields["audio_ms"] = self._ms(len(pcm))
        elif type_ == "input_audio_buffer.commit":
            rows += self._commit(now)
        elif type_ == "input_audio_buffer.clear":
            self._current, self.uncommitted_bytes = None, 0
        elif type_ in UPDATES:
            self._configure(event.get("session"))
        return [Row(now, "send", type_, fields), *rows]

    def server_frame(self, now: float, data: str | bytes) -> list[Row]:
        """A frame the service sent (or the proxy, for an injected error) toward the client."""
        self.last_recv = now
        if isinstance(data, bytes):
            return [Row(now, "recv", "binary", {"bytes_": len(data)})]
        event = _parse(data)
        if event is None:
            return [Row(now, "recv", "unparseable", {"bytes_": len(data)})]
        type_ = event["type"]
        item = text_field(event.get("item_id"))
        text = None
        rows: list[Row] = []
        if type_ in CREATED or type_ in UPDATED:
            session = event.get("session")
            if isinstance(session, dict):
                self.session_id = text_field(session.get("id")) or self.session_id
            self._configure(session)
            self.configured = self.configured or type_ in UPDATED
        elif type_ == "input_audio_buffer.committed":
            rows += self._committed(now, item)
        elif type_ == "input_audio_buffer.speech_started":
            self._speech = self._new(now, crc=None)
            self._speech.speech_start_ms = _number(event.get("audio_start_ms"))
        elif type_ == "input_audio_buffer.speech_stopped" and self._speech is not None:
            start, end = self._speech.speech_start_ms, _number(event.get("audio_end_ms"))
            if start is not None and end is not None:
                self._speech.audio_ms = end - start
        elif type_ == COMPLETED:
            text = text_field(event.get("transcript"))
            utt = self._by_item.pop(item, None) if item else None
            if utt is not None:
                status = UtteranceStatus.COMPLETED
                mark = parse_transcript(text) if text else None
                if mark is not None and utt.crc is not None and mark.crc32 != utt.crc:
                    status = UtteranceStatus.MISMATCH
                self.completed += status is UtteranceStatus.COMPLETED
                rows.append(self._end(utt, now, status, text))
        elif type_ == FAILED:
            text = error_text(event)
            utt = self._by_item.pop(item, None) if item else None
            if utt is not None:
                rows.append(self._end(utt, now, UtteranceStatus.FAILED))
        elif type_ == "error":
            text = error_text(event)
            if text == "session_expired":
                self.expired = True
            elif self._awaiting_ack:  # the commit was refused
                utt = self._awaiting_ack.popleft()
                if utt is not None:
                    rows.append(self._end(utt, now, UtteranceStatus.REJECTED))
        return [Row(now, "recv", type_, {"bytes_": len(data), "item": item, "text": text}), *rows]

    # utterances ---------------------------------------------------------------------------
    def _new(self, now: float, crc: int | None = 0) -> _Utterance:
        self._utterances += 1
        return _Utterance(f"{self.key_prefix}/{self._utterances}", now, crc)

    def _append(self, now: float, pcm: bytes) -> None:
        self.last_pcm = pcm
        self.configured = True
        if self._current is None:
            self._current = self._new(now)
        utt = self._current
        utt.nbytes += len(pcm)
        utt.crc = zlib.crc32(pcm, utt.crc or 0)
        self.uncommitted_bytes += len(pcm)
        self.audio_bytes += len(pcm)

    def _commit(self, now: float) -> list[Row]:
        utt, self._current = self._current, None
        self.uncommitted_bytes = 0
        if utt is None or not utt.nbytes:
            self._awaiting_ack.append(None)  # an empty commit: the service will refuse it
            return []
        utt.committed = now
        self._awaiting_ack.append(utt)
        return self._start_rows(utt)

    def _committed(self, now: float, item: str | None) -> list[Row]:
        if self._awaiting_ack:  # the answer to the client's own commit
            utt = self._awaiting_ack.popleft()
            if utt is None or item is None:
                return []
            utt.item_id = item
            displaced = self._by_item.pop(item, None)  # a service reusing an item id
            self._by_item[item] = utt
            return [] if displaced is None else [self._end(displaced, now, UtteranceStatus.FAILED)]
        if item is not None and item in self._by_item:
            return []  # the same turn committed again: still one utterance
        # server VAD committed a turn it heard
        utt = self._speech or self._new(now, crc=None)
        self._speech, self._current, self.uncommitted_bytes = None, None, 0
        utt.committed = now
        if item is not None:
            utt.item_id = item
            self._by_item[item] = utt
        else:  # nothing will name it again: it cannot get a transcript
            return [*self._start_rows(utt), self._end(utt, now, UtteranceStatus.FAILED)]
        return self._start_rows(utt)

    def _start_rows(self, utt: _Utterance) -> list[Row]:
        audio_ms = utt.audio_ms if utt.audio_ms is not None else self._ms(utt.nbytes) or None
        detail = {"crc32": utt.crc} if utt.crc is not None else {}
        return [
            Row(
                utt.started,
                "meta",
                "utt_start",
                {"audio_ms": audio_ms, "item": utt.key, "detail": detail},
            )
        ]

    def _end(
        self, utt: _Utterance, now: float, status: UtteranceStatus, transcript: str | None = None
    ) -> Row:
        latency = None if utt.committed is None or transcript is None else now - utt.committed
        return Row(
            now,
            "meta",
            "utt_end",
            {
                "item": utt.key,
                "text": str(status),
                "detail": {"item_id": utt.item_id, "transcript": transcript, "latency": latency},
            },
        )

    def _configure(self, session: Any) -> None:
        """Audio milliseconds follow the session's input format."""
        fmt = _audio_format(session)
        if fmt is not None:
            self.bytes_per_ms = _BYTES_PER_MS.get(fmt, _G711_BYTES_PER_MS)


def _parse(data: str) -> dict[str, Any] | None:
    try:
        event = wire.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


def _decode(audio: Any) -> bytes | None:
    if not isinstance(audio, str):
        return None
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        return None
