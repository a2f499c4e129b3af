"""Browser and Azure auth shapes (issue 33): a browser client's key in the
`openai-insecure-api-key.` subprotocol and its beta dialect in `openai-beta.realtime-v1`; Azure's
`api-key` query parameter. The proxy never forwards, logs or stores such a key."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from harness.config.audio import RATE, to_pcm16
from harness.config.target import Target
from harness.core.session import SessionLimits
from harness.core.transcript import parse_transcript
from harness.edge.clock import ScaledClock
from harness.edge.proxy import RealtimeProxy
from harness.edge.server import ServerConfig
from harness.log.frames import load
from harness.log.recorder import Recorder
from harness.log.rundir import write_json

KEY = "sk-browser-key-5e1a"
CANARY = "sk-canary-never-forwarded-7d3b9"
UPSTREAM_KEY = "sk-upstream-own-key-21c4"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAST = SessionLimits(latency_base=0.01, latency_per_audio_second=0)


def browser_protocols(key: str) -> tuple[str, ...]:
    """What the official SDK's browser client offers for the beta dialect."""
    return ("realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1")


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return to_pcm16(0.3 * np.sin(2 * np.pi * 220 * t), RATE)


async def beta_utterance(ws: aiohttp.ClientWebSocketResponse, pcm: bytes) -> list[dict]:
    """transcription_session.update (own VAD), one append, commit: every event until the
    transcript."""
    events = [await ws.receive_json(timeout=5)]
    await ws.send_json(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-transcribe"},
                "turn_detection": None,
            },
        }
    )
    events.append(await ws.receive_json(timeout=5))
    audio = base64.b64encode(pcm).decode()
    await ws.send_json({"type": "input_audio_buffer.append", "audio": audio})
    await ws.send_json({"type": "input_audio_buffer.commit"})
    while events[-1]["type"] not in (COMPLETED, "error"):
        events.append(await ws.receive_json(timeout=5))
    return events


async def test_a_browser_client_with_the_beta_subprotocol_gets_beta_and_a_transcript(
    fake_server,
) -> None:
    server = await fake_server(ServerConfig(api_keys=frozenset({KEY}), limits=FAST))
    pcm = tone(0.5)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url, protocols=browser_protocols(KEY)) as ws:
            assert ws.protocol == "realtime"  # what a browser requires to be echoed
            events = await beta_utterance(ws, pcm)
    types = [e["type"] for e in events]
    assert types[:2] == ["transcription_session.created", "transcription_session.updated"]
    assert "conversation.item.created" in types  # beta's item event, not GA's .added
    assert types[-1] == COMPLETED, events[-1]
    assert parse_transcript(events[-1]["transcript"]).crc32 == zlib.crc32(pcm)


async def test_the_subprotocol_key_is_checked_like_a_header_key(fake_server) -> None:
    server = await fake_server(ServerConfig(api_keys=frozenset({KEY})))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(server.url, protocols=browser_protocols("sk-wrong"))
        assert refused.value.status == 401
        # without the beta subprotocol: the GA dialect
        async with http.ws_connect(
            server.url, protocols=("realtime", f"openai-insecure-api-key.{KEY}")
        ) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "session.created"


@pytest.mark.parametrize("path", ["/openai/v1/realtime", "/openai/realtime"])
async def test_azure_paths_accept_the_key_in_the_query_string(fake_server, path) -> None:
    server = await fake_server(ServerConfig(api_keys=frozenset({KEY})))
    base = f"ws://127.0.0.1:{server.port}{path}?intent=transcription&deployment=d"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base}&api-key={KEY}") as ws:
            assert ws._response.headers["apim-request-id"].startswith("req_")
            assert (await ws.receive_json(timeout=5))["type"] == "session.created"
        for url in (f"{base}&api-key=sk-wrong", base):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
            assert refused.value.status == 401


async def test_the_openai_path_does_not_take_a_key_from_the_query(fake_server) -> None:
    server = await fake_server(ServerConfig(api_keys=frozenset({KEY})))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{server.url}&api-key={KEY}")
        assert refused.value.status == 401


class CapturingUpstream:
    """An upstream that keeps every handshake request it receives (path, query, headers,
    subprotocols) and speaks just enough of the beta dialect to be relayed."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.beta: list[bool] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            f"{request.method} {request.path_qs}\n"
            + "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        )
        self.beta.append(request.headers.get("OpenAI-Beta") == "realtime=v1")
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        await ws.send_json(
            {"type": "transcription_session.created", "event_id": "event_1", "session": {}}
        )
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and "commit" in msg.data:
                await ws.send_json(
                    {"type": "input_audio_buffer.committed", "event_id": "e2", "item_id": "i1"}
                )
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{self.port}/v1/realtime?intent=transcription"


@pytest.mark.parametrize(
    "how", ["subprotocol", "azure_query", "azure_preview_query", "query_on_openai_path"]
)
async def test_the_proxy_never_forwards_logs_or_stores_a_browser_key(tmp_path: Path, how) -> None:
    upstream = CapturingUpstream()
    url = await upstream.start()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json(run_dir / "manifest.json", {"scenario": {}, "seed": 0, "time_scale": 1.0})
    recorder = Recorder(run_dir / "events-client.arrows")
    recorder.start()
    target = Target("url", url, {"Authorization": f"Bearer {UPSTREAM_KEY}"})
    proxy = RealtimeProxy(ScaledClock(1.0), target, recorder)
    await proxy.start()
    base = f"ws://127.0.0.1:{proxy.port}"
    protocols: tuple[str, ...] = ("realtime", "openai-beta.realtime-v1")
    headers = {}
    client_url = {
        "subprotocol": f"{base}/v1/realtime?intent=transcription",
        "azure_query": f"{base}/openai/v1/realtime?intent=transcription&api-key={CANARY}",
        "azure_preview_query": f"{base}/openai/realtime?api-version=2025-04-01-preview"
        f"&deployment=d&api-key={CANARY}",
        # a key in the query where it is not accepted: still never forwarded
        "query_on_openai_path": f"{base}/v1/realtime?intent=transcription&api-key={CANARY}",
    }[how]
    if how == "subprotocol":
        protocols = browser_protocols(CANARY)
    elif how == "query_on_openai_path":
        headers = {"Authorization": "Bearer sk-other"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(client_url, protocols=protocols, headers=headers) as ws:
                assert ws.protocol == "realtime"
                assert (await ws.receive_json(timeout=5))["type"] == (
                    "transcription_session.created"
                )
                await ws.send_json({"type": "input_audio_buffer.commit"})
                assert (await ws.receive_json(timeout=5))["type"] == (
                    "input_audio_buffer.committed"
                )
    finally:
        await proxy.stop()
        await recorder.aclose()
        await upstream.runner.cleanup()
    (seen,) = upstream.requests
    assert CANARY not in seen and "api-key=" not in seen
    assert f"Authorization: Bearer {UPSTREAM_KEY}" in seen
    assert "openai-insecure-api-key" not in seen
    assert upstream.beta == [True]  # the beta subprotocol reaches upstream as the header
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    events = load(run_dir).events
    assert (
        len(events) and not events.astype(str).apply(lambda c: c.str.contains(CANARY)).any().any()
    )
