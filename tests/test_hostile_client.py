"""The worker against a hostile endpoint: redirects, endless messages, deep JSON, stalled or
throttled handshakes, credentials in URLs, and reconnect loops. Real sockets on 127.0.0.1;
every timing is asserted on the scenario times the worker recorded itself."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from conftest import rtsoak, write_scenario
from helpers import scenario_from, soak
from hypothesis import given
from hypothesis import strategies as st

from harness.config.scenario import scenario_from_doc
from harness.config.target import Target, redact_url
from harness.core.protocol import FAKE_SERVER_HEADER
from harness.core.reconnect import ReconnectPolicy, retry_after
from harness.edge.clock import ScaledClock
from harness.edge.link import HANDSHAKE_TIMEOUT, MAX_MESSAGE_BYTES
from harness.edge.worker import Worker, WorkerSetup
from harness.log.frames import load
from harness.log.recorder import Recorder
from harness.log.rundir import write_json
from harness.run.runner import manifest

CANARY = "sk-canary-7b1e0c55d4"
TIME_SCALE = 20
BASE = {
    "run": {"name": "c", "duration": "10m", "workers": 1, "time_scale": TIME_SCALE},
    "pacing": {"chunk_ms": 100},
    "turns": {"transcript_timeout": "3s"},
    "silence": {"gap": "0.5s"},
    "reconnect": {"initial": "100ms", "max_attempts": 2, "healthy_after": "1h", "jitter": 0},
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
        app.on_response_prepare.append(as_the_fake_server)
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


async def as_the_fake_server(_request: web.Request, response: web.StreamResponse) -> None:
    """The stand-ins answer as rtsoak's fake server does, so an uncapped run goes on."""
    response.headers[FAKE_SERVER_HEADER] = "1"


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


def server_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A WebSocket frame as a server writes it (unmasked)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 1 << 16:
        return head + bytes([126]) + n.to_bytes(2, "big") + payload
    return head + bytes([127]) + n.to_bytes(8, "big") + payload


async def accept_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server's half of a WebSocket handshake, by hand, then session.created/updated."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    ).decode()
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept}\r\n{FAKE_SERVER_HEADER}: 1\r\n\r\n".encode()
    )
    for type_ in ("session.created", "session.updated"):
        writer.write(server_frame(json.dumps({"type": type_, "session": {"id": "s"}}).encode()))
    await writer.drain()


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


# 2. inbound message size ----------------------------------------------------------------------
async def test_endless_continuation_frames_end_the_connection_with_1009_and_the_run_goes_on(
    tmp_path, tone_library
) -> None:
    """A message that never ends (a text frame, then continuation frames forever) is cut at
    MAX_MESSAGE_BYTES: that connection ends 1009 'message too big', the worker reconnects."""
    sent: list[int] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_websocket(reader, writer)
        chunk = b"x" * (1 << 16)
        total, opcode = 0, 1
        try:
            while total < 4 * MAX_MESSAGE_BYTES:  # then hold: an unbounded reader would wait on
                writer.write(server_frame(chunk, opcode, fin=False))
                await writer.drain()
                total, opcode = total + len(chunk), 0
            await reader.read()
        except ConnectionError:
            pass
        finally:
            sent.append(total)
            writer.close()

    listener = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    scenario = doc(turns={"transcript_timeout": "60s"})
    frames = await run_worker(port, scenario, tmp_path, tone_library)
    listener.close()
    await listener.wait_closed()

    conns = frames.connections.sort_values("conn")
    assert len(conns) == 2  # the first ended, the worker went on to its second attempt
    assert (conns["handshake_status"] == 101).all()
    assert (conns["close_code"] == 1009).all()
    assert conns["close_reason"].str.contains("message too big").all()
    assert (conns["cause"] == "protocol_error").all()
    assert max(sent) < 4 * MAX_MESSAGE_BYTES  # the worker stopped reading, not the server


