"""Closed sets that classify what happened: who closed, why, in which state, utterance fate."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CENSORING_CAUSES", "CloseCause", "ClosedBy", "ConnState", "UtteranceStatus"]


class ClosedBy(StrEnum):
    CLIENT = "client"
    SERVER = "server"  # a close frame from the server
    TRANSPORT = "transport"  # no close frame: TCP dropped (1006)
    NONE = "none"  # never opened (handshake failed)


class CloseCause(StrEnum):
    SCENARIO_END = "scenario_end"  # the harness stopped: censored
    PROACTIVE = "proactive"  # planned rotation: censored
    CLIENT_CLOSE = "client_close"  # a proxied client closed it itself: censored
    SERVER_CLOSE = "server_close"  # close frame from the server
    ABNORMAL = "abnormal"  # 1006: dropped with no close frame
    EXPIRED = "expired"  # session_expired, then close 1001
    HANDSHAKE_FAILED = "handshake_failed"
    PROTOCOL_ERROR = "protocol_error"


CENSORING_CAUSES = frozenset(
    {CloseCause.SCENARIO_END, CloseCause.PROACTIVE, CloseCause.CLIENT_CLOSE}
)


class ConnState(StrEnum):
    CONNECTING = "connecting"
    CONFIGURING = "configuring"
    IDLE = "idle"
    STREAMING = "streaming"
    AWAITING = "awaiting_transcript"


class UtteranceStatus(StrEnum):
    COMPLETED = "completed"  # transcript arrived and its CRC matches what was sent
    RETRIED_OK = "retried_ok"  # completed on a replay after a drop lost the first attempt
    MISMATCH = "mismatch"  # transcript arrived but names other audio
    FAILED = "failed"  # transcription.failed
    TIMEOUT = "timeout"  # no transcript within the timeout
    REJECTED = "rejected"  # commit answered with an error
    LOST = "lost"  # connection dropped before the transcript
    UNFINISHED = "unfinished"  # the harness stopped first: censored, not a failure
