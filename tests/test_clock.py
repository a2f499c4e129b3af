"""The clock's shared deadline timer: every sleeper wakes, in deadline order, within half a
millisecond of its deadline at the earliest; cancelling one sleeper leaves the others of its
millisecond alone. Real timers on the running loop, each wait tens of milliseconds at most."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from harness.edge.clock import ScaledClock, sleep_until_monotonic


async def test_sleepers_sharing_milliseconds_all_wake_in_order_never_early() -> None:
    start, rng = time.monotonic() + 0.005, random.Random(7)
    deadlines = [start + rng.random() * 0.03 for _ in range(300)]
    deadlines += deadlines[:50]  # some share an exact deadline, many a millisecond
    rng.shuffle(deadlines)
    woke: list[tuple[float, float]] = []

    async def sleeper(when: float) -> None:
        await sleep_until_monotonic(when)
        woke.append((when, time.monotonic()))

    await asyncio.wait_for(asyncio.gather(*(sleeper(d) for d in deadlines)), timeout=5)
    assert len(woke) == len(deadlines)
    assert all(at >= when - 0.0005 - 1e-6 for when, at in woke)  # rounded to the nearest ms
    by_ms = [round(when * 1000) for when, _ in woke]
    assert by_ms == sorted(by_ms)  # an earlier millisecond never wakes after a later one


async def test_a_cancelled_sleeper_leaves_its_millisecond_to_the_others() -> None:
    when = time.monotonic() + 0.01
    first, second = sleep_until_monotonic(when), sleep_until_monotonic(when)
    first.cancel()
    await asyncio.wait_for(second, timeout=5)
    assert first.cancelled() and second.done()


async def test_a_past_deadline_wakes_on_a_later_turn_not_at_once() -> None:
    fut = sleep_until_monotonic(time.monotonic() - 1.0)
    assert not fut.done()  # the caller always yields to the loop, as asyncio.sleep(0) does
    await asyncio.wait_for(fut, timeout=5)


async def test_scaled_sleep_takes_scenario_seconds_over_the_scale() -> None:
    clock = ScaledClock(100.0)
    before = time.monotonic()
    await asyncio.wait_for(clock.sleep_until(clock.now() + 2.0), timeout=5)  # 20 ms of wall
    assert time.monotonic() - before >= 0.02 - 0.0005 - 1e-6


@pytest.mark.parametrize("scale", [0.0, -1.0, 0.0009, 1000.5, float("nan"), float("inf")])
def test_every_entry_point_refuses_the_same_time_scales(scale) -> None:
    from harness.config.scenario import scenario_from_doc
    from harness.core.spec import ConfigError
    from harness.core.timescale import check_time_scale

    with pytest.raises(ValueError, match="out of range"):
        check_time_scale(scale)
    with pytest.raises(ValueError, match="out of range"):
        ScaledClock(scale)
    doc = {"run": {"name": "r", "duration": "1m", "workers": 1, "time_scale": scale}}
    with pytest.raises(ConfigError):
        scenario_from_doc(doc, "t.toml")


@pytest.mark.parametrize("scale", [0.001, 1.0, 60.0, 1000.0])
def test_the_range_ends_are_allowed_everywhere(scale) -> None:
    from harness.config.scenario import scenario_from_doc

    assert ScaledClock(scale).scale == scale
    doc = {"run": {"name": "r", "duration": "1m", "workers": 1, "time_scale": scale}}
    assert scenario_from_doc(doc, "t.toml").run.time_scale == scale
