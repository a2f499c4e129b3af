"""Fault policies: each suspected cause of 1006 drops as a pure, seeded policy.

A policy sees the session open and the passage of scenario time, and answers with a `Close`
(how and why the server ends the connection) when its fault fires. Policies never touch a
socket; the aiohttp edge carries their decisions out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from harness.config import ConfigError, read_section, spec

__all__ = [
    "Close", "CloseKind", "FaultProfile", "FaultSet", "SessionAgeHazard", "parse_faults",
    "session_rng",
]


class CloseKind(StrEnum):
    ABORT = "abort"  # drop TCP with no close frame: the client sees 1006
    CLOSE = "close"  # a close frame with a code and reason


@dataclass(frozen=True, slots=True)
class Close:
    kind: CloseKind
    code: int | None
    reason: str
    policy: str


class FaultPolicy(Protocol):
    name: str

    def next_deadline(self) -> float | None: ...

    def poll(self, now: float) -> Close | None: ...


@dataclass(frozen=True, slots=True)
class SessionAgeConfig:
    """Hazard by connection age ("hot" sessions die after minutes): exponential with the given
    mean, or Weibull with shape and scale (shape 1 is the exponential)."""

    distribution: str = spec("exponential", choices=("exponential", "weibull"))
    mean: float = spec(480.0, kind="duration", lo=0.001)
    shape: float = spec(1.0, lo=0.05, hi=20.0)
    scale: float = spec(480.0, kind="duration", lo=0.001)
    action: str = spec("abort", choices=tuple(CloseKind))
    code: int = spec(1011, lo=1000, hi=4999)
    reason: str = ""

    def lifetime(self, rng: np.random.Generator) -> float:
        if self.distribution == "weibull":
            return float(self.scale * rng.weibull(self.shape))
        return float(rng.exponential(self.mean))


class SessionAgeHazard:
    name = "session_age"

    def __init__(self, config: SessionAgeConfig, rng: np.random.Generator, opened: float) -> None:
        self.config = config
        self.deadline: float | None = opened + config.lifetime(rng)

    def next_deadline(self) -> float | None:
        return self.deadline

    def poll(self, now: float) -> Close | None:
        if self.deadline is None or now < self.deadline:
            return None
        self.deadline = None
        c = self.config
        code = None if c.action == CloseKind.ABORT else c.code
        return Close(CloseKind(c.action), code, c.reason, self.name)


_POLICIES: dict[str, tuple[type, type]] = {
    "session_age": (SessionAgeConfig, SessionAgeHazard),
}


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """Validated fault configuration; `start` makes the policies of one session."""

    policies: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def start(self, session_key: str, opened: float) -> FaultSet:
        rng = session_rng(self.seed, session_key)
        return FaultSet([_POLICIES[name][1](cfg, rng, opened) for name, cfg in self.policies])

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {name: asdict(cfg) for name, cfg in self.policies}


def session_rng(seed: int, key: str) -> np.random.Generator:
    """Each session's RNG comes from the run seed and a stable key (worker and attempt when the
    client says so), so the same run injects the same faults whatever the arrival order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


class FaultSet:
    """The policies of one session, polled together; the first to fire wins."""

    __slots__ = ("policies",)

    def __init__(self, policies: list[FaultPolicy]) -> None:
        self.policies = policies

    def next_deadline(self) -> float | None:
        deadlines = [d for p in self.policies if (d := p.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def poll(self, now: float) -> Close | None:
        for policy in self.policies:
            fired = policy.poll(now)
            if fired is not None:
                return fired
        return None


def parse_faults(table: Any, source: str, seed: int = 0) -> FaultProfile:
    """`[faults.<policy>]` tables -> FaultProfile; unknown policies name the known ones."""
    if table is None:
        return FaultProfile((), seed)
    if not isinstance(table, dict):
        raise ConfigError(source, "faults", "must be a table of policies, e.g. [faults.session_age]")
    policies = []
    for name, body in table.items():
        if name not in _POLICIES:
            raise ConfigError(source, f"faults.{name}",
                              f"unknown fault policy; known: {', '.join(sorted(_POLICIES))}")
        policies.append((name, read_section(_POLICIES[name][0], body, source, f"faults.{name}")))
    return FaultProfile(tuple(policies), seed)