async def test_one_message_over_the_bound_ends_its_connection_with_1009(
    serve, tmp_path, tone_library
) -> None:
    async def huge(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "session": {"id": "s"}}))
        await ws.send_str(json.dumps({"type": "session.updated", "session": {"id": "s"}}))
        await ws.send_str("x" * (MAX_MESSAGE_BYTES + 1))
        await ws.receive()
        return ws

    port = await serve(huge)
    frames = await run_worker(
        port, doc(turns={"transcript_timeout": "60s"}), tmp_path, tone_library
    )
    conns = frames.connections
    assert len(conns) == 2 and (conns["close_code"] == 1009).all()
    assert conns["close_reason"].str.contains("message too big").all()


# 3. frames the worker cannot parse ------------------------------------------------------------
async def test_a_deeply_nested_frame_is_recorded_and_the_connection_goes_on(
    serve, tmp_path, tone_library
) -> None:
    """A 1,000-level nested frame (RecursionError in the stdlib parser) is recorded as one
    `unparseable` row naming the failure, each time; the utterance around it completes."""
    nested = '{"type": "x", "a": ' + "[" * 1000 + "]" * 1000 + "}"
    second_utterance = asyncio.get_running_loop().create_future()

    async def realtime(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "session": {"id": "s"}}))
        await ws.send_str(nested)
        commits = 0
        async for msg in ws:
            type_ = json.loads(msg.data)["type"]
            if type_ == "session.update":
                await ws.send_str(json.dumps({"type": "session.updated", "session": {}}))
            elif type_ == "input_audio_buffer.commit":
                commits += 1
                item = f"item_{commits}"
                await ws.send_str(nested)
                await ws.send_str(
                    json.dumps({"type": "input_audio_buffer.committed", "item_id": item})
                )
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "conversation.item.input_audio_transcription.completed",
                            "item_id": item,
                            "transcript": "hello",
                        }
                    )
                )
            elif type_ == "input_audio_buffer.clear" and commits and not second_utterance.done():
                second_utterance.set_result(None)
        return ws

    port = await serve(realtime)
    frames = await run_worker(port, doc(), tmp_path, tone_library, until=second_utterance)

    conns = frames.connections
    assert len(conns) == 1 and conns["cause"].iloc[0] == "scenario_end"  # never dropped
    bad = rows(frames, "unparseable")
    assert len(bad) >= 2 and bad["text"].str.contains("RecursionError").all()
    assert (bad["bytes"] == len(nested)).all()
    assert (frames.utterances["status"] == "completed").any()


# 4c. keys in URL user-info --------------------------------------------------------------------
USERINFO_SCENARIO = """
[run]
name = "u"
duration = "2s"
workers = 1
target = "url"
[audio]
dir = "{audio}"
[target]
url = "ws://user:{key}@127.0.0.1:9/v1/realtime"
header = "api-key"
key_env = "MY_STT_KEY"
"""


