"""`rtsoak proxy`: a real client (the official SDK, or aiohttp) through the proxy to a fake
upstream on loopback; what the client sees, and what the run directory records."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, rtsoak

from harness.config.audio import RATE, to_pcm16
from harness.config.faults import parse_faults
from harness.config.target import Target
from harness.core.transcript import parse_transcript
from harness.edge.clock import ScaledClock
from harness.edge.proxy import CALLER_HEADER, RealtimeProxy
from harness.edge.server import ServerConfig
from harness.log.frames import load
from harness.log.recorder import Recorder
from harness.log.rundir import write_json
from harness.report import build_report

UPSTREAM_KEY = "sk-upstream-only-4d1f"
CLIENT_KEY = "sk-client-canary-93be7c"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def speech(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return to_pcm16(0.3 * np.sin(2 * np.pi * 300 * t), RATE)


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


VAD_OFF = {
    "type": "session.update",
    "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
}


async def _until_closed(ws) -> tuple[list[dict], aiohttp.WSMessage]:
    events = []
    while (msg := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.TEXT:
        events.append(json.loads(msg.data))
    return events, msg


class ProxyRun:
    """A proxy recording into a run directory, relaying to an upstream fake server that only
    accepts the upstream's key."""

    def __init__(
        self, tmp_path: Path, upstream_url: str, faults=None, scale: float = 1.0, **options
    ):
        self.run_dir = tmp_path / "proxy-run"
        self.run_dir.mkdir()
        write_json(self.run_dir / "manifest.json", {"scenario": {}, "seed": 0, "time_scale": scale})
        self.recorder = Recorder(self.run_dir / "events-client.arrows")
        target = Target("url", upstream_url, {"Authorization": f"Bearer {UPSTREAM_KEY}"})
        self.proxy = RealtimeProxy(ScaledClock(scale), target, self.recorder, faults, **options)

    async def __aenter__(self) -> ProxyRun:
        self.recorder.start()
        await self.proxy.start()
        self.base = f"ws://127.0.0.1:{self.proxy.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.proxy.stop()
        await self.recorder.aclose()

    def frames(self):
        return load(self.run_dir)

    def connect(self, http: aiohttp.ClientSession, **headers: str):
        """A client WebSocket to the proxy, with the client's own key."""
        return http.ws_connect(
            f"{self.base}/v1/realtime", headers={"Authorization": f"Bearer {CLIENT_KEY}", **headers}
        )


@pytest.fixture
async def upstream(fake_server):
    server = await fake_server(ServerConfig(api_keys=frozenset({UPSTREAM_KEY})))
    return server


