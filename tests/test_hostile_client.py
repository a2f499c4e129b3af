"""The worker against a hostile endpoint: redirects, endless messages, deep JSON, stalled or
throttled handshakes, credentials in URLs, and reconnect loops. Real sockets on 127.0.0.1;
every timing is asserted on the scenario times the worker recorded itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pandas as pd
import pytest
from aiohttp import web

from harness.clock import ScaledClock
from harness.frames import load
from harness.recorder import Recorder
from harness.runner import manifest, write_json
from harness.scenario import scenario_from_doc
from harness.target import Target
from harness.worker import HANDSHAKE_TIMEOUT, Worker, WorkerSetup

CANARY = "sk-canary-7b1e0c55d4"
TIME_SCALE = 20
BASE = {
    "run": {"name": "c", "duration": "10m", "workers": 1, "time_scale": TIME_SCALE},
    "pacing": {"chunk_ms": 100},
    "turns": {"transcript_timeout": "3s"},
    "silence": {"gap": "0.5s"},
    "reconnect": {"initial": "100ms", "max_attempts": 2, "healthy_after": "0s", "jitter": 0},
}


def doc(**sections: dict) -> dict:
    """BASE with some sections' keys replaced."""
    out = {k: dict(v) for k, v in BASE.items()}
    for name, keys in sections.items():
        out.setdefault(name, {}).update(keys)
    return out


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Callable], Awaitable[int]]]:
    """Factory: an aiohttp app with one GET handler on 127.0.0.1:0; returns its port."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable) -> int:
        app = web.Application()
        app.router.add_get("/v1/realtime", handler)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return site._server.sockets[0].getsockname()[1]

    yield start
    for runner in runners:
        await runner.cleanup()


async def run_worker(
    port: int,
    scenario_doc: dict,
    run_dir: Path,
    library,
    until: asyncio.Future | None = None,
    headers: dict[str, str] | None = None,
) -> object:
    """One worker against ws://127.0.0.1:port until it stops by itself or `until` resolves
    (then the run stops it, as at the run's end); the run's frames."""
    scenario = scenario_from_doc(scenario_doc, "client.toml")
    write_json(run_dir / "manifest.json", manifest(scenario, None, "now"))
    recorder = Recorder(run_dir / "events-client.arrows")
    stop = asyncio.get_running_loop().create_future()
    target = Target("url", f"ws://127.0.0.1:{port}/v1/realtime", headers or {"api-key": CANARY})
    setup = WorkerSetup(
        0, "c", scenario.variants[0], ScaledClock(TIME_SCALE), recorder, target, library, stop
    )
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(Worker(setup).run(http))
        waits = {task} if until is None else {task, until}
        await asyncio.wait_for(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED), 60)
        stop.set_result("test over")
        await asyncio.wait_for(task, 10)
    recorder.close()
    return load(run_dir)


def rows(frames, type_: str) -> pd.DataFrame:
    events = frames.events
    return events[events["type"] == type_].sort_values("t")


# 1. redirects ---------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirected_handshake_fails_and_the_key_never_reaches_the_other_origin(
    status, serve, tmp_path, tone_library
) -> None:
    received: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(b"<connected>")
        try:
            received.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
        except (asyncio.IncompleteReadError, TimeoutError):
            pass
        writer.close()  # answer nothing: a follower then fails at once instead of waiting

    listener = await asyncio.start_server(elsewhere, "127.0.0.1", 0)
    other = listener.sockets[0].getsockname()[1]
    location = f"http://127.0.0.1:{other}/v1/realtime?api-key=QUERYKEY"

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location})

    port = await serve(redirect)
    frames = await run_worker(port, doc(), tmp_path, tone_library)
    listener.close()
    await listener.wait_closed()

    assert received == []  # no request at all reached the redirect's target
    handshakes = rows(frames, "handshake")
    assert len(handshakes) == 2  # max_attempts, then the policy stops the worker
    assert (handshakes["code"] == status).all()
    assert handshakes["text"].str.contains(f"redirect to 127.0.0.1:{other}").all()
    assert (frames.connections["cause"] == "handshake_failed").all()
    assert (frames.connections["handshake_status"] == status).all()
    logged = frames.events.to_csv()
    assert "QUERYKEY" not in logged and CANARY not in logged


# 4a. stalled handshakes --------------------------------------------------------------------
async def test_a_stalled_handshake_fails_after_the_handshake_timeout(
    tmp_path, tone_library
) -> None:
    """A server that accepts TCP and never answers costs HANDSHAKE_TIMEOUT scenario seconds
    per attempt (aiohttp alone would wait 300 wall seconds)."""
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # hold the socket open, reading, answering nothing

    listener = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    frames = await run_worker(port, doc(), tmp_path, tone_library)
    for writer in held:
        writer.close()
    listener.close()
    await listener.wait_closed()

    conns = frames.connections
    assert len(conns) == 2 and (conns["cause"] == "handshake_failed").all()
    assert conns["handshake_error"].str.contains(f"within {HANDSHAKE_TIMEOUT:g} s").all()
    latency = conns["handshake_latency"]
    assert (latency >= HANDSHAKE_TIMEOUT).all() and (latency < 3 * HANDSHAKE_TIMEOUT).all()
    assert len(rows(frames, "worker_stopped")) == 1