def test_a_key_in_url_user_info_is_refused_and_never_printed(tmp_path) -> None:
    write_scenario(tmp_path)  # the audio
    scenario = tmp_path / "userinfo.toml"
    scenario.write_text(USERINFO_SCENARIO.format(audio=tmp_path / "audio", key=CANARY))
    env = dict(os.environ, MY_STT_KEY="k")
    out = tmp_path / "runs"
    for args in (
        ("validate", str(scenario)),
        ("run", str(scenario), "--out", str(out), "--max-minutes", "1", "--max-audio-hours", "1"),
    ):
        result = rtsoak(*args, env=env)
        assert result.returncode == 2, result.stderr
        assert "user:KEY@" in result.stderr and "key_env" in result.stderr
        assert CANARY not in result.stdout + result.stderr
    # the same from the environment, for the openai and azure targets
    cli = write_scenario(tmp_path)
    caps = ("--max-minutes", "1", "--max-audio-hours", "1", "--time-scale", "1")
    for kind, extra in (
        ("openai", {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": f"https://u:{CANARY}@h.example"}),
        (
            "azure",
            {
                "AZURE_OPENAI_API_KEY": "k",
                "AZURE_OPENAI_ENDPOINT": f"https://{CANARY}@r.openai.azure.com",
                "AZURE_OPENAI_DEPLOYMENT": "d",
            },
        ),
    ):
        result = rtsoak(
            "run", str(cli), "--target", kind, "--out", str(out), *caps, env=dict(env, **extra)
        )
        assert result.returncode == 2, result.stderr
        assert "user:KEY@" in result.stderr
        assert CANARY not in result.stdout + result.stderr
    assert not out.exists()  # refused before anything was written


def test_user_info_is_redacted_wherever_a_url_is_shown() -> None:
    leaky = Target("url", f"wss://user:{CANARY}@h.example/rt?intent=transcription")
    assert CANARY not in repr(leaky) and CANARY not in json.dumps(leaky.describe())
    assert leaky.describe()["url"] == "wss://***@h.example/rt?intent=transcription"
    assert redact_url(f"ws://{CANARY}@127.0.0.1:9/x") == "ws://***@127.0.0.1:9/x"


# 4b. Retry-After ------------------------------------------------------------------------------
@given(
    st.sampled_from([None, 1000, 1006, 1008, 1011, 1013, 4000]),
    st.sampled_from([None, 101, 401, 429, 503]),
    st.integers(0, 12),
    st.one_of(st.none(), st.floats(0, 1e6)),
    st.sampled_from(["on-drop", "sdk-default", "none"]),
    st.integers(0, 2**32 - 1),
)
def test_the_reconnect_delay_is_never_shorter_than_retry_after(
    code, status, failures, retry_after, strategy, seed
) -> None:
    """Retry-After only lengthens a wait: it never turns a stop into a retry or the reverse."""
    policy = ReconnectPolicy(strategy=strategy, max_attempts=10)
    plain = policy.after_close(code, status, failures, np.random.default_rng(seed))
    honoured = policy.after_close(code, status, failures, np.random.default_rng(seed), retry_after)
    if plain is None:
        assert honoured is None
    else:
        assert honoured == max(plain, retry_after or 0.0)


@pytest.mark.parametrize(
    ("header", "expect"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("", None),
    ],
)
def test_retry_after_values(header, expect) -> None:
    assert retry_after(header, time.time(), 1.0) == expect


def test_retry_after_as_an_http_date_is_scaled_to_scenario_seconds() -> None:
    in_ten = formatdate(time.time() + 10, usegmt=True)
    assert 5 * 8 <= retry_after(in_ten, time.time(), 5.0) <= 5 * 10


async def test_a_429_handshake_is_retried_no_earlier_than_its_retry_after(
    serve, tmp_path, tone_library
) -> None:
    async def throttled(request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "3"})

    port = await serve(throttled)
    frames = await run_worker(port, doc(reconnect={"max_attempts": 3}), tmp_path, tone_library)

    handshakes = rows(frames, "handshake").set_index("conn")
    opens = rows(frames, "conn_open").set_index("conn")
    assert list(handshakes.index) == [1, 2, 3] and (handshakes["code"] == 429).all()
    assert handshakes["text"].str.contains(r"Retry-After 3 s", regex=False).all()
    for k in (1, 2):  # its own backoff alone would be 0.8 s and 1.6 s (0.1 s x 2^k x 4 for 429)
        assert opens.loc[k + 1, "t"] - handshakes.loc[k, "t"] >= 3.0


# 5. every reconnect path is bounded ------------------------------------------------------------
CAPPED = """
[run]
name = "mbb"
seed = 3
duration = "{duration}"
workers = 2
time_scale = 20
[pacing]
chunk_ms = 100
[silence]
gap = "500ms"
[turns]
transcript_timeout = "10s"
[reconnect]
rotate_every = "10s"
make_before_break = true
initial = "500ms"
multiplier = 2
jitter = 0
max_attempts = 3
[faults.concurrency_cap]
max_sessions = 2
over = "reject"
"""


def refused_during(conns: pd.DataFrame, old: pd.Series) -> pd.DataFrame:
    """The worker's refused handshakes made while `old` was open: its rotation's attempts."""
    mine = conns[(conns["worker"] == old["worker"]) & (conns["handshake_status"] == 429)]
    return mine[(mine["opened"] > old["established"]) & (mine["opened"] < old["closed"])]


async def test_make_before_break_against_a_cap_obeys_max_attempts_and_backoff(
    tmp_path, tone_library, fake_server
) -> None:
    """Two workers hold a cap of two sessions, so every make-before-break is refused (429):
    each rotation tries max_attempts times, spaced by the policy's backoff, then closes the
    old connection first; no path retries without bound."""
    scenario = scenario_from(tmp_path, CAPPED.format(duration="80s"))
    frames = load(await soak(tmp_path, scenario, tone_library, fake_server))
    conns = frames.connections.sort_values(["worker", "conn"])
    policy = scenario.variants[0].reconnect
    backoff = [policy.after_close(None, 429, k, np.random.default_rng()) for k in (1, 2, 3)]
    assert backoff[:2] == [4.0, 8.0] and backoff[2] is None  # x4 for 429 (slow_on)

    full = 0
    for _, old in conns[conns["handshake_status"] == 101].iterrows():
        attempts = refused_during(conns, old)
        assert len(attempts) <= policy.max_attempts
        gaps = (
            attempts["opened"].diff().dropna().to_numpy()
            - attempts["handshake_latency"].iloc[:-1].to_numpy()
        )
        assert all(gap >= want for gap, want in zip(gaps, backoff, strict=False))
        if len(attempts) == policy.max_attempts and old["cause"] == "proactive":
            full += 1  # it gave up making first and rotated by closing first
    assert full >= 2 and (conns["cause"] == "proactive").sum() >= 2
    # and no run of refusals anywhere is longer than max_attempts
    for _, group in conns.groupby("worker"):
        runs = (group["handshake_status"] != 429).cumsum()
        refused = group[group["handshake_status"] == 429]
        assert refused.groupby(runs[refused.index]).size().max() <= policy.max_attempts


async def test_every_reconnect_path_stops_when_every_new_handshake_is_refused(
    serve, tmp_path, tone_library
) -> None:
    """One session, then 429 with Retry-After to every handshake: the make-before-break
    rotation tries max_attempts times, then the rotation closes first, then reconnecting tries
    max_attempts times and the worker stops; every retry waits at least Retry-After."""
    served = 0

    async def one_session_then_429(request: web.Request) -> web.StreamResponse:
        nonlocal served
        served += 1
        if served > 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "session": {"id": "s"}}))
        async for msg in ws:
            if json.loads(msg.data)["type"] == "session.update":
                await ws.send_str(json.dumps({"type": "session.updated", "session": {}}))
        return ws

    port = await serve(one_session_then_429)
    scenario = doc(reconnect={"max_attempts": 3, "rotate_every": "5s", "make_before_break": True})
    frames = await run_worker(port, scenario, tmp_path, tone_library)  # it stops by itself

    conns = frames.connections.sort_values("conn")
    assert list(conns["handshake_status"]) == [101] + [429] * 6
    first = conns.iloc[0]
    rotation = refused_during(conns, first)
    assert len(rotation) == 3 and first["cause"] == "proactive"  # then it closed first
    refused_at = (conns["opened"] + conns["handshake_latency"]).to_numpy()[1:-1]
    assert (conns["opened"].to_numpy()[2:] - refused_at >= 2.0).all()  # Retry-After, always
    stopped = rows(frames, "worker_stopped")
    assert len(stopped) == 1 and stopped["conn"].iloc[0] == 7
