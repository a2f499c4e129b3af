"""One simulated caller: connect, configure, then utterance after utterance (clear -> paced
appends -> commit -> await the transcript, or server-VAD turns); on a drop, classify it and
reconnect as the scenario's ReconnectPolicy says; rotate proactively; replay lost utterances.

This is the client's I/O edge. aiohttp errors are mapped here, once, into a close
classification; pacing and reconnect decisions come from the pure modules. Every frame sent or
received is a recorder row.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from time import monotonic
from time import time as wall_time
from typing import Any

import aiohttp
import numpy as np
from yarl import URL

from harness.config.audio import AudioLibrary, Frame, Utterance, noise, to_pcm16
from harness.config.scenario import Scenario
from harness.config.target import Target
from harness.core import wire
from harness.core.outcomes import CloseCause, ClosedBy, ConnState, UtteranceStatus
from harness.core.pacing import schedule, steady_offsets
from harness.core.protocol import (
    BETA_HEADER,
    COMPLETED,
    CREATED,
    FAILED,
    UPDATED,
    error_text,
    text_field,
)
from harness.core.transcript import parse_transcript
from harness.edge.clock import Clock, deadline_waker
from harness.edge.server import SESSION_KEY_HEADER
from harness.log.recorder import Recorder, pack_append

__all__ = ["Worker", "WorkerSetup"]

TEXT = aiohttp.WSMsgType.TEXT
_SEND_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError)
_CLEAR = json.dumps({"type": "input_audio_buffer.clear"})  # pre-encoded: sent every utterance
_COMMIT = json.dumps({"type": "input_audio_buffer.commit"})
_NOISE_POOL = 50  # distinct pre-encoded noise frames, cycled
# Scenario seconds a handshake may take: the `websockets` library's open_timeout, which the
# official SDK uses. Without it aiohttp waits 300 s on a server that accepts and never answers.
HANDSHAKE_TIMEOUT = 10.0
# The largest inbound message a worker reads. The largest legitimate server event, a session
# or transcript event, is a few KB; 16 MiB is far above anything plausible, and bounds what a
# server can make a worker hold (unbounded, endless continuation frames took one to 3 GB in 4 s).
MAX_MESSAGE_BYTES = 16 * 2**20


class _Redirected(Exception):
    """A handshake answered 3xx. Never followed: the request carries the target's key (in
    `api-key` or a custom header, which aiohttp keeps across origins) and may go from wss:// to
    http://. Only the status and the Location's host are kept: a query may hold a key."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(status)
        self.status = status
        try:
            url = URL(location or "")
            host = url.host and (f"{url.host}:{url.port}" if url.explicit_port else url.host)
        except ValueError:
            host = None
        self.host = host or "(no host)"


async def _refuse_redirect(_session: Any, _ctx: Any, params: Any) -> None:
    raise _Redirected(params.response.status, params.response.headers.get("Location"))


