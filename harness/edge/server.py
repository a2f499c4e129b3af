"""The fake server's aiohttp edge: handshake, auth, frames in and out, carrying out faults.

All protocol and fault decisions come from the pure session and fault policies; this module only
moves frames, keeps time through the shared Clock, and logs the server's ground truth (which
policy ended which connection) when given a Recorder. Admission, the fault timers and carrying
out a fault are the session driver the proxy shares (sessions.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from harness.config.target import redact_url
from harness.core.faults import Fault
from harness.core.policies import FaultProfile
from harness.core.protocol import FAKE_SERVER_HEADER, SESSION_KEY_HEADER
from harness.core.rows import FaultRow, HandshakeFaultRow, Row, ServerRow
from harness.core.session import SessionLimits, TranscriptionSession
from harness.edge.carry import FaultCarrier
from harness.edge.clock import Clock
from harness.edge.server_record import (
    SessionLog,
    finish_serve_manifest,
    is_other_run,
    serve_manifest,
    write_serve_manifest,
)
from harness.edge.sessions import (
    Listener,
    Live,
    LiveSessions,
    SessionDriver,
    session_limits,
    variant_of,
)
from harness.log.recorder import Recorder

__all__ = [
    "BETA_SUBPROTOCOL",
    "FakeServer",
    "ServerConfig",
    "client_key",
    "error_response",
    "wants_beta",
]

PATHS = {"/v1/realtime": "openai", "/openai/v1/realtime": "azure", "/openai/realtime": "azure"}
UPGRADE_FLOOR = 0.5  # wall seconds: the least time a client gets to send its HTTP request
MAX_FRAME_BYTES = 24 * 1024 * 1024  # a 15 MiB append as base64 JSON, with room to spare
_HTTP_ERRORS = {
    401: ("invalid_api_key", "Incorrect API key provided."),
    429: ("rate_limit_exceeded", "Too many concurrent sessions. Try again later."),
    500: ("server_error", "The server had an error while processing your request."),
    503: ("service_unavailable", "The server is overloaded. Try again later."),
}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    faults: FaultProfile = field(default_factory=FaultProfile)
    limits: SessionLimits = field(default_factory=SessionLimits)
    # ids (requests, sessions, items, events) and per-session draws derive from it; None: a
    # fresh seed per start, so logs of two starts never share an id (`FakeServer.seed` says it)
    seed: int | None = None
    api_keys: frozenset[str] = frozenset()  # empty: any non-empty key is accepted
    # a connection that has not completed its HTTP request (the upgrade) this long after it
    # opened is closed; scenario seconds, at least UPGRADE_FLOOR wall seconds (the client's
    # own TCP and HTTP work is not time-compressed). Also bounds idle keep-alive connections.
    upgrade_timeout: float = 10.0
    # rtsoak variants may each have their own faults, chosen by the session key's variant
    variant_faults: dict[str, FaultProfile] = field(default_factory=dict)
    # with a recorder: also record each session's events both ways as the proxy does, and a
    # manifest beside the log, so `rtsoak report` reads the directory (harness/edge/
    # server_record.py). None: when the server is standalone, i.e. its clock is not waiting for a
    # runner at start (an embedded one's is) and its log's directory holds no other run's
    # manifest (a run records its own workers)
    record_clients: bool | None = None

    def faults_for(self, session_key: str) -> FaultProfile:
        variant = variant_of(session_key)
        return self.variant_faults.get(variant, self.faults) if variant else self.faults


BROWSER_KEY_PREFIX = "openai-insecure-api-key."
# a browser client asks for the beta dialect with this subprotocol (it cannot set headers)
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def subprotocols(request: web.Request) -> list[str]:
    """The subprotocols the client offered, in its order."""
    offered = ",".join(request.headers.getall("Sec-WebSocket-Protocol", []))
    return [p.strip() for p in offered.split(",") if p.strip()]


def wants_beta(request: web.Request) -> bool:
    """The beta dialect: header `OpenAI-Beta: realtime=v1`, or (browser clients) the
    `openai-beta.realtime-v1` subprotocol, as the official SDK's browser client sends it."""
    header = request.headers.get("OpenAI-Beta", "").replace(" ", "").lower()
    return header == "realtime=v1" or BETA_SUBPROTOCOL in subprotocols(request)


