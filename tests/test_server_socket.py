"""The fake server over real loopback sockets, seen by a plain aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import json
import zlib

import aiohttp
import pytest

from harness.config.faults import parse_faults
from harness.core.protocol import SESSION_KEY_HEADER
from harness.core.session import SessionLimits
from harness.core.transcript import parse_transcript
from harness.edge.clock import ScaledClock
from harness.edge.server import ServerConfig

AUTH = {"Authorization": "Bearer test-key"}


async def next_event(ws: aiohttp.ClientWebSocketResponse) -> dict:
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_one_utterance_end_to_end(fake_server) -> None:
    server = await fake_server(
        ServerConfig(limits=SessionLimits(latency_base=0.05, latency_per_audio_second=0))
    )
    pcm = bytes(range(256)) * 30
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        assert ws._response.headers["x-request-id"].startswith("req_")
        assert (await next_event(ws))["type"] == "session.created"
        await ws.send_json(
            {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
        )
        assert (await next_event(ws))["type"] == "session.updated"
        await ws.send_json(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
        )
        await ws.send_json({"type": "input_audio_buffer.commit"})
        seen = []
        while not seen or seen[-1]["type"] != (
            "conversation.item.input_audio_transcription.completed"
        ):
            seen.append(await next_event(ws))
        assert seen[0]["type"] == "input_audio_buffer.committed"
        assert parse_transcript(seen[-1]["transcript"]).crc32 == zlib.crc32(pcm)


async def test_age_hazard_abort_is_seen_as_1006_without_close_frame(fake_server) -> None:
    faults = parse_faults({"session_age": {"mean": "50ms"}}, "t", seed=1)
    server = await fake_server(ServerConfig(faults=faults))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers={**AUTH, SESSION_KEY_HEADER: "k"})
        types = []
        while True:
            msg = await ws.receive(timeout=10)
            types.append(msg.type)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        assert aiohttp.WSMsgType.CLOSE not in types  # no close frame ever arrived
        assert ws.close_code == 1006


async def test_close_frame_action_carries_code_and_reason(fake_server) -> None:
    faults = parse_faults(
        {"session_age": {"mean": "50ms", "action": "close", "code": 1011, "reason": "internal"}},
        "t",
        seed=1,
    )
    server = await fake_server(ServerConfig(faults=faults))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH)
        await next_event(ws)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1011, "internal")


async def test_session_expiry_sends_error_then_closes_1001(fake_server) -> None:
    server = await fake_server(
        ServerConfig(limits=SessionLimits(max_duration=6.0)), clock=ScaledClock(60.0)
    )  # 6 scenario s = 0.1 s wall
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers=AUTH)
        await next_event(ws)
        error = await next_event(ws)
        assert error["error"]["code"] == "session_expired"
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/realtime?intent=transcription", {}, 401),
        ("/v1/realtime?intent=transcription", {"Authorization": "Bearer "}, 401),
        ("/v2/elsewhere", AUTH, 404),
    ],
)
async def test_handshake_refusals(fake_server, path: str, headers: dict, status: int) -> None:
    server = await fake_server()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"ws://127.0.0.1:{server.port}{path}", headers=headers)
        assert info.value.status == status


@pytest.mark.parametrize(
    "path",
    [
        "/openai/v1/realtime?intent=transcription&deployment=d",
        "/openai/realtime?api-version=2025-04-01-preview&intent=transcription&deployment=d&model=x",
    ],
)
async def test_azure_paths_and_api_key_header(fake_server, path: str) -> None:
    server = await fake_server()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{server.port}{path}", headers={"api-key": "k"}) as ws,
    ):
        assert "apim-request-id" in ws._response.headers
        assert (await next_event(ws))["type"] == "session.created"


class RowLog:
    """Stands in for a Recorder: keeps the server's meta rows as (type, fields)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict]] = []

    def record(self, row, wall, src, variant, worker, conn) -> None:
        self.rows.append((row.type, row.fields))

    def of(self, type_: str) -> list[dict]:
        return [fields for t, fields in self.rows if t == type_]


UPDATE = {"type": "session.update", "session": {"type": "transcription"}}


