"""Fault policies, pure: seeded, deterministic per session key, statistically right."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import ConfigError
from harness.fakeserver.faults import Close, CloseKind, parse_faults


def profile(**body):
    return parse_faults({"session_age": body}, "test.toml", seed=7)


def test_age_hazard_fires_once_at_its_deadline() -> None:
    faults = profile(mean="8m").start("v/0/1", opened=100.0)
    deadline = faults.next_deadline()
    assert deadline is not None and deadline > 100.0
    assert faults.poll(deadline - 1e-6) is None
    assert faults.poll(deadline) == Close(CloseKind.ABORT, None, "", "session_age")
    assert faults.poll(deadline + 1) is None and faults.next_deadline() is None


def test_same_seed_and_key_give_the_same_fault_time() -> None:
    a = profile(mean="8m").start("v/3/2", opened=0.0).next_deadline()
    b = profile(mean="8m").start("v/3/2", opened=0.0).next_deadline()
    c = profile(mean="8m").start("v/3/3", opened=0.0).next_deadline()
    assert a == b != c


def test_exponential_lifetimes_have_the_configured_mean() -> None:
    p = profile(mean="8m")
    draws = np.array([p.start(f"k{i}", 0.0).next_deadline() for i in range(4000)])
    # mean 480 s; the standard error of 4000 draws is 480/sqrt(4000) ~ 7.6 s
    assert draws.mean() == pytest.approx(480, abs=4 * 7.6)


def test_weibull_and_close_frame_action() -> None:
    faults = profile(distribution="weibull", shape=3.0, scale="10m", action="close",
                     code=1011, reason="boom").start("k", 0.0)
    fired = faults.poll(faults.next_deadline())
    assert fired == Close(CloseKind.CLOSE, 1011, "boom", "session_age")


def test_bad_fault_config_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="faults.session_age.mean"):
        profile(mean="soon")
