"""Fault injection: what a fault does (`Fault`), the policies of one session (`FaultSet`), and
the seeded RNG each policy draws from. The policies and the profile that starts them live in
`harness.core.policies`; reading them from TOML in `harness.config.faults`.

Policies are pure: they see the session open, client frames and the passage of scenario time,
and answer with a `Fault` when theirs fires. The aiohttp edge carries faults out. Each policy
draws from its own RNG, derived from the run seed, the session key and the policy name, so a run
injects the same faults whatever the arrival order, and adding one policy never shifts another.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = [
    "Fault",
    "FaultKind",
    "FaultSet",
    "HandshakeDecision",
    "policy_rng",
]


class FaultKind(StrEnum):
    ABORT = "abort"  # drop TCP, no close frame: the client sees 1006
    RESET = "reset"  # TCP RST (SO_LINGER 0): the client sees a reset, 1006
    CLOSE = "close"  # a close frame with a code and reason
    HALF_OPEN = "half_open"  # stop reading and writing; only a ping timeout notices
    DELAYED_CLOSE = "delayed_close"  # go silent for `delay`, then a close frame
    ERROR = "error"  # an error event; the connection stays open


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    policy: str
    code: int | None = None
    reason: str = ""
    delay: float = 0.0  # DELAYED_CLOSE: silence before the close frame
    hold: float = 0.0  # HALF_OPEN: how long to hold the dead socket before abort
    error_code: str | None = None  # an error event sent first (e.g. session_expired)
    error_message: str = ""
    due: float | None = None  # the scenario time it was scheduled for, if by a deadline

    def detail(self, now: float, opened: float) -> dict[str, Any]:
        """What the ground-truth log says of it, ages from the connection's opening, to the
        microsecond: `(opened + draw) - opened` is not `draw` to the last bit, so unrounded
        the same seeded draw would log differently when its connection opened later."""
        return {
            "kind": str(self.kind),
            "reason": self.reason,
            "age": round(now - opened, 6),
            "due_age": None if self.due is None else round(self.due - opened, 6),
        }


@dataclass(frozen=True, slots=True)
class HandshakeDecision:
    """What the server does with a handshake: accept, answer an HTTP status, maybe slowly;
    `evict` names sessions to end first (a concurrency cap that drops the oldest)."""

    policy: str | None = None
    status: int | None = None  # None: accept
    delay: float = 0.0  # scenario seconds before answering
    evict: tuple[str, ...] = ()


def policy_rng(seed: int, key: str, policy: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode()), zlib.crc32(policy.encode())])


class FaultSet:
    """The session-level policies of one connection, fed together; the first to fire wins and
    the set falls silent after it."""

    __slots__ = ("policies", "wants_audio", "fired")

    def __init__(self, policies: list[Any]) -> None:
        self.policies = policies
        self.wants_audio = any(p.wants_audio for p in policies)
        self.fired: Fault | None = None

    def _first(self, faults) -> Fault | None:
        if self.fired is not None:
            return None
        for fault in faults:
            if fault is not None:
                self.fired = fault
                return fault
        return None

    def next_deadline(self) -> float | None:
        if self.fired is not None or not self.policies:
            return None
        deadlines = [d for p in self.policies if (d := p.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def poll(self, now: float) -> Fault | None:
        return self._first(p.poll(now) for p in self.policies)

    def on_frame(self, now: float, kind: str) -> Fault | None:
        """A client frame arrived: kind is 'audio', 'event' or 'ping'."""
        return self._first(p.on_frame(now, kind) for p in self.policies)

    def on_audio(self, now: float, pcm: bytes, buffer_bytes: int) -> Fault | None:
        """An append was accepted: its PCM and the uncommitted buffer size after it."""
        return self._first(p.on_audio(now, pcm, buffer_bytes) for p in self.policies)
