"""The blind diagnosis's statistics on synthetic lives with a known answer (no sockets): a
deterministic idle timeout is found with an interval that covers it; random loss over the same
idle gaps supports no idle timeout, because drops in long gaps are only as many as the time
spent there; the rate ratio and its interval match an independent computation. The socket
runs are in test_blind_diagnosis.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.report import diagnosis
from harness.report.diagnosis import diagnose_variants

APPEND = "input_audio_buffer.append"


def _lives(rng: np.random.Generator, n: int, timeout: float | None, loss_per_s: float):
    """`n` connections of 20 min at most: 3 s of loud appends (every 0.1 s), then an idle gap
    of 1-60 s, again and again. An idle timeout ends a gap that reaches it; random loss ends a
    connection at an exponential time."""
    conns, sends = [], []
    for k in range(n):
        name = f"r/v/{k}/1"
        end = 1200.0
        if loss_per_s:
            end = min(end, float(rng.exponential(1 / loss_per_s)))
        t, dropped = 0.0, end < 1200.0
        while t < end:
            for i in range(30):
                if t + i * 0.1 >= end:
                    break
                sends.append((name, t + i * 0.1, APPEND, 100.0, -20.0))
            t += 3.0
            gap = float(rng.uniform(1, 60))
            if timeout is not None and gap >= timeout and t + timeout < end:
                end, dropped = t + timeout + 0.05, True
                break
            t += gap
        conns.append((name, "v", 0.0, 0.0, end, dropped))
    connections = pd.DataFrame(
        conns, columns=["connection", "variant", "opened", "established", "closed", "dropped"]
    )
    connections["cause"] = np.where(connections["dropped"], "abnormal", "scenario_end")
    connections["handshake_status"] = 101
    frame = pd.DataFrame(sends, columns=["connection", "t", "type", "audio_ms", "dbfs"])
    return connections, frame.sort_values(["connection", "t"], kind="stable")


def _verdicts(connections, sends, tolerance=0.1) -> dict[str, diagnosis.Verdict]:
    (verdicts,) = diagnose_variants(connections, sends, tolerance).values()
    return {v.hypothesis: v for v in verdicts}


@pytest.mark.parametrize("timeout", [23.0, 41.5])
def test_a_deterministic_idle_timeout_is_found_and_its_interval_covers_it(timeout) -> None:
    connections, sends = _lives(np.random.default_rng(int(timeout)), 40, timeout, 0.0)
    assert connections["dropped"].sum() >= 20
    verdicts = _verdicts(connections, sends)
    idle = verdicts["idle_timeout"]
    assert idle.verdict == "supported", idle.evidence
    lo, hi = idle.numbers["threshold_ci"]
    assert lo <= timeout <= hi and hi - lo < 5
    others = [h for h, v in verdicts.items() if v.verdict == "supported" and h != "idle_timeout"]
    assert others == []


def test_random_loss_over_long_idle_gaps_supports_no_idle_timeout() -> None:
    """Half the time is idle, in gaps up to a minute: many drops come in long gaps. Only the
    exposure (time spent in them) says that is chance; a rule on the drops alone would call
    it an idle timeout."""
    connections, sends = _lives(np.random.default_rng(5), 150, None, 1 / 300)
    assert connections["dropped"].sum() >= 140
    verdicts = _verdicts(connections, sends)
    assert verdicts["idle_timeout"].verdict != "supported"
    assert verdicts["random_loss"].verdict == "supported", verdicts["random_loss"].evidence
    assert not [h for h, v in verdicts.items() if v.verdict == "supported" and h != "random_loss"]


def test_too_little_data_is_never_a_confident_verdict() -> None:
    connections, sends = _lives(np.random.default_rng(9), 3, 30.0, 0.0)
    verdicts = _verdicts(connections, sends)
    assert all(
        v.verdict != "supported" for v in verdicts.values() if v.hypothesis != "handshake_faults"
    )
    assert (
        "settle" in verdicts["idle_timeout"].evidence
        or "Can't" in verdicts["idle_timeout"].evidence
    )


def test_the_rate_ratio_and_its_interval_match_an_exact_binomial_computation() -> None:
    ratio, lo, hi = diagnosis._ratio_ci(12, 40, 2.0, 10.0)
    ci = stats.binomtest(12, 40).proportion_ci(0.95, "exact")
    odds = lambda p: p / (1 - p) * (10.0 - 2.0) / 2.0  # noqa: E731
    assert ratio == pytest.approx((12 / 2.0) / (28 / 8.0))
    assert (lo, hi) == pytest.approx((odds(ci.low), odds(ci.high)))


def test_exposure_past_a_threshold_of_a_growing_covariate_is_the_time_spent_past_it() -> None:
    spells = pd.DataFrame(
        {"x0": [0.0, 0.0, 5.0], "x1": [10.0, 4.0, 5.0], "duration": [10.0, 4.0, 2.0]}
    )
    # linear: 10 s from 0 to 10 spends 4 s at 6 or more; 0->4 none; a flat 5 none
    assert diagnosis._above(spells, 6.0, linear=True).tolist() == pytest.approx([4.0, 0.0, 0.0])
    assert diagnosis._above(spells, 5.0, linear=False).tolist() == pytest.approx([10.0, 0.0, 2.0])


def test_an_age_verdict_waits_for_the_theories_the_log_cannot_judge() -> None:
    """Without audio levels a silence hazard cannot be judged, and it could explain drops
    that look random: random loss is then not claimed."""
    connections, sends = _lives(np.random.default_rng(5), 150, None, 1 / 300)
    verdicts = _verdicts(connections, sends.drop(columns=["dbfs"]))
    assert verdicts["silence_hazard"].evidence.startswith("Can't judge")
    assert verdicts["random_loss"].verdict == "inconclusive"
    assert "silence_hazard" in verdicts["random_loss"].evidence
