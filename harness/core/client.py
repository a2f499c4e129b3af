"""One Realtime connection as its client sees it: frames both ways in, typed rows out.

Pure: no sockets, time passed in. The one interpretation of the protocol from the client's
side, shared by rtsoak's worker (which declares the utterances it sends) and the proxy (which
infers them from the frames a team's own client sends). It keeps what a drop is classified by
(state, the last frame each way, audio in the uncommitted buffer) and follows each utterance
from its start through commit and transcript to its fate:

- a client that commits its own turns gets one utterance per commit, ended by the transcript
  of the item the commit's acknowledgement names, or refused by an error;
- under server VAD each `input_audio_buffer.committed` the service sends ends a turn: it binds
  to the utterance the worker declared, or (inferring) becomes one, its CRC unknown because
  the service chose the audio;
- the connection's end ends what is still open: lost, or unfinished when the client closed.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from harness.core import wire
from harness.core.audio_level import dbfs
from harness.core.outcomes import CENSORING_CAUSES, CloseCause, ClosedBy, ConnState
from harness.core.outcomes import UtteranceStatus as Status
from harness.core.protocol import COMPLETED, CREATED, FAILED, UPDATED, error_text, text_field
from harness.core.rows import ConnClose, FrameRow, Handshake, Row, UttEnd, UttStart
from harness.core.transcript import BYTES_PER_SECOND, parse_transcript

__all__ = ["ClientConnection", "Utterance"]

UPDATES = frozenset({"session.update", "transcription_session.update"})
APPEND = "input_audio_buffer.append"
PCM16_BYTES_PER_MS = BYTES_PER_SECOND / 1000
G711_BYTES_PER_MS = 8.0  # 8 kHz, one byte a sample
# the service answered the commit with a transcript, or its failure: latency is measured
_ANSWERED = frozenset({Status.COMPLETED, Status.RETRIED_OK, Status.MISMATCH, Status.FAILED})
_BYTES_PER_MS = {"audio/pcm": PCM16_BYTES_PER_MS, "pcm16": PCM16_BYTES_PER_MS}


@dataclass(slots=True)
class Utterance:
    """One utterance in flight. `crc` None: unknown (the service's VAD chose the audio)."""

    key: str
    started: float
    crc: int | None = 0
    nbytes: int = 0
    audio_ms: float | None = None
    committed: float | None = None
    item_id: str | None = None
    speech_start_ms: float | None = None  # server VAD: where in the audio stream it began
    declared: bool = False  # the sender announced it (its start row is already written)
    check_crc: bool = True  # a transcript naming other audio is a mismatch
    attempt: int = 1


class ClientConnection:
    """Watches one connection attempt; every method returns the rows to record.

    `infer` is for an observer of someone else's client: utterances begin at their first
    append and the service's VAD turns become utterances of their own. The worker declares its
    utterances instead (`begin`), so nothing is guessed.
    """

    def __init__(self, key_prefix: str, opened: float, *, infer: bool = False) -> None:
        self.key_prefix = key_prefix  # inferred utterance keys: `variant/worker/n`
        self.opened = opened
        self.infer = infer
        self.established: float | None = None
        self.configured = False
        self.bytes_per_ms = PCM16_BYTES_PER_MS
        self.session_id: str | None = None
        self.request_id: str | None = None
        self.expired = False  # the service said session_expired
        self.phase: ConnState | None = None  # what the sender says it is doing, if it says
        self.last_sent: float | None = None
        self.last_recv: float | None = None
        self.last_pcm: bytes | None = None  # audio of the last append, for fault policies
        # Written directly by the worker's paced send loop, which updates the three per
        # frame without a call (the hot path): keep them plain attributes.
        self.uncommitted_ms = 0.0
        self.audio_ms = 0.0
        self.completed = 0
        self._inferred = 0
        self._current: Utterance | None = None  # appended since the last commit or clear
        self._awaiting_ack: deque[Utterance | None] = deque()  # commits not yet answered
        self._by_item: dict[str, Utterance] = {}  # committed, awaiting their transcript
        self._speech: Utterance | None = None  # server VAD heard speech start

    # what the client is doing -------------------------------------------------------------
    @property
    def state(self) -> ConnState:
        if self.established is None:
            return ConnState.CONNECTING
        if self.phase is not None:
            return self.phase
        if self.uncommitted_ms:
            return ConnState.STREAMING
        if self._awaiting_ack or self._by_item:
            return ConnState.AWAITING
        return ConnState.IDLE if self.configured else ConnState.CONFIGURING

    @property
    def uncommitted_bytes(self) -> int:
        return round(self.uncommitted_ms * self.bytes_per_ms)

    def waiting(self) -> bool:
        """Whether a committed utterance still awaits its transcript (or its commit's answer)."""
        return bool(self._awaiting_ack or self._by_item)

    # the connection's life ----------------------------------------------------------------
    def handshake(
        self, now: float, status: int | None, request_id: str | None, error: str | None = None
    ) -> list[Row]:
        self.request_id = request_id
        if status == 101:
            self.established = now
        return [Handshake(now, status, request_id, now - self.opened, error)]

    def closed(
        self,
        now: float,
        closed_by: ClosedBy,
        cause: CloseCause,
        code: int | None,
        reason: str,
        *,
        run_ended: bool = False,
    ) -> list[Row]:
        """The connection ended: utterances still open end too (lost, or unfinished when the
        client itself closed it or the run had ended: no replay could follow), then the
        connection's summary."""
        censored = cause in CENSORING_CAUSES or run_ended
        fate = Status.UNFINISHED if censored else Status.LOST
        state = self.state
        rows: list[Row] = []
        open_utts = [u for u in self._awaiting_ack if u is not None] + list(self._by_item.values())
        current = self._current
        if current is not None and (current.declared or current.nbytes):
            if not current.declared:
                rows.append(self._start_row(current))
            open_utts.append(current)
        for utt in open_utts:
            rows.append(self._end(utt, now, fate))
        self._awaiting_ack.clear()
        self._by_item.clear()
        self._current = None
        since_sent = None if self.last_sent is None else now - self.last_sent
        since_recv = None if self.last_recv is None else now - self.last_recv
        rows.append(
            ConnClose(
                now,
                code,
                self.request_id,
                reason,
                closed_by,
                cause,
                state,
                since_sent,
                since_recv,
                self.uncommitted_ms,
                self.audio_ms,
                self.completed,
                self.session_id,
            )
        )
        return rows

    # utterances the sender declares ------------------------------------------------------
    def begin(
        self,
        now: float,
        key: str,
        *,
        name: str,
        crc32: int,
        nbytes: int,
        audio_ms: float,
        attempt: int = 1,
        vad: bool = False,
    ) -> list[Row]:
        """The sender starts an utterance (before its clear, or its first append under server
        VAD, where the service chooses the audio and the transcript is not checked)."""
        utt = Utterance(key, now, crc32, nbytes, audio_ms, declared=True, attempt=attempt)
        utt.check_crc = not vad
        self._current = utt
        self.phase = ConnState.STREAMING
        return [UttStart(now, key, audio_ms, crc32, name=name, nbytes=nbytes, attempt=attempt)]

    def give_up(self, now: float, key: str, status: Status) -> list[Row]:
        """The sender stops waiting for an utterance (its deadline passed, or the run ended
        before it was sent): it ends with `status` if it has not already."""
        for utt in [self._current, *self._awaiting_ack, *self._by_item.values()]:
            if utt is not None and utt.key == key:
                self._forget(utt)
                return [self._end(utt, now, status)]
        return []

    def _forget(self, utt: Utterance) -> None:
        if self._current is utt:
            self._current = None
        if utt in self._awaiting_ack:
            self._awaiting_ack[self._awaiting_ack.index(utt)] = None
        if utt.item_id is not None and self._by_item.get(utt.item_id) is utt:
            del self._by_item[utt.item_id]

    def control(self, now: float, dir_: str, kind: str, nbytes: int) -> list[Row]:
        """A ping or pong, either way: recorded, but not a frame for the quiet-before-drop
        times (rtsoak's own workers' pings go unrecorded)."""
        return [FrameRow(now, dir_, kind, nbytes)]

    # frames the client sends ----------------------------------------------------------------
    def sent(self, now: float, type_: str, nbytes: int) -> list[Row]:
        """A control event the sender built itself (clear, commit, session.update): no need
        to parse what it knows."""
        self.last_sent = now
        return [FrameRow(now, "send", type_, nbytes), *self._client_event(now, type_, None)]

    def client_frame(self, now: float, data: str | bytes) -> list[Row]:
        """A frame a client sent, as an observer saw it (recorded whether or not it arrives)."""
        self.last_sent, self.last_pcm = now, None
        if isinstance(data, bytes):
            return [FrameRow(now, "send", "binary", len(data))]
        event = _parse(data)
        if event is None:
            return [FrameRow(now, "send", "unparseable", len(data))]
        type_ = event["type"]
        audio_ms = level = None
        if type_ == APPEND:
            pcm = _decode(event.get("audio"))
            if pcm is not None:
                audio_ms = self._append(now, pcm)
                if self.bytes_per_ms == PCM16_BYTES_PER_MS:  # G.711 bytes are no PCM16 level
                    level = dbfs(pcm)
        rows = self._client_event(now, type_, event)
        return [FrameRow(now, "send", type_, len(data), audio_ms=audio_ms, dbfs=level), *rows]

    def _client_event(self, now: float, type_: str, event: dict[str, Any] | None) -> list[Row]:
        if type_ == "input_audio_buffer.commit":
            return self._commit(now)
        if type_ == "input_audio_buffer.clear":
            current = self._current
            if current is not None and not current.declared:
                self._current = None  # inferred audio never committed: not an utterance
            self.uncommitted_ms = 0.0
        elif type_ in UPDATES:
            if event is not None:
                self._configure(event.get("session"))
            elif not self.configured:
                self.phase = ConnState.CONFIGURING
        return []

    def appended(self, now: float, audio_ms: float, level: float | None = None) -> list[Row]:
        """An append known only by its length (an imported log), counted as `client_frame`
        counts one; the audio unseen, its utterance's CRC is unknown and a transcript is never
        judged a mismatch."""
        self.last_sent, self.last_pcm = now, None
        self._add_audio(now, audio_ms, None)
        return [FrameRow(now, "send", APPEND, 0, audio_ms=audio_ms, dbfs=level)]

    def _append(self, now: float, pcm: bytes) -> float:
        self.last_pcm = pcm
        ms = len(pcm) / self.bytes_per_ms
        self._add_audio(now, ms, pcm)
        return ms

    def _add_audio(self, now: float, ms: float, pcm: bytes | None) -> None:
        self.configured = True
        if self._current is None:
            self._current = self._new(now, crc=0 if pcm is not None else None)
        utt = self._current
        if not utt.declared:
            if pcm is None:
                utt.crc = None
                utt.nbytes += max(1, round(ms * self.bytes_per_ms)) if ms else 0
                utt.audio_ms = (utt.audio_ms or 0.0) + ms
            else:
                utt.nbytes += len(pcm)
                utt.crc = None if utt.crc is None else zlib.crc32(pcm, utt.crc)
        self.uncommitted_ms += ms
        self.audio_ms += ms

    def _commit(self, now: float) -> list[Row]:
        utt, self._current = self._current, None
        self.uncommitted_ms = 0.0 if self.infer else self.uncommitted_ms
        if self.phase is not None:
            self.phase = ConnState.AWAITING
        if utt is None or not (utt.declared or utt.nbytes):
            self._awaiting_ack.append(None)  # an empty commit: the service will refuse it
            return []
        utt.committed = now
        self._awaiting_ack.append(utt)
        return [] if utt.declared else [self._start_row(utt)]

    # frames the service sends ---------------------------------------------------------------
    def server_frame(self, now: float, data: str | bytes) -> list[Row]:
        """A frame the service sent (or a proxy, for an injected error) toward the client."""
        self.last_recv = now
        if isinstance(data, bytes):
            return [FrameRow(now, "recv", "binary", len(data))]
        try:
            event = wire.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            return [FrameRow(now, "recv", "unparseable", len(data), text=type(exc).__name__)]
        type_ = event.get("type") if isinstance(event, dict) else None
        if not isinstance(type_, str):
            return [FrameRow(now, "recv", "unparseable", len(data), text="no string type")]
        # peers may send anything: only strings of the expected fields are believed or logged
        item = text_field(event.get("item_id"))
        text = None
        rows: list[Row] = []
        if type_ in CREATED or type_ in UPDATED:
            session = event.get("session")
            if isinstance(session, dict):
                self.session_id = text_field(session.get("id")) or self.session_id
            self._configure(session)
            if type_ in UPDATED and not self.configured:
                self.configured = True
                if self.phase is ConnState.CONFIGURING:
                    self.phase = ConnState.IDLE
        elif type_ == "input_audio_buffer.committed":
            rows += self._committed(now, item)
        elif type_ == "input_audio_buffer.speech_started" and self.infer:
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
                status = Status.COMPLETED
                mark = parse_transcript(text) if text else None
                if mark is not None and utt.check_crc and utt.crc is not None:
                    status = Status.MISMATCH if mark.crc32 != utt.crc else status
                rows.append(self._end(utt, now, status, text))
        elif type_ == FAILED:
            text = error_text(event)
            utt = self._by_item.pop(item, None) if item else None
            if utt is not None:
                rows.append(self._end(utt, now, Status.FAILED, text))
        elif type_ == "error":
            text = error_text(event)
            if text == "session_expired":
                self.expired = True
            elif self._awaiting_ack:  # the commit was refused
                utt = self._awaiting_ack.popleft()
                if utt is not None:
                    rows.append(self._end(utt, now, Status.REJECTED))
        return [FrameRow(now, "recv", type_, len(data), item, text), *rows]

    def _committed(self, now: float, item: str | None) -> list[Row]:
        if self._awaiting_ack:  # the answer to the client's own commit
            utt = self._awaiting_ack.popleft()
            if utt is None:
                return []
            self.uncommitted_ms = 0.0
            if item is None:  # an answer naming no item: nothing can follow it
                return [self._end(utt, now, Status.REJECTED)]
            utt.item_id = item
            displaced = self._by_item.pop(item, None)  # a service reusing an item id
            self._by_item[item] = utt
            return [] if displaced is None else [self._end(displaced, now, Status.FAILED)]
        if item is not None and item in self._by_item:
            return []  # the same turn committed again: still one utterance
        current = self._current
        if current is not None and current.declared:  # server VAD ends the declared turn
            utt, self._current = current, None
        elif self.infer:  # server VAD committed a turn it heard
            utt = self._speech or self._new(now, crc=None)
            self._speech, self._current = None, None
        else:
            return []  # a second turn in one utterance: the worker waits for the first
        self.uncommitted_ms = 0.0
        utt.committed = now
        rows = [] if utt.declared else [self._start_row(utt)]
        if item is None:
            return [*rows, self._end(utt, now, Status.FAILED)]
        utt.item_id = item
        self._by_item[item] = utt
        return rows

    # rows ---------------------------------------------------------------------------------
    def _new(self, now: float, crc: int | None = 0) -> Utterance:
        self._inferred += 1
        return Utterance(f"{self.key_prefix}/{self._inferred}", now, crc)

    def _start_row(self, utt: Utterance) -> UttStart:
        audio_ms = utt.audio_ms
        if audio_ms is None:
            audio_ms = utt.nbytes / self.bytes_per_ms or None
        return UttStart(utt.started, utt.key, audio_ms, utt.crc)

    def _end(
        self, utt: Utterance, now: float, status: Status, transcript: str | None = None
    ) -> UttEnd:
        if status is Status.COMPLETED:
            self.completed += 1
            if utt.attempt > 1:
                status = Status.RETRIED_OK
        if not self.waiting() and self.phase is ConnState.AWAITING:
            self.phase = ConnState.IDLE
        answered = status in _ANSWERED and utt.committed is not None
        latency = now - utt.committed if answered else None
        return UttEnd(
            now,
            utt.key,
            status,
            utt.item_id,
            transcript,
            latency,
            utt.committed,
            self.uncommitted_ms,
        )

    def _configure(self, session: Any) -> None:
        """Audio milliseconds follow the session's input format."""
        fmt = _audio_format(session)
        if fmt is not None:
            self.bytes_per_ms = _BYTES_PER_MS.get(fmt, G711_BYTES_PER_MS)


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
