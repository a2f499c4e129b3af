"""Each fault kind over real loopback sockets, as a plain aiohttp client observes it."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
from helpers import ManualClock, vad_off

from harness.config.faults import parse_faults
from harness.core.protocol import SESSION_KEY_HEADER
from harness.edge.clock import ScaledClock
from harness.edge.server import ServerConfig

AUTH = {"Authorization": "Bearer test-key"}
LOUD = base64.b64encode(b"\x00\x40\x00\xc0" * 2400).decode()  # 200 ms, loud


async def server_with(fake_server, faults: dict, scale: float = 1.0):
    return await fake_server(
        ServerConfig(faults=parse_faults(faults, "t", seed=1)), clock=ScaledClock(scale)
    )


async def drain(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> list:
    """Messages until the socket ends: (type, data, extra) triples."""
    seen = []
    while True:
        msg = await ws.receive(timeout=timeout)
        seen.append(
            (msg.type, msg.data if msg.type is not aiohttp.WSMsgType.ERROR else None, msg.extra)
        )
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return seen


def kinds(seen: list) -> list:
    return [t for t, _, _ in seen]


async def test_reset_is_seen_as_1006_without_close_frame(fake_server) -> None:
    server = await server_with(fake_server, {"session_age": {"mean": "50ms", "action": "reset"}})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH)
        seen = await drain(ws)
        assert aiohttp.WSMsgType.CLOSE not in kinds(seen)
        assert ws.close_code == 1006


async def test_half_open_is_noticed_only_by_the_client_heartbeat(fake_server) -> None:
    server = await server_with(
        fake_server, {"session_age": {"mean": "1ms", "action": "half_open", "hold": "3s"}}
    )
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH, heartbeat=0.2)
        await ws.send_str(json.dumps({"type": "input_audio_buffer.clear"}))
        seen = await drain(ws)
        # at most session.created slipped out before the fault; no reply, no close frame
        assert [json.loads(d)["type"] for t, d, _ in seen if t is aiohttp.WSMsgType.TEXT] in (
            [],
            ["session.created"],
        )
        assert aiohttp.WSMsgType.CLOSE not in kinds(seen)
        assert ws.close_code == 1006
        assert isinstance(ws.exception(), aiohttp.ServerTimeoutError)


async def test_delayed_close_goes_silent_then_sends_the_code(fake_server) -> None:
    server = await server_with(
        fake_server,
        {
            "session_age": {
                "mean": "1ms",
                "action": "delayed_close",
                "delay": "300ms",
                "code": 1013,
                "reason": "try again later",
            }
        },
    )
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH)
        started = loop.time()
        await ws.send_str(json.dumps({"type": "input_audio_buffer.clear"}))
        seen = await drain(ws)
        closes = [(d, e) for t, d, e in seen if t is aiohttp.WSMsgType.CLOSE]
        assert closes == [(1013, "try again later")]
        assert loop.time() - started >= 0.25
        assert not any(t is aiohttp.WSMsgType.TEXT and "cleared" in d for t, d, _ in seen)


async def test_error_action_sends_an_error_event_and_keeps_the_session(fake_server) -> None:
    server = await server_with(fake_server, {"buffer_pressure": {"max_ms": 300, "action": "error"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        await ws.receive_json(timeout=5)  # session.created
        await ws.send_json(
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
        )
        assert (await ws.receive_json(timeout=5))["type"] == "session.updated"
        for _ in range(2):
            await ws.send_json({"type": "input_audio_buffer.append", "audio": LOUD})
        error = await ws.receive_json(timeout=5)
        assert error["type"] == "error"
        assert error["error"]["code"] == "input_audio_buffer_full"
        await ws.send_json({"type": "input_audio_buffer.commit"})
        assert (await ws.receive_json(timeout=5))["type"] == "input_audio_buffer.committed"


async def test_idle_timeout_drops_a_quiet_client_and_spares_a_busy_one(fake_server) -> None:
    """On a clock the test moves: the server's idle deadlines meet the scenario times chosen
    here, however late the machine runs each wall-clock step."""
    clock = ManualClock()
    server = await fake_server(
        ServerConfig(faults=parse_faults({"idle_timeout": {"after": "6s"}}, "t", seed=1)), clock
    )

    async def reply(ws: aiohttp.ClientWebSocketResponse, kind: str) -> None:
        """The next event of `kind`, skipping others; fails if the socket ends first."""
        while True:
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.TEXT, (kind, msg)
            if json.loads(msg.data)["type"] == kind:
                return

    async with aiohttp.ClientSession() as http:
        quiet = await http.ws_connect(server.url, headers=AUTH, autoping=False)
        busy = await http.ws_connect(server.url, headers=AUTH)
        for ws in (quiet, busy):  # both sessions open at scenario time 0
            await reply(ws, "session.created")
        await busy.send_str(vad_off())
        await reply(busy, "session.updated")
        for step in range(1, 9):  # a frame every 2.5 scenario s for 20 scenario s
            clock.advance(2.5)
            await clock.settle(horizon=6.0)  # deadlines passed by now have fired
            await busy.send_json({"type": "input_audio_buffer.append", "audio": LOUD})
            # the server answers in order: once `cleared` is here, it saw the append at `step`
            await busy.send_json({"type": "input_audio_buffer.clear"})
            await reply(busy, "input_audio_buffer.cleared")
            if step == 2:  # 5 scenario s of silence: still alive (pings don't reset the timer)
                await quiet.ping()
                assert (await quiet.receive(timeout=10)).type is aiohttp.WSMsgType.PONG
        assert (await drain(quiet))[-1][0] is aiohttp.WSMsgType.CLOSED
        assert quiet.close_code == 1006
        assert not busy.closed
        await busy.close()


async def test_accept_then_close_1008(fake_server) -> None:
    server = await server_with(fake_server, {"accept_then_close": {}})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH)
        seen = await drain(ws)
        assert [(d, e) for t, d, e in seen if t is aiohttp.WSMsgType.CLOSE] == [
            (1008, "Invalid API key")
        ]


async def test_concurrency_cap_rejects_with_429(fake_server) -> None:
    server = await server_with(fake_server, {"concurrency_cap": {"max_sessions": 2}})
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(server.url, headers=AUTH)
        second = await http.ws_connect(server.url, headers=AUTH)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(server.url, headers=AUTH)
        assert info.value.status == 429
        other_key = await http.ws_connect(server.url, headers={"api-key": "someone-else"})
        for ws in (first, second, other_key):
            await ws.close()


async def test_concurrency_cap_can_drop_the_oldest_session(fake_server) -> None:
    server = await server_with(
        fake_server,
        {"concurrency_cap": {"max_sessions": 1, "over": "drop_oldest", "action": "abort"}},
    )
    async with aiohttp.ClientSession() as http:
        oldest = await http.ws_connect(server.url, headers=AUTH)
        await oldest.receive_json(timeout=5)
        newest = await http.ws_connect(server.url, headers=AUTH)
        seen = await drain(oldest)
        assert aiohttp.WSMsgType.CLOSE not in kinds(seen) and oldest.close_code == 1006
        assert (await newest.receive_json(timeout=5))["type"] == "session.created"
        await newest.close()


async def test_handshake_faults_answer_http_errors_deterministically(fake_server) -> None:
    server = await server_with(fake_server, {"handshake_faults": {"share": 0.5, "statuses": [503]}})

    async def outcome(key: str) -> int:
        try:
            ws = await http.ws_connect(server.url, headers={**AUTH, SESSION_KEY_HEADER: key})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101

    async with aiohttp.ClientSession() as http:
        first = [await outcome(f"w/{i}") for i in range(20)]
        again = [await outcome(f"w/{i}") for i in range(20)]
    assert set(first) == {101, 503}
    assert first == again  # the same session keys meet the same faults


async def test_a_late_wake_up_sends_what_fell_due_first_before_the_fault(fake_server) -> None:
    """The server wakes late (here: the clock jumps 10 s at once) and finds both a transcript
    (due 0.3 s after the commit) and an idle timeout (due 6 s after it) due: the transcript
    goes out first, then the drop, as they would have in time."""
    clock = ManualClock()
    server = await fake_server(
        ServerConfig(faults=parse_faults({"idle_timeout": {"after": "6s"}}, "t", seed=1)), clock
    )
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH)
        assert (await ws.receive_json(timeout=5))["type"] == "session.created"
        await ws.send_str(vad_off())
        assert (await ws.receive_json(timeout=5))["type"] == "session.updated"
        await ws.send_json({"type": "input_audio_buffer.append", "audio": LOUD})
        await ws.send_json({"type": "input_audio_buffer.commit"})
        seen = []
        while "input_audio_buffer.committed" not in seen:  # the server's clock reads 0 here
            seen.append((await ws.receive_json(timeout=5))["type"])
        clock.advance(10.0)
        after = [json.loads(data)["type"] for kind, data, _ in await drain(ws) if data]
    assert "conversation.item.input_audio_transcription.completed" in after
    assert ws.close_code == 1006
