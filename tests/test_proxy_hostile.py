"""The proxy against hostile peers: an upstream that redirects or floods, a client that sends
frames nobody can parse or never finishes its handshake, and a relay that fails. Real servers on
127.0.0.1 ephemeral ports, real frames; each test names the promise in docs/reliability.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from test_proxy import CLIENT_KEY, UPSTREAM_KEY, ProxyRun

from harness.core.client import ClientConnection
from harness.edge.proxy import MAX_FRAME_BYTES, UPSTREAM_MAX_MSG_BYTES, RealtimeProxy
from harness.edge.server import ServerConfig

NESTED = "[" * 1000 + "]" * 1000  # 2 KB, 1,000 levels: deeper than Python's recursion limit
CLEAR = json.dumps({"type": "input_audio_buffer.clear"})
ACK = json.dumps({"type": "input_audio_buffer.cleared"})


@pytest.fixture
async def serve() -> AsyncIterator[Callable]:
    """Factory: an inline upstream (one handler for every path) on 127.0.0.1:0; its ws:// URL."""
    runners: list[web.AppRunner] = []

    async def start(handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", handler)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/realtime"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def upstream(fake_server):
    """The fake server, accepting only the upstream's key."""
    return await fake_server(ServerConfig(api_keys=frozenset({UPSTREAM_KEY})))


async def _relaying_upstream(serve, received: list, closes: list) -> str:
    """An upstream that keeps every frame it gets, answers a clear with `cleared`, sends the
    nested frame first, and notes the close it is sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(NESTED)
        async for msg in ws:
            received.append(msg.data)
            if msg.data == CLEAR:
                await ws.send_str(ACK)
        closes.append(ws.close_code)
        return ws

    return await serve(handler)


# 1. redirects ----------------------------------------------------------------------------------
async def test_an_upstream_redirect_fails_the_handshake_and_is_never_followed(
    tmp_path, serve
) -> None:
    """A 307 to another origin: the origin hears nothing (not the upstream's key, not a
    connection); the client gets 502; the row keeps the status and the Location's host only."""
    heard: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.readuntil(b"\r\n\r\n"))  # recorded before it answers
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(elsewhere, "127.0.0.1", 0)
    other = listener.sockets[0].getsockname()[1]

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{other}/v1/realtime?api-key=secret9")

    url = await serve(redirect)
    try:
        async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await run.connect(http)
    finally:
        listener.close()
    assert heard == []  # followed, it got the upstream's key: `Authorization: Bearer sk-...`
    assert refused.value.status == 502
    (conn,) = run.frames().connections.itertuples()
    assert (conn.handshake_status, conn.cause) == (307, "handshake_failed")
    assert f"127.0.0.1:{other}" in conn.handshake_error
    assert "secret9" not in conn.handshake_error and "/v1" not in conn.handshake_error
    for path in run.run_dir.rglob("*"):
        if path.is_file():
            assert b"secret9" not in path.read_bytes(), path
            assert UPSTREAM_KEY.encode() not in path.read_bytes(), path


