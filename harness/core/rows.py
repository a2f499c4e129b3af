"""The rows a client-side connection writes to the event log, one type per kind.

The worker, the proxy and `rtsoak serve --out` write these, and the frames loader reads the
`detail` keys they define (docs/frames.md). Each row knows its direction, its type and the
columns it fills; where it goes (variant, worker, connection) and its wall time are the
recorder's business. A row's `t` is scenario seconds, the moment it describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.outcomes import CloseCause, ClosedBy, ConnState, UtteranceStatus

__all__ = [
    "ConnClose",
    "ConnOpen",
    "FaultRow",
    "FrameRow",
    "Handshake",
    "HandshakeFaultRow",
    "ServerRow",
    "Row",
    "UttEnd",
    "UttStart",
    "WorkerStopped",
]


@dataclass(frozen=True, slots=True)
class FrameRow:
    """A frame sent or received (or a ping/pong), by its event type."""

    t: float
    dir: str  # send | recv
    type: str
    bytes: int
    item: str | None = None
    text: str | None = None
    audio_ms: float | None = None
    dbfs: float | None = None  # an append's audio level (core/audio_level), when known

    @property
    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes_": self.bytes}
        if self.item is not None:
            out["item"] = self.item
        if self.text is not None:
            out["text"] = self.text
        if self.audio_ms is not None:
            out["audio_ms"] = self.audio_ms
        if self.dbfs is not None:
            out["dbfs"] = self.dbfs
        return out


@dataclass(frozen=True, slots=True)
class ConnOpen:
    """A connection attempt begins (its handshake is sent)."""

    t: float
    dir = "meta"
    type = "conn_open"

    @property
    def fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Handshake:
    """The handshake's answer: 101, an HTTP refusal, or none (`status` None, `error` says)."""

    t: float
    status: int | None
    request_id: str | None
    latency: float
    error: str | None = None
    dir = "meta"
    type = "handshake"

    @property
    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.status,
            "item": self.request_id,
            "detail": {"latency": self.latency},
        }
        if self.error is not None:
            out["text"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class ConnClose:
    """How a connection ended, and the state it was in: what a drop is classified by."""

    t: float
    code: int | None
    request_id: str | None
    reason: str
    closed_by: ClosedBy
    cause: CloseCause
    state: ConnState
    since_sent: float | None
    since_recv: float | None
    uncommitted_ms: float
    audio_ms: float
    completed: int
    session_id: str | None
    dir = "meta"
    type = "conn_close"

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "item": self.request_id,
            "text": self.reason,
            "detail": {
                "closed_by": str(self.closed_by),
                "cause": str(self.cause),
                "state": str(self.state),
                "since_sent": self.since_sent,
                "since_recv": self.since_recv,
                "uncommitted_ms": self.uncommitted_ms,
                "audio_ms": self.audio_ms,
                "completed": self.completed,
                "session_id": self.session_id,
            },
        }


@dataclass(frozen=True, slots=True)
class UttStart:
    """An utterance begins: its key, length and the CRC32 of its audio (None: unknown, the
    service's VAD chose the audio). `name`, `nbytes` and `attempt` when the sender knows them."""

    t: float
    key: str
    audio_ms: float | None
    crc32: int | None
    name: str | None = None
    nbytes: int | None = None
    attempt: int | None = None
    dir = "meta"
    type = "utt_start"

    @property
    def fields(self) -> dict[str, Any]:
        detail: dict[str, Any] = {}
        if self.name is not None:
            detail["name"] = self.name
        if self.crc32 is not None:
            detail["crc32"] = self.crc32
        if self.nbytes is not None:
            detail["bytes"] = self.nbytes
        if self.attempt is not None:
            detail["attempt"] = self.attempt
        return {"item": self.key, "audio_ms": self.audio_ms, "detail": detail}


@dataclass(frozen=True, slots=True)
class UttEnd:
    """An utterance's fate. `latency` is commit to transcript, `committed` the commit's time;
    `uncommitted_ms` the audio left in the buffer when it ended."""

    t: float
    key: str
    status: UtteranceStatus
    item_id: str | None = None
    transcript: str | None = None
    latency: float | None = None
    committed: float | None = None
    uncommitted_ms: float = 0.0
    dir = "meta"
    type = "utt_end"

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "item": self.key,
            "text": str(self.status),
            "detail": {
                "item_id": self.item_id,
                "transcript": self.transcript,
                "latency": self.latency,
                "committed": self.committed,
                "uncommitted_ms": self.uncommitted_ms,
            },
        }


@dataclass(frozen=True, slots=True)
class WorkerStopped:
    """A worker gave up: its reconnect policy stops after this connection."""

    t: float
    code: int | None
    reason: str
    failures: int
    status: int | None
    dir = "meta"
    type = "worker_stopped"

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "detail": {"reason": self.reason, "failures": self.failures, "status": self.status},
        }


@dataclass(frozen=True, slots=True)
class FaultRow:
    """A fault a policy fired on a session (the fake server's or the proxy's): the ground truth
    a diagnosis is graded by, joined to the client's connection by its request id."""

    t: float
    request_id: str | None
    code: int | None
    policy: str
    detail: dict[str, Any]
    dir = "meta"
    type = "fault"

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "item": self.request_id,
            "text": self.policy,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class HandshakeFaultRow:
    """A handshake policy refused, delayed or made room for a connection."""

    t: float
    request_id: str
    status: int | None
    policy: str
    detail: dict[str, Any] | None = None
    dir = "meta"
    type = "handshake_fault"

    @property
    def fields(self) -> dict[str, Any]:
        out = {"code": self.status, "item": self.request_id, "text": self.policy}
        return out if self.detail is None else {**out, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One of the fake server's own rows about a session: `session_open`, `session_close`
    (text: what ended it), `frame_error` or `server_crash` (text: the exception's type). Keyed
    by the request id, like its faults."""

    t: float
    type: str
    request_id: str
    code: int | None = None
    text: str | None = None
    detail: dict[str, Any] | None = None
    dir = "meta"

    @property
    def fields(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "item": self.request_id,
            "text": self.text,
            "detail": self.detail,
        }


Row = (
    FrameRow
    | ConnOpen
    | Handshake
    | ConnClose
    | UttStart
    | UttEnd
    | WorkerStopped
    | FaultRow
    | HandshakeFaultRow
    | ServerRow
)
