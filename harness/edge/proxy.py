"""The proxy's aiohttp edge: accept the client's WebSocket, open the upstream one, relay frames
both ways as they come, record both directions, and apply fault policies on the client's side.

Decisions live elsewhere: what each frame means in ClientConnection (harness.core.client), when
a fault fires in the fault policies, how it is carried out in FaultCarrier; admission, the fault
timers and expiry are the session driver the fake server shares (sessions.py). This module moves
frames and says who ended a connection. The client's key (a header, the `openai-insecure-api-
key.` subprotocol or Azure's `api-key` query parameter) is checked for presence only: it is
never forwarded, stored or logged; the upstream gets its own credentials (from the Target), no
client subprotocol, and the client's query without credential-like parameters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from aiohttp import WSMsgType, web

from harness.config.target import Target, secret_params
from harness.core.client import ClientConnection
from harness.core.faults import Fault, FaultKind
from harness.core.outcomes import CloseCause, ClosedBy
from harness.core.policies import FaultProfile
from harness.core.protocol import FAKE_SERVER_HEADER, SESSION_KEY_HEADER, error_event
from harness.core.rows import ConnOpen, FaultRow, FrameRow, HandshakeFaultRow, Row
from harness.edge.carry import FaultCarrier
from harness.edge.clock import Clock
from harness.edge.server import (
    MAX_FRAME_BYTES,
    PATHS,
    client_key,
    error_response,
    wants_beta,
)
from harness.edge.sessions import Listener, Live, LiveSessions, SessionDriver
from harness.log.recorder import Recorder

__all__ = ["CALLER_HEADER", "RealtimeProxy", "upstream_url"]

# A client may name its caller, so its reconnects count as attempts of one worker.
CALLER_HEADER = "X-Rtsoak-Caller"
# Handshake headers worth passing on; never credentials, cookies or hop-by-hop headers.
FORWARDED_HEADERS = ("OpenAI-Beta", SESSION_KEY_HEADER, "User-Agent")
REQUEST_ID_HEADERS = ("x-request-id", "apim-request-id")
UPSTREAM_CONNECT_TIMEOUT = 30.0  # wall seconds for the upstream's handshake
# The largest message the upstream may send (aiohttp's max_msg_size; 0 would be unbounded, and
# endless continuation frames then grow one connection's memory until the proxy is killed).
# The service's events are kilobytes (a transcript, session.created); 16 MiB is far above any,
# and bounds what one upstream connection can make the proxy hold. Over it: close 1009 both ways.
UPSTREAM_MAX_MSG_BYTES = 16 * 1024 * 1024
# Wall seconds a client connection may take to send a whole HTTP request (its WebSocket
# handshake), and may sit idle between plain HTTP requests, before the proxy closes it: never-
# upgraded sockets (silent, slowloris, answered and left open) must not pile up. Not
# time-scaled: the client's TCP and HTTP work runs in real time. Upgraded sockets are not
# touched: their idleness is the upstream's to judge, and is relayed as it is.
HANDSHAKE_TIMEOUT = 10.0


class _Redirected(aiohttp.ClientError):
    """The upstream answered the handshake with a redirect. It is never followed: the next hop
    would get the upstream's credentials, maybe over plain http (wss:// to http://)."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(status, location)
        self.status, self.host = status, _host_of(location)


def _host_of(location: str | None) -> str:
    """A redirect's target as it may be shown: host and port only (the path and the query
    may carry tokens)."""
    try:
        parts = urlsplit(location or "")
        host, port = parts.hostname, parts.port
    except ValueError:
        return "an invalid location"
    if not host:
        return "the same host" if location else "no location"
    return f"{host}:{port}" if port else host


async def _refuse_redirect(
    session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestRedirectParams
) -> None:
    """aiohttp follows a handshake's redirects (ws_connect has no switch): stop it at the
    first one, before the next request is made."""
    response = params.response
    location = response.headers.get("Location") or response.headers.get("URI")
    response.close()
    raise _Redirected(response.status, location)


def _never_redirect() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_redirect)
    return trace


def upstream_url(base: str, client_query: str) -> str:
    """The upstream's URL, with the client's query parameters (model, intent, ...) added
    where the upstream does not set them; credential-looking ones are dropped."""
    parts = urlsplit(base)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    secret = set(secret_params("?" + client_query))
    for name, value in parse_qsl(client_query, keep_blank_values=True):
        if name not in query and name not in secret:
            query[name] = value
    return parts._replace(query=urlencode(query)).geturl()


