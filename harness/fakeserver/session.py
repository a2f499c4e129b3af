"""One Realtime transcription session as a pure state machine (GA dialect).

`receive(text, now)` takes one client frame and returns what the server sends at once;
`poll(now)` returns what has come due since (transcriptions finish after a latency, sessions
expire). Outputs are event dicts to send as JSON, or a `Fault` (here: session expiry) for the
edge to carry out.
Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import binascii
import heapq
import json
import random
import string
import zlib
from dataclasses import dataclass
from typing import Any

from harness.fakeserver.faults import Fault, FaultKind
from harness.fakeserver.transcript import BYTES_PER_SECOND, make_transcript

__all__ = ["SessionLimits", "TranscriptionSession", "Output"]

Output = dict[str, Any] | Fault

MIN_COMMIT_MS = 100.0
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Service limits, in scenario seconds and bytes; defaults are the GA service's."""

    max_duration: float = 3600.0
    max_append_bytes: int = 15 * 1024 * 1024
    latency_base: float = 0.25  # transcription latency = base + per_audio_second * audio seconds
    latency_per_audio_second: float = 0.08


def _default_input() -> dict[str, Any]:
    return {
        "format": {"type": "audio/pcm", "rate": 24000},
        "noise_reduction": None,
        "transcription": {"model": "gpt-4o-transcribe", "language": None, "prompt": ""},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": 500},
    }


