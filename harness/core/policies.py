"""The fault policies, one per field hypothesis about 1006 drops (docs/faults.md).

Each has a frozen config read from `[faults.<name>]` and a small pure state machine: deadlines
and observations of client frames in, a `Fault` out. Times are scenario seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.core.audio_level import DBFS_FLOOR, dbfs
from harness.core.faults import Fault, FaultKind, FaultSet, HandshakeDecision, policy_rng
from harness.core.spec import spec

__all__ = ["ALL_POLICIES", "HANDSHAKE_POLICIES", "SESSION_POLICIES"]

_ACTIONS = tuple(str(k) for k in FaultKind)


@dataclass(frozen=True)
class Action:
    """How a policy's fault ends (or troubles) the connection."""

    action: str = spec("abort", choices=_ACTIONS)
    code: int = spec(1011, lo=1000, hi=4999)
    reason: str = ""
    delay: float = spec(5.0, kind="duration")  # delayed_close: silence before the close frame
    hold: float = spec(600.0, kind="duration")  # half_open: how long the dead socket is held

    def fault(self, policy: str, error_code: str | None = None, error_message: str = "") -> Fault:
        kind = FaultKind(self.action)
        with_code = kind in (FaultKind.CLOSE, FaultKind.DELAYED_CLOSE)
        return Fault(
            kind,
            policy,
            self.code if with_code else None,
            self.reason,
            self.delay,
            self.hold,
            error_code if kind is FaultKind.ERROR or error_code else None,
            error_message,
        )


class Policy:
    """Base: a deadline that fires once, and no interest in frames."""

    name = ""
    wants_audio = False

    def __init__(self, config: Any, rng: np.random.Generator, opened: float) -> None:
        self.config, self.rng, self.opened = config, rng, opened
        self.deadline: float | None = None

    def next_deadline(self) -> float | None:
        return self.deadline

    def poll(self, now: float) -> Fault | None:
        if self.deadline is None or now < self.deadline:
            return None
        due, self.deadline = self.deadline, None
        return dataclasses.replace(self.fire(), due=due)

    def fire(self) -> Fault:
        return self.config.fault(self.name)

    def on_frame(self, now: float, kind: str) -> Fault | None:
        return None

    def on_audio(self, now: float, pcm: bytes, buffer_bytes: int) -> Fault | None:
        return None