@dataclass(slots=True)
class _Ending:
    """Who ended a relayed connection, as its client saw it (the first to say wins), and
    where the ending came from: client, upstream, fault or proxy (stopping)."""

    source: str
    closed_by: ClosedBy
    cause: CloseCause
    code: int | None
    reason: str


_STOPPING = _Ending("proxy", ClosedBy.SERVER, CloseCause.SCENARIO_END, 1001, "proxy stopping")


def _sendable(code: int | None) -> int:
    """A close code to pass on: 1005, 1006 and 1015 may not be sent in a close frame."""
    return 1000 if code is None or code in (1005, 1006, 1015) else code


class _Relay:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        proxy: RealtimeProxy,
        request: web.Request,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        observer: ClientConnection,
        ids: tuple[int, int],
        session_key: str,
    ) -> None:
        self.proxy, self.request, self.client, self.upstream = proxy, request, client, upstream
        self.obs = observer
        self.worker, self.conn = ids
        self.ending: _Ending | None = None
        self.ended = asyncio.Event()
        self.finished = asyncio.Event()
        self.faults = proxy.faults.start(session_key, proxy.clock.now())
        # the FaultSet, the session's expiry, the timers, carrying out a fault: shared with
        # the fake server
        self.drv = SessionDriver(
            proxy.clock,
            proxy.carrier,
            request.transport,
            client,
            self.faults,
            self._note,
            self._send_error,
            proxy.faults.max_session,
        )
        self.inject = self.drv.inject

    def end(self, ending: _Ending) -> None:
        if self.ending is None:
            self.ending = ending
            if self.drv.ended_by is None:  # no fault is carried out after any ending
                self.drv.ended_by = ending.source
        self.ended.set()

    def record(self, rows: list[Row]) -> None:
        self.proxy.record(rows, self.worker, self.conn)

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._client_to_upstream(), name="client-to-upstream"),
            asyncio.create_task(self._upstream_to_client(), name="upstream-to-client"),
            asyncio.create_task(self.drv.run_timers(), name="timers"),
        ]
        for task in tasks:
            task.add_done_callback(self._task_ended)
        try:
            await self.ended.wait()
            await self._finish()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.drv.hold is not None:  # a half-open or delayed close still holds the socket
                await asyncio.gather(self.drv.hold, return_exceptions=True)
            e = self.ending or _STOPPING
            now = self.proxy.clock.now()
            self.record(self.obs.closed(now, e.closed_by, e.cause, e.code, e.reason))
            self.finished.set()

    def _task_ended(self, task: asyncio.Task) -> None:
        """A relay task that stops before its connection has ended (it raised: a bug, a full
        log) ends the connection, so neither side is left open and unrelayed."""
        if task.cancelled() or (task.exception() is None and self.ending is not None):
            return
        exc = task.exception()
        why = "it returned" if exc is None else f"{type(exc).__name__}: {exc}"
        reason = f"proxy relay failed ({task.get_name()}: {why})"
        self.end(_Ending("proxy", ClosedBy.SERVER, CloseCause.PROTOCOL_ERROR, 1011, reason))

    async def _finish(self) -> None:
        """Carry the ending to the side that has not seen it yet."""
        e = self.ending
        assert e is not None
        if e.source == "client":
            if e.cause is CloseCause.ABNORMAL:
                _abort(self.upstream)  # the client vanished: so does the upstream connection
            elif e.cause is CloseCause.PROTOCOL_ERROR:  # the client's fault, not the upstream's
                await _close(self.upstream, 1000, "client side ended")
            else:
                await _close(self.upstream, _sendable(e.code), e.reason)
            return
        if e.source == "upstream" and e.closed_by is ClosedBy.TRANSPORT:
            if self.request.transport is not None:
                self.request.transport.abort()  # no close frame upstream: none for the client
        elif e.source == "upstream" and not self.client.closed:
            await self.client.close(code=_sendable(e.code), message=e.reason.encode()[:123])
        elif e.source == "proxy" and not self.client.closed:
            message = f"rtsoak {e.reason}".encode()[:123]
            await asyncio.wait_for(self.client.close(code=_sendable(e.code), message=message), 10)
        # a fault was carried out on the client's side already
        failed = e.source == "proxy" and e.code == 1011
        await _close(
            self.upstream, 1011 if failed else 1000, e.reason if failed else "client side ended"
        )

    # client -> upstream -------------------------------------------------------------------
    async def _client_to_upstream(self) -> None:
        clock, client, up = self.proxy.clock, self.client, self.upstream
        while True:
            msg = await client.receive()
            now = clock.now()
            if msg.type is WSMsgType.CLOSE:
                self.end(
                    _Ending(
                        "client",
                        ClosedBy.CLIENT,
                        CloseCause.CLIENT_CLOSE,
                        msg.data,
                        msg.extra or "",
                    )
                )
                return
            if msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
                self.end(_client_protocol_error(msg.data))  # aiohttp closed the client with it
                return
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.end(
                    _Ending("client", ClosedBy.CLIENT, CloseCause.ABNORMAL, 1006, "client lost")
                )
                return
            if msg.type is WSMsgType.PING:
                self.record(self.obs.control(now, "send", "ping", len(msg.data)))
                if await self.inject(self.faults.on_frame(now, "ping")):
                    await _forward(up.ping(msg.data))
                continue
            if msg.type is WSMsgType.PONG:
                self.record(self.obs.control(now, "send", "pong", len(msg.data)))
                await _forward(up.pong(msg.data))
                continue
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                rows = self.obs.client_frame(now, msg.data)
            except Exception as exc:  # noqa: BLE001 (one frame misread never stops the relay)
                rows = _unobserved(now, "send", msg.data, exc)
            self.record(rows)
            if self.faults.policies and not await self._judge(now):
                return  # a fault ended the connection: the frame never reaches upstream
            if msg.type is WSMsgType.TEXT:
                await _forward(up.send_str(msg.data))
            else:
                await _forward(up.send_bytes(msg.data))

    async def _judge(self, now: float) -> bool:
        """The fault policies' verdict on the client frame just observed; False once a fault
        has ended the connection. Wakes the timers when a deadline is now nearer than the one
        they sleep to."""
        pcm = self.obs.last_pcm
        fault = self.faults.on_frame(now, "event" if pcm is None else "audio")
        if fault is None and pcm is not None and self.faults.wants_audio:
            fault = self.faults.on_audio(now, pcm, self.obs.uncommitted_bytes)
        if not await self.inject(fault):
            return False
        drv = self.drv
        if drv.nearest() < drv.until:
            drv.wake.set()
        return True

    # upstream -> client -------------------------------------------------------------------
    async def _upstream_to_client(self) -> None:
        clock, client, up = self.proxy.clock, self.client, self.upstream
        while True:
            msg = await up.receive()
            now = clock.now()
            if msg.type is WSMsgType.CLOSE:
                cause = CloseCause.EXPIRED if self.obs.expired else CloseCause.SERVER_CLOSE
                self.end(_Ending("upstream", ClosedBy.SERVER, cause, msg.data, msg.extra or ""))
                return
            if msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
                self.end(_protocol_error(msg.data))  # aiohttp closed the upstream with its code
                return
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                reason = type(msg.data).__name__ if msg.data is not None else "upstream dropped"
                self.end(_Ending("upstream", ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006, reason))
                return
            if self.drv.silent or client.closed:
                continue  # a held fault: the client hears nothing more
            if msg.type is WSMsgType.PING:
                self.record(self.obs.control(now, "recv", "ping", len(msg.data)))
                await _forward(client.ping(msg.data))
            elif msg.type is WSMsgType.PONG:
                self.record(self.obs.control(now, "recv", "pong", len(msg.data)))
                await _forward(client.pong(msg.data))
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    rows = self.obs.server_frame(now, msg.data)
                except Exception as exc:  # noqa: BLE001 (one frame misread never stops the relay)
                    rows = _unobserved(now, "recv", msg.data, exc)
                self.record(rows)
                if msg.type is WSMsgType.TEXT:
                    await _forward(client.send_str(msg.data))
                else:
                    await _forward(client.send_bytes(msg.data))

    # faults -------------------------------------------------------------------------------
    def _note(self, fault: Fault) -> None:
        """Record a fault as the proxy's row; one that ends the connection is its ending."""
        now, opened = self.proxy.clock.now(), self.obs.established or self.obs.opened
        row = FaultRow(
            now, self.obs.request_id, fault.code, fault.policy, fault.detail(now, opened)
        )
        self.proxy.record([row], self.worker, self.conn, src="proxy")
        if fault.kind is not FaultKind.ERROR:
            self.end(_fault_ending(fault))

    async def _send_error(self, fault: Fault) -> None:
        """The fault's error event, as the service would send it before the fault."""
        assert fault.error_code is not None
        event_id = "event_" + f"{self.proxy.rng.getrandbits(88):022x}"
        text = json.dumps(error_event(event_id, fault.error_code, fault.error_message))
        self.record(self.obs.server_frame(self.proxy.clock.now(), text))
        await _forward(self.client.send_str(text))