# 2. bounds -------------------------------------------------------------------------------------
async def test_an_oversize_upstream_message_ends_the_connection_with_1009_on_both_sides(
    tmp_path, serve
) -> None:
    upstream_ended = asyncio.get_running_loop().create_future()

    async def flood(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await ws.send_str("x" * (UPSTREAM_MAX_MSG_BYTES + 1))
            async for _ in ws:
                pass
            upstream_ended.set_result(ws.close_code)
        except ConnectionError:  # closed with its message unread: TCP resets the sender
            upstream_ended.set_result("reset")
        return ws

    url = await serve(flood)
    async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
        client = await http.ws_connect(
            f"{run.base}/v1/realtime",
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            max_msg_size=0,  # the client would take it: only the proxy's bound may stop it
        )
        msg = await client.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
        assert "too big" in msg.extra
        await client.close()
    assert await asyncio.wait_for(upstream_ended, 10) in (1009, "reset")  # the upstream too
    (conn,) = run.frames().connections.itertuples()
    assert (conn.close_code, conn.closed_by, conn.cause) == (1009, "server", "protocol_error")
    assert "too big" in conn.close_reason and conn.dropped


async def test_an_oversize_client_message_is_recorded_as_1009_not_a_lost_client(
    tmp_path, serve
) -> None:
    """The client side has its bound too (MAX_FRAME_BYTES): a message over it ends the
    connection as the client's protocol error with 1009, and the upstream gets a clean close,
    not the client's code."""
    received: list[str] = []
    closes: list[int | None] = []
    url = await _relaying_upstream(serve, received, closes)
    async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
        async with run.connect(http) as client:
            await client.receive(timeout=10)
            try:
                await client.send_str("x" * (MAX_FRAME_BYTES + 1))
                msg = await client.receive(timeout=10)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
            except ConnectionError:  # closed with its message unread: TCP resets the sender
                pass
    assert closes == [1000] and received == []
    (conn,) = run.frames().connections.itertuples()
    assert (conn.close_code, conn.closed_by, conn.cause) == (1009, "client", "protocol_error")
    assert "too big" in conn.close_reason


# 3. frames nobody can read, and a relay that fails ---------------------------------------------
async def test_a_deeply_nested_frame_is_relayed_byte_for_byte_recorded_and_the_relay_goes_on(
    tmp_path, serve
) -> None:
    received: list[str] = []
    closes: list[int | None] = []
    url = await _relaying_upstream(serve, received, closes)
    async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
        async with run.connect(http) as client:
            assert (await client.receive(timeout=10)).data == NESTED  # upstream -> client
            await client.send_str(NESTED)  # client -> upstream
            await client.send_str(CLEAR)
            assert (await client.receive(timeout=10)).data == ACK  # the relay went on
            await client.close()
    assert received == [NESTED, CLEAR] and closes == [1000]
    frames = run.frames()
    events = frames.events
    nested = events[events["type"] == "unparseable"]
    assert sorted(nested["dir"].astype(str)) == ["recv", "send"]
    assert (nested["bytes"] == len(NESTED)).all()
    (conn,) = frames.connections.itertuples()
    assert (conn.closed_by, conn.cause, conn.close_code) == ("client", "client_close", 1000)


async def test_a_frame_the_observer_fails_on_is_its_own_row_and_still_relayed(
    tmp_path, serve, monkeypatch
) -> None:
    """Any failure to observe one frame (here a planted bug) is that frame's row, not the end
    of the relay: the proxy stays transparent."""
    real = ClientConnection.client_frame

    def planted(self, now, data):
        if data == CLEAR:
            raise KeyError("planted observer bug")
        return real(self, now, data)

    monkeypatch.setattr(ClientConnection, "client_frame", planted)
    received: list[str] = []
    closes: list[int | None] = []
    url = await _relaying_upstream(serve, received, closes)
    async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
        async with run.connect(http) as client:
            await client.receive(timeout=10)
            await client.send_str(CLEAR)
            assert (await client.receive(timeout=10)).data == ACK
            await client.close()
    assert received == [CLEAR]
    events = run.frames().events
    (row,) = events[(events["dir"] == "send")].itertuples()
    assert row.type == "unparseable" and "KeyError" in row.text and row.bytes == len(CLEAR)


async def test_a_relay_task_that_dies_closes_both_sides_and_says_why(
    tmp_path, serve, monkeypatch
) -> None:
    """A relay task failing for any reason (here: recording one row raises) ends its
    connection: the client and the upstream are both closed (1011), the close row says why."""
    real = RealtimeProxy.record

    def planted(self, rows, worker, conn, src="client"):
        if any(row.type == "input_audio_buffer.clear" for row in rows):
            raise OSError("planted: the log refused a row")
        return real(self, rows, worker, conn, src)

    monkeypatch.setattr(RealtimeProxy, "record", planted)
    received: list[str] = []
    closes: list[int | None] = []
    url = await _relaying_upstream(serve, received, closes)
    async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
        async with run.connect(http) as client:
            await client.receive(timeout=10)
            await client.send_str(CLEAR)
            msg = await client.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
            assert "relay failed" in msg.extra
    assert closes == [1011]
    (conn,) = run.frames().connections.itertuples()
    assert (conn.closed_by, conn.cause, conn.close_code) == ("server", "protocol_error", 1011)
    assert "relay failed" in conn.close_reason and "OSError" in conn.close_reason
    assert conn.dropped


# 4. nothing upstream before a valid handshake --------------------------------------------------
async def test_plain_gets_open_no_upstream_and_no_connection(tmp_path, serve) -> None:
    arrivals: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        arrivals.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    url = await serve(counting)
    async with ProxyRun(tmp_path, url) as run, aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        address = f"http://127.0.0.1:{run.proxy.port}/v1/realtime"

        async def plain_get() -> tuple[int, str]:
            async with http.get(address, headers=auth) as response:
                return response.status, await response.text()

        answers = await asyncio.gather(*(plain_get() for _ in range(50)))
    assert arrivals == []  # not one upstream session
    assert run.recorder.count == 0  # and no phantom connection in the run
    assert {status for status, _ in answers} == {426}
    assert "WebSocket" in json.loads(answers[0][1])["error"]["message"]


# 5. sockets that never upgrade -----------------------------------------------------------------
@pytest.mark.parametrize(
    "send",
    [
        b"",  # connects and says nothing
        b"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web",  # a partial request
        b"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # answered, then idle
    ],
    ids=["silent", "partial", "idle-after-answer"],
)
async def test_a_socket_that_never_upgrades_is_closed_after_the_handshake_timeout(
    tmp_path, upstream, send
) -> None:
    bound = 0.2
    async with ProxyRun(tmp_path, upstream.url, handshake_timeout=bound) as run:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", run.proxy.port)
        started = loop.time()
        writer.write(send)
        try:
            # EOF after any answer; far inside this only when the proxy closed it
            await asyncio.wait_for(reader.read(), 25 * bound)
            elapsed = loop.time() - started
        finally:
            writer.close()
    assert elapsed >= bound * 0.9  # the bound's timer, not something sooner


async def test_an_upgraded_connection_outlives_the_handshake_timeout(tmp_path, upstream) -> None:
    async with (
        ProxyRun(tmp_path, upstream.url, handshake_timeout=0.05) as run,
        aiohttp.ClientSession() as http,
        run.connect(http) as client,
    ):
        assert (await client.receive_json(timeout=10))["type"] == "session.created"
        await asyncio.sleep(0.2)  # four bounds: the timer must not touch an upgraded socket
        await client.send_json({"type": "input_audio_buffer.clear"})
        assert (await client.receive_json(timeout=10))["type"] == "input_audio_buffer.cleared"
