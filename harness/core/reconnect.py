"""Pure reconnect policy: after a close, wait how long and reconnect, or stop; when to rotate.

Strategies:
- `on-drop`: exponential backoff with jitter, close-code rules (stop on 1008 and 4xxx, back off
  longer on 1013 and 429), bounded by consecutive unhealthy attempts.
- `none`: one connection per worker; a drop ends the worker.
- `sdk-default`: what the official `openai` SDK does (shared/protocol.md): retries 1001, 1005,
  1006, 1011, 1012, 1013, 1015 after min(0.5 * 2^(k-1), 8) s x U(0.75, 1), 5 attempts; the new
  session is not reconfigured and buffered audio is lost.
Proactive rotation (`rotate_every`), replay of interrupted utterances and make-before-break
combine with `on-drop`. Every strategy waits at least a refused handshake's `Retry-After`, and
every path that reconnects, a make-before-break rotation's attempts included, asks
`after_close`, so `max_attempts`, backoff and `Retry-After` bound all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np

from harness.core.spec import spec

__all__ = ["ReconnectPolicy", "SDK_RETRIED_CODES", "retry_after"]

SDK_RETRIED_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})


def _matches(rules: list[Any], code: int | None) -> bool:
    """A rule is a code (1008), or a pattern of a code class ("4xxx", "5xx")."""
    if code is None:
        return False
    for rule in rules:
        if isinstance(rule, int) and rule == code:
            return True
        if isinstance(rule, str) and rule.endswith("x"):
            prefix = rule.rstrip("x")
            if len(rule) == len(str(code)) and str(code).startswith(prefix):
                return True
    return False


@dataclass(frozen=True)
class ReconnectPolicy:
    strategy: str = spec("on-drop", choices=("on-drop", "none", "sdk-default"))
    initial: float = spec(0.5, kind="duration")
    max: float = spec(8.0, kind="duration")
    multiplier: float = spec(2.0, lo=1.0, hi=10.0)
    jitter: float = spec(0.25, lo=0.0, hi=1.0)
    max_attempts: int = spec(10, lo=1, hi=1000)
    # a connection that lived less than this counts as a failed attempt (bounds accept-then-close
    # loops, whose handshakes all succeed)
    healthy_after: float = spec(10.0, kind="duration")
    stop_on: list = field(default_factory=lambda: [1008, "4xxx", 401, 403, 404])
    slow_on: list = field(default_factory=lambda: [1013, 429])
    slow_factor: float = spec(4.0, lo=1.0, hi=100.0)
    rotate_every: float = spec(0.0, kind="duration")  # 0: never rotate proactively
    rotate_jitter: float = spec(0.0, kind="duration")  # rotation at rotate_every +- this
    replay: bool = False  # re-send an utterance a drop interrupted
    make_before_break: bool = False  # rotate by opening the new connection first

    def check(self) -> None:
        for name in ("stop_on", "slow_on"):
            for rule in getattr(self, name):
                if not (isinstance(rule, int) and not isinstance(rule, bool)) and not (
                    isinstance(rule, str) and rule.rstrip("x").isdigit() and rule.endswith("x")
                ):
                    raise ValueError(
                        f'{name}: {rule!r} is not a close code, HTTP status or pattern like "4xxx"'
                    )
        if self.rotate_jitter > self.rotate_every:
            raise ValueError("rotate_jitter cannot exceed rotate_every")

    @property
    def reconfigures(self) -> bool:
        """Does a reconnected session get its session.update again? (The SDK's does not.)"""
        return self.strategy != "sdk-default"

    @property
    def replays(self) -> bool:
        return self.replay and self.strategy == "on-drop"

    def after_close(
        self,
        code: int | None,
        status: int | None,
        failures: int,
        rng: np.random.Generator,
        retry_after: float | None = None,
    ) -> float | None:
        """Seconds to wait before reconnecting, or None to stop the worker.

        `code` is the WebSocket close code (None when the handshake failed), `status` the HTTP
        status of a failed handshake, `failures` the consecutive unhealthy attempts so far,
        this one included (0 after a healthy connection dropped), `retry_after` the seconds a
        refused handshake's Retry-After asked for: the wait is never shorter."""
        delay = self._delay(code, status, failures, rng)
        if delay is None or retry_after is None:
            return delay
        return max(delay, retry_after)

    def _delay(
        self, code: int | None, status: int | None, failures: int, rng: np.random.Generator
    ) -> float | None:
        if self.strategy == "none":
            return None
        if self.strategy == "sdk-default":
            if code is not None and code not in SDK_RETRIED_CODES:
                return None
            attempt = failures + 1
            if attempt > 5:
                return None
            return min(0.5 * 2 ** (attempt - 1), 8.0) * float(rng.uniform(0.75, 1.0))
        if (
            failures >= self.max_attempts
            or _matches(self.stop_on, code)
            or _matches(self.stop_on, status)
        ):
            return None
        delay = min(self.initial * self.multiplier**failures, self.max)
        if _matches(self.slow_on, code) or _matches(self.slow_on, status):
            delay *= self.slow_factor
        return delay * (1.0 - self.jitter * float(rng.random()))

    def rotation_age(self, rng: np.random.Generator) -> float | None:
        """The connection age at which to rotate proactively, or None."""
        if self.rotate_every <= 0 or self.strategy != "on-drop":
            return None
        return self.rotate_every + float(rng.uniform(-1.0, 1.0)) * self.rotate_jitter


def retry_after(value: str | None, wall_now: float, scale: float) -> float | None:
    """Scenario seconds a refused handshake's Retry-After asks for, or None (absent, unreadable).
    Delay-seconds are scenario seconds (the fake server lives in scenario time; a real endpoint
    runs at 1x); an HTTP date is taken against the wall clock, `wall_now` epoch seconds."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value).timestamp() - wall_now) * scale
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