@pytest.mark.parametrize(
    "frame",
    ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, "[" * 100_000],
    ids=["list-1000", "object-1000", "unclosed-100000"],
)
async def test_a_deeply_nested_frame_is_an_error_and_the_session_goes_on(
    fake_server, frame: str
) -> None:
    server = await fake_server()
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        await next_event(ws)
        await ws.send_str(frame)
        error = await next_event(ws)
        assert (error["type"], error["error"]["type"]) == ("error", "invalid_request_error")
        await ws.send_json(UPDATE)
        assert (await next_event(ws))["type"] == "session.updated"


async def test_a_failure_handling_one_frame_is_that_frames_error_and_never_the_clients(
    fake_server, monkeypatch
) -> None:
    """A planted bug in the session: the frame that trips it gets a `server_error` event, the
    server logs the failure as its own, and the connection goes on."""
    from harness.core.session import TranscriptionSession

    real = TranscriptionSession.receive

    def buggy(self, text, now):
        if "boom" in str(text):
            raise AttributeError("planted bug")
        return real(self, text, now)

    monkeypatch.setattr(TranscriptionSession, "receive", buggy)
    log = RowLog()
    server = await fake_server(recorder=log)
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        await next_event(ws)
        await ws.send_json({"type": "session.update", "event_id": "boom"})
        error = await next_event(ws)
        assert (error["type"], error["error"]["type"]) == ("error", "server_error")
        await ws.send_json(UPDATE)
        assert (await next_event(ws))["type"] == "session.updated"
    (failed,) = log.of("frame_error")
    assert failed["text"] == "AttributeError" and "planted bug" in failed["detail"]["error"]


async def test_a_crash_outside_a_frame_closes_1011_and_is_logged_as_the_servers(
    fake_server, monkeypatch
) -> None:
    from harness.core.faults import FaultSet

    def crash(self, now, kind):
        raise RuntimeError("planted bug in a policy")

    monkeypatch.setattr(FaultSet, "on_frame", crash)
    log = RowLog()
    faults = parse_faults({"idle_timeout": {"after": "1h"}}, "t", seed=1)
    server = await fake_server(ServerConfig(faults=faults), recorder=log)
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        await next_event(ws)
        await ws.send_json(UPDATE)
        assert (await next_event(ws))["type"] == "session.updated"
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
    for _ in range(50):  # the handler logs its close just after the socket closes
        if log.of("session_close"):
            break
        await asyncio.sleep(0.01)
    (crashed,) = log.of("server_crash")
    assert "planted bug" in crashed["detail"]["error"]
    (closed,) = log.of("session_close")
    assert closed["text"] == "server_error"


# --- idle sockets -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /v1/realtime?intent=transcription HTTP/1.1\r\nHost: x\r\nUpgrade: webs"],
    ids=["nothing", "half-a-request"],
)
async def test_a_socket_that_never_completes_its_upgrade_is_closed(fake_server, sent) -> None:
    server = await fake_server(ServerConfig(upgrade_timeout=0.01))  # the 0.5 s wall floor
    assert server.upgrade_wall_timeout == 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(sent)
    try:
        # EOF is the server closing; aiohttp's default would hold it for an hour
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    finally:
        writer.close()


async def test_the_upgrade_timeout_spares_upgraded_sessions(fake_server) -> None:
    server = await fake_server(ServerConfig(upgrade_timeout=0.01))
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        await next_event(ws)
        await asyncio.sleep(server.upgrade_wall_timeout * 2)
        await ws.send_json(UPDATE)
        assert (await next_event(ws))["type"] == "session.updated"


async def test_an_idle_session_is_closed_1001_after_max_idle_scaled(fake_server) -> None:
    log = RowLog()
    server = await fake_server(
        ServerConfig(limits=SessionLimits(max_idle=6.0)), clock=ScaledClock(60.0), recorder=log
    )  # 6 scenario s = 0.1 s wall
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, headers=AUTH) as ws:
        await next_event(ws)
        error = await next_event(ws)
        assert error["error"]["code"] == "idle_timeout"
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert [f["text"] for f in log.of("fault")] == ["max_idle"]


def test_an_idle_timeout_policy_replaces_the_servers_idle_limit() -> None:
    from harness.edge.server import FakeServer

    server = FakeServer(ScaledClock(1.0))
    assert server._limits(parse_faults({}, "t")).max_idle == 1800.0
    faults = parse_faults({"idle_timeout": {"after": "45m"}}, "t")
    assert server._limits(faults).max_idle is None
