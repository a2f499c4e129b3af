"""One connection attempt's I/O: the handshake, the reader, the paced send loop, closing,
and how the end is classified. aiohttp errors are mapped here, once.

What the frames mean lives in the pure ClientConnection (`core`); a Link feeds it what the
socket does and hands the rows it returns to `emit`, which records them and wakes waiters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from time import monotonic
from time import time as wall_time
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from harness.config.audio import Frame
from harness.core.client import ClientConnection
from harness.core.outcomes import CloseCause, ClosedBy
from harness.core.protocol import FAKE_SERVER_HEADER
from harness.core.reconnect import retry_after
from harness.core.rows import ConnOpen, FrameRow, Row
from harness.edge.clock import deadline_waker
from harness.log.recorder import pack_append

if TYPE_CHECKING:
    from harness.edge.worker import WorkerSetup

__all__ = ["HANDSHAKE_TIMEOUT", "Link", "MAX_MESSAGE_BYTES", "NO_REDIRECTS", "SEND_ERRORS"]

TEXT = aiohttp.WSMsgType.TEXT
SEND_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError)
# Scenario seconds a handshake may take: the `websockets` library's open_timeout, which the
# official SDK uses. Without it aiohttp waits 300 s on a server that accepts and never answers.
HANDSHAKE_TIMEOUT = 10.0
# The largest inbound message a worker reads: the largest legitimate server event is a few KB,
# and this bounds what a server can make a worker hold (endless continuation frames).
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


NO_REDIRECTS = aiohttp.TraceConfig()
NO_REDIRECTS.on_request_redirect.append(_refuse_redirect)
NO_REDIRECTS.freeze()


class Link:
    """One connection attempt: its socket and reader, the protocol facts (`core`) and what the
    worker waits on."""

    def __init__(
        self, attempt: int, key: str, setup: WorkerSetup, emit: Callable[[Link, list[Row]], None]
    ) -> None:
        self.attempt, self.emit = attempt, emit
        self.clock, self.recorder, self.stop = setup.clock, setup.recorder, setup.stop
        self.variant, self.worker, self.progress = setup.variant, setup.worker, setup.progress
        self.core = ClientConnection(key, self.clock.now())
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task | None = None
        self.handshake_status: int | None = None
        self.fake_server = False  # the handshake answered with FAKE_SERVER_HEADER
        self.retry_after: float | None = None  # what a refused handshake's Retry-After asked
        self.rotate_at: float | None = None
        self.rotation_failures = 0  # make-before-break attempts refused, for this rotation
        self.make_first = True  # False once the policy gave up making its successor first
        self.client_cause: CloseCause | None = None  # set when we close it
        self.closed_at: float | None = None  # when the close was seen (or begun, by us)
        self.close_code: int | None = None
        self.close_frame: tuple[int, str] | None = None
        self.transport_error: str | None = None
        self.too_big = False  # a message over MAX_MESSAGE_BYTES: we closed with 1009
        self.summarized = False
        self.updated: asyncio.Future | None = None  # the session.updated awaited
        self.awaited: tuple[str, asyncio.Future] | None = None  # utterance key, its UttEnd
        self.appends: tuple[Callable[[bytes], None], int] | None = None  # Recorder.appends

    async def connect(
        self, http: aiohttp.ClientSession, url: str, headers: dict, heartbeat: float | None
    ) -> bool:
        """The handshake; True when open. A refusal is recorded with the connection's end."""
        clock = self.clock
        self.emit(self, [ConnOpen(self.core.opened)])
        status, request_id, error = None, None, None
        try:
            async with asyncio.timeout(max(0.5, clock.wall_seconds(HANDSHAKE_TIMEOUT))):
                ws = await http.ws_connect(
                    url,
                    headers=headers,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    autoping=True,
                    heartbeat=heartbeat,
                    timeout=aiohttp.ClientWSTimeout(
                        ws_receive=None, ws_close=max(0.5, clock.wall_seconds(10.0))
                    ),
                )
        except aiohttp.WSServerHandshakeError as exc:
            answer = exc.headers or {}
            status = exc.status
            request_id = answer.get("x-request-id") or answer.get("apim-request-id")
            self.retry_after = retry_after(answer.get("Retry-After"), wall_time(), clock.scale)
            error = f"HTTP {exc.status}"
            if self.retry_after is not None:
                error += f" (Retry-After {self.retry_after:g} s)"
        except _Redirected as exc:
            status, error = exc.status, f"HTTP {exc.status} redirect to {exc.host}, not followed"
        except TimeoutError:
            error = f"no handshake answer within {HANDSHAKE_TIMEOUT:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        if error is not None:
            self.handshake_status, self.closed_at = status, clock.now()
            rows = self.core.handshake(self.closed_at, status, request_id, error)
            cause = CloseCause.HANDSHAKE_FAILED
            rows += self.core.closed(self.closed_at, ClosedBy.NONE, cause, status, error)
            self.emit(self, rows)
            self.summarized = True
            self.closed.set_result(None)
            return False
        # the handshake's response headers: aiohttp exposes no public accessor for them
        response = getattr(ws, "_response", None)
        if response is not None:
            headers_in = response.headers
            request_id = headers_in.get("x-request-id") or headers_in.get("apim-request-id")
            self.fake_server = FAKE_SERVER_HEADER in headers_in
        self.ws, self.handshake_status = ws, 101
        self.progress.open += 1
        self.emit(self, self.core.handshake(clock.now(), 101, request_id))
        self.reader = asyncio.get_running_loop().create_task(self._read())
        return True

    async def close(self, cause: CloseCause) -> None:
        """Close from our side (1000), if the socket still works, and record the connection."""
        ws = self.ws
        if ws is not None and self.transport_error is None and not self.closed.done():
            if not ws.closed:
                self.client_cause, self.closed_at = cause, self.clock.now()
                try:
                    await ws.close(code=1000, message=str(cause).encode())
                except SEND_ERRORS:
                    pass
        await self.finish()

    async def finish(self) -> None:
        """Wait (5 wall seconds at most) for the reader to see how the connection ended;
        record it once."""
        if self.summarized:
            return
        await asyncio.wait({self.closed}, timeout=5.0)
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        if self.client_cause is not None:
            who, cause, code, reason = ClosedBy.CLIENT, self.client_cause, 1000, self.client_cause
        elif self.too_big:  # we closed it, for the server's fault: a drop, not censored
            who, cause, code = ClosedBy.CLIENT, CloseCause.PROTOCOL_ERROR, 1009
            reason = f"message too big: over MAX_MESSAGE_BYTES ({MAX_MESSAGE_BYTES} bytes)"
        elif self.close_frame is not None:
            who, (code, reason) = ClosedBy.SERVER, self.close_frame
            cause = CloseCause.EXPIRED if self.core.expired else CloseCause.SERVER_CLOSE
        else:
            who, cause = ClosedBy.TRANSPORT, CloseCause.ABNORMAL
            ws_code = self.ws.close_code if self.ws is not None else None
            code = ws_code if ws_code not in (None, 1000) else 1006
            reason = self.transport_error or ""
        self.close_code, self.summarized = code, True
        self.progress.open -= 1
        self.progress.drops += who is not ClosedBy.CLIENT
        closed_at = self.closed_at if self.closed_at is not None else self.clock.now()
        # a drop that came as the run ended cuts its utterance short: unfinished, not lost
        ended = self.stop.done()
        self.emit(self, self.core.closed(closed_at, who, cause, code, str(reason), run_ended=ended))

    # receiving ------------------------------------------------------------------------------
    async def _read(self) -> None:
        ws, core, clock = self.ws, self.core, self.clock
        assert ws is not None
        try:
            while True:
                msg = await ws.receive()
                if msg.type is TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        self.emit(self, core.server_frame(clock.now(), msg.data))
                    except Exception as exc:  # one frame we cannot handle costs only itself
                        text = type(exc).__name__
                        row = FrameRow(clock.now(), "recv", "unhandled", len(msg.data), text=text)
                        self.emit(self, [row])
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    if self.client_cause is None:
                        self.close_frame = (msg.data, msg.extra or "")
                elif msg.type is aiohttp.WSMsgType.ERROR:  # aiohttp has closed the socket
                    self.transport_error = type(msg.data).__name__
                    self.too_big = getattr(msg.data, "code", None) == 1009
                    break
                else:  # CLOSING / CLOSED
                    break
        finally:
            if self.closed_at is None:
                self.closed_at = clock.now()
            if not self.closed.done():
                self.closed.set_result(None)

    # sending --------------------------------------------------------------------------------
    async def send(self, event: dict) -> None:
        await self.send_text(event["type"], json.dumps(event))

    async def send_text(self, type_: str, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)
        self.emit(self, self.core.sent(self.clock.now(), type_, len(text)))

    def stream(self, frames: Sequence[Frame], offsets: Sequence[float]) -> asyncio.Task[bool]:
        """Send frames on absolute deadlines, in a task of its own, so each frame's wake-up
        resumes this loop alone, not the worker's whole chain of calls. True unless the
        connection closed or the run stopped."""
        return asyncio.get_running_loop().create_task(self._send_frames(frames, offsets))

    async def _send_frames(self, frames: Sequence[Frame], offsets: Sequence[float]) -> bool:
        """The per-frame hot path: keep it lean. It works in monotonic seconds, sleeps on the
        shared timer directly and updates the core's counters without a call."""
        ws, core = self.ws, self.core
        assert ws is not None
        send, wait_until = ws.send_frame, deadline_waker().wait_until
        origin, scale = self.clock.origin, self.clock.scale
        if self.appends is None:
            self.appends = self.recorder.appends(self.variant, self.worker, self.attempt)
        (record, stream), pack = self.appends, pack_append
        closed, stop = self.closed, self.stop
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
            core.last_sent = sent
            core.uncommitted_ms += audio_ms
            core.audio_ms += audio_ms
            lag = (now - due) * 1e3
            record(pack(wall_time(), sent, len(frame.json), audio_ms, lag, frame.dbfs, stream))
        return True
