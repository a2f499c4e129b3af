"""Every session event shows the effective configuration (issue 33): after any series of
partial updates, `session.created`/`session.updated` (and beta `transcription_session.*`) hold
every field in force, defaults filled in, and parse with the official SDK's models."""

from __future__ import annotations

import json
import random

import aiohttp
from openai.types.beta.realtime.transcription_session import TranscriptionSession as BetaSession
from openai.types.beta.realtime.transcription_session_updated_event import (
    TranscriptionSessionUpdatedEvent,
)
from openai.types.realtime import SessionCreatedEvent, SessionUpdatedEvent
from openai.types.realtime.realtime_transcription_session_create_request import (
    RealtimeTranscriptionSessionCreateRequest,
)

from harness.core.session import TranscriptionSession

VAD_DEFAULTS = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def ga_update(**audio_input) -> str:
    return json.dumps(
        {
            "type": "session.update",
            "session": {"type": "transcription", "audio": {"input": audio_input}},
        }
    )


def parsed(event: dict) -> RealtimeTranscriptionSessionCreateRequest:
    """The event through the SDK's own model; its session must be a transcription session."""
    model = SessionCreatedEvent if event["type"] == "session.created" else SessionUpdatedEvent
    session = model.model_validate(event).session
    assert isinstance(session, RealtimeTranscriptionSessionCreateRequest), session
    return session


def test_every_ga_session_event_is_the_effective_configuration_after_a_series_of_updates():
    s = TranscriptionSession("sess_eff", 0.0, 1.7e9, random.Random(3))
    (created,) = s.open()
    events = [created]
    updates = [
        ga_update(turn_detection={"type": "server_vad"}),
        ga_update(turn_detection={"type": "server_vad", "threshold": 0.7}),
        ga_update(format={"type": "audio/pcm"}),
        ga_update(transcription={"model": "whisper-1"}),
        ga_update(noise_reduction={"type": "far_field", "strength": 0.4}),
        ga_update(noise_reduction={"type": "near_field"}),
        ga_update(turn_detection={"type": "semantic_vad"}),
        ga_update(format={"type": "audio/pcmu"}),
        ga_update(turn_detection=None),
    ]
    for update in updates:
        (reply,) = s.receive(update, 0.0)
        assert reply["type"] == "session.updated", reply
        events.append(reply)
    sessions = [parsed(e) for e in events]
    inputs = [e["session"]["audio"]["input"] for e in events]

    # at the start: server VAD at every default, a 24 kHz PCM format, the default model
    first = sessions[0].audio.input
    assert first.turn_detection.type == "server_vad"
    for name, value in VAD_DEFAULTS.items():
        assert getattr(first.turn_detection, name) == value
    assert "idle_timeout_ms" in inputs[0]["turn_detection"]
    assert first.format.type == "audio/pcm" and first.format.rate == 24000
    assert first.transcription.model == "gpt-4o-transcribe"
    assert inputs[0]["transcription"] == {
        "model": "gpt-4o-transcribe",
        "language": None,
        "prompt": "",
    }

    # {"type": "server_vad"} shows every default, not the update as sent
    assert inputs[1]["turn_detection"] == {
        "type": "server_vad",
        **VAD_DEFAULTS,
        "idle_timeout_ms": None,
    }
    assert inputs[2]["turn_detection"] == {
        "type": "server_vad",
        **VAD_DEFAULTS,
        "threshold": 0.7,
        "idle_timeout_ms": None,
    }
    assert inputs[3]["format"] == {"type": "audio/pcm", "rate": 24000}  # rate filled in
    assert inputs[3]["turn_detection"]["threshold"] == 0.7  # what the update left alone stays
    assert inputs[4]["transcription"] == {"model": "whisper-1", "language": None, "prompt": ""}
    assert inputs[5]["noise_reduction"] == {"type": "far_field", "strength": 0.4}
    assert inputs[6]["noise_reduction"] == {"type": "near_field", "strength": 0.4}  # kept
    assert inputs[7]["turn_detection"] == {"type": "semantic_vad", "eagerness": "auto"}
    assert sessions[7].audio.input.turn_detection.eagerness == "auto"
    assert inputs[8]["format"] == {"type": "audio/pcmu"}  # no rate: the SDK's type has none
    assert inputs[9]["turn_detection"] is None and sessions[9].audio.input.turn_detection is None
    # every event shows the whole configuration, whatever the update named
    for inp in inputs:
        assert set(inp) == {"format", "noise_reduction", "transcription", "turn_detection"}
        assert inp["transcription"]["model"] in ("gpt-4o-transcribe", "whisper-1")


def test_beta_session_events_show_the_effective_configuration_in_beta_shape() -> None:
    s = TranscriptionSession("sess_eff", 0.0, 1.7e9, random.Random(3), dialect="beta")
    (created,) = s.open()
    BetaSession.model_validate(created["session"])
    assert created["session"]["turn_detection"] == {"type": "server_vad", **VAD_DEFAULTS}
    (updated,) = s.receive(
        json.dumps(
            {
                "type": "transcription_session.update",
                "session": {
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                    "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
                },
            }
        ),
        0.0,
    )
    event = TranscriptionSessionUpdatedEvent.model_validate(updated)
    td = event.session.turn_detection
    assert (td.type, td.threshold, td.prefix_padding_ms, td.silence_duration_ms) == (
        "server_vad",
        0.5,
        300,
        800,
    )
    assert "idle_timeout_ms" not in updated["session"]["turn_detection"]  # not a beta field
    assert updated["session"]["input_audio_transcription"] == {
        "model": "gpt-4o-mini-transcribe",
        "language": None,
        "prompt": "",
    }
    assert event.session.input_audio_format == "pcm16"


async def test_over_a_socket_session_updated_shows_the_full_server_vad(fake_server) -> None:
    server = await fake_server()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url, headers={"Authorization": "Bearer k"}) as ws:
            created = await ws.receive_json(timeout=5)
            await ws.send_str(ga_update(turn_detection={"type": "server_vad"}))
            updated = await ws.receive_json(timeout=5)
    for event in (created, updated):
        td = parsed(event).audio.input.turn_detection
        assert (td.threshold, td.prefix_padding_ms, td.silence_duration_ms) == (0.5, 300, 500)