class TranscriptionSession:
    """Server-side state of one connection: configuration, the uncommitted audio buffer (only
    its length and CRC32 are kept), committed items and transcriptions in flight."""

    def __init__(self, session_id: str, opened: float, wall_opened: float, rng: random.Random,
                 limits: SessionLimits = SessionLimits()) -> None:
        self.session_id = session_id
        self.opened = opened
        self.limits = limits
        self._rng = rng
        self.include: list[str] | None = None
        self.input = _default_input()
        self.expires_at = int(wall_opened + limits.max_duration)
        self.buffer_bytes = 0
        self.buffer_crc = 0
        self.last_item_id: str | None = None
        self.expired = False
        self.last_pcm: bytes | None = None  # audio of the last accepted append, for fault policies
        self._due: list[tuple[float, int, list[Output]]] = []  # heap of (time, seq, outputs)
        self._seq = 0
        self._schedule(opened + limits.max_duration, self._expire)

    # ids ------------------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return prefix + "".join(self._rng.choices(_ALNUM, k=22))

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": self._id("event_"), **fields}

    def error_event(self, code: str, message: str) -> dict[str, Any]:
        """An `error` event in the service's shape, for faults that complain before acting."""
        return self._error(code, message, type_="server_error" if code == "server_error"
                           else "invalid_request_error")

    def _error(self, code: str, message: str, *, param: str | None = None,
               event_id: str | None = None, type_: str = "invalid_request_error") -> dict:
        return self._event("error", error={"type": type_, "code": code, "message": message,
                                           "param": param, "event_id": event_id})

    # session --------------------------------------------------------------------------------
    def session_object(self) -> dict[str, Any]:
        return {"type": "transcription", "object": "realtime.transcription_session",
                "id": self.session_id, "expires_at": self.expires_at,
                "include": self.include, "audio": {"input": self.input}}

    def open(self) -> list[Output]:
        return [self._event("session.created", session=self.session_object())]

    @property
    def buffer_ms(self) -> float:
        return self.buffer_bytes * 1000.0 / BYTES_PER_SECOND

    # inputs ---------------------------------------------------------------------------------
    def receive(self, text: str | bytes, now: float) -> list[Output]:
        self.last_pcm = None
        if self.expired:
            return []
        try:
            event = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return [self._error("invalid_json", "The message is not valid JSON.")]
        if not isinstance(event, dict):
            return [self._error("invalid_event", "The event must be a JSON object.")]
        type_ = event.get("type")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = self._HANDLERS.get(type_) if isinstance(type_, str) else None
        if type_ is None:
            return [self._error("invalid_event", "The 'type' field is missing.",
                                event_id=event_id)]
        if handler is None:
            return [self._error("invalid_event", f"Invalid value: '{type_}'. Supported values "
                                "are transcription client events.", param="type",
                                event_id=event_id)]
        return handler(self, event, event_id, now)

    def _append(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        audio = event.get("audio")
        if not isinstance(audio, str):
            return [self._error("invalid_event", "Missing required parameter: 'audio'.",
                                param="audio", event_id=event_id)]
        if len(audio) * 3 // 4 > self.limits.max_append_bytes:
            return [self._error("invalid_value", "Audio content exceeds the maximum of 15 MiB "
                                "per append.", param="audio", event_id=event_id)]
        try:
            pcm = binascii.a2b_base64(audio, strict_mode=True)
        except (binascii.Error, ValueError):
            return [self._error("invalid_value", "Invalid base64 in 'audio'.", param="audio",
                                event_id=event_id)]
        if len(pcm) % 2:
            return [self._error("invalid_value", "PCM16 audio must have an even number of "
                                "bytes.", param="audio", event_id=event_id)]
        self.buffer_bytes += len(pcm)
        self.buffer_crc = zlib.crc32(pcm, self.buffer_crc)
        self.last_pcm = pcm
        return []

    def _commit(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        if self.buffer_ms < MIN_COMMIT_MS:
            return [self._error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {self.buffer_ms:.2f}ms of audio.",
                event_id=event_id)]
        item_id, previous = self._id("item_"), self.last_item_id
        self.last_item_id = item_id
        nbytes, crc = self.buffer_bytes, self.buffer_crc
        self.buffer_bytes, self.buffer_crc = 0, 0
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
        seconds = nbytes / BYTES_PER_SECOND
        latency = self.limits.latency_base + self.limits.latency_per_audio_second * seconds
        self._schedule(now + latency, lambda: self._transcribed(item_id, nbytes, crc))
        return [
            self._event("input_audio_buffer.committed", item_id=item_id,
                        previous_item_id=previous),
            self._event("conversation.item.added", item=item, previous_item_id=previous),
            self._event("conversation.item.done", item=item, previous_item_id=previous),
        ]

    def _clear(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        self.buffer_bytes, self.buffer_crc = 0, 0
        return [self._event("input_audio_buffer.cleared")]

    def _session_update(self, event: dict, event_id: str | None, now: float) -> list[Output]:
        session = event.get("session")
        if not isinstance(session, dict):
            return [self._error("invalid_event", "Missing required parameter: 'session'.",
                                param="session", event_id=event_id)]
        if session.get("type", "transcription") != "transcription":
            return [self._error("invalid_value", "This is a transcription session; "
                                "session.type must be 'transcription'.",
                                param="session.type", event_id=event_id)]
        if "include" in session:
            self.include = session["include"]
        audio_input = (session.get("audio") or {}).get("input")
        if isinstance(audio_input, dict):
            for key in ("format", "noise_reduction", "transcription", "turn_detection"):
                if key in audio_input:
                    self.input[key] = audio_input[key]
        return [self._event("session.updated", session=self.session_object())]

    _HANDLERS = {
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
        "session.update": _session_update,
    }

    # time -----------------------------------------------------------------------------------
    def _schedule(self, when: float, make) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, make))

    def next_deadline(self) -> float | None:
        return self._due[0][0] if self._due else None

    def poll(self, now: float) -> list[Output]:
        out: list[Output] = []
        while self._due and self._due[0][0] <= now and not self.expired:
            _, _, make = heapq.heappop(self._due)
            out.extend(make())
        return out

    def _transcribed(self, item_id: str, nbytes: int, crc: int) -> list[Output]:
        text = make_transcript(nbytes, crc)
        logprobs = None
        if self.include and "item.input_audio_transcription.logprobs" in self.include:
            logprobs = [{"token": w, "logprob": -0.01, "bytes": list(w.encode())}
                        for w in text.split(" ")]
        words = text.split(" ")
        deltas = [self._event("conversation.item.input_audio_transcription.delta",
                              item_id=item_id, content_index=0,
                              delta=(w if i == 0 else " " + w), logprobs=None)
                  for i, w in enumerate(words)]
        audio_tokens = max(1, round(nbytes / BYTES_PER_SECOND * 10))
        usage = {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": len(words),
                 "total_tokens": audio_tokens + len(words),
                 "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0}}
        return deltas + [self._event("conversation.item.input_audio_transcription.completed",
                                     item_id=item_id, content_index=0, transcript=text,
                                     usage=usage, logprobs=logprobs)]

    def _expire(self) -> list[Output]:
        self.expired = True
        minutes = round(self.limits.max_duration / 60)
        message = f"Your session hit the maximum duration of {minutes} minutes."
        return [self._error("session_expired", message),
                Fault(FaultKind.CLOSE, "max_duration", 1001, message)]