async def test_official_sdk_through_the_proxy_gets_its_transcript(tmp_path, upstream) -> None:
    from openai import AsyncOpenAI

    clips = [speech(0.5), speech(0.3)]
    received: list[str] = []
    async with ProxyRun(tmp_path, upstream.url) as run:
        client = AsyncOpenAI(api_key=CLIENT_KEY, websocket_base_url=f"{run.base}/v1")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session=VAD_OFF["session"])
            for pcm in clips:  # the voice-agent turn: clear, appends, commit, transcript
                await conn.input_audio_buffer.clear()
                await conn.input_audio_buffer.append(audio=b64(pcm[: len(pcm) // 2]))
                await conn.input_audio_buffer.append(audio=b64(pcm[len(pcm) // 2 :]))
                await conn.input_audio_buffer.commit()
                async for event in conn:
                    received.append(event.type)
                    assert event.type != "error", event
                    if event.type == COMPLETED:
                        assert parse_transcript(event.transcript).crc32 == zlib.crc32(pcm)
                        break
    frames = run.frames()
    events = frames.events
    sent = events[events["dir"] == "send"]["type"].astype(str).tolist()
    recv = events[events["dir"] == "recv"]["type"].astype(str).tolist()
    turn = [
        "input_audio_buffer.clear",
        "input_audio_buffer.append",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]
    assert sent == ["session.update", *turn, *turn]
    assert recv[: len(received)] == received  # every event the client saw, in order
    appends = events[events["type"] == "input_audio_buffer.append"]
    assert appends["audio_ms"].sum() == pytest.approx(800.0)
    utts = frames.utterances
    assert utts["status"].astype(str).tolist() == ["completed", "completed"]
    assert utts["crc_match"].tolist() == [True, True]
    assert utts["crc32"].tolist() == [zlib.crc32(pcm) for pcm in clips]
    assert utts["audio_ms"].tolist() == pytest.approx([500.0, 300.0])
    assert (utts["latency"] > 0).all()
    (conn_row,) = frames.connections.itertuples()
    assert conn_row.handshake_status == 101 and conn_row.session_id.startswith("sess_")
    assert (conn_row.closed_by, conn_row.cause, conn_row.dropped) == (
        "client",
        "client_close",
        False,
    )
    assert conn_row.request_id  # the upstream's x-request-id, passed on and recorded
    # the client's key reached neither the upstream (it accepts only its own) nor any file
    for path in run.run_dir.rglob("*"):
        if path.is_file():
            assert CLIENT_KEY.encode() not in path.read_bytes(), path
            assert UPSTREAM_KEY.encode() not in path.read_bytes(), path
    build_report([run.run_dir])
    summary = json.loads((run.run_dir / "report" / "summary.json").read_text())
    assert summary["variants"][0]["connections"] == 1


async def test_idle_timeout_at_the_proxy_drops_the_client_with_1006(tmp_path, upstream) -> None:
    faults = parse_faults({"idle_timeout": {"after": "10s"}}, "test")
    async with ProxyRun(tmp_path, upstream.url, faults, scale=50.0) as run:  # 10 s in 0.2 s
        async with (
            aiohttp.ClientSession() as http,
            run.connect(http) as ws,
        ):
            first = await ws.receive_json(timeout=5)
            assert first["type"] == "session.created"
            msg = await ws.receive(timeout=5)  # then nothing, until the fault
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert ws.close_code == 1006  # no close frame: dropped
    (conn,) = run.frames().connections.itertuples()
    assert (conn.closed_by, conn.cause, conn.close_code, conn.dropped) == (
        "transport",
        "abnormal",
        1006,
        True,
    )
    assert conn.injected_fault == "idle_timeout" and conn.state == "configuring"
    assert conn.lifetime == pytest.approx(10.0, abs=2.5)


@pytest.mark.parametrize(
    ("action", "code", "closed_by", "cause"),
    [
        ({"action": "abort"}, 1006, "transport", "abnormal"),
        ({"action": "close", "code": 4002, "reason": "go away"}, 4002, "server", "server_close"),
    ],
)
async def test_the_upstreams_close_reaches_the_client_as_it_was(
    tmp_path, fake_server, action, code, closed_by, cause
) -> None:
    """A close frame passes on with its code and reason; a drop with none stays a drop."""
    faults = parse_faults({"accept_then_close": {**action, "after": "0.2s"}}, "t")
    server = await fake_server(ServerConfig(faults=faults, api_keys=frozenset({UPSTREAM_KEY})))
    async with ProxyRun(tmp_path, server.url) as run:
        async with aiohttp.ClientSession() as http, run.connect(http) as ws:
            _, msg = await _until_closed(ws)
            if code == 1006:
                assert msg.type is not aiohttp.WSMsgType.CLOSE and ws.close_code == 1006
            else:
                assert (msg.data, msg.extra) == (code, action["reason"])
    (conn,) = run.frames().connections.itertuples()
    assert (conn.closed_by, conn.cause, conn.close_code, conn.dropped) == (
        closed_by,
        cause,
        code,
        True,
    )


async def test_client_close_code_reaches_upstream_and_refusals_come_back(
    tmp_path, fake_server
) -> None:
    rec_path = tmp_path / "server.arrows"
    server_rec = Recorder(rec_path)
    server = await fake_server(
        ServerConfig(api_keys=frozenset({UPSTREAM_KEY})), recorder=server_rec
    )
    async with ProxyRun(tmp_path, server.url) as run:
        async with aiohttp.ClientSession() as http:
            ws = await run.connect(http, **{CALLER_HEADER: "alice"})
            await ws.receive_json(timeout=5)
            await ws.close(code=4100, message=b"caller hung up")
            # the same caller again: its second attempt
            ws = await run.connect(http, **{CALLER_HEADER: "alice"})
            await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{run.base}/v1/realtime")  # no key at all
            assert refused.value.status == 401
    server_rec.close()
    conns = run.frames().connections
    assert conns[["worker", "conn"]].values.tolist() == [[1, 1], [1, 2]]
    assert conns["close_code"].tolist() == [4100, 1000]
    await asyncio.sleep(0)
    from harness.log.frames import read_log

    server_rows = read_log(rec_path)[0].to_pandas()
    closes = server_rows[server_rows["type"] == "session_close"]
    assert 4100 in closes["code"].tolist()  # the upstream heard the client's own code


async def test_upstream_handshake_refusal_is_passed_to_the_client(tmp_path, fake_server) -> None:
    table = {"handshake_faults": {"share": 1.0, "statuses": [429]}}
    server = await fake_server(
        ServerConfig(faults=parse_faults(table, "t"), api_keys=frozenset({UPSTREAM_KEY}))
    )
    async with ProxyRun(tmp_path, server.url) as run:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{run.base}/v1/realtime", headers={"api-key": CLIENT_KEY})
            assert refused.value.status == 429
    (conn,) = run.frames().connections.itertuples()
    assert (conn.handshake_status, conn.cause, conn.handshake_error) == (
        429,
        "handshake_failed",
        "HTTP 429",
    )


async def test_rtsoak_proxy_command_end_to_end(tmp_path) -> None:
    """`rtsoak proxy --upstream fake` as a user runs it: banner, a client, Ctrl-C, then a
    report; `rtsoak report` rebuilds it from the run directory."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harness",
        "proxy",
        "--upstream",
        "fake",
        "--out",
        str(tmp_path),
        "--duration",
        "5m",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert first.startswith("rtsoak proxy listening on ws://127.0.0.1:"), first
        url = first.split(" on ", 1)[1].strip()
        pcm = speech(0.4)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as ws,
        ):
            await ws.send_json(VAD_OFF)
            await ws.send_json({"type": "input_audio_buffer.append", "audio": b64(pcm)})
            await ws.send_json({"type": "input_audio_buffer.commit"})
            while (event := await ws.receive_json(timeout=10))["type"] != COMPLETED:
                assert event["type"] != "error", event
        proc.send_signal(signal.SIGINT)
        out = (await asyncio.wait_for(proc.stdout.read(), 120)).decode()
        assert await proc.wait() == 0, out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("proxy-")]
    assert (run_dir / "report" / "index.html").is_file() and "rtsoak: report" in out
    result = rtsoak("report", str(run_dir))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["utterances"]["proxy"]["completed"] == 1
    assert CLIENT_KEY not in out


def test_proxy_usage_mistakes_are_one_line_and_exit_2(tmp_path) -> None:
    env_without_key = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    cases = [
        (["--listen", "0.0.0.0:8000"], "loopback only"),
        (["--listen", "8000"], "HOST:PORT"),
        (["--upstream", "ws://203.0.113.9/v1/realtime"], "only loopback may be reached"),
        (["--faults", "no-such-profile"], "no-such-profile"),
    ]
    for args, words in cases:
        result = rtsoak("proxy", "--out", str(tmp_path), *args)
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "harness", "proxy", "--upstream", "openai", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_without_key,
        timeout=60,
    )
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written before the mistake was found


@pytest.mark.parametrize(
    ("table", "code", "cause", "last_event"),
    [
        (
            {"accept_then_close": {"action": "close", "code": 4001, "after": "5s"}},
            4001,
            "server_close",
            None,
        ),
        (
            {"accept_then_close": {"action": "half_open", "hold": "20s", "after": "5s"}},
            1006,
            "abnormal",
            None,
        ),
        ({"accept_then_close": {"action": "reset", "after": "5s"}}, 1006, "abnormal", None),
        ({"max_duration": {"after": "10s"}}, 1001, "expired", "session_expired"),
    ],
)
async def test_faults_at_the_proxy_reach_the_client_as_the_fake_server_does_them(
    tmp_path, upstream, table, code, cause, last_event
) -> None:
    async with ProxyRun(tmp_path, upstream.url, parse_faults(table, "t"), scale=50.0) as run:
        async with (
            aiohttp.ClientSession() as http,
            run.connect(http) as ws,
        ):
            events, msg = await _until_closed(ws)
            got = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
            assert got == code
            if last_event:
                assert events[-1]["type"] == "error"
                assert events[-1]["error"]["code"] == last_event
    (conn,) = run.frames().connections.itertuples()
    assert (conn.close_code, conn.cause) == (code, cause)
    assert conn.injected_fault == next(iter(table))


async def test_an_unreachable_upstream_is_a_502_and_a_failed_handshake(tmp_path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with ProxyRun(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime") as run:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{run.base}/v1/realtime", headers={"api-key": CLIENT_KEY})
            assert refused.value.status == 502
    (conn,) = run.frames().connections.itertuples()
    assert conn.cause == "handshake_failed" and conn.handshake_error == "ClientConnectorError"


async def test_server_vad_beta_and_azure_clients_through_the_proxy(tmp_path, upstream) -> None:
    """Server VAD (the service's default) makes the utterances; the beta header and the Azure
    paths pass through."""
    from openai import AsyncAzureOpenAI

    pcm = bytes(RATE // 5 * 2) + speech(0.6) + bytes(RATE * 2)  # silence, speech, silence
    async with ProxyRun(tmp_path, upstream.url) as run:
        azure = AsyncAzureOpenAI(
            api_key=CLIENT_KEY,
            api_version="2025-04-01-preview",
            azure_endpoint=run.base.replace("ws://", "http://"),
            websocket_base_url=f"{run.base}/openai",
        )
        async with azure.realtime.connect(model="stt-deployment") as conn:
            for i in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(audio=b64(pcm[i : i + 4800]))
            async for event in conn:
                assert event.type != "error", event
                if event.type == COMPLETED:
                    break
        async with (
            aiohttp.ClientSession() as http,
            run.connect(http, **{"OpenAI-Beta": "realtime=v1"}) as ws,
        ):
            assert (await ws.receive_json(timeout=5))["type"] == "transcription_session.created"
    frames = run.frames()
    vad = frames.utterances[frames.utterances["worker"] == 1]
    (utt,) = vad.itertuples()
    assert utt.status == "completed" and pd.isna(utt.crc32)
    # its length comes from the speech events: the segment the service transcribed
    assert utt.audio_ms == pytest.approx(parse_transcript(utt.transcript).seconds * 1000, abs=1)
    assert frames.connections["closed_by"].astype(str).tolist() == ["client", "client"]


async def test_stopping_the_proxy_closes_open_clients_with_1001_censored(
    tmp_path, upstream
) -> None:
    async with aiohttp.ClientSession() as http:
        async with ProxyRun(tmp_path, upstream.url) as run:
            sockets = [await run.connect(http) for _ in range(3)]
            for ws in sockets:
                await ws.receive_json(timeout=5)
            await sockets[0].send_json(
                {"type": "input_audio_buffer.append", "audio": b64(speech(0.1))}
            )
        for ws in sockets:
            _, msg = await _until_closed(ws)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
    conns = run.frames().connections
    assert conns["cause"].astype(str).tolist() == ["scenario_end"] * 3
    assert conns["censored"].all() and not conns["dropped"].any()


async def test_a_callers_utterances_on_each_connection_are_its_own_not_replays(
    tmp_path, fake_server
) -> None:
    """A caller that reconnects (same caller header: worker 1, attempts 1 and 2) says new
    utterances on the new connection; keyed by worker alone, the second would pass for a
    replay of the first and the first would no longer count."""
    server = await fake_server(ServerConfig(api_keys=frozenset({UPSTREAM_KEY})))
    pcm = speech(0.4)
    async with ProxyRun(tmp_path, server.url) as run, aiohttp.ClientSession() as http:
        for _ in range(2):
            ws = await run.connect(http, **{CALLER_HEADER: "bob"})
            await ws.send_json(VAD_OFF)
            await ws.send_json({"type": "input_audio_buffer.append", "audio": b64(pcm)})
            await ws.send_json({"type": "input_audio_buffer.commit"})
            while (event := await ws.receive_json(timeout=10))["type"] != COMPLETED:
                assert event["type"] != "error", event
            await ws.close()
    utts = run.frames().utterances
    assert utts["conn"].tolist() == [1, 2] and utts["utterance"].nunique() == 2
    assert utts["final"].all() and (utts["status"].astype(str) == "completed").all()
