"""Client-side event shapes of the Realtime transcription protocol, in both dialects.

GA speaks `session.update` with `session.type = "transcription"`; beta (header
`OpenAI-Beta: realtime=v1`, older Azure deployments) speaks `transcription_session.update`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BETA_HEADER",
    "FAKE_SERVER_HEADER",
    "SESSION_KEY_HEADER",
    "COMPLETED",
    "CREATED",
    "FAILED",
    "UPDATED",
    "error_event",
    "error_text",
    "session_update",
    "text_field",
]

BETA_HEADER = ("OpenAI-Beta", "realtime=v1")
# Which worker and attempt a connection is, so fault policies key their RNG by it (a real
# service ignores the header).
SESSION_KEY_HEADER = "X-Rtsoak-Session"
# What rtsoak's fake server answers every WebSocket handshake with, and nothing else does (the
# proxy strips it): an uncapped, compressed run on loopback goes on only where it is present.
FAKE_SERVER_HEADER = "X-Rtsoak-Fake"
CREATED = frozenset({"session.created", "transcription_session.created"})
UPDATED = frozenset({"session.updated", "transcription_session.updated"})
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
SERVER_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}


def session_update(protocol: Any, turn_mode: str) -> dict[str, Any]:
    """The session.update a worker sends: the scenario's model, language, prompt, noise
    reduction and logprobs, with turn_detection null (own VAD) or server VAD."""
    turn_detection = dict(SERVER_VAD) if turn_mode == "server_vad" else None
    noise = None if protocol.noise_reduction == "none" else {"type": protocol.noise_reduction}
    transcription = {
        "model": protocol.model,
        "language": protocol.language,
        "prompt": protocol.prompt,
    }
    include = ["item.input_audio_transcription.logprobs"] if protocol.logprobs else None
    if protocol.dialect == "beta":
        session: dict[str, Any] = {
            "input_audio_format": "pcm16",
            "input_audio_transcription": transcription,
            "turn_detection": turn_detection,
            "input_audio_noise_reduction": noise,
        }
        if include:
            session["include"] = include
        return {"type": "transcription_session.update", "session": session}
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": noise,
                "turn_detection": turn_detection,
                "transcription": transcription,
            }
        },
    }
    if include:
        session["include"] = include
    return {"type": "session.update", "session": session}


def error_event(
    event_id: str,
    code: str,
    message: str,
    *,
    param: str | None = None,
    client_event_id: str | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    """A server `error` event (the same shape in both dialects); its type follows the code
    unless given."""
    return {
        "type": "error",
        "event_id": event_id,
        "error": {
            "type": type_
            or ("server_error" if code == "server_error" else "invalid_request_error"),
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def text_field(value: Any) -> str | None:
    """A field a peer sent, believed only if it is a string (peers may send anything)."""
    return value if isinstance(value, str) else None


def error_text(event: dict[str, Any]) -> str | None:
    """The code (else the message) of an error event or a failed transcription."""
    error = event.get("error")
    if not isinstance(error, dict):
        return None
    return text_field(error.get("code")) or text_field(error.get("message"))