def _retry_after(value: str | None, scale: float) -> float | None:
    """Scenario seconds a refused handshake's Retry-After asks for, or None (absent, unreadable).
    Delay-seconds are scenario seconds (the fake server lives in scenario time; a real endpoint
    runs at 1x); an HTTP date is taken against the wall clock."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value).timestamp() - wall_time()) * scale
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


_NO_REDIRECTS = aiohttp.TraceConfig()
_NO_REDIRECTS.on_request_redirect.append(_refuse_redirect)
_NO_REDIRECTS.freeze()


@dataclass(slots=True)
class Progress:
    """Counters the workers bump and the runner prints; never read by the workers."""

    open: int = 0
    drops: int = 0
    completed: int = 0
    lost: int = 0


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
    budget: Any = None  # AudioBudget against a paid endpoint: spent, it ends the run
    progress: Progress = field(default_factory=Progress)


@dataclass(slots=True)
class Conn:
    """Mutable facts about one connection attempt, filled by the sender and the reader."""

    attempt: int
    opened: float
    closed: asyncio.Future
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task | None = None
    established: float | None = None
    handshake_status: int | None = None
    rotate_at: float | None = None
    rotation_failures: int = 0  # make-before-break attempts refused so far, for this rotation
    make_first: bool = True  # False once the policy gave up making its successor first
    retry_after: float | None = None  # what a refused handshake's Retry-After asked for
    state: ConnState = ConnState.CONNECTING
    request_id: str | None = None
    session_id: str | None = None
    last_sent: float | None = None
    last_recv: float | None = None
    uncommitted_ms: float = 0.0
    audio_ms: float = 0.0
    completed: int = 0
    client_closing: bool = False
    client_cause: CloseCause = CloseCause.SCENARIO_END
    closed_at: float | None = None  # when the close was seen (or begun, by us): the lifetime's end
    close_code: int | None = None
    close_frame: tuple[int, str] | None = None
    transport_error: str | None = None
    too_big: bool = False  # a message over MAX_MESSAGE_BYTES: we closed with 1009
    expired: bool = False
    summarized: bool = False
    updated: asyncio.Future | None = None
    committed: asyncio.Future | None = None
    results: dict[str, asyncio.Future] = field(default_factory=dict)
    vad_results: asyncio.Queue | None = None
    appends: tuple[Callable[[bytes], None], int] | None = None  # Recorder.appends


class Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        self.s = setup
        self.sc = setup.scenario
        self.clock = setup.clock
        self.rng = np.random.default_rng([self.sc.run.seed, setup.worker])
        self.policy_rng = np.random.default_rng([self.sc.run.seed, setup.worker, 1])
        self.attempt = 0
        self.utterance_no = 0
        self.next_utterance = 0
        self.replay: tuple[str, Utterance, int] | None = None
        self._silence = self._silence_frames()
        self._silence_i = 0
        self._paused: dict[str, Utterance] = {}
        self._stopped: asyncio.Future | None = None  # this worker's view of setup.stop

    # recording ------------------------------------------------------------------------------
    def _row(self, conn: int, dir_: str, type_: str, t: float | None = None, **kw: Any) -> None:
        now = self.clock.now()
        wall = self.clock.wall()
        if t is not None:  # a moment observed earlier than this row is written
            wall -= (now - t) / self.clock.scale
            now = t
        self.s.recorder.row(
            wall, now, "client", self.s.variant, self.s.worker, conn, dir_, type_, **kw
        )

    # waiting --------------------------------------------------------------------------------
    def stopping(self) -> bool:
        return self.s.stop.done()

    async def _wait(
        self, fut: asyncio.Future | None, until: float, conn: Conn | None = None
    ) -> str:
        """Wait for `fut` until scenario time `until`: 'done', 'closed', 'stopped' or 'timeout'."""
        waits: set[asyncio.Future] = {self._stopped or self.s.stop}
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
        # Every wait also waits for the run's stop. With one shared future each wait would add
        # and remove a callback among every worker's (a scan of hundreds per wait); a future
        # of our own that the shared one resolves once keeps a wait's cost flat.
        self._stopped = stopped = asyncio.get_running_loop().create_future()
        self.s.stop.add_done_callback(lambda _: stopped.done() or stopped.set_result(None))
        # Handshakes go through a session of our own over the caller's connection pool, traced
        # so that a redirect raises before it is followed (ws_connect has no allow_redirects).
        own = aiohttp.ClientSession(
            connector=http.connector, connector_owner=False, trace_configs=[_NO_REDIRECTS]
        )
        try:
            await self._live(own)
        finally:
            await own.close()
            self._end_pending_replay()

    def _end_pending_replay(self) -> None:
        """A replay the run's end cut off is unfinished, not lost: its attempt is recorded as
        such. (When the reconnect policy gave up instead, the loss is real and stays.)"""
        if self.replay is None or not self.stopping():
            return
        key, utt, attempt = self.replay
        self.replay = None
        self._utt_start(self.attempt, key, utt, attempt)
        self._row(
            self.attempt,
            "meta",
            "utt_end",
            item=key,
            text=str(UtteranceStatus.UNFINISHED),
            detail={
                "item_id": None,
                "transcript": None,
                "latency": None,
                "committed": None,
                "uncommitted_ms": 0.0,
            },
        )

    async def _live(self, http: aiohttp.ClientSession) -> None:
        policy = self.sc.reconnect
        await self._wait(None, self.s.start_at)
        failures = 0
        conn: Conn | None = None
        while not self.stopping():
            if conn is None:
                conn = await self._open(http, configure=self.attempt == 0 or policy.reconfigures)
            if conn.ws is not None and not conn.closed.done():
                outcome = await self._talk(conn)
                if outcome == "stopped":
                    await self._close(conn, CloseCause.SCENARIO_END)
                    return
                if outcome == "rotate":
                    conn = await self._rotate(http, conn)
                    continue
            await self._finish(conn)  # it failed to open, or the server or transport ended it
            if self.stopping():
                return
            lived = (conn.closed_at or 0.0) - (conn.established or conn.opened)
            healthy = conn.established is not None and lived >= policy.healthy_after
            failures = 0 if healthy else failures + 1
            delay = policy.after_close(
                conn.close_code,
                conn.handshake_status,
                0 if healthy else failures,
                self.policy_rng,
                conn.retry_after,
            )
            if delay is None:
                self._row(
                    conn.attempt,
                    "meta",
                    "worker_stopped",
                    code=conn.close_code,
                    detail={
                        "reason": "reconnect policy stops here",
                        "failures": failures,
                        "status": conn.handshake_status,
                    },
                )
                return
            conn = None
            await self._wait(None, self.clock.now() + delay)

    async def _open(self, http: aiohttp.ClientSession, configure: bool) -> Conn:
        """Connect and configure; the Conn returned is open, or closed with its reason."""
        self.attempt += 1
        loop = asyncio.get_running_loop()
        conn = Conn(self.attempt, self.clock.now(), loop.create_future())
        self._row(conn.attempt, "meta", "conn_open")
        headers = dict(self.s.target.headers)
        headers[SESSION_KEY_HEADER] = f"{self.s.variant}/{self.s.worker}/{conn.attempt}"
        if self.sc.protocol.dialect == "beta":
            headers[BETA_HEADER[0]] = BETA_HEADER[1]
        scale = self.clock.scale
        timeouts = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=max(0.5, 10.0 / scale))
        try:
            async with asyncio.timeout(max(0.5, HANDSHAKE_TIMEOUT / scale)):
                ws = await http.ws_connect(
                    self.s.target.url,
                    headers=headers,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    autoping=True,
                    heartbeat=self.sc.keepalive.heartbeat(scale),
                    timeout=timeouts,
                )
        except aiohttp.WSServerHandshakeError as exc:
            headers_in = exc.headers or {}
            request_id = headers_in.get("x-request-id") or headers_in.get("apim-request-id")
            conn.retry_after = _retry_after(headers_in.get("Retry-After"), scale)
            reason = f"HTTP {exc.status}"
            if conn.retry_after is not None:
                reason += f" (Retry-After {conn.retry_after:g} s)"
            self._handshake_failed(conn, exc.status, reason, request_id)
            return conn
        except _Redirected as exc:
            reason = f"HTTP {exc.status} redirect to {exc.host}, not followed"
            self._handshake_failed(conn, exc.status, reason, None)
            return conn
        except TimeoutError:
            reason = f"no handshake answer within {HANDSHAKE_TIMEOUT:g} s"
            self._handshake_failed(conn, None, reason, None)
            return conn
        except (aiohttp.ClientError, OSError) as exc:
            self._handshake_failed(conn, None, type(exc).__name__, None)
            return conn
        response = getattr(ws, "_response", None)
        if response is not None:
            conn.request_id = response.headers.get("x-request-id") or response.headers.get(
                "apim-request-id"
            )
        conn.ws, conn.established, conn.handshake_status = ws, self.clock.now(), 101
        self.s.progress.open += 1
        self._row(
            conn.attempt,
            "meta",
            "handshake",
            code=101,
            item=conn.request_id,
            detail={"latency": conn.established - conn.opened},
        )
        if self.sc.turns.mode == "server_vad":
            conn.vad_results = asyncio.Queue()
        conn.reader = loop.create_task(self._read(conn))
        rotate_age = self.sc.reconnect.rotation_age(self.policy_rng)
        if rotate_age is not None:
            conn.rotate_at = conn.established + rotate_age
        if configure:
            conn.state = ConnState.CONFIGURING
            conn.updated = loop.create_future()
            try:
                await self._send(conn, self.sc.session_update())
            except _SEND_ERRORS as exc:
                conn.transport_error = type(exc).__name__
                return conn
            until = self.clock.now() + self.sc.turns.transcript_timeout
            if await self._wait(conn.updated, until, conn) == "timeout":
                await self._close(conn, CloseCause.PROTOCOL_ERROR)
                return conn
        conn.state = ConnState.IDLE
        return conn

    async def _rotate(self, http: aiohttp.ClientSession, old: Conn) -> Conn | None:
        """Planned rotation: the new connection first (make-before-break) or after. A new one
        that fails is retried as the reconnect policy says (max_attempts, backoff, Retry-After);
        when the policy gives up, the old one is closed first after all (break-before-make),
        once the last Retry-After has passed, so the rotation still happens and a capped
        server is not hammered."""
        policy = self.sc.reconnect
        if policy.make_before_break and old.make_first:
            new = await self._open(http, configure=True)
            if new.ws is not None and not new.closed.done():
                await self._close(old, CloseCause.PROACTIVE)
                return new
            await self._finish(new)
            old.rotation_failures += 1
            delay = policy.after_close(
                new.close_code,
                new.handshake_status,
                old.rotation_failures,
                self.policy_rng,
                new.retry_after,
            )
            if delay is None:
                old.make_first, delay = False, new.retry_after or 0.0
            old.rotate_at = self.clock.now() + delay
            return old
        await self._close(old, CloseCause.PROACTIVE)
        return None

    async def _close(self, conn: Conn, cause: CloseCause) -> None:
        """Close from our side (1000), if the socket still works, and record the connection."""
        ws = conn.ws
        if (
            ws is not None
            and conn.transport_error is None
            and not conn.closed.done()
            and not ws.closed
        ):
            conn.client_closing, conn.client_cause = True, cause
            conn.closed_at = self.clock.now()
            try:
                await ws.close(code=1000, message=str(cause).encode())
            except _SEND_ERRORS:
                pass
        await self._finish(conn)

    async def _finish(self, conn: Conn) -> None:
        """Wait (bounded) for the reader to report how the connection ended; record it once."""
        if conn.summarized:
            return
        if conn.ws is not None:
            await self._wait(conn.closed, self.clock.now() + 5.0 * self.clock.scale)
            if conn.reader is not None:
                conn.reader.cancel()
                await asyncio.gather(conn.reader, return_exceptions=True)
            self._classify(conn)

    def _handshake_failed(
        self, conn: Conn, status: int | None, reason: str, request_id: str | None
    ) -> None:
        conn.handshake_status, conn.request_id = status, request_id
        conn.closed_at = self.clock.now()
        self._row(
            conn.attempt,
            "meta",
            "handshake",
            code=status,
            item=request_id,
            text=reason,
            detail={"latency": conn.closed_at - conn.opened},
        )
        self._summary(conn, ClosedBy.NONE, CloseCause.HANDSHAKE_FAILED, status, reason)
        conn.closed.set_result(None)

    def _classify(self, conn: Conn) -> None:
        if conn.client_closing:
            who, cause = ClosedBy.CLIENT, conn.client_cause
            code, reason = 1000, str(conn.client_cause)
        elif conn.too_big:  # we closed it, for the server's fault: a drop, not censored
            who, cause, code = ClosedBy.CLIENT, CloseCause.PROTOCOL_ERROR, 1009
            reason = f"message too big: over MAX_MESSAGE_BYTES ({MAX_MESSAGE_BYTES} bytes)"
        elif conn.close_frame is not None:
            who = ClosedBy.SERVER
            code, reason = conn.close_frame
            cause = CloseCause.EXPIRED if conn.expired else CloseCause.SERVER_CLOSE
        else:
            who, cause = ClosedBy.TRANSPORT, CloseCause.ABNORMAL
            ws_code = conn.ws.close_code if conn.ws is not None else None
            code = ws_code if ws_code not in (None, 1000) else 1006
            reason = conn.transport_error or ""
        conn.close_code = code
        self.s.progress.open -= 1
        self.s.progress.drops += who is not ClosedBy.CLIENT
        self._summary(conn, who, cause, code, reason)

    def _summary(
        self, conn: Conn, who: ClosedBy, cause: CloseCause, code: int | None, reason: str
    ) -> None:
        conn.summarized = True
        now = conn.closed_at if conn.closed_at is not None else self.clock.now()
        self._row(
            conn.attempt,
            "meta",
            "conn_close",
            t=now,
            code=code,
            item=conn.request_id,
            text=reason,
            detail={
                "closed_by": str(who),
                "cause": str(cause),
                "state": str(conn.state),
                "since_sent": None if conn.last_sent is None else now - conn.last_sent,
                "since_recv": None if conn.last_recv is None else now - conn.last_recv,
                "uncommitted_ms": conn.uncommitted_ms,
                "audio_ms": conn.audio_ms,
                "completed": conn.completed,
                "session_id": conn.session_id,
            },
        )

    # receiving ------------------------------------------------------------------------------
    async def _read(self, conn: Conn) -> None:
        ws = conn.ws
        assert ws is not None
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        self._on_text(conn, msg.data)
                    except Exception as exc:  # one frame we cannot handle costs only itself
                        self._row(
                            conn.attempt,
                            "recv",
                            "unhandled",
                            bytes_=len(msg.data),
                            text=type(exc).__name__,
                        )
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    conn.last_recv = self.clock.now()
                    self._row(conn.attempt, "recv", "binary", bytes_=len(msg.data))
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    if not conn.client_closing:
                        conn.close_frame = (msg.data, msg.extra or "")
                elif msg.type is aiohttp.WSMsgType.ERROR:  # aiohttp has closed the socket
                    conn.transport_error = type(msg.data).__name__
                    conn.too_big = getattr(msg.data, "code", None) == 1009
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
            event = wire.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            self._row(
                conn.attempt, "recv", "unparseable", bytes_=len(data), text=type(exc).__name__
            )
            return
        type_ = event.get("type") if isinstance(event, dict) else None
        if not isinstance(type_, str):
            self._row(conn.attempt, "recv", "unparseable", bytes_=len(data), text="no string type")
            return
        # peers may send anything: only strings of the expected fields are believed or logged
        item = text_field(event.get("item_id"))
        text = None
        if type_ == COMPLETED:
            text = text_field(event.get("transcript"))
            self._resolve(conn, item, ("completed", text))
        elif type_ == FAILED:
            text = error_text(event)
            self._resolve(conn, item, ("failed", text))
        elif type_ == "input_audio_buffer.committed":
            if conn.committed is not None and not conn.committed.done():
                conn.committed.set_result(item)
        elif type_ == "error":
            text = error_text(event)
            if text == "session_expired":
                conn.expired = True
            elif conn.committed is not None and not conn.committed.done():
                conn.committed.set_result(None)  # the commit was refused
        elif type_ in CREATED or type_ in UPDATED:
            session = event.get("session")
            if isinstance(session, dict):
                conn.session_id = text_field(session.get("id")) or conn.session_id
            if type_ in UPDATED and conn.updated and not conn.updated.done():
                conn.updated.set_result(True)
        self._row(conn.attempt, "recv", type_, bytes_=len(data), item=item, text=text)

    @staticmethod
    def _resolve(conn: Conn, item: Any, result: tuple[str, Any]) -> None:
        if not isinstance(item, str):
            return
        if conn.vad_results is not None:
            conn.vad_results.put_nowait((item, *result))
            return
        fut = conn.results.get(item)
        if fut is None:
            fut = conn.results[item] = asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(result)

    # sending --------------------------------------------------------------------------------
    async def _send(self, conn: Conn, event: dict) -> None:
        await self._send_text(conn, event["type"], json.dumps(event))

    async def _send_text(self, conn: Conn, type_: str, text: str) -> None:
        assert conn.ws is not None
        await conn.ws.send_str(text)
        conn.last_sent = self.clock.now()
        self._row(conn.attempt, "send", type_, t=conn.last_sent, bytes_=len(text))

    def _stream(
        self, conn: Conn, frames: Sequence[Frame], offsets: Sequence[float]
    ) -> asyncio.Task[bool]:
        """Send frames on absolute deadlines, in a task of its own: each frame's wake-up then
        resumes this loop alone, not the worker's whole chain of calls above it (run, _live,
        _talk, the turn, the utterance): 38 -> 35 µs of client CPU a frame at 500 sockets
        (bench/RESULTS.md). True unless the connection closed or the run stopped."""
        return asyncio.get_running_loop().create_task(self._send_frames(conn, frames, offsets))

    async def _send_frames(
        self, conn: Conn, frames: Sequence[Frame], offsets: Sequence[float]
    ) -> bool:
        """The per-frame hot path: keep it lean. It works in monotonic seconds and sleeps on
        the shared timer directly, which takes six Python calls a frame out of the clock's
        methods (bench/RESULTS.md)."""
        ws, clock = conn.ws, self.clock
        assert ws is not None
        send, wait_until = ws.send_frame, deadline_waker().wait_until
        origin, scale = clock.origin, clock.scale
        if conn.appends is None:
            conn.appends = self.s.recorder.appends(self.s.variant, self.s.worker, conn.attempt)
        (record, stream), pack = conn.appends, pack_append
        closed, stop = conn.closed, self.s.stop
        start = monotonic()
        for frame, offset in zip(frames, offsets, strict=True):
            if closed.done() or stop.done():
                return False
            due = start + offset / scale
            now = monotonic()
            if now < due:
                await wait_until(due)
                now = monotonic()
            await send(frame.json, TEXT)
            sent = (now - origin) * scale
            audio_ms = frame.audio_bytes / 48.0
            conn.last_sent = sent
            conn.uncommitted_ms += audio_ms
            conn.audio_ms += audio_ms
            record(pack(wall_time(), sent, len(frame.json), audio_ms, (now - due) * 1e3, stream))
        return True

    # conversation ---------------------------------------------------------------------------
    async def _talk(self, conn: Conn) -> str:
        """Utterances until the connection closes ('closed'), the run ends ('stopped') or a
        planned rotation is due ('rotate')."""
        try:
            while True:
                if self.stopping():
                    return "stopped"
                if conn.closed.done():
                    return "closed"
                if conn.rotate_at is not None and self.clock.now() >= conn.rotate_at:
                    return "rotate"
                if self.sc.turns.mode == "server_vad":
                    await self._vad_turn(conn)
                else:
                    await self._client_turn(conn)
        except _SEND_ERRORS as exc:
            conn.transport_error = conn.transport_error or type(exc).__name__
            return "closed"

    def _afford(self, ms: float) -> bool:
        """Spend audio from the run's budget; when it runs out, end the run."""
        if self.s.budget is None or self.s.budget.take(ms):
            return True
        if not self.s.stop.done():
            self.s.stop.set_result("audio budget spent")
        return False

    def _next(self) -> tuple[str, Utterance, int]:
        """The next utterance: one a drop interrupted (when replaying), else a new one."""
        if self.replay is not None:
            replay, self.replay = self.replay, None
            return replay
        self.utterance_no += 1
        utterances = self.s.library.utterances
        if self.sc.audio.selection == "sequential":
            utt = utterances[self.next_utterance % len(utterances)]
            self.next_utterance += 1
        else:
            utt = self.s.library.pick(self.rng)
        return f"{self.s.variant}/{self.s.worker}/{self.utterance_no}", self._with_pause(utt), 1

    def _utt_start(self, conn: int, key: str, utt: Utterance, attempt: int) -> None:
        self._row(
            conn,
            "meta",
            "utt_start",
            item=key,
            audio_ms=utt.seconds * 1000,
            detail={
                "name": utt.name,
                "crc32": utt.crc32,
                "bytes": len(utt.pcm),
                "attempt": attempt,
            },
        )

    async def _client_turn(self, conn: Conn) -> None:
        key, utt, attempt = self._next()
        if not self._afford(utt.seconds * 1000):
            return
        self._utt_start(conn.attempt, key, utt, attempt)
        status = UtteranceStatus.LOST
        try:
            status = await self._utterance(conn, utt, key)
        except _SEND_ERRORS:
            self._utterance_end(conn, key, status)
            raise
        finally:
            policy = self.sc.reconnect
            if (
                policy.replays
                and attempt < policy.max_attempts
                and status in (UtteranceStatus.LOST, UtteranceStatus.TIMEOUT)
                and not self.stopping()
            ):
                self.replay = (key, utt, attempt + 1)
        if attempt > 1 and status is UtteranceStatus.COMPLETED:
            status = UtteranceStatus.RETRIED_OK
        self._utterance_end(conn, key, status, *self._last_result)
        if not conn.closed.done() and not self.stopping():
            await self._gap(conn)

    async def _utterance(self, conn: Conn, utt: Utterance, key: str) -> UtteranceStatus:
        """clear -> appends -> commit -> transcript; the status, with details kept aside."""
        sc, clock = self.sc, self.clock
        self._last_result: tuple = ()
        conn.state = ConnState.STREAMING
        await self._send_text(conn, "input_audio_buffer.clear", _CLEAR)
        conn.uncommitted_ms = 0.0
        frames = utt.frames(sc.pacing.chunk_ms)
        pause_at = len(frames) // 2 if sc.silence.fill == "idle" and sc.silence.pause else None
        offsets = schedule(len(frames), sc.pacing, self.rng, pause_at, sc.silence.pause)
        if not await self._stream(conn, frames, offsets):
            return self._interrupted("closed" if conn.closed.done() else "stopped")
        conn.committed = asyncio.get_running_loop().create_future()
        await self._send_text(conn, "input_audio_buffer.commit", _COMMIT)
        committed_at = conn.last_sent  # the commit row's own time
        conn.state = ConnState.AWAITING
        deadline = committed_at + sc.turns.transcript_timeout
        outcome = await self._wait(conn.committed, deadline, conn)
        if outcome != "done":
            return self._interrupted(outcome)
        item_id = conn.committed.result()
        conn.uncommitted_ms = 0.0
        if item_id is None:
            return UtteranceStatus.REJECTED
        fut = conn.results.get(item_id)
        if fut is None:
            fut = conn.results[item_id] = asyncio.get_running_loop().create_future()
        outcome = await self._wait(fut, deadline, conn)
        if outcome != "done":
            self._last_result = (item_id, None, None, committed_at)
            return self._interrupted(outcome)
        kind, text = conn.results.pop(item_id).result()
        ended = clock.now()
        self._last_result = (item_id, text, ended - committed_at, committed_at, ended)
        if kind == "failed":
            return UtteranceStatus.FAILED
        mark = parse_transcript(text)
        if mark is not None and mark.crc32 != utt.crc32:
            return UtteranceStatus.MISMATCH
        conn.completed += 1
        return UtteranceStatus.COMPLETED

    async def _vad_turn(self, conn: Conn) -> None:
        """Server VAD: stream the utterance and then silence (so the server hears its end);
        never clear or commit; take the next transcript the server produces."""
        key, utt, attempt = self._next()
        if not self._afford(utt.seconds * 1000 + max(self.sc.silence.gap, 1.0) * 1000):
            return
        self._utt_start(conn.attempt, key, utt, attempt)
        self._last_result = ()
        conn.state = ConnState.STREAMING
        frames = utt.frames(self.sc.pacing.chunk_ms)
        sent = await self._stream(conn, frames, schedule(len(frames), self.sc.pacing, self.rng))
        started = self.clock.now()
        if sent:
            await self._gap(conn, at_least=1.0)
        status = self._interrupted("closed" if conn.closed.done() else "stopped")
        if sent and not conn.closed.done() and not self.stopping():
            conn.state = ConnState.AWAITING
            assert conn.vad_results is not None
            getter = asyncio.ensure_future(conn.vad_results.get())
            outcome = await self._wait(getter, started + self.sc.turns.transcript_timeout, conn)
            if outcome == "done":
                item_id, kind, text = getter.result()
                conn.uncommitted_ms = 0.0
                ended = self.clock.now()
                self._last_result = (item_id, text, ended - started, None, ended)
                status = UtteranceStatus.FAILED if kind == "failed" else UtteranceStatus.COMPLETED
                conn.completed += status is UtteranceStatus.COMPLETED
            else:
                getter.cancel()
                status = self._interrupted(outcome)
        self._utterance_end(conn, key, status, *self._last_result)

    async def _gap(self, conn: Conn, at_least: float = 0.0) -> None:
        """Between utterances: idle, or streamed silence that stays uncommitted until the next
        clear (server VAD needs streamed silence to hear an utterance end)."""
        silence = self.sc.silence
        gap = silence.gap
        if silence.gap_max > gap:
            gap = float(self.rng.uniform(gap, silence.gap_max))
        gap = max(gap, at_least)
        conn.state = ConnState.IDLE
        if self.sc.silence.fill == "idle" and not at_least:
            if gap > 0:
                await self._wait(None, self.clock.now() + gap, conn)
            return
        if not at_least and not self._afford(gap * 1000):  # server-VAD turns paid ahead
            return
        chunk_ms = self.sc.pacing.chunk_ms
        count = max(1, round(gap * 1000 / chunk_ms))
        frames = [self._silence[(self._silence_i + i) % len(self._silence)] for i in range(count)]
        self._silence_i += count
        await self._stream(conn, frames, steady_offsets(count, chunk_ms))

    # audio as sent ---------------------------------------------------------------------------
    def _silence_frames(self) -> list[Frame]:
        """Pre-encoded streamed-silence frames: digital zero, or a pool of noise frames."""
        chunk_s = self.sc.pacing.chunk_ms / 1000.0
        fill = self.sc.silence.fill
        if fill != "noise":
            return list(
                Utterance("silence", bytes(int(chunk_s * 48000) // 2 * 2)).frames(
                    self.sc.pacing.chunk_ms
                )
            )
        rng = np.random.default_rng([self.sc.run.seed, self.s.worker, 2])
        pcm = to_pcm16(noise(chunk_s * _NOISE_POOL, self.sc.silence.noise_dbfs, rng), 24000)
        return list(Utterance("noise", pcm).frames(self.sc.pacing.chunk_ms))

    def _with_pause(self, utt: Utterance) -> Utterance:
        """The utterance as sent when a streamed pause splits it (idle pauses are a gap in the
        schedule instead, and leave the audio as it is)."""
        silence = self.sc.silence
        if not silence.pause or silence.fill == "idle":
            return utt
        cached = self._paused.get(utt.name)
        if cached is None:
            half = len(utt.pcm) // 4 * 2
            if silence.fill == "zeros":
                gap = bytes(int(silence.pause * 24000) * 2)
            else:
                rng = np.random.default_rng([self.sc.run.seed, 3])
                gap = to_pcm16(noise(silence.pause, silence.noise_dbfs, rng), 24000)
            cached = self._paused[utt.name] = Utterance(
                utt.name + "+pause", utt.pcm[:half] + gap + utt.pcm[half:]
            )
        return cached

    @staticmethod
    def _interrupted(outcome: str) -> UtteranceStatus:
        return {"closed": UtteranceStatus.LOST, "stopped": UtteranceStatus.UNFINISHED}.get(
            outcome, UtteranceStatus.TIMEOUT
        )

    def _utterance_end(
        self,
        conn: Conn,
        key: str,
        status: UtteranceStatus,
        item_id: str | None = None,
        transcript: str | None = None,
        latency: float | None = None,
        committed: float | None = None,
        ended: float | None = None,
    ) -> None:
        """The utterance's end row, stamped `ended` when its transcript arrived: latency is
        then exactly that row's time less the commit row's, however long what came between
        took."""
        if status is UtteranceStatus.LOST and self.stopping():
            status = UtteranceStatus.UNFINISHED
        progress = self.s.progress
        progress.completed += status in (UtteranceStatus.COMPLETED, UtteranceStatus.RETRIED_OK)
        progress.lost += status is UtteranceStatus.LOST
        self._row(
            conn.attempt,
            "meta",
            "utt_end",
            t=ended,
            item=key,
            text=str(status),
            detail={
                "item_id": item_id,
                "transcript": transcript,
                "latency": latency,
                "committed": committed,
                "uncommitted_ms": conn.uncommitted_ms,
            },
        )