def _not_a_handshake(request: web.Request) -> web.Response:
    """The answer to a request that is not a valid WebSocket handshake (a plain GET, a bad
    key or version): no upstream connection is opened for it, and nothing is recorded."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        message = "This endpoint only accepts WebSocket connections (Upgrade: websocket)."
        return error_response(426, "upgrade_required", message, headers={"Upgrade": "websocket"})
    message = "Invalid WebSocket handshake (Connection, Sec-WebSocket-Key or -Version)."
    return error_response(400, "invalid_handshake", message)


def _unobserved(now: float, dir_: str, data: str | bytes, exc: Exception) -> list[Row]:
    """The row of a frame the observer failed on: relayed all the same, and counted."""
    text = f"observer failed: {type(exc).__name__}: {exc}"[:200]
    return [FrameRow(now, dir_, "unparseable", len(data), text=text)]


def _fault_ending(fault: Fault) -> _Ending:
    """What the client sees of a fault: no close frame (1006) or the fault's close frame."""
    if fault.kind in (FaultKind.CLOSE, FaultKind.DELAYED_CLOSE):
        cause = (
            CloseCause.EXPIRED if fault.error_code == "session_expired" else CloseCause.SERVER_CLOSE
        )
        return _Ending("fault", ClosedBy.SERVER, cause, fault.code or 1000, fault.reason)
    return _Ending(
        "fault", ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006, f"{fault.policy} ({fault.kind})"
    )


