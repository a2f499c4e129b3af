"""The session driver the fake server and the proxy share: serving the app, admitting a handshake
under the handshake policies, and, per connection, the deadline timer over its FaultSet, session
expiry and carrying out the fault that ends it.

Each side keeps what is its own: the server its protocol session (and its per-frame loop, which
calls nothing here per frame), the proxy its relay and observer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from harness.core.faults import Fault, FaultKind, HandshakeDecision
from harness.core.policies import FaultProfile, FaultSet
from harness.core.session import SessionLimits
from harness.edge.carry import FaultCarrier
from harness.edge.clock import Clock

__all__ = [
    "Listener",
    "Live",
    "LiveSessions",
    "SessionDriver",
    "expiry_fault",
    "session_limits",
    "variant_of",
]


def variant_of(session_key: str) -> str | None:
    """The variant an rtsoak session key names (`variant/worker/attempt`), if any."""
    return session_key.split("/", 1)[0] if "/" in session_key else None


# serving ------------------------------------------------------------------------------------
class Listener:
    """An aiohttp app served on one address, with a bound on connections that never send a whole
    HTTP request (never-upgraded, slowloris, idle keep-alive ones).

    Without `handshake_timeout`, that bound is aiohttp's own keep-alive timer (`idle_timeout`),
    which aiohttp arms when a connection is made. With it, each accepted connection also gets a
    timer of its own, cancelled by `handled()` once its request reaches the app: aiohttp sets no
    such bound before a request in every version.
    """

    def __init__(
        self, app: web.Application, idle_timeout: float, handshake_timeout: float | None = None
    ) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None  # only with a handshake timer per connection
        # connections whose request has not reached the app yet -> the timer closing them
        self._unhandled: dict[asyncio.Protocol, asyncio.TimerHandle] = {}

    @property
    def runner(self) -> web.AppRunner | None:
        """The app's runner while it listens (its `server.connections`: the live handlers)."""
        return self._runner

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        """Listen; returns the bound port (of the first socket, when `host` names several)."""
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, keepalive_timeout=self.idle_timeout
        )
        await self._runner.setup()
        if self.handshake_timeout is None:
            await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
            self.port = self._runner.addresses[0][1]
        else:  # not a TCPSite: each accepted connection gets a handshake timer (_accept)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                self._accept, host, port, backlog=128, ssl=ssl_context
            )
            self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _accept(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        assert self.handshake_timeout is not None
        handler = self._runner.server()
        self._unhandled[handler] = asyncio.get_running_loop().call_later(
            self.handshake_timeout, self._too_slow, handler
        )
        return handler

    def _too_slow(self, handler: web.RequestHandler) -> None:
        self._unhandled.pop(handler, None)
        handler.force_close()  # closes the transport (a no-op once the peer has gone)

    def handled(self, request: web.Request) -> None:
        """A whole request arrived in time: its connection's handshake timer has done its work."""
        timer = self._unhandled.pop(request.protocol, None)
        if timer is not None:
            timer.cancel()

    async def close(self) -> None:
        """No new connections; then aiohttp waits (bounded) for the handlers to finish."""
        if self._server is not None:
            self._server.close()
        for timer in self._unhandled.values():
            timer.cancel()
        self._unhandled.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# admission ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Live:
    """A live session as the handshake policies count it, and how to end it (evictions)."""

    client_key: str  # the client's key, or a digest of it
    opened: float
    inject: Callable[[Fault], Awaitable[object]]


class LiveSessions:
    """The live sessions of one server or proxy, and admission of a handshake against them.

    `per_variant`: each rtsoak variant meets its own service, so caps count only sessions of the
    handshake's variant (the fake server); otherwise all of them (the proxy)."""

    def __init__(self, clock: Clock, per_variant: bool) -> None:
        self.clock = clock
        self.per_variant = per_variant
        self.live: dict[str, Live] = {}
        self._evicting: set[asyncio.Task] = set()

    async def sleep(self, seconds: float) -> None:
        """Scenario seconds, on the run clock."""
        await asyncio.sleep(max(0.0, self.clock.wall_seconds(seconds)))

    def add(self, session_key: str, live: Live) -> None:
        self.live[session_key] = live

    def discard(self, session_key: str) -> None:
        self.live.pop(session_key, None)

    def decide(
        self, faults: FaultProfile, session_key: str, client_key: str
    ) -> HandshakeDecision | None:
        """The handshake policies' decision, None when none of them acts. The caller logs it,
        then `admit`s it."""
        if self.per_variant:
            variant = variant_of(session_key)
            active = [
                (k, s.client_key, s.opened)
                for k, s in self.live.items()
                if variant_of(k) == variant
            ]
        else:
            active = [(k, s.client_key, s.opened) for k, s in self.live.items()]
        decision = faults.handshake(session_key, client_key, self.clock.now(), active)
        return None if decision.policy is None else decision

    async def admit(self, decision: HandshakeDecision, faults: FaultProfile) -> int | None:
        """Carry out a decision: wait, end the sessions it evicts (each in a task, so the new
        session does not wait for them). Returns the HTTP status to refuse with, None: accept."""
        if decision.delay:
            await self.sleep(decision.delay)
        for victim in decision.evict:
            if victim in self.live:
                cap = dict(faults.policies)["concurrency_cap"]
                fault = cap.fault("concurrency_cap")
                task = asyncio.get_running_loop().create_task(self.live[victim].inject(fault))
                self._evicting.add(task)  # held, so it is not collected before it runs
                task.add_done_callback(self._evicting.discard)
        return decision.status


# expiry -------------------------------------------------------------------------------------
def session_limits(limits: SessionLimits, faults: FaultProfile) -> SessionLimits:
    """The fake server's session limits under `faults`: a max_duration policy shortens the
    service's session limit (the session expires itself); an idle_timeout policy replaces its
    idle limit (the policy, not the limit, is the hypothesis under test)."""
    if faults.max_session is not None:
        limits = dataclasses.replace(limits, max_duration=faults.max_session)
    if "idle_timeout" in faults.names:
        limits = dataclasses.replace(limits, max_idle=None)
    return limits


def expiry_fault(max_session: float) -> Fault:
    """The service's maximum session duration, as the fake server's session ends it (its error
    event, then 1001), for an edge without a session of its own (the proxy)."""
    message = f"Your session hit the maximum duration of {round(max_session / 60)} minutes."
    return Fault(
        FaultKind.CLOSE,
        "max_duration",
        1001,
        message,
        error_code="session_expired",
        error_message=message,
    )


# one connection -----------------------------------------------------------------------------
class SessionDriver:
    """One connection's faults at the edge: its FaultSet and expiry, the timer task that polls
    them, and carrying out the fault that ends the connection.

    `ended_by` is what ended the connection (a fault's policy, or the side's own word: the first
    to say wins); once set, no fault is carried out. `silent`: a half-open or delayed-close fault
    holds the socket (task `hold`), and nothing more may be sent to the client. `wake` and
    `until`: the deadline the timer sleeps to; whoever brings a deadline nearer sets `wake`.
    The side supplies `note` (log a fault, synchronously) and `send_error` (send a fault's error
    event; called only while the socket is open).
    """

    __slots__ = (
        "faults",
        "expires",
        "max_session",
        "ended_by",
        "fault",
        "silent",
        "hold",
        "wake",
        "until",
        "_clock",
        "_carrier",
        "_transport",
        "_ws",
        "_note",
        "_send_error",
    )

    def __init__(
        self,
        clock: Clock,
        carrier: FaultCarrier,
        transport: asyncio.Transport | None,
        ws: web.WebSocketResponse,
        faults: FaultSet,
        note: Callable[[Fault], None],
        send_error: Callable[[Fault], Awaitable[None]],
        max_session: float | None = None,
    ) -> None:
        self.faults = faults
        self.max_session = max_session
        self.expires = None if max_session is None else clock.now() + max_session
        self.ended_by: str | None = None
        self.fault: Fault | None = None
        self.silent = False
        self.hold: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.until = math.inf
        self._clock, self._carrier = clock, carrier
        self._transport, self._ws = transport, ws
        self._note, self._send_error = note, send_error

    async def inject(self, fault: Fault | None) -> bool:
        """Carry out `fault` (None: nothing fell due) on the client's side; False once the
        connection has ended."""
        if fault is None or self.ended_by is not None:
            return self.ended_by is None
        if fault.kind is not FaultKind.ERROR:
            self.ended_by, self.fault = fault.policy, fault
        self._note(fault)
        if fault.error_code and not self._ws.closed:
            await self._send_error(fault)
        hold = await self._carrier.carry_out(self._transport, self._ws, fault)
        if hold is not None:
            self.silent, self.hold = True, hold
        self.wake.set()
        return self.ended_by is None

    def nearest(self) -> float:
        """The nearest of the FaultSet's deadline and the expiry; inf: none."""
        due, expires = self.faults.next_deadline(), self.expires
        if due is None:
            return math.inf if expires is None else expires
        return due if expires is None or due < expires else expires

    async def fire(self, now: float) -> bool:
        """Carry out what fell due by `now`: the expiry first, else the FaultSet's fault."""
        if self.expires is not None and now >= self.expires:
            self.expires = None
            await self.inject(expiry_fault(self.max_session or 0.0))
            return True
        return await self.inject(self.faults.poll(now))

    def alive(self) -> bool:
        return self.ended_by is None

    async def run_timers(
        self,
        nearest: Callable[[], float] | None = None,
        fire: Callable[[float], Awaitable[bool]] | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """The connection's timer task: sleep until `nearest()` (or a `wake`), then `fire(now)`
        once it is due; stops when `fire` says the connection ended, or `alive()` is false.
        A side with deadlines of its own (the server's session) passes its own three."""
        nearest = nearest or self.nearest
        fire = fire or self.fire
        alive = alive or self.alive
        loop = asyncio.get_running_loop()
        clock, wake = self._clock, self.wake
        while alive():
            wake.clear()
            self.until = until = nearest()
            if until < math.inf:
                delay = clock.wall_seconds(until - clock.now())
                if delay > 0:
                    # a timer that sets `wake`, not wait_for(), which makes a task per wait
                    alarm = loop.call_later(delay, wake.set)
                    try:
                        await wake.wait()
                    finally:
                        alarm.cancel()
                    continue  # deadlines may have moved: look again
            else:
                await wake.wait()
                continue
            if not await fire(clock.now()):
                return
