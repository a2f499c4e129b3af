"""The fake server as the official SDK sees it: every event it emits validates against the
`openai` SDK's models in both dialects, the SDK's own clients (OpenAI and Azure) get their
transcripts over loopback, and server VAD commits exactly the speech it hears."""

from __future__ import annotations

import base64
import json
import random
import typing
import zlib

import aiohttp
import numpy as np
import pytest
from openai.types.beta.realtime import TranscriptionSession as BetaSessionModel
from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as BetaEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaEvent
from pydantic import BaseModel, TypeAdapter

from harness.config.audio import RATE, to_pcm16
from harness.core.session import SessionLimits, TranscriptionSession
from harness.core.transcript import parse_transcript
from harness.core.vad import TRIM_SLACK_MS

GA = TypeAdapter(GaEvent)
BETA = TypeAdapter(BetaEvent)


def _models(adapter_union) -> dict[str, type[BaseModel]]:
    union = typing.get_args(adapter_union)
    if typing.get_origin(adapter_union) is typing.Annotated:
        union = typing.get_args(union[0])
    out = {}
    for model in union:
        literal = typing.get_args(model.model_fields["type"].annotation)
        out[literal[0]] = model
    return out


GA_MODELS, BETA_MODELS = _models(GaEvent), _models(BetaEvent)


def tone(seconds: float, hz: float = 300.0, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return to_pcm16(amplitude * np.sin(2 * np.pi * hz * t), RATE)


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def append(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


def exercise(dialect: str) -> list[dict]:
    """Every kind of event a session emits: created, updates, errors, manual commits with
    logprobs, server VAD, clear, expiry."""
    s = TranscriptionSession(
        "sess_fidelity0000000000",
        0.0,
        1.7e9,
        random.Random(3),
        SessionLimits(max_duration=30.0),
        dialect=dialect,
    )
    out = list(s.open())
    beta = dialect == "beta"

    def update(**fields):
        if beta:
            return json.dumps({"type": "transcription_session.update", "session": fields})
        audio = {k: v for k, v in fields.items() if k != "include"}
        session = {"type": "transcription", "audio": {"input": audio}}
        if "include" in fields:
            session["include"] = fields["include"]
        return json.dumps({"type": "session.update", "session": session})

    def feed(text, now):
        out.extend(s.receive(text, now))
        out.extend(s.poll(now))

    feed(append(tone(1.0) + silence(1.0)), 0.5)  # server VAD by default
    feed(update(turn_detection=None, include=["item.input_audio_transcription.logprobs"]), 2)
    feed(append(tone(0.5)), 3)
    feed(json.dumps({"type": "input_audio_buffer.commit"}), 4)
    feed(json.dumps({"type": "input_audio_buffer.clear"}), 5)
    feed(json.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_1"}), 6)
    feed("nonsense", 7)
    feed(json.dumps({"type": "response.create"}), 8)
    feed(append(b"\0\0\0"), 9)
    out.extend(s.poll(40.0))  # transcripts, then expiry
    return [o for o in out if isinstance(o, dict)]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_every_emitted_event_validates_against_the_sdk(dialect: str) -> None:
    events = exercise(dialect)
    kinds = {e["type"] for e in events}
    assert {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "error",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    } <= kinds
    adapter, models = (BETA, BETA_MODELS) if dialect == "beta" else (GA, GA_MODELS)
    for event in events:
        if event["type"] == "transcription_session.created":
            # the SDK has no model for this beta event; its session is the beta session model
            BetaSessionModel.model_validate(event["session"])
            continue
        parsed = adapter.validate_python(event)
        model = models[event["type"]]
        assert isinstance(parsed, model)
        extra = set(event) - set(model.model_fields)
        assert not extra, f"{event['type']} has fields the SDK does not know: {extra}"
    completed = [e for e in events if e["type"].endswith("transcription.completed")]
    assert any(e["logprobs"] for e in completed)  # asked for with include
    assert events[-1]["error"]["code"] == "session_expired"


def test_server_vad_commits_exactly_the_speech_it_hears() -> None:
    s = TranscriptionSession("sess_vad", 0.0, 1.7e9, random.Random(1))
    audio = silence(0.5) + tone(1.0) + silence(1.0)
    out = []
    for i in range(0, len(audio), 960):  # 20 ms appends
        out += s.receive(append(audio[i : i + 960]), 0.0)
    out += s.poll(60.0)
    started = next(e for e in out if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in out if e["type"] == "input_audio_buffer.speech_stopped")
    assert started["audio_start_ms"] == 200  # 500 ms of silence, less 300 ms prefix padding
    assert stopped["audio_end_ms"] == 1500
    assert started["item_id"] == stopped["item_id"]
    committed = next(e for e in out if e["type"] == "input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"]
    completed = next(e for e in out if e["type"].endswith("transcription.completed"))
    mark = parse_transcript(completed["transcript"])
    assert mark.crc32 == zlib.crc32(audio[200 * 48 : 1500 * 48])  # exactly 200..1500 ms
    # the trailing quiet is still the buffer (a commit would hold all of it), though the VAD
    # keeps only its prefix in memory
    assert s.buffer_ms == 1000
    assert s.vad is not None and s.vad.held_bytes <= (300 + TRIM_SLACK_MS) * 48


def test_models_without_vad_and_unsupported_formats() -> None:
    s = TranscriptionSession("sess_x", 0.0, 1.7e9, random.Random(1))
    (updated,) = s.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "audio": {"input": {"transcription": {"model": "gpt-realtime-whisper"}}}
                },
            }
        ),
        0.0,
    )
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    (error,) = s.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}},
            }
        ),
        0.0,
    )
    assert error["error"]["param"] == "session.audio.input.turn_detection"
    (error,) = s.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            }
        ),
        0.0,
    )
    assert error["error"]["code"] == "invalid_value" and "24000" in error["error"]["message"]
    assert s.input["format"]["rate"] == 24000  # a bad update changes nothing