def _protocol_error(exc: aiohttp.WebSocketError) -> _Ending:
    """The upstream broke the protocol, or a bound (a message over UPSTREAM_MAX_MSG_BYTES is
    1009): aiohttp has closed the upstream with that code; the client gets it too."""
    if exc.code == 1009:
        reason = f"upstream message too big (over {UPSTREAM_MAX_MSG_BYTES >> 20} MiB)"
    else:
        reason = f"upstream protocol error: {exc}"
    return _Ending("upstream", ClosedBy.SERVER, CloseCause.PROTOCOL_ERROR, exc.code, reason)


def _client_protocol_error(exc: aiohttp.WebSocketError) -> _Ending:
    """The client broke the protocol, or its bound (a message over MAX_FRAME_BYTES is 1009):
    aiohttp has closed the client with that code."""
    if exc.code == 1009:
        reason = f"client message too big (over {MAX_FRAME_BYTES >> 20} MiB)"
    else:
        reason = f"client protocol error: {exc}"
    return _Ending("client", ClosedBy.CLIENT, CloseCause.PROTOCOL_ERROR, exc.code, reason)


async def _forward(send) -> None:
    """Send to a side that may have gone; its own receive loop reports how it ended."""
    try:
        await send
    except (ConnectionError, RuntimeError, aiohttp.ClientError):
        pass


