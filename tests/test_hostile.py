"""Hostile peers. A server that sends anything at all never crashes a worker: every frame is
logged, the connection is classified, the worker goes on as its policy says. A client that
sends anything at all gets `error` events or a close, and the server keeps serving others."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.config.scenario import scenario_from_doc
from harness.config.target import Target
from harness.core.protocol import FAKE_SERVER_HEADER
from harness.edge.clock import ScaledClock
from harness.edge.server import MAX_FRAME_BYTES
from harness.edge.worker import Worker, WorkerSetup
from harness.log.frames import load
from harness.log.recorder import Recorder
from harness.log.rundir import write_json
from harness.run.runner import manifest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
event_types = st.sampled_from(
    [
        "session.created",
        "session.updated",
        "input_audio_buffer.committed",
        "error",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "input_audio_buffer.cleared",
        "transcription_session.updated",
        "made.up.type",
    ]
)
hostile_event = st.fixed_dictionaries(
    {"type": event_types},
    optional={
        "item_id": json_values,
        "transcript": json_values,
        "error": json_values,
        "session": json_values,
        "event_id": json_values,
    },
)
frames = st.one_of(
    st.tuples(st.just("text"), hostile_event.map(json.dumps)),
    st.tuples(st.just("text"), json_values.map(json.dumps)),
    st.tuples(st.just("text"), st.text(max_size=40)),
    st.tuples(st.just("binary"), st.binary(max_size=40)),
    st.tuples(st.just("huge"), st.integers(100_000, 2_000_000)),
)
endings = st.one_of(
    st.tuples(
        st.just("close"),
        st.sampled_from([1000, 1001, 1008, 1011, 1012, 1013, 3000, 4000, 4999]),
        st.text(max_size=20),
    ),
    st.tuples(st.just("abort"), st.none(), st.none()),
    st.tuples(st.just("silence"), st.none(), st.none()),
)

SCENARIO = {
    "run": {"name": "h", "duration": "8s", "workers": 1, "time_scale": 20},
    "pacing": {"chunk_ms": 100},
    "turns": {"transcript_timeout": "2s"},
    "keepalive": {"ping_interval": "2s"},
    "reconnect": {"initial": "100ms", "max_attempts": 2, "healthy_after": "0s"},
}


async def run_against(script: list, ending: tuple, tmp_path, tone_library) -> object:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)  # never answers pings: half-open silence
        ws.headers[FAKE_SERVER_HEADER] = "1"  # stands in for the fake server: the run goes on
        await ws.prepare(request)
        for kind, payload in script:
            if kind == "text":
                await ws.send_str(payload)
            elif kind == "binary":
                await ws.send_bytes(payload)
            else:
                await ws.send_str("x" * payload)
        how, code, reason = ending
        if how == "close":
            await ws.close(code=code, message=reason.encode()[:100])
        elif how == "abort":
            request.transport.abort()
        else:
            await asyncio.sleep(1)
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    run_dir = tmp_path
    scenario = scenario_from_doc(SCENARIO, "hostile.toml")
    write_json(run_dir / "manifest.json", manifest(scenario, None, "now"))
    recorder = Recorder(run_dir / "events-client.arrows")
    clock = ScaledClock(20)
    stop = asyncio.get_running_loop().create_future()
    worker = Worker(
        WorkerSetup(
            0,
            "h",
            scenario.variants[0],
            clock,
            recorder,
            Target.fake(f"ws://127.0.0.1:{port}/v1/realtime"),
            tone_library,
            stop,
        )
    )
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(worker.run(http))
        done, _ = await asyncio.wait([task], timeout=0.6)
        if not done:
            stop.set_result(True)
            await asyncio.wait_for(task, 5)
        task.result()  # the worker never raised
    recorder.close()
    await runner.cleanup()
    return load(run_dir)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(script=st.lists(frames, max_size=6), ending=endings)
def test_a_hostile_server_never_crashes_a_worker(
    tmp_path_factory, tone_library, script, ending
) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    frames_ = asyncio.run(run_against(script, ending, tmp, tone_library))
    conns = frames_.connections
    assert len(conns) >= 1 and conns["cause"].notna().all()
    assert frames_.torn_batches == 0  # whatever came, the log stayed whole
    logged = frames_.events.loc[frames_.events["dir"] == "recv", "item"].dropna()
    assert all(isinstance(i, str) for i in logged)  # only strings from the peer are kept
    if ending[0] == "close" and ending[1] in (1008, 4000, 4999) and len(conns) == 1:
        assert (frames_.events["type"] == "worker_stopped").any()  # stop codes stop it


async def open_pair(http: aiohttp.ClientSession, url: str) -> tuple:
    """A bystander and a hostile client, both past session.created."""
    pair = []
    for key in ("b", "h"):
        ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {key}"})
        await ws.receive_json(timeout=5)
        pair.append(ws)
    return tuple(pair)


async def assert_still_served(bystander: aiohttp.ClientWebSocketResponse) -> None:
    await bystander.send_json({"type": "input_audio_buffer.clear"})
    assert (await bystander.receive_json(timeout=5))["type"] == "input_audio_buffer.cleared"
    await bystander.close()


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\xff binary garbage",
        "{not json",
        json.dumps({"type": 42}),
        json.dumps([{"type": "input_audio_buffer.commit"}]),
        json.dumps({"type": "input_audio_buffer.append", "audio": ["not", "a", "string"]}),
    ],
)
async def test_a_hostile_client_gets_errors_and_the_server_serves_others(
    fake_server, frame
) -> None:
    server = await fake_server()
    async with aiohttp.ClientSession() as http:
        bystander, hostile = await open_pair(http, server.url)
        await (hostile.send_bytes(frame) if isinstance(frame, bytes) else hostile.send_str(frame))
        reply = await hostile.receive_json(timeout=5)
        assert reply["type"] == "error" and reply["error"]["message"]
        await hostile.close()
        await assert_still_served(bystander)


async def test_an_oversize_frame_closes_only_that_connection(fake_server) -> None:
    server = await fake_server()
    async with aiohttp.ClientSession() as http:
        bystander, hostile = await open_pair(http, server.url)
        try:
            await hostile.send_str("x" * (MAX_FRAME_BYTES + 1))
            msg = await hostile.receive(timeout=10)
            # the server refuses it: 1009 (message too big), or the socket is gone first
            assert msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            )
            assert msg.type is not aiohttp.WSMsgType.CLOSE or msg.data == 1009
        except ConnectionError:
            pass  # closed while the frame was still being written
        await assert_still_served(bystander)


async def test_many_connections_and_a_slow_reader_do_not_stall_the_others(fake_server) -> None:
    """200 connections at once; one of them floods commits and never reads its replies. The
    server keeps serving the rest, and what it holds for the slow reader stays bounded."""
    server = await fake_server()
    audio = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 1200})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        crowd = await asyncio.gather(
            *(
                http.ws_connect(server.url, headers={"Authorization": f"Bearer c{i}"})
                for i in range(200)
            )
        )
        for ws in crowd:
            assert (await ws.receive_json(timeout=10))["type"] == "session.created"
        slow = crowd[0]
        for _ in range(300):  # each commit brings several replies the client never reads
            await slow.send_str(audio)
            await slow.send_str('{"type":"input_audio_buffer.commit"}')
        for ws in crowd[1:50]:
            await ws.send_json({"type": "input_audio_buffer.clear"})
            reply = await ws.receive_json(timeout=5)
            assert reply["type"] == "input_audio_buffer.cleared"
        # the server writes to the slow reader only as fast as it reads (backpressure): its
        # side of that socket never buffers more than the transport's high-water mark allows
        buffered = [t.get_write_buffer_size() for t in _server_transports(server)]
        assert max(buffered) < 1 << 20
        await asyncio.gather(*(ws.close() for ws in crowd))


def _server_transports(server) -> list:
    protocols = server._runner.server.connections  # aiohttp's live request handlers
    return [p.transport for p in protocols if p.transport is not None]