async def test_official_sdk_clients_transcribe_through_the_fake(fake_server) -> None:
    from openai import AsyncAzureOpenAI, AsyncOpenAI

    server = await fake_server()
    base = f"ws://127.0.0.1:{server.port}"
    pcm = tone(0.5)
    clients = [
        (AsyncOpenAI(api_key="sk-test", websocket_base_url=f"{base}/v1"), {}),
        (
            AsyncAzureOpenAI(
                api_key="k",
                api_version="2025-04-01-preview",
                azure_endpoint=base.replace("ws://", "http://"),
                websocket_base_url=f"{base}/openai",
            ),
            {"model": "stt-deployment"},
        ),
    ]
    for client, kwargs in clients:
        async with client.realtime.connect(
            extra_query={"intent": "transcription"}, **kwargs
        ) as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "turn_detection": None,
                            "transcription": {"model": "gpt-4o-transcribe"},
                        }
                    },
                }
            )
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
            await conn.input_audio_buffer.commit()
            async for event in conn:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    assert parse_transcript(event.transcript).crc32 == zlib.crc32(pcm)
                    break
                assert event.type != "error", event


async def test_browser_key_in_subprotocol_and_deflate(fake_server) -> None:
    server = await fake_server()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            server.url, protocols=("realtime", "openai-insecure-api-key.sk-browser"), compress=15
        ) as ws,
    ):
        assert ws.protocol == "realtime"
        assert ws.compress == 15  # permessage-deflate was negotiated
        assert (await ws.receive_json(timeout=5))["type"] == "session.created"


async def test_beta_dialect_over_the_socket(fake_server) -> None:
    server = await fake_server()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            server.url, headers={"Authorization": "Bearer k", "OpenAI-Beta": "realtime=v1"}
        ) as ws,
    ):
        assert (await ws.receive_json(timeout=5))["type"] == "transcription_session.created"
        await ws.send_json(
            {"type": "transcription_session.update", "session": {"turn_detection": None}}
        )
        updated = await ws.receive_json(timeout=5)
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["turn_detection"] is None


async def test_official_sdk_against_rtsoak_serve_with_the_banner_settings() -> None:
    """`rtsoak serve` in its own process; the SDK configured only by what its banner prints
    (without --tls: the Python SDK's websocket_base_url)."""
    import asyncio
    import sys
    from pathlib import Path

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harness",
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        banner = [(await proc.stdout.readline()).decode() for _ in range(4)]
        base = banner[3].split("websocket_base_url='", 1)[1].split("'")[0]
        from openai import AsyncOpenAI

        pcm = tone(0.4)
        client = AsyncOpenAI(api_key="any-key", websocket_base_url=base)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as c:
            await c.session.update(
                session={"type": "transcription", "audio": {"input": {"turn_detection": None}}}
            )
            await c.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
            await c.input_audio_buffer.commit()
            async for event in c:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    assert parse_transcript(event.transcript).crc32 == zlib.crc32(pcm)
                    break
    finally:
        proc.terminate()
        await proc.wait()
