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

from harness.core.timescale import check_time_scale

__all__ = ["Clock", "ScaledClock", "deadline_waker", "sleep_until_monotonic"]


class Clock(Protocol):
    scale: float
    origin: float  # time.monotonic() at scenario time 0

    def now(self) -> float:
        """Scenario seconds since the clock's origin."""

    def wall(self) -> float:
        """Wall-clock epoch seconds, for rows a person lines up with other logs."""

    def sleep_until(self, t: float) -> Awaitable[None]:
        """Awaitable that returns once scenario time t has passed (to the wall millisecond)."""

    def wall_seconds(self, seconds: float) -> float:
        """How long `seconds` of scenario time take on the wall clock."""

    def wall_at(self, t: float) -> float:
        """The epoch seconds at which scenario time `t` (now or earlier) fell."""


class ScaledClock:
    """Scenario time from the system-wide monotonic clock, so two processes given the same
    origin and scale agree on scenario time."""

    __slots__ = ("scale", "origin")

    def __init__(self, scale: float = 1.0, origin: float | None = None) -> None:
        self.scale = check_time_scale(scale)
        self.origin = time.monotonic() if origin is None else origin

    def now(self) -> float:
        return (time.monotonic() - self.origin) * self.scale

    def wall(self) -> float:
        return time.time()

    def to_monotonic(self, t: float) -> float:
        return self.origin + t / self.scale

    def wall_seconds(self, seconds: float) -> float:
        return seconds / self.scale

    def wall_at(self, t: float) -> float:
        return time.time() - (self.now() - t) / self.scale

    def sleep_until(self, t: float) -> Awaitable[None]:
        # a future, not a coroutine around one: a paced frame waits here, and every level
        # costs each of hundreds of senders per frame
        return sleep_until_monotonic(self.to_monotonic(t))

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.now() + seconds)

    def __repr__(self) -> str:
        return f"ScaledClock(scale={self.scale})"


class _DeadlineWaker:
    """Wakes every sleeper of one event loop whose deadline falls in the same millisecond with
    one timer. Hundreds of paced senders would otherwise start, fire and drop a timer each per
    frame, a cost that grows with the fleet. Deadlines are rounded
    to the nearest millisecond: uvloop's timers have that resolution anyway, and with them the
    lateness of paced frames stays centred where a timer per sleeper had it."""

    __slots__ = ("_loop", "_due")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, list[asyncio.Future[None]]] = {}

    def wait_until(self, when: float) -> asyncio.Future[None]:
        ms = round(when * 1000.0)
        fut = self._loop.create_future()
        sleepers = self._due.get(ms)
        if sleepers is None:
            self._due[ms] = [fut]
            self._loop.call_later(ms / 1000.0 - time.monotonic(), self._wake, ms)
        else:
            sleepers.append(fut)
        return fut

    def _wake(self, ms: int) -> None:
        for fut in self._due.pop(ms):
            if not fut.done():  # a cancelled sleeper is skipped
                fut.set_result(None)


_wakers: dict[asyncio.AbstractEventLoop, _DeadlineWaker] = {}


def deadline_waker() -> _DeadlineWaker:
    """The running loop's shared timer. A paced sender keeps it and calls its `wait_until`
    itself: each level of calls in between costs each of hundreds of senders per frame."""
    loop = asyncio.get_running_loop()
    waker = _wakers.get(loop)
    if waker is None:
        for closed in [old for old in _wakers if old.is_closed()]:
            del _wakers[closed]
        waker = _wakers[loop] = _DeadlineWaker(loop)
    return waker


def sleep_until_monotonic(when: float) -> asyncio.Future[None]:
    """A future done once time.monotonic() has reached `when` (on the next loop turn if it
    already has), sharing its timer with every sleeper due in the same millisecond."""
    return deadline_waker().wait_until(when)
