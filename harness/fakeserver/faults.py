"""Fault injection: what a fault does (`Fault`), the policies of one session (`FaultSet`), and
profiles read from TOML (`FaultProfile`).

Policies are pure: they see the session open, client frames and the passage of scenario time,
and answer with a `Fault` when theirs fires. The aiohttp edge carries faults out. Each policy
draws from its own RNG, derived from the run seed, the session key and the policy name, so a run
injects the same faults whatever the arrival order, and adding one policy never shifts another.
"""

from __future__ import annotations

import dataclasses
import tomllib
import zlib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import numpy as np

from harness.config import ConfigError, read_section

__all__ = [
    "Fault",
    "FaultKind",
    "FaultProfile",
    "FaultSet",
    "HandshakeDecision",
    "parse_faults",
    "policy_rng",
    "shipped_profiles",
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


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """Validated fault configuration of a server: session policies, handshake policies, and the
    maximum session duration they impose (None: the service's)."""

    policies: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def start(self, session_key: str, opened: float) -> FaultSet:
        from harness.fakeserver.policies import SESSION_POLICIES

        return FaultSet(
            [
                SESSION_POLICIES[name][1](cfg, policy_rng(self.seed, session_key, name), opened)
                for name, cfg in self.policies
                if name in SESSION_POLICIES
            ]
        )

    def handshake(
        self, session_key: str, client_key: str, now: float, active: list[tuple[str, str, float]]
    ) -> HandshakeDecision:
        """Decide a handshake; `active` lists (session key, client key, opened) of live
        sessions."""
        from harness.fakeserver.policies import HANDSHAKE_POLICIES

        for name, cfg in self.policies:
            if name in HANDSHAKE_POLICIES:
                decision = HANDSHAKE_POLICIES[name][1](cfg).decide(
                    policy_rng(self.seed, session_key, name), session_key, client_key, now, active
                )
                if decision is not None:
                    return decision
        return HandshakeDecision()

    @property
    def max_session(self) -> float | None:
        for name, cfg in self.policies:
            if name == "max_duration":
                return cfg.after
        return None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.policies]

    def describe(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(cfg) for name, cfg in self.policies}


def shipped_profiles() -> dict[str, tuple[str, dict[str, Any]]]:
    """Shipped profiles by name: (one-line description, [faults] table)."""
    out = {}
    for entry in sorted(resources.files("harness.profiles").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            doc = tomllib.loads(entry.read_text(encoding="utf-8"))
            out[entry.name[:-5]] = (doc.get("description", ""), doc.get("faults", {}))
    return out


def parse_faults(table: Any, source: str, seed: int = 0) -> FaultProfile:
    """`[faults.<policy>]` tables (and `profile = "<shipped name>"` to start from a shipped
    profile) -> FaultProfile; unknown names list the known ones."""
    from harness.fakeserver.policies import ALL_POLICIES

    if table is None:
        return FaultProfile((), seed)
    if not isinstance(table, dict):
        raise ConfigError(
            source, "faults", "must be a table of policies, e.g. [faults.idle_timeout]"
        )
    table = dict(table)
    profile = table.pop("profile", None)
    if profile is not None:
        shipped = shipped_profiles()
        if profile not in shipped:
            raise ConfigError(
                source,
                "faults.profile",
                f"unknown profile {profile!r}; shipped: " + ", ".join(shipped),
            )
        table = {**shipped[profile][1], **table}
    policies = []
    for name, body in table.items():
        if name not in ALL_POLICIES:
            raise ConfigError(
                source,
                f"faults.{name}",
                "unknown fault policy; known: "
                + ", ".join(sorted(ALL_POLICIES))
                + ' (or profile = "name")',
            )
        policies.append((name, read_section(ALL_POLICIES[name], body, source, f"faults.{name}")))
    return FaultProfile(tuple(policies), seed)