def client_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer`, `api-key`, (browser clients) the
    `openai-insecure-api-key.<KEY>` subprotocol, or (browser clients of Azure, on its paths)
    the `api-key` query parameter."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    if request.headers.get("api-key"):
        return request.headers["api-key"]
    for proto in subprotocols(request):
        if proto.startswith(BROWSER_KEY_PREFIX) and len(proto) > len(BROWSER_KEY_PREFIX):
            return proto[len(BROWSER_KEY_PREFIX) :]
    if PATHS.get(request.path) == "azure" and request.query.get("api-key"):
        return request.query["api-key"]
    return None


def error_response(
    status: int,
    code: str | None = None,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    default_code, default_message = _HTTP_ERRORS.get(status, ("error", "Request failed."))
    body = {
        "error": {
            "message": message or default_message,
            "type": "invalid_request_error",
            "code": code or default_code,
            "param": None,
        }
    }
    return web.json_response(body, status=status, headers=headers)


class FakeServer:
    """Serves the Realtime transcription protocol on 127.0.0.1 (or a given host)."""

    def __init__(
        self, clock: Clock, config: ServerConfig = ServerConfig(), recorder: Recorder | None = None
    ) -> None:
        self.clock = clock
        self.config = config
        self.recorder = recorder
        self.seed = config.seed if config.seed is not None else secrets.randbits(64)
        self._rng = random.Random(self.seed)
        self._arrivals = 0
        self._sessions = LiveSessions(clock, per_variant=True)
        self._sockets: set[web.WebSocketResponse] = set()  # open sessions, closed by stop()
        self.stopping = False
        self._carrier = FaultCarrier(self._sessions.sleep)  # half-open and delayed closes pending
        self._listener: Listener | None = None
        self._recording = False  # each session's client-side rows (server_record.py)
        self._manifest: dict[str, Any] | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.clock_ready = asyncio.Event()  # cleared while an embedding runner sets the origin
        self.clock_ready.set()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime?intent=transcription"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context=None) -> str:
        # aiohttp arms its keep-alive timer at connection_made and closes a connection still
        # waiting for a whole request when it fires: a bound on never-upgraded and slowloris sockets
        self._listener = Listener(self.app(), idle_timeout=self.upgrade_wall_timeout)
        self.port = await self._listener.start(host, port, ssl_context)
        self.host = host
        log_path = getattr(self.recorder, "path", None)  # None: no log, or a test's rows
        record = self.config.record_clients
        if record is None:
            record = (
                log_path is not None
                and self.clock_ready.is_set()
                and not is_other_run(log_path.parent)
            )
        self._recording = record and self.recorder is not None
        if self._recording and log_path is not None:
            self._manifest = serve_manifest(self.config, self.seed, self.clock.scale, self.url)
            write_serve_manifest(log_path.parent, self._manifest)
        return self.url

    @property
    def _runner(self) -> web.AppRunner | None:
        # tests/test_hostile.py reads aiohttp's live handlers through it
        return None if self._listener is None else self._listener.runner

    @property
    def upgrade_wall_timeout(self) -> float:
        return max(UPGRADE_FLOOR, self.clock.wall_seconds(self.config.upgrade_timeout))

    async def stop(self) -> None:
        """Open sessions first end with 1001 (the service going away), so each is closed and
        logged before the listener goes (aiohttp alone would wait 60 s, then cancel them)."""
        self._carrier.cancel_held()
        self.stopping = True
        closing = [ws.close(code=1001, message=b"server shutting down") for ws in self._sockets]
        await asyncio.gather(*closing, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._manifest is not None:
            log = self.recorder
            finish_serve_manifest(log.path.parent, self._manifest, log.count)  # type: ignore[union-attr]
            self._manifest = None

    def _limits(self, faults: FaultProfile) -> SessionLimits:
        return session_limits(self.config.limits, faults)

    # logging --------------------------------------------------------------------------------
    def _log(self, row: Row) -> None:
        if self.recorder is not None:
            self.recorder.record(row, self.clock.wall_at(row.t), "server", None, -1, -1)

    # handshake ------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.clock_ready.wait()
        path = "/" + request.match_info["path"]
        if path not in PATHS:
            return error_response(404, "not_found", f"Unknown path {path}")
        key = client_key(request)
        if key is None or (self.config.api_keys and key not in self.config.api_keys):
            return error_response(401)
        request_id = "req_" + f"{self._rng.getrandbits(128):032x}"
        id_header = "apim-request-id" if PATHS[path] == "azure" else "x-request-id"
        self._arrivals += 1
        session_key = request.headers.get(SESSION_KEY_HEADER) or f"arrival-{self._arrivals}"
        log = None
        if self._recording:
            assert self.recorder is not None
            log = SessionLog(self.clock, self.recorder, self._arrivals)
        refusal = await self._admit(session_key, key, request_id, {id_header: request_id})
        if refusal is not None:
            if log is not None:
                log.refused(refusal.status, request_id)
            return refusal
        ws = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_BYTES, compress=True, autoping=False, protocols=("realtime",)
        )
        ws.headers[id_header] = request_id
        ws.headers[FAKE_SERVER_HEADER] = "1"  # lets an uncapped loopback run go on (link.py)
        await ws.prepare(request)
        if log is not None:
            log.upgraded(request_id)
        self._sockets.add(ws)
        try:
            await self._serve(request, ws, request_id, session_key, key, log)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _admit(
        self, session_key: str, client_key: str, request_id: str, headers: dict[str, str]
    ) -> web.Response | None:
        """Apply handshake policies: maybe wait, evict older sessions, or refuse."""
        faults = self.config.faults_for(session_key)
        decision = self._sessions.decide(faults, session_key, client_key)
        if decision is None:
            return None
        detail = {
            "delay": decision.delay,
            "evict": list(decision.evict),
            "session_key": session_key,
        }
        self._log(
            HandshakeFaultRow(
                self.clock.now(), request_id, decision.status, decision.policy, detail
            )
        )
        status = await self._sessions.admit(decision, faults)
        return None if status is None else error_response(status, headers=headers)

    # one connection -------------------------------------------------------------------------
    async def _serve(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        request_id: str,
        session_key: str,
        client_key: str,
        log: SessionLog | None = None,
    ) -> None:
        now = self.clock.now()
        rng = random.Random(f"{self.seed}/{session_key}")
        profile = self.config.faults_for(session_key)
        beta = wants_beta(request)
        session = TranscriptionSession(
            "sess_" + f"{rng.getrandbits(88):022x}",
            now,
            self.clock.wall(),
            rng,
            self._limits(profile),
            dialect="beta" if beta else "ga",
        )
        faults = profile.start(session_key, now)
        opened = {
            "session_key": session_key,
            "peer": request.remote,
            "path": redact_url(request.path_qs),
            "headers": sorted(request.headers),
        }
        self._log(ServerRow(now, "session_open", request_id, None, session.session_id, opened))

        def note(fault: Fault) -> None:
            t = self.clock.now()
            detail = {**fault.detail(t, session.opened), "session_key": session_key}
            self._log(FaultRow(t, request_id, fault.code, fault.policy, detail))

        async def send_error(fault: Fault) -> None:
            text = json.dumps(session.error_event(fault.error_code, fault.error_message))
            await ws.send_str(text)
            if log is not None:
                log.sent(text)

        # `drv.until`: the deadline the timers task sleeps to; a frame that brings one nearer
        # sets `wake`. `observe(fault)`: carry out a fault, if any; False once the connection
        # has ended.
        drv = SessionDriver(
            self.clock, self._carrier, request.transport, ws, faults, note, send_error
        )
        wake, observe = drv.wake, drv.inject

        async def send(outputs: list) -> bool:
            """Send session outputs; False once a fault has ended the connection."""
            for out in outputs:
                if isinstance(out, Fault):
                    await observe(out)
                    return False
                if not ws.closed and not drv.silent:
                    try:
                        text = json.dumps(out)
                    except (TypeError, ValueError, RecursionError) as exc:  # our bug, not theirs
                        text = json.dumps(frame_failed(exc))
                    await ws.send_str(text)
                    if log is not None:
                        log.sent(text)
            return not ws.closed and drv.ended_by is None

        def frame_failed(exc: BaseException) -> dict[str, Any]:
            """The fake itself failed on one frame: log it as the server's fault (never the
            client's), and answer as the service does, with a `server_error` event; the
            connection goes on."""
            detail = {"error": repr(exc)[:300], "session_key": session_key}
            name = type(exc).__name__
            self._log(ServerRow(self.clock.now(), "frame_error", request_id, None, name, detail))
            return session.error_event(
                "server_error", "The server had an error while processing your request."
            )

        def nearest_deadline() -> float:
            """Called for every frame: plain comparisons, no generator (a generator per frame
            is a measurable share of the server's CPU under a fleet)."""
            ours, theirs = session.next_deadline(), faults.next_deadline()
            if ours is None:
                return math.inf if theirs is None else theirs
            return ours if theirs is None or ours < theirs else theirs

        async def fire(now: float) -> bool:
            # a late wake-up may find a transcript and a fault both due: what fell due first
            # goes first, as it would have on time
            fault_due = faults.next_deadline()
            first = now if fault_due is None else min(now, fault_due)
            return (
                await send(session.poll(first))
                and await observe(faults.poll(now))
                and await send(session.poll(now))
            )

        def alive() -> bool:
            return not ws.closed and drv.ended_by is None

        self._sessions.add(session_key, Live(client_key, now, observe))
        timer_task = asyncio.create_task(drv.run_timers(nearest_deadline, fire, alive))
        try:
            if await send(session.open()):
                async for msg in ws:
                    now = self.clock.now()
                    if log is not None:
                        log.received_message(msg)
                    if msg.type is WSMsgType.PING:
                        if not await observe(faults.on_frame(now, "ping")):
                            break
                        await ws.pong(msg.data)
                        continue
                    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                        continue
                    try:
                        outputs = session.receive(msg.data, now)
                    except Exception as exc:  # one frame's failure is that frame's error
                        outputs = [frame_failed(exc)]
                    if outputs:
                        if not await send(outputs):
                            break
                    elif ws.closed or drv.ended_by is not None:  # as send([]) says
                        break
                    pcm = session.last_pcm
                    if faults.policies:
                        fault = faults.on_frame(now, "event" if pcm is None else "audio")
                        if fault is None and pcm is not None and faults.wants_audio:
                            fault = faults.on_audio(now, pcm, session.buffer_bytes)
                        if not await observe(fault):
                            break
                    if nearest_deadline() < drv.until:
                        wake.set()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a bug in the fake: close 1011 and say so, not "client"
            drv.ended_by = drv.ended_by or "server_error"
            detail = {"error": repr(exc)[:300], "session_key": session_key}
            crash = ServerRow(
                self.clock.now(), "server_crash", request_id, None, type(exc).__name__, detail
            )
            self._log(crash)
            if not ws.closed:
                await ws.close(code=1011, message=b"server error")
        finally:
            self._sessions.discard(session_key)
            if drv.hold is not None:  # a half-open or delayed fault is still holding the socket
                await asyncio.gather(drv.hold, return_exceptions=True)
            timer_task.cancel()
            await asyncio.gather(timer_task, return_exceptions=True)
            if log is not None:
                log.closed(drv.fault, drv.ended_by, self.stopping, ws.close_code)
            ended_by = drv.ended_by or ("shutdown" if self.stopping else "client")
            closed = {"buffer_ms": session.buffer_ms}
            self._log(
                ServerRow(
                    self.clock.now(), "session_close", request_id, ws.close_code, ended_by, closed
                )
            )
