"""Pure schedules and reconnect backoff."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.pacing import steady_offsets
from harness.reconnect import Backoff


@given(st.integers(0, 5000), st.integers(5, 2000), st.floats(0.1, 100))
def test_steady_offsets_are_monotone_and_preserve_count(n: int, chunk_ms: int,
                                                        speed: float) -> None:
    offsets = steady_offsets(n, chunk_ms, speed)
    assert len(offsets) == n
    assert all(b > a for a, b in zip(offsets, offsets[1:], strict=False))
    if n:
        assert offsets[0] == 0
        assert offsets[-1] == pytest.approx((n - 1) * chunk_ms / 1000 / speed)


@given(st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_backoff_is_bounded_and_gives_up(failures: int, seed: int) -> None:
    policy = Backoff(initial=0.5, max=8.0, multiplier=2.0, jitter=0.25, max_attempts=10)
    delay = policy.delay(failures, np.random.default_rng(seed))
    if failures >= 10:
        assert delay is None
    else:
        base = min(0.5 * 2**failures, 8.0)
        assert 0.75 * base <= delay <= base


def test_no_reconnect_strategy_stops_at_once() -> None:
    assert Backoff(strategy="none").delay(0, np.random.default_rng(0)) is None
