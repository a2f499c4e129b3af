"""One simulated caller: connect, configure, then clear -> paced appends -> commit -> await the
transcript, utterance after utterance; on a drop, classify it and reconnect with backoff.

This is the client's I/O edge. aiohttp errors are mapped here, once, into a close
classification; pacing and reconnect decisions come from the pure modules. Every frame sent or
received is a recorder row.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from harness.audio import AudioLibrary, Utterance
from harness.clock import Clock
from harness.fakeserver.app import SESSION_KEY_HEADER
from harness.fakeserver.transcript import parse_transcript
from harness.outcomes import CloseCause, ClosedBy, ConnState, UtteranceStatus
from harness.pacing import steady_offsets
from harness.recorder import Recorder
from harness.scenario import Scenario
from harness.target import Target

__all__ = ["Worker", "WorkerSetup"]

COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
_SEND_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError)


@dataclass(slots=True)
class WorkerSetup:
    worker: int
    variant: str
    scenario: Scenario
    clock: Clock
    recorder: Recorder
    target: Target
    library: AudioLibrary
    stop: asyncio.Future  # resolved when the run ends; workers then close with 1000
    start_at: float = 0.0


@dataclass(slots=True)
class Conn:
    """Mutable facts about one connection attempt, filled by the sender and the reader."""

    attempt: int
    opened: float
    closed: asyncio.Future
    state: ConnState = ConnState.CONNECTING
    request_id: str | None = None
    session_id: str | None = None
    last_sent: float | None = None
    last_recv: float | None = None
    uncommitted_ms: float = 0.0
    audio_ms: float = 0.0
    completed: int = 0
    client_closing: bool = False
    closed_at: float | None = None  # when the close was seen (or begun, by us): the lifetime's end
    client_cause: CloseCause = CloseCause.SCENARIO_END
    close_frame: tuple[int, str] | None = None
    transport_error: str | None = None
    expired: bool = False
    updated: asyncio.Future | None = None
    committed: asyncio.Future | None = None
    results: dict[str, asyncio.Future] = field(default_factory=dict)


class Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        self.s = setup
        self.clock = setup.clock
        self.rng = np.random.default_rng([setup.scenario.run.seed, setup.worker])
        self.utterance_no = 0

    # recording ------------------------------------------------------------------------------
    def _row(self, conn: int, dir_: str, type_: str, t: float | None = None, **kw: Any) -> None:
        now = self.clock.now()
        wall = self.clock.wall()
        if t is not None:  # a moment observed earlier than this row is written
            wall -= (now - t) / self.clock.scale
            now = t
        self.s.recorder.row(wall, now, "client", self.s.variant, self.s.worker, conn, dir_,
                            type_, **kw)

    # waiting --------------------------------------------------------------------------------
    def stopping(self) -> bool:
        return self.s.stop.done()

    async def _wait(self, fut: asyncio.Future | None, until: float,
                    conn: Conn | None = None) -> str:
        """Wait for `fut` until scenario time `until`: 'done', 'closed', 'stopped' or 'timeout'."""
        waits: set[asyncio.Future] = {self.s.stop}
        if fut is not None:
            waits.add(fut)
        if conn is not None:
            waits.add(conn.closed)
        timeout = max(0.0, (until - self.clock.now()) / self.clock.scale)
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut is not None and fut.done():
            return "done"
        if conn is not None and conn.closed.done():
            return "closed"
        return "stopped" if self.stopping() else "timeout"

    # the worker's life ----------------------------------------------------------------------
    async def run(self, http: aiohttp.ClientSession) -> None:
        policy = self.s.scenario.reconnect
        await self._wait(None, self.s.start_at)
        attempt, failures = 0, 0
        while not self.stopping():
            attempt += 1
            opened = await self._connection(http, attempt)
            failures = 0 if opened else failures + 1
            if self.stopping():
                break
            delay = policy.delay(failures, self.rng)
            if delay is None:
                self._row(attempt, "meta", "worker_stopped",
                          detail={"reason": "reconnect policy gave up", "failures": failures})
                break
            await self._wait(None, self.clock.now() + delay)

    async def _connection(self, http: aiohttp.ClientSession, attempt: int) -> bool:
        loop = asyncio.get_running_loop()
        conn = Conn(attempt, self.clock.now(), loop.create_future())
        self._row(attempt, "meta", "conn_open")
        headers = dict(self.s.target.headers)
        headers[SESSION_KEY_HEADER] = f"{self.s.variant}/{self.s.worker}/{attempt}"
        scale = self.clock.scale
        timeouts = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=max(0.5, 10.0 / scale))
        try:
            ws = await http.ws_connect(
                self.s.target.url, headers=headers, max_msg_size=0, autoping=True,
                heartbeat=self.s.scenario.keepalive.heartbeat(scale), timeout=timeouts)
        except aiohttp.WSServerHandshakeError as exc:
            request_id = (exc.headers or {}).get("x-request-id") if exc.headers else None
            self._handshake_failed(conn, exc.status, f"HTTP {exc.status}", request_id)
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._handshake_failed(conn, None, type(exc).__name__, None)
            return False
        response = getattr(ws, "_response", None)
        if response is not None:
            conn.request_id = (response.headers.get("x-request-id")
                               or response.headers.get("apim-request-id"))
        latency = self.clock.now() - conn.opened
        self._row(attempt, "meta", "handshake", code=101, item=conn.request_id,
                  detail={"latency": latency})
        reader = asyncio.create_task(self._read(ws, conn))
        try:
            await self._converse(ws, conn)
        except _SEND_ERRORS as exc:
            conn.transport_error = conn.transport_error or type(exc).__name__
        finally:
            # Close from our side only if the socket still works; a failed send means the
            # transport is gone and the reader is about to report how.
            if conn.transport_error is None and not conn.closed.done() and not ws.closed:
                conn.client_closing = True
                conn.closed_at = self.clock.now()
                if not self.stopping():
                    conn.client_cause = CloseCause.PROTOCOL_ERROR
                try:
                    await ws.close(code=1000, message=conn.client_cause.encode())
                except _SEND_ERRORS:
                    pass
            await self._wait(conn.closed, self.clock.now() + 5.0 * self.clock.scale)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self._closed(conn, ws)
        return True

    def _handshake_failed(self, conn: Conn, status: int | None, reason: str,
                          request_id: str | None) -> None:
        self._row(conn.attempt, "meta", "handshake", code=status, item=request_id,
                  text=reason, detail={"latency": self.clock.now() - conn.opened})
        self._summary(conn, ClosedBy.NONE, CloseCause.HANDSHAKE_FAILED, status, reason)

    def _closed(self, conn: Conn, ws: aiohttp.ClientWebSocketResponse) -> None:
        if conn.client_closing:
            who, cause = ClosedBy.CLIENT, conn.client_cause
            code, reason = 1000, str(conn.client_cause)
        elif conn.close_frame is not None:
            who = ClosedBy.SERVER
            code, reason = conn.close_frame
            cause = CloseCause.EXPIRED if conn.expired else CloseCause.SERVER_CLOSE
        else:
            who, cause = ClosedBy.TRANSPORT, CloseCause.ABNORMAL
            code = ws.close_code if ws.close_code not in (None, 1000) else 1006
            reason = conn.transport_error or ""
        self._summary(conn, who, cause, code, reason)

    def _summary(self, conn: Conn, who: ClosedBy, cause: CloseCause, code: int | None,
                 reason: str) -> None:
        now = conn.closed_at if conn.closed_at is not None else self.clock.now()
        self._row(conn.attempt, "meta", "conn_close", t=now, code=code, item=conn.request_id,
                  text=reason, detail={
                      "closed_by": str(who), "cause": str(cause), "state": str(conn.state),
                      "opened": conn.opened,
                      "since_sent": None if conn.last_sent is None else now - conn.last_sent,
                      "since_recv": None if conn.last_recv is None else now - conn.last_recv,
                      "uncommitted_ms": conn.uncommitted_ms, "audio_ms": conn.audio_ms,
                      "completed": conn.completed, "session_id": conn.session_id})

    # receiving ------------------------------------------------------------------------------
    async def _read(self, ws: aiohttp.ClientWebSocketResponse, conn: Conn) -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    conn.last_recv = self.clock.now()
                    self._row(conn.attempt, "recv", "binary", bytes_=len(msg.data))
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    if not conn.client_closing:
                        conn.close_frame = (msg.data, msg.extra or "")
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    conn.transport_error = type(msg.data).__name__
                    break
                else:  # CLOSING / CLOSED
                    break
        finally:
            if conn.closed_at is None:
                conn.closed_at = self.clock.now()
            if not conn.closed.done():
                conn.closed.set_result(None)

    def _on_text(self, conn: Conn, data: str) -> None:
        conn.last_recv = self.clock.now()
        try:
            event = json.loads(data)
            type_ = event.get("type") if isinstance(event, dict) else None
        except ValueError:
            event, type_ = None, None
        if not isinstance(type_, str):
            self._row(conn.attempt, "recv", "unparseable", bytes_=len(data))
            return
        item = event.get("item_id")
        text = None
        if type_ == COMPLETED:
            text = event.get("transcript")
            self._resolve(conn, item, ("completed", text))
        elif type_ == FAILED:
            error = event.get("error") or {}
            text = error.get("code") or error.get("message")
            self._resolve(conn, item, ("failed", text))
        elif type_ == "input_audio_buffer.committed":
            if conn.committed is not None and not conn.committed.done():
                conn.committed.set_result(item)
        elif type_ == "error":
            error = event.get("error") or {}
            text = error.get("code") or error.get("message")
            if text == "session_expired":
                conn.expired = True
            elif conn.committed is not None and not conn.committed.done():
                conn.committed.set_result(None)  # the commit was refused
        elif type_ in ("session.created", "session.updated"):
            session = event.get("session") or {}
            conn.session_id = session.get("id") or conn.session_id
            if type_ == "session.updated" and conn.updated and not conn.updated.done():
                conn.updated.set_result(True)
        self._row(conn.attempt, "recv", type_, bytes_=len(data), item=item, text=text)

    @staticmethod
    def _resolve(conn: Conn, item: Any, result: tuple[str, Any]) -> None:
        if not isinstance(item, str):
            return
        fut = conn.results.get(item)
        if fut is None:
            fut = conn.results[item] = asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(result)

    # sending --------------------------------------------------------------------------------
    async def _send(self, ws: aiohttp.ClientWebSocketResponse, conn: Conn, event: dict) -> None:
        text = json.dumps(event)
        await ws.send_str(text)
        conn.last_sent = self.clock.now()
        self._row(conn.attempt, "send", event["type"], bytes_=len(text))

    async def _converse(self, ws: aiohttp.ClientWebSocketResponse, conn: Conn) -> None:
        scenario = self.s.scenario
        loop = asyncio.get_running_loop()
        conn.state = ConnState.CONFIGURING
        conn.updated = loop.create_future()
        await self._send(ws, conn, scenario.protocol.session_update())
        if await self._wait(conn.updated, self.clock.now() + scenario.turns.transcript_timeout,
                            conn) != "done":
            return
        conn.state = ConnState.IDLE
        while not self.stopping() and not conn.closed.done():
            await self._utterance(ws, conn, self.s.library.pick(self.rng))
            if conn.closed.done() or self.stopping():
                return
            conn.state = ConnState.IDLE
            outcome = await self._wait(None, self.clock.now() + scenario.turns.gap, conn)
            if outcome != "timeout":
                return

    async def _utterance(self, ws: aiohttp.ClientWebSocketResponse, conn: Conn,
                         utt: Utterance) -> None:
        self.utterance_no += 1
        key = f"{self.s.variant}/{self.s.worker}/{self.utterance_no}"
        self._row(conn.attempt, "meta", "utt_start", item=key, audio_ms=utt.seconds * 1000,
                  detail={"name": utt.name, "crc32": utt.crc32, "bytes": len(utt.pcm)})
        try:
            await self._utterance_turn(ws, conn, utt, key)
        except _SEND_ERRORS:
            self._utterance_end(conn, key, UtteranceStatus.LOST)
            raise

    async def _utterance_turn(self, ws: aiohttp.ClientWebSocketResponse, conn: Conn,
                              utt: Utterance, key: str) -> None:
        scenario, clock = self.s.scenario, self.clock
        conn.state = ConnState.STREAMING
        await self._send(ws, conn, {"type": "input_audio_buffer.clear"})
        conn.uncommitted_ms = 0.0
        chunk_ms = scenario.pacing.chunk_ms
        frames = utt.frames(chunk_ms)
        start = clock.now()
        scale = clock.scale
        row = self.s.recorder.row
        for frame, offset in zip(frames, steady_offsets(len(frames), chunk_ms,
                                                        scenario.pacing.speed), strict=True):
            if conn.closed.done() or self.stopping():
                return self._utterance_end(conn, key, UtteranceStatus.LOST)
            due = start + offset
            if clock.now() < due:
                await clock.sleep_until(due)
            sent = clock.now()
            await ws.send_str(frame.json)
            audio_ms = frame.audio_bytes / 48.0
            conn.last_sent = sent
            conn.uncommitted_ms += audio_ms
            conn.audio_ms += audio_ms
            row(clock.wall(), sent, "client", self.s.variant, self.s.worker, conn.attempt, "send",
                "input_audio_buffer.append", len(frame.json), audio_ms,
                (sent - due) * 1000.0 / scale)
        conn.committed = asyncio.get_running_loop().create_future()
        await self._send(ws, conn, {"type": "input_audio_buffer.commit"})
        committed_at = clock.now()
        conn.state = ConnState.AWAITING
        deadline = committed_at + scenario.turns.transcript_timeout
        outcome = await self._wait(conn.committed, deadline, conn)
        if outcome != "done":
            return self._utterance_end(conn, key, self._interrupted(outcome))
        item_id = conn.committed.result()
        conn.uncommitted_ms = 0.0
        if item_id is None:
            return self._utterance_end(conn, key, UtteranceStatus.REJECTED)
        fut = conn.results.get(item_id)
        if fut is None:
            fut = conn.results[item_id] = asyncio.get_running_loop().create_future()
        outcome = await self._wait(fut, deadline, conn)
        if outcome != "done":
            return self._utterance_end(conn, key, self._interrupted(outcome), item_id)
        kind, text = conn.results.pop(item_id).result()
        if kind == "failed":
            return self._utterance_end(conn, key, UtteranceStatus.FAILED, item_id, text)
        mark = parse_transcript(text)
        ok = mark is None or mark.crc32 == utt.crc32
        if ok:
            conn.completed += 1
        status = UtteranceStatus.COMPLETED if ok else UtteranceStatus.MISMATCH
        self._utterance_end(conn, key, status, item_id, text,
                            latency=clock.now() - committed_at)

    @staticmethod
    def _interrupted(outcome: str) -> UtteranceStatus:
        return {"closed": UtteranceStatus.LOST, "stopped": UtteranceStatus.UNFINISHED}.get(
            outcome, UtteranceStatus.TIMEOUT)

    def _utterance_end(self, conn: Conn, key: str, status: UtteranceStatus,
                       item_id: str | None = None, transcript: str | None = None,
                       latency: float | None = None) -> None:
        if status is UtteranceStatus.LOST and self.stopping():
            status = UtteranceStatus.UNFINISHED
        self._row(conn.attempt, "meta", "utt_end", item=key, text=str(status),
                  detail={"item_id": item_id, "transcript": transcript, "latency": latency,
                          "uncommitted_ms": conn.uncommitted_ms})
