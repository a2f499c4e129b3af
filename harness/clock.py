"""One clock for workers and fake server: scenario seconds, optionally compressed.

At time scale k one scenario second takes 1/k wall seconds. Everything that timestamps or
sleeps goes through a Clock, so the same code runs at 1x against a real service, at 60x
against the fake server. Pure modules (session, faults, pacing, reconnect) take `now` as an
argument instead, which is how tests drive them by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol

__all__ = ["Clock", "ScaledClock"]


class Clock(Protocol):
    scale: float

    def now(self) -> float:
        """Scenario seconds since the clock's origin."""

    def wall(self) -> float:
        """Wall-clock epoch seconds, for rows a person lines up with other logs."""

    def sleep_until(self, t: float) -> Awaitable[None]:
        """Awaitable that returns once scenario time t has passed."""


class ScaledClock:
    """Scenario time from the system-wide monotonic clock, so two processes given the same
    origin and scale agree on scenario time."""

    __slots__ = ("scale", "origin")

    def __init__(self, scale: float = 1.0, origin: float | None = None) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = float(scale)
        self.origin = time.monotonic() if origin is None else origin

    def now(self) -> float:
        return (time.monotonic() - self.origin) * self.scale

    def wall(self) -> float:
        return time.time()

    def to_monotonic(self, t: float) -> float:
        return self.origin + t / self.scale

    def sleep_until(self, t: float) -> Awaitable[None]:
        # asyncio.sleep's own coroutine, not one wrapped around it: a paced frame waits here,
        # and every coroutine level costs each of hundreds of senders per frame
        return asyncio.sleep(max(0.0, self.to_monotonic(t) - time.monotonic()))

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.now() + seconds)

    def __repr__(self) -> str:
        return f"ScaledClock(scale={self.scale})"
