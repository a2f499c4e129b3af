"""Pure schedules and reconnect policies: no sockets, time and randomness passed in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.config.scenario import PacingSection
from harness.core.pacing import schedule, steady_offsets
from harness.core.reconnect import SDK_RETRIED_CODES, ReconnectPolicy
from harness.core.spec import ConfigError, read_section


@st.composite
def pacings(draw) -> PacingSection:
    return PacingSection(
        chunk_ms=draw(st.integers(5, 500)),
        mode=draw(st.sampled_from(["steady", "jitter", "burst"])),
        speed=draw(st.floats(0.1, 10)),
        jitter_ms=draw(st.floats(0, 200)),
        burst_frames=draw(st.integers(1, 20)),
        burst_every_ms=draw(st.one_of(st.just(0.0), st.floats(1, 2000))),
    )


@given(pacings(), st.integers(0, 3000), st.integers(0, 2**32 - 1))
def test_schedules_keep_every_frame_in_order_and_bounded(
    pacing: PacingSection, n: int, seed: int
) -> None:
    offsets = schedule(n, pacing, np.random.default_rng(seed))
    assert len(offsets) == n  # no audio added or dropped
    assert all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))  # monotone
    assert all(o >= 0 for o in offsets)
    steady = steady_offsets(n, pacing.chunk_ms, pacing.speed)
    if pacing.mode == "jitter":
        bound = pacing.jitter_ms / 1000 + 1e-9
        assert all(abs(o - s) <= bound for o, s in zip(offsets, steady, strict=True))
    elif pacing.mode == "burst":
        every_ms = pacing.burst_every_ms or pacing.burst_frames * pacing.chunk_ms
        every = every_ms / 1000 / pacing.speed
        for i, o in enumerate(offsets):  # burst k leaves at k * every, burst_frames at once
            assert o == pytest.approx((i // pacing.burst_frames) * every)
    else:
        assert offsets == steady


def test_steady_is_real_time() -> None:
    assert steady_offsets(4, 20) == pytest.approx((0, 0.02, 0.04, 0.06))
    assert steady_offsets(3, 100, speed=2) == pytest.approx((0, 0.05, 0.1))


def test_idle_pause_shifts_the_second_half() -> None:
    offsets = schedule(4, PacingSection(chunk_ms=100), np.random.default_rng(0), 2, 1.5)
    assert offsets == pytest.approx([0, 0.1, 1.7, 1.8])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@given(st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_on_drop_backoff_is_bounded_and_gives_up(failures: int, seed: int) -> None:
    policy = ReconnectPolicy(initial=0.5, max=8.0, multiplier=2.0, jitter=0.25, max_attempts=10)
    delay = policy.after_close(1006, None, failures, rng(seed))
    if failures >= 10:
        assert delay is None
    else:
        base = min(0.5 * 2**failures, 8.0)
        assert 0.75 * base <= delay <= base


@pytest.mark.parametrize(
    ("code", "status", "expect"),
    [
        (1006, None, "retry"),
        (1011, None, "retry"),
        (1012, None, "retry"),
        (1008, None, "stop"),
        (4000, None, "stop"),
        (4999, None, "stop"),
        (1013, None, "slow"),
        (None, 429, "slow"),
        (None, 401, "stop"),
        (None, 503, "retry"),
        (None, None, "retry"),
    ],
)
def test_close_code_rules(code, status, expect) -> None:
    policy = ReconnectPolicy(jitter=0.0, initial=1.0, slow_factor=4.0)
    delay = policy.after_close(code, status, 0, rng())
    assert {"retry": 1.0, "slow": 4.0, "stop": None}[expect] == delay


def test_rules_are_configurable_and_validated() -> None:
    policy = ReconnectPolicy(jitter=0.0, stop_on=["5xx"], slow_on=[])
    assert policy.after_close(1008, None, 0, rng()) == 0.5
    assert policy.after_close(None, 503, 0, rng()) is None
    with pytest.raises(ConfigError, match="not a close code"):
        read_section(ReconnectPolicy, {"stop_on": ["soon"]}, "s.toml", "reconnect")


def test_sdk_default_matches_the_official_client() -> None:
    sdk = ReconnectPolicy(strategy="sdk-default")
    delays = [sdk.after_close(1006, None, k, rng(k)) for k in range(6)]
    for k, delay in enumerate(delays[:5], start=1):
        assert 0.75 * min(0.5 * 2 ** (k - 1), 8) <= delay <= min(0.5 * 2 ** (k - 1), 8)
    assert delays[5] is None  # five attempts
    for code in SDK_RETRIED_CODES:
        assert sdk.after_close(code, None, 0, rng()) is not None
    assert sdk.after_close(1008, None, 0, rng()) is None
    assert sdk.after_close(1000, None, 0, rng()) is None
    assert not sdk.reconfigures and not ReconnectPolicy(strategy="sdk-default", replay=True).replays


def test_none_strategy_never_reconnects() -> None:
    assert ReconnectPolicy(strategy="none").after_close(1006, None, 0, rng()) is None


@given(st.floats(1, 3600), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_rotation_age_stays_within_its_jitter(every: float, share: float, seed: int) -> None:
    policy = ReconnectPolicy(rotate_every=every, rotate_jitter=every * share)
    age = policy.rotation_age(rng(seed))
    assert every - every * share <= age <= every + every * share
    assert ReconnectPolicy().rotation_age(rng()) is None
