"""Fault policies, pure: fed frames and time by hand, seeded, statistically right."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.config.faults import parse_faults, shipped_profiles
from harness.core.faults import Fault, FaultKind
from harness.core.spec import ConfigError

SILENT = b"\0\0" * 480  # 20 ms of digital silence
LOUD = (b"\x00\x40\x00\xc0") * 240  # 20 ms of a loud square wave


def start(name: str, opened: float = 0.0, key: str = "v/0/1", **body):
    return parse_faults({name: body}, "test.toml", seed=7).start(key, opened)


def test_age_hazard_fires_once_at_its_deadline() -> None:
    faults = start("session_age", opened=100.0, mean="8m")
    deadline = faults.next_deadline()
    assert deadline is not None and deadline > 100.0
    assert faults.poll(deadline - 1e-6) is None
    assert faults.poll(deadline) == Fault(
        FaultKind.ABORT, "session_age", None, "", 5.0, 600.0, due=deadline
    )
    assert faults.poll(deadline + 1) is None and faults.next_deadline() is None


def test_same_seed_and_key_give_the_same_fault_time() -> None:
    a = start("session_age", key="v/3/2", mean="8m").next_deadline()
    b = start("session_age", key="v/3/2", mean="8m").next_deadline()
    c = start("session_age", key="v/3/3", mean="8m").next_deadline()
    assert a == b != c


def test_a_seeded_draw_logs_the_same_age_whenever_its_connection_opened() -> None:
    """The ground-truth log of two runs of one seed is compared key by key; a connection
    that opened a moment later must not change the logged age in its last bits."""
    for k in range(300):
        logged = set()
        for opened in (0.0, 0.1, 3.7, 61.25, 1234.567):
            fault = start("session_age", opened=opened, key=f"v/0/{k}", mean="40s").poll(1e9)
            assert fault is not None
            logged.add(fault.detail(fault.due, opened)["due_age"])
        assert len(logged) == 1, (k, logged)


def test_policies_draw_from_their_own_rngs() -> None:
    alone = start("session_age", mean="8m").next_deadline()
    together = parse_faults(
        {"random_loss": {"per_hour": 1000}, "session_age": {"mean": "8m"}}, "t", seed=7
    ).start("v/0/1", 0.0)
    assert together.policies[1].next_deadline() == alone


def _lifetimes(body: dict, n: int = 4000) -> np.ndarray:
    profile = parse_faults({"session_age": body}, "t", seed=1)
    return np.array([profile.start(f"k{i}", 0.0).next_deadline() for i in range(n)])


def test_exponential_lifetimes_have_the_configured_mean() -> None:
    # mean 480 s; the standard error of 4000 draws is 480/sqrt(4000) ~ 7.6 s
    assert _lifetimes({"mean": "8m"}).mean() == pytest.approx(480, abs=4 * 7.6)


def test_weibull_lifetimes_have_the_weibull_mean() -> None:
    draws = _lifetimes({"distribution": "weibull", "shape": 3.0, "scale": "10m"})
    expected = 600 * math.gamma(1 + 1 / 3)
    assert draws.mean() == pytest.approx(expected, rel=0.03)


def test_piecewise_hazard_concentrates_drops_where_the_rate_is() -> None:
    # nothing in the first 5 minutes, a high rate from 5 to 15, nothing after
    draws = _lifetimes(
        {
            "distribution": "piecewise",
            "hazard": [
                {"until": "5m", "per_hour": 0},
                {"until": "15m", "per_hour": 60},
                {"per_hour": 0},
            ],
        },
        n=2000,
    )
    finite = draws[np.isfinite(draws.astype(float))]
    assert finite.min() >= 300 and finite.max() <= 900
    # P(survive the 10-minute window at 60/h) = e^-10: essentially all drop inside it
    assert len(finite) >= 1995


def test_piecewise_needs_a_valid_shape() -> None:
    with pytest.raises(ConfigError, match="until must grow"):
        parse_faults(
            {
                "session_age": {
                    "distribution": "piecewise",
                    "hazard": [{"until": "5m", "per_hour": 1}, {"until": "1m", "per_hour": 1}],
                }
            },
            "t",
        )


def test_random_loss_is_exponential_with_rate_per_hour() -> None:
    profile = parse_faults({"random_loss": {"per_hour": 6}}, "t", seed=2)
    draws = np.array([profile.start(f"k{i}", 0.0).next_deadline() for i in range(4000)])
    assert draws.mean() == pytest.approx(600, rel=0.06)


def test_idle_timeout_resets_on_frames_but_not_pings_by_default() -> None:
    faults = start("idle_timeout", after="30s")
    assert faults.next_deadline() == 30.0
    faults.on_frame(10.0, "audio")
    assert faults.next_deadline() == 40.0
    faults.on_frame(20.0, "ping")
    assert faults.next_deadline() == 40.0
    assert faults.poll(39.9) is None
    assert faults.poll(40.0).policy == "idle_timeout"


def test_idle_timeout_can_count_audio_only_or_pings() -> None:
    audio_only = start("idle_timeout", after="30s", counts="audio")
    audio_only.on_frame(10.0, "event")
    assert audio_only.next_deadline() == 30.0
    with_pings = start("idle_timeout", after="30s", pings_count=True)
    with_pings.on_frame(10.0, "ping")
    assert with_pings.next_deadline() == 40.0


def test_buffer_pressure_trips_above_the_ceiling_with_an_error_event() -> None:
    faults = start("buffer_pressure", max_ms=1000, action="error")
    assert faults.on_audio(1.0, SILENT, 48_000) is None  # exactly 1000 ms: not over
    fault = faults.on_audio(1.0, SILENT, 48_960)
    assert fault.kind is FaultKind.ERROR and fault.error_code == "input_audio_buffer_full"
    with pytest.raises(ConfigError, match="max_ms or max_bytes"):
        parse_faults({"buffer_pressure": {}}, "t")


def test_rate_policy_spares_real_time_and_catches_2x() -> None:
    real_time = start("rate", max_speed=1.5, window="2s")
    for i in range(500):  # 10 s of 20 ms frames at exactly real time
        assert real_time.on_audio(i * 0.02, SILENT, 0) is None
    fast = start("rate", max_speed=1.5, window="2s")
    fired = [fast.on_audio(i * 0.01, SILENT, 0) for i in range(400)]  # 2x real time
    first = next(i for i, f in enumerate(fired) if f is not None)
    # 1.5 x 2 s = 3 s of audio arrives within the window after 1.5 s at twice real time
    assert 0.01 * first == pytest.approx(1.5, abs=0.03)


def test_micro_burst_counts_frames_in_a_window() -> None:
    paced = start("micro_burst", frames=5, within="50ms")
    assert all(paced.on_frame(i * 0.02, "audio") is None for i in range(100))
    burst = start("micro_burst", frames=5, within="50ms")
    results = [burst.on_frame(1.0 + i * 0.001, "audio") for i in range(6)]
    assert results[:5] == [None] * 5 and results[5].policy == "micro_burst"


def test_silence_hazard_arms_on_quiet_audio_and_disarms_on_speech() -> None:
    faults = start("silence_hazard", threshold_dbfs=-50, after="10s", mean="60s")
    faults.on_audio(0.0, LOUD, 0)
    assert faults.next_deadline() is None
    faults.on_audio(1.0, SILENT, 0)
    armed = faults.next_deadline()
    assert armed is not None and armed >= 11.0
    faults.on_audio(2.0, SILENT, 0)
    assert faults.next_deadline() == armed  # the streak goes on; no new draw
    faults.on_audio(3.0, LOUD, 0)
    assert faults.next_deadline() is None


def test_accept_then_close_fires_at_once_with_1008() -> None:
    faults = start("accept_then_close", opened=5.0)
    assert faults.next_deadline() == 5.0
    assert faults.poll(5.0) == Fault(
        FaultKind.CLOSE, "accept_then_close", 1008, "Invalid API key", 5.0, 600.0, due=5.0
    )


def test_handshake_faults_share_and_statuses() -> None:
    profile = parse_faults(
        {"handshake_faults": {"share": 0.3, "statuses": [429, 503]}}, "t", seed=3
    )
    decisions = [profile.handshake(f"k{i}", "key", 0.0, []) for i in range(2000)]
    statuses = [d.status for d in decisions]
    assert set(statuses) == {None, 429, 503}
    assert sum(s is not None for s in statuses) / 2000 == pytest.approx(0.3, abs=0.04)
    assert decisions == [profile.handshake(f"k{i}", "key", 0.0, []) for i in range(2000)]


def test_concurrency_cap_rejects_or_drops_the_oldest() -> None:
    live = [("a", "key1", 1.0), ("b", "key1", 2.0), ("c", "key2", 0.5)]
    reject = parse_faults({"concurrency_cap": {"max_sessions": 2}}, "t")
    assert reject.handshake("d", "key1", 3.0, live).status == 429
    assert reject.handshake("d", "key2", 3.0, live).status is None
    drop = parse_faults({"concurrency_cap": {"max_sessions": 2, "over": "drop_oldest"}}, "t")
    assert drop.handshake("d", "key1", 3.0, live).evict == ("a",)
    server_wide = parse_faults(
        {"concurrency_cap": {"max_sessions": 2, "per": "server", "over": "drop_oldest"}}, "t"
    )
    assert server_wide.handshake("d", "key9", 3.0, live).evict == ("c", "a")


def test_max_duration_sets_the_session_limit() -> None:
    assert parse_faults({"max_duration": {"after": "5m"}}, "t").max_session == 300
    assert parse_faults(None, "t").max_session is None


def test_bad_fault_config_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="faults.session_age.mean"):
        parse_faults({"session_age": {"mean": "soon"}}, "t")
    with pytest.raises(ConfigError, match="unknown fault policy; known: accept_then_close"):
        parse_faults({"gremlins": {}}, "t")
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        parse_faults({"profile": "nope"}, "t")


def test_every_shipped_profile_parses_and_has_a_description() -> None:
    profiles = shipped_profiles()
    assert len(profiles) >= 10
    covered = set()
    for name, (description, _table) in profiles.items():
        assert description, name
        covered |= set(parse_faults({"profile": name}, "t").names)
    assert covered >= {
        "session_age",
        "random_loss",
        "idle_timeout",
        "buffer_pressure",
        "rate",
        "micro_burst",
        "silence_hazard",
        "accept_then_close",
        "max_duration",
        "handshake_faults",
        "concurrency_cap",
    }