async def _close(ws: aiohttp.ClientWebSocketResponse, code: int, reason: str) -> None:
    if not ws.closed:
        try:
            await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:123]), 5.0)
        except (TimeoutError, ConnectionError, aiohttp.ClientError):
            _abort(ws)


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the upstream TCP connection with no close frame."""
    # no public way: ClientWebSocketResponse exposes neither its connection nor its transport
    conn = getattr(ws, "_conn", None)
    transport = getattr(conn, "transport", None)
    if transport is not None:
        transport.abort()


class RealtimeProxy:
    """Serves the Realtime paths on loopback and relays each connection to the upstream."""

    def __init__(
        self,
        clock: Clock,
        upstream: Target,
        recorder: Recorder,
        faults: FaultProfile | None = None,
        variant: str = "proxy",
        seed: int = 0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.clock, self.upstream, self.recorder = clock, upstream, recorder
        self.faults, self.variant = faults or FaultProfile(), variant
        self.rng = random.Random(seed)
        self.handshake_timeout = handshake_timeout
        # what caps count: each live session's digest of the client's key, and when it opened
        self._sessions = LiveSessions(clock, per_variant=False)
        self.carrier = FaultCarrier(self._sessions.sleep)
        self._callers: dict[str, tuple[int, int]] = {}  # caller name -> (worker, attempts)
        self._workers = 0
        self._relays: set[_Relay] = set()  # ended by stop()
        self._http: aiohttp.ClientSession | None = None
        self._listener: Listener | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?intent=transcription"

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context=None) -> str:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), trace_configs=[_never_redirect()]
        )
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        # a timer per accepted connection bounds its handshake; aiohttp's keep-alive timer,
        # idle connections after a plain HTTP answer
        self._listener = Listener(
            app, idle_timeout=self.handshake_timeout, handshake_timeout=self.handshake_timeout
        )
        self.port = await self._listener.start(host, port, ssl_context)
        return self.url

    async def stop(self) -> None:
        """End every relay (the client sees 1001, censored as the end of the run)."""
        relays = list(self._relays)
        for relay in relays:
            relay.end(_STOPPING)
        self.carrier.cancel_held()
        if relays:  # bounded: a stuck socket cannot hold the proxy open
            await asyncio.wait([asyncio.create_task(r.finished.wait()) for r in relays], timeout=15)
        if self._listener is not None:  # no new connections; handlers finish (bounded)
            await self._listener.close()
            self._listener = None
        if self._http is not None:
            await self._http.close()

    def record(self, rows: list[Row], worker: int, conn: int, src: str = "client") -> None:
        clock = self.clock
        for row in rows:
            self.recorder.record(row, clock.wall_at(row.t), src, self.variant, worker, conn)

    def _ids(self, request: web.Request) -> tuple[int, int]:
        """(worker, attempt): each connection is a worker of its own unless it names its
        caller, whose reconnects are then its attempts."""
        caller = request.headers.get(CALLER_HEADER)
        if caller and caller in self._callers:
            worker, attempts = self._callers[caller]
            self._callers[caller] = (worker, attempts + 1)
            return worker, attempts + 1
        self._workers += 1
        if caller:
            self._callers[caller] = (self._workers, 1)
        return self._workers, 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._listener is not None
        self._listener.handled(request)  # a whole request arrived in time
        path = "/" + request.match_info["path"]
        if path not in PATHS:
            return error_response(404, "not_found", f"Unknown path {path}")
        key = client_key(request)
        if key is None:
            return error_response(401)
        client = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_BYTES, compress=True, autoping=False, protocols=("realtime",)
        )
        if not client.can_prepare(request).ok:  # before anything opens upstream, or is recorded
            return _not_a_handshake(request)
        # only a digest of the client's key is held, to count its sessions for caps
        key_digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        del key
        worker, conn = self._ids(request)
        clock = self.clock
        # keyed by connection too: a caller that reconnects says new utterances, not replays
        obs = ClientConnection(f"{self.variant}/{worker}/{conn}", clock.now(), infer=True)
        self.record([ConnOpen(clock.now())], worker, conn)
        session_key = request.headers.get(SESSION_KEY_HEADER) or f"proxy/{worker}/{conn}"
        refusal = await self._admit(session_key, key_digest, obs, worker, conn)
        if refusal is not None:
            return refusal
        upstream = await self._connect_upstream(request, obs, worker, conn)
        if isinstance(upstream, web.Response):
            return upstream
        try:
            if obs.request_id:
                client.headers["x-request-id"] = obs.request_id
            # never says it is the fake server, whatever its upstream: a run uncapped because
            # it seemed to reach only the fake server must not go through a proxy (link.py)
            client.headers.popall(FAKE_SERVER_HEADER, None)
            await client.prepare(request)
        except (ConnectionError, RuntimeError, web.HTTPException):
            await _close(upstream, 1001, "client went away")
            self.record(
                obs.closed(
                    clock.now(), ClosedBy.CLIENT, CloseCause.ABNORMAL, 1006, "client went away"
                ),
                worker,
                conn,
            )
            return web.Response(status=499)
        relay = _Relay(self, request, client, upstream, obs, (worker, conn), session_key)
        self._sessions.add(session_key, Live(key_digest, obs.opened, relay.inject))
        self._relays.add(relay)
        try:
            await relay.run()
        finally:
            self._sessions.discard(session_key)
            self._relays.discard(relay)
        return client

    async def _admit(
        self, session_key: str, key_digest: str, obs: ClientConnection, worker: int, conn: int
    ) -> web.Response | None:
        """Handshake fault policies (refusals, slow answers, caps) at the proxy."""
        clock = self.clock
        decision = self._sessions.decide(self.faults, session_key, key_digest)
        if decision is None:
            return None
        request_id = "req_" + f"{self.rng.getrandbits(128):032x}"
        fault_row = HandshakeFaultRow(clock.now(), request_id, decision.status, decision.policy)
        self.record([fault_row], worker, conn, src="proxy")
        status = await self._sessions.admit(decision, self.faults)
        if status is None:
            return None
        self._refused(obs, status, request_id, f"HTTP {status}", worker, conn)
        return error_response(status, headers={"x-request-id": request_id})

    async def _connect_upstream(
        self, request: web.Request, obs: ClientConnection, worker: int, conn: int
    ) -> aiohttp.ClientWebSocketResponse | web.Response:
        """The upstream connection, opened with the upstream's own credentials; or, when that
        fails, the answer for the client: the upstream's status (or 502)."""
        assert self._http is not None
        headers = dict(self.upstream.headers)
        headers.update({h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers})
        if wants_beta(request):  # a browser's beta subprotocol reaches the upstream as the header
            headers["OpenAI-Beta"] = "realtime=v1"
        connect = self._http.ws_connect(
            upstream_url(self.upstream.url, request.query_string),
            headers=headers,
            max_msg_size=UPSTREAM_MAX_MSG_BYTES,
            autoping=False,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
        try:
            ws = await asyncio.wait_for(connect, UPSTREAM_CONNECT_TIMEOUT)
        except _Redirected as exc:
            return self._redirected(obs, exc.status, exc.host, None, worker, conn)
        except aiohttp.WSServerHandshakeError as exc:
            got = exc.headers or {}
            request_id = next((got[h] for h in REQUEST_ID_HEADERS if h in got), None)
            if 300 <= exc.status < 400:  # a redirect aiohttp would not follow either
                location = _host_of(got.get("Location"))
                return self._redirected(obs, exc.status, location, request_id, worker, conn)
            self._refused(obs, exc.status, request_id, f"HTTP {exc.status}", worker, conn)
            return error_response(
                exc.status,
                message=f"upstream refused the handshake: {exc.message}",
                headers={"x-request-id": request_id} if request_id else None,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = type(exc).__name__
            self._refused(obs, None, None, error, worker, conn)
            return error_response(502, "upstream_unreachable", f"upstream unreachable: {error}")
        # no public way: ClientWebSocketResponse does not expose its handshake response
        got = ws._response.headers  # noqa: SLF001
        request_id = next((got[h] for h in REQUEST_ID_HEADERS if h in got), None)
        self.record(obs.handshake(self.clock.now(), 101, request_id), worker, conn)
        return ws

    def _redirected(
        self,
        obs: ClientConnection,
        status: int,
        host: str,
        request_id: str | None,
        worker: int,
        conn: int,
    ) -> web.Response:
        """A 3xx handshake answer: a failed handshake, recorded with its status and the
        Location's host; the client gets a 502 (the redirect is not passed on either)."""
        error = f"redirect to {host} not followed"
        self._refused(obs, status, request_id, error, worker, conn)
        return error_response(
            502,
            "upstream_redirected",
            f"upstream answered the handshake with HTTP {status} ({error})",
            headers={"x-request-id": request_id} if request_id else None,
        )

    def _refused(
        self,
        obs: ClientConnection,
        status: int | None,
        request_id: str | None,
        error: str,
        worker: int,
        conn: int,
    ) -> None:
        """Record a handshake the client saw fail: the attempt and its end."""
        now = self.clock.now()
        rows = obs.handshake(now, status, request_id, error)
        rows += obs.closed(now, ClosedBy.NONE, CloseCause.HANDSHAKE_FAILED, status, error)
        self.record(rows, worker, conn)
