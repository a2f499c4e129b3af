"""The session driver the fake server and the proxy share (harness/edge/sessions.py): admission
against the live sessions, the deadline timer, expiry, and the listener."""

from __future__ import annotations

import asyncio
import math

import aiohttp
from aiohttp import web

from harness.config.faults import parse_faults
from harness.core.faults import Fault
from harness.core.policies import FaultProfile
from harness.edge.carry import FaultCarrier
from harness.edge.clock import ScaledClock
from harness.edge.sessions import Listener, Live, LiveSessions, SessionDriver


async def test_a_cap_counts_the_handshakes_variant_at_the_server_and_every_session_at_the_proxy():
    faults = parse_faults(
        {"concurrency_cap": {"max_sessions": 2, "per": "server", "over": "drop_oldest"}}, "t"
    )
    loop = asyncio.get_running_loop()
    ended: dict[str, asyncio.Future[Fault]] = {}

    def live(key: str, opened: float) -> Live:
        ended[key] = loop.create_future()

        async def inject(fault: Fault) -> None:
            ended[key].set_result(fault)

        return Live("k", opened, inject)

    server, proxy = LiveSessions(ScaledClock(), True), LiveSessions(ScaledClock(), False)
    for table in (server, proxy):
        table.add("a/1/1", live("a/1/1", 0.0))
        table.add("b/1/1", live("b/1/1", 1.0))
    # one live session of variant a: a second one fits under the server's cap of 2
    assert server.decide(faults, "a/2/1", "k") is None
    # the proxy counts both: the oldest makes room
    decision = proxy.decide(faults, "a/2/1", "k")
    assert decision is not None and decision.evict == ("a/1/1",)
    assert await proxy.admit(decision, faults) is None  # accepted, once the oldest is ended
    fault = await asyncio.wait_for(ended["a/1/1"], 5)
    assert fault.policy == "concurrency_cap"
    assert not ended["b/1/1"].done()


async def test_the_timer_sleeps_to_the_nearest_deadline_and_a_nearer_one_wakes_it() -> None:
    clock = ScaledClock(1.0)
    faults = FaultProfile().start("k", clock.now())
    drv = SessionDriver(clock, FaultCarrier(asyncio.sleep), None, None, faults, print, print)  # type: ignore[arg-type]
    deadline = clock.now() + 3600.0
    fired: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def fire(now: float) -> bool:
        fired.set_result(now)
        return False  # the connection ended: the timer stops

    timers = asyncio.create_task(drv.run_timers(lambda: deadline, fire, drv.alive))
    while drv.until == math.inf:  # let the task compute its deadline
        await asyncio.sleep(0)
    assert drv.until == deadline  # asleep for an hour
    deadline = clock.now()  # a frame brought a deadline nearer: it sets `wake`, as the edges do
    assert deadline < drv.until
    drv.wake.set()
    assert await asyncio.wait_for(fired, 5) >= deadline
    await asyncio.wait_for(timers, 5)


async def test_expiry_sends_session_expired_then_closes_1001_on_a_real_socket() -> None:
    clock = ScaledClock(1000.0)  # the 1-second session lasts a wall millisecond
    outcome: asyncio.Future[tuple[str | None, list[Fault]]] = (
        asyncio.get_running_loop().create_future()
    )

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        notes: list[Fault] = []

        async def send_error(fault: Fault) -> None:
            await ws.send_json({"type": "error", "error": {"code": fault.error_code}})

        faults = FaultProfile().start("k", clock.now())
        carrier = FaultCarrier(asyncio.sleep)
        drv = SessionDriver(
            clock, carrier, request.transport, ws, faults, notes.append, send_error, 1.0
        )
        await drv.run_timers()
        outcome.set_result((drv.ended_by, notes))
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    listener = Listener(app, idle_timeout=5.0)
    port = await listener.start("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            event = await ws.receive_json(timeout=5)
            assert event["error"]["code"] == "session_expired"
            closing = await ws.receive(timeout=5)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001
        ended_by, notes = await asyncio.wait_for(outcome, 5)
        assert ended_by == "max_duration"
        assert [f.policy for f in notes] == ["max_duration"]
    finally:
        await listener.close()


async def test_a_listener_with_a_handshake_timer_closes_a_socket_that_never_sends_a_request():
    app = web.Application()
    listener = Listener(app, idle_timeout=5.0, handshake_timeout=0.05)
    port = await listener.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (
            await asyncio.wait_for(reader.read(), 5) == b""
        )  # the handshake timer, not the 5 s idle one
        writer.close()
    finally:
        await listener.close()
