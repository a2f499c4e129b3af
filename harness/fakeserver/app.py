"""The fake server's aiohttp edge: handshake, auth, frames in and out, carrying out closes.

All protocol and fault decisions come from the pure session and fault policies; this module only
moves frames, keeps time through the shared Clock, and logs the server's ground truth (which
policy ended which connection) when given a Recorder.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from harness.clock import Clock
from harness.fakeserver.faults import Close, CloseKind, FaultProfile
from harness.fakeserver.session import SessionLimits, TranscriptionSession
from harness.recorder import Recorder

__all__ = ["FakeServer", "SESSION_KEY_HEADER", "ServerConfig"]

# rtsoak workers name themselves (variant/worker/attempt) so fault draws do not depend on the
# order in which concurrent connections happen to arrive. Other clients need not send it.
SESSION_KEY_HEADER = "X-Rtsoak-Session"
PATHS = {"/v1/realtime": "openai", "/openai/v1/realtime": "azure", "/openai/realtime": "azure"}
MAX_FRAME_BYTES = 24 * 1024 * 1024  # a 15 MiB append as base64 JSON, with room to spare


@dataclass(frozen=True, slots=True)
class ServerConfig:
    faults: FaultProfile = field(default_factory=FaultProfile)
    limits: SessionLimits = field(default_factory=SessionLimits)
    seed: int = 0
    api_keys: frozenset[str] = frozenset()  # empty: any non-empty key is accepted


def _client_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("api-key") or None


class FakeServer:
    """Serves the Realtime transcription protocol on 127.0.0.1 (or a given host)."""

    def __init__(self, clock: Clock, config: ServerConfig = ServerConfig(),
                 recorder: Recorder | None = None) -> None:
        self.clock = clock
        self.config = config
        self.recorder = recorder
        self._rng = random.Random(config.seed)
        self._arrivals = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
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

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # logging --------------------------------------------------------------------------------
    def _log(self, type_: str, request_id: str, code: int | None = None, text: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        if self.recorder is not None:
            self.recorder.row(self.clock.wall(), self.clock.now(), "server", None, -1, -1, "meta",
                              type_, code=code, item=request_id, text=text, detail=detail)

    # handshake ------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.clock_ready.wait()
        path = "/" + request.match_info["path"]
        if path not in PATHS:
            return web.json_response({"error": {"message": f"Unknown path {path}", "type":
                                      "invalid_request_error", "code": "not_found"}}, status=404)
        key = _client_key(request)
        if key is None or (self.config.api_keys and key not in self.config.api_keys):
            return web.json_response({"error": {"message": "Incorrect API key provided.",
                                      "type": "invalid_request_error", "code": "invalid_api_key"}},
                                     status=401)
        request_id = "req_" + "%032x" % self._rng.getrandbits(128)
        id_header = "apim-request-id" if PATHS[path] == "azure" else "x-request-id"
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=True)
        ws.headers[id_header] = request_id
        await ws.prepare(request)
        self._arrivals += 1
        session_key = request.headers.get(SESSION_KEY_HEADER) or f"arrival-{self._arrivals}"
        await self._serve(request, ws, request_id, session_key)
        return ws

    # one connection -------------------------------------------------------------------------
    async def _serve(self, request: web.Request, ws: web.WebSocketResponse, request_id: str,
                     session_key: str) -> None:
        now = self.clock.now()
        rng = random.Random(f"{self.config.seed}/{session_key}")
        session = TranscriptionSession("sess_" + "%022x" % rng.getrandbits(88), now,
                                       self.clock.wall(), rng, self.config.limits)
        faults = self.config.faults.start(session_key, now)
        self._log("session_open", request_id, text=session.session_id,
                  detail={"session_key": session_key, "peer": request.remote})
        wake = asyncio.Event()
        state = {"closed_by": None}

        async def carry_out(outputs: list) -> bool:
            for out in outputs:
                if isinstance(out, Close):
                    await self._close(request, ws, out, request_id, now=self.clock.now())
                    state["closed_by"] = out.policy
                    return False
                if not ws.closed:
                    await ws.send_str(json.dumps(out))
            return True

        async def timers() -> None:
            while not ws.closed:
                deadlines = [d for d in (session.next_deadline(), faults.next_deadline()) if d]
                wake.clear()
                if deadlines:
                    delay = (min(deadlines) - self.clock.now()) / self.clock.scale
                    if delay > 0:
                        try:
                            await asyncio.wait_for(wake.wait(), delay)
                        except TimeoutError:
                            pass
                else:
                    await wake.wait()
                now = self.clock.now()
                fired = faults.poll(now)
                if fired is not None:
                    await carry_out([fired])
                    return
                if not await carry_out(session.poll(now)):
                    return

        timer_task = asyncio.create_task(timers())
        try:
            if await carry_out(session.open()):
                async for msg in ws:
                    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        before = session.next_deadline()
                        if not await carry_out(session.receive(msg.data, self.clock.now())):
                            break
                        if session.next_deadline() != before:
                            wake.set()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            timer_task.cancel()
            await asyncio.gather(timer_task, return_exceptions=True)
            self._log("session_close", request_id, code=ws.close_code,
                      text=state["closed_by"] or "client",
                      detail={"buffer_ms": session.buffer_ms})

    async def _close(self, request: web.Request, ws: web.WebSocketResponse, close: Close,
                     request_id: str, now: float) -> None:
        self._log("fault", request_id, code=close.code, text=close.policy,
                  detail={"kind": str(close.kind), "reason": close.reason})
        if close.kind is CloseKind.ABORT:
            if request.transport is not None:
                request.transport.abort()
        else:
            await ws.close(code=close.code or 1000, message=close.reason.encode()[:123])