# --- session age ------------------------------------------------------------------------------
def _parse_pieces(pieces: list[Any]) -> list[tuple[float, float]]:
    """[{until = "5m", per_hour = 0.5}, ..., {per_hour = 2}] -> [(until_s, rate_per_s)]."""
    from harness.core.spec import parse_duration

    out, last = [], 0.0
    if not isinstance(pieces, list) or not pieces:
        raise ValueError(
            'hazard must be a non-empty list like [{until = "5m", per_hour = 0.5}, {per_hour = 6}]'
        )
    for i, piece in enumerate(pieces):
        if not isinstance(piece, dict) or "per_hour" not in piece:
            raise ValueError(f"hazard[{i}] needs per_hour (and until, except the last)")
        rate = piece["per_hour"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise ValueError(f"hazard[{i}].per_hour must be a number >= 0")
        if "until" in piece:
            until = parse_duration(piece["until"])
            if until <= last:
                raise ValueError(f"hazard[{i}].until must grow: {until} <= {last}")
        elif i != len(pieces) - 1:
            raise ValueError(f"hazard[{i}] needs until (only the last piece runs forever)")
        else:
            until = math.inf
        out.append((until, rate / 3600.0))
        last = until
    return out


@dataclass(frozen=True)
class SessionAgeConfig(Action):
    """Hazard by connection age ("hot" sessions die after minutes)."""

    distribution: str = spec("exponential", choices=("exponential", "weibull", "piecewise"))
    mean: float = spec(480.0, kind="duration", lo=0.001)
    shape: float = spec(1.0, lo=0.05, hi=20.0)
    scale: float = spec(480.0, kind="duration", lo=0.001)
    hazard: list = field(default_factory=list)

    def check(self) -> None:
        if self.distribution == "piecewise":
            _parse_pieces(self.hazard)

    def lifetime(self, rng: np.random.Generator) -> float:
        if self.distribution == "weibull":
            return float(self.scale * rng.weibull(self.shape))
        if self.distribution == "exponential":
            return float(rng.exponential(self.mean))
        # Piecewise-constant hazard: invert the cumulative hazard at an Exp(1) draw.
        target, start, cumulative = float(rng.exponential(1.0)), 0.0, 0.0
        for until, rate in _parse_pieces(self.hazard):
            span = until - start
            if rate > 0 and cumulative + rate * span >= target:
                return start + (target - cumulative) / rate
            cumulative += rate * span
            start = until
        return math.inf


class SessionAge(Policy):
    name = "session_age"

    def __init__(self, config: SessionAgeConfig, rng: np.random.Generator, opened: float) -> None:
        super().__init__(config, rng, opened)
        lifetime = config.lifetime(rng)
        self.deadline = None if math.isinf(lifetime) else opened + lifetime


@dataclass(frozen=True)
class RandomLossConfig(Action):
    """Plain random loss: a constant Poisson rate of drops per connection-hour."""

    per_hour: float = spec(1.0, lo=0.0, hi=1e6)


class RandomLoss(Policy):
    name = "random_loss"

    def __init__(self, config: RandomLossConfig, rng: np.random.Generator, opened: float) -> None:
        super().__init__(config, rng, opened)
        if config.per_hour > 0:
            self.deadline = opened + float(rng.exponential(3600.0 / config.per_hour))


# --- idle -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdleTimeoutConfig(Action):
    """No frame (or no audio) for `after` seconds ends the session."""

    after: float = spec(30.0, kind="duration", lo=0.001)
    counts: str = spec("any", choices=("any", "audio"))  # which frames reset the timer
    pings_count: bool = False  # do WebSocket pings reset it?


class IdleTimeout(Policy):
    name = "idle_timeout"

    def __init__(self, config: IdleTimeoutConfig, rng: np.random.Generator, opened: float) -> None:
        super().__init__(config, rng, opened)
        self.deadline = opened + config.after

    def on_frame(self, now: float, kind: str) -> Fault | None:
        c = self.config
        if (
            kind == "audio"
            or (kind == "event" and c.counts == "any")
            or (kind == "ping" and c.pings_count)
        ):
            self.deadline = now + c.after
        return None


# --- audio-driven -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BufferPressureConfig(Action):
    """Uncommitted audio above a ceiling (ms and/or bytes) trips the server."""

    max_ms: float = spec(0.0, lo=0.0)
    max_bytes: int = spec(0, lo=0)

    def check(self) -> None:
        if not self.max_ms and not self.max_bytes:
            raise ValueError("set max_ms or max_bytes (the uncommitted-audio ceiling)")

    def limit_bytes(self) -> float:
        limits = [x for x in (self.max_ms * 48.0, float(self.max_bytes)) if x > 0]
        return min(limits)


class BufferPressure(Policy):
    name = "buffer_pressure"
    wants_audio = True

    def __init__(self, config: BufferPressureConfig, rng, opened: float) -> None:
        super().__init__(config, rng, opened)
        self.limit = config.limit_bytes()

    def on_audio(self, now: float, pcm: bytes, buffer_bytes: int) -> Fault | None:
        if buffer_bytes > self.limit:
            return self.config.fault(
                self.name,
                "input_audio_buffer_full",
                f"The input audio buffer holds {buffer_bytes / 48:.0f} ms "
                "of uncommitted audio, over its limit.",
            )
        return None


@dataclass(frozen=True)
class RateConfig(Action):
    """Audio arriving faster than `max_speed` x real time over a sliding `window`."""

    max_speed: float = spec(1.5, lo=0.01, hi=1000.0)
    window: float = spec(2.0, kind="duration", lo=0.001)


class Rate(Policy):
    name = "rate"
    wants_audio = True

    def __init__(self, config: RateConfig, rng, opened: float) -> None:
        super().__init__(config, rng, opened)
        self.window: deque[tuple[float, float]] = deque()
        self.total_ms = 0.0

    def on_audio(self, now: float, pcm: bytes, buffer_bytes: int) -> Fault | None:
        ms = len(pcm) / 48.0
        self.window.append((now, ms))
        self.total_ms += ms
        horizon = now - self.config.window
        while self.window and self.window[0][0] <= horizon:
            self.total_ms -= self.window.popleft()[1]
        # The frame just received may straddle the window edge; allow for it.
        if self.total_ms - ms > self.config.max_speed * self.config.window * 1000.0:
            return self.fire()
        return None


@dataclass(frozen=True)
class MicroBurstConfig(Action):
    """More than `frames` appends within `within` (a burst after a stall)."""

    frames: int = spec(10, lo=1)
    within: float = spec(0.05, kind="duration", lo=0.0001)


class MicroBurst(Policy):
    name = "micro_burst"

    def __init__(self, config: MicroBurstConfig, rng, opened: float) -> None:
        super().__init__(config, rng, opened)
        self.times: deque[float] = deque()

    def on_frame(self, now: float, kind: str) -> Fault | None:
        if kind != "audio":
            return None
        times = self.times
        times.append(now)
        while times[0] <= now - self.config.within:
            times.popleft()
        return self.fire() if len(times) > self.config.frames else None


@dataclass(frozen=True)
class SilenceHazardConfig(Action):
    """Once incoming audio has stayed below `threshold_dbfs` for `after`, drops come at an
    exponential rate with the given mean. Audio above the threshold resets it; no audio at all
    (an idle gap) keeps the streak going."""

    threshold_dbfs: float = spec(-50.0, lo=-120.0, hi=0.0)
    after: float = spec(10.0, kind="duration")
    mean: float = spec(60.0, kind="duration", lo=0.001)


class SilenceHazard(Policy):
    name = "silence_hazard"
    wants_audio = True

    def __init__(self, config: SilenceHazardConfig, rng, opened: float) -> None:
        super().__init__(config, rng, opened)
        self.silent_since: float | None = None

    def on_audio(self, now: float, pcm: bytes, buffer_bytes: int) -> Fault | None:
        level = dbfs(pcm)  # what the client recorded for the same audio
        # at the floor (digital silence) is quiet even under a threshold at the floor
        if level < self.config.threshold_dbfs or level <= DBFS_FLOOR:
            if self.silent_since is None:
                self.silent_since = now
                self.deadline = (
                    now + self.config.after + float(self.rng.exponential(self.config.mean))
                )
        else:
            self.silent_since = self.deadline = None
        return None


# --- connection-level -------------------------------------------------------------------------
@dataclass(frozen=True)
class AcceptThenCloseConfig(Action):
    """The handshake succeeds, then the server closes at once (e.g. 1008 "Invalid API key"):
    the case that sends naive reconnect loops spinning."""

    action: str = spec("close", choices=_ACTIONS)
    code: int = spec(1008, lo=1000, hi=4999)
    reason: str = "Invalid API key"
    share: float = spec(1.0, lo=0.0, hi=1.0)
    after: float = spec(0.0, kind="duration")


class AcceptThenClose(Policy):
    name = "accept_then_close"

    def __init__(self, config: AcceptThenCloseConfig, rng, opened: float) -> None:
        super().__init__(config, rng, opened)
        if rng.random() < config.share:
            self.deadline = opened + config.after


@dataclass(frozen=True)
class MaxDurationConfig:
    """The service's session limit: `session_expired` error, then close 1001."""

    after: float = spec(3600.0, kind="duration", lo=0.001)


# --- handshake (server-wide) ------------------------------------------------------------------
@dataclass(frozen=True)
class HandshakeFaultsConfig:
    """A share of handshakes answered with an HTTP error, and a share answered slowly."""

    share: float = spec(0.1, lo=0.0, hi=1.0)
    statuses: list = field(default_factory=lambda: [401, 429, 500, 503])
    slow_share: float = spec(0.0, lo=0.0, hi=1.0)
    slow_delay: float = spec(5.0, kind="duration")

    def check(self) -> None:
        if not self.statuses or not all(
            isinstance(s, int) and 400 <= s <= 599 for s in self.statuses
        ):
            raise ValueError("statuses must be a non-empty list of HTTP error codes 400-599")


class HandshakeFaults:
    def __init__(self, config: HandshakeFaultsConfig) -> None:
        self.config = config

    def decide(self, rng, session_key, client_key, now, active) -> HandshakeDecision | None:
        c = self.config
        failed, slow = rng.random() < c.share, rng.random() < c.slow_share
        status = int(c.statuses[int(rng.integers(len(c.statuses)))]) if failed else None
        if status is None and not slow:
            return None
        return HandshakeDecision("handshake_faults", status, c.slow_delay if slow else 0.0)


@dataclass(frozen=True)
class ConcurrencyCapConfig(Action):
    """At most `max_sessions` live sessions per API key (or per server): further handshakes get
    429, or the oldest session is dropped to make room."""

    max_sessions: int = spec(10, lo=1)
    per: str = spec("key", choices=("key", "server"))
    over: str = spec("reject", choices=("reject", "drop_oldest"))


class ConcurrencyCap:
    def __init__(self, config: ConcurrencyCapConfig) -> None:
        self.config = config

    def decide(self, rng, session_key, client_key, now, active) -> HandshakeDecision | None:
        c = self.config
        mine = [a for a in active if c.per == "server" or a[1] == client_key]
        excess = len(mine) + 1 - c.max_sessions
        if excess <= 0:
            return None
        if c.over == "reject":
            return HandshakeDecision("concurrency_cap", 429)
        oldest = sorted(mine, key=lambda a: a[2])[:excess]
        return HandshakeDecision("concurrency_cap", evict=tuple(a[0] for a in oldest))


SESSION_POLICIES: dict[str, tuple[type, type]] = {
    "session_age": (SessionAgeConfig, SessionAge),
    "random_loss": (RandomLossConfig, RandomLoss),
    "idle_timeout": (IdleTimeoutConfig, IdleTimeout),
    "buffer_pressure": (BufferPressureConfig, BufferPressure),
    "rate": (RateConfig, Rate),
    "micro_burst": (MicroBurstConfig, MicroBurst),
    "silence_hazard": (SilenceHazardConfig, SilenceHazard),
    "accept_then_close": (AcceptThenCloseConfig, AcceptThenClose),
}
HANDSHAKE_POLICIES: dict[str, tuple[type, type]] = {
    "handshake_faults": (HandshakeFaultsConfig, HandshakeFaults),
    "concurrency_cap": (ConcurrencyCapConfig, ConcurrencyCap),
}
ALL_POLICIES: dict[str, type] = {
    **{k: v[0] for k, v in SESSION_POLICIES.items()},
    **{k: v[0] for k, v in HANDSHAKE_POLICIES.items()},
    "max_duration": MaxDurationConfig,
}


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """Validated fault configuration of a server: session policies, handshake policies, and the
    maximum session duration they impose (None: the service's)."""

    policies: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def start(self, session_key: str, opened: float) -> FaultSet:
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
