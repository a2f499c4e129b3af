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


def _churn(
    rng: np.random.Generator,
    workers: int,
    cap: int,
    late_s: float,
    hours: float = 1,
    stall: tuple[int, float] | None = None,
):
    """`workers` clients against a drop-oldest cap of `cap`: each admission over the cap ends
    the oldest session; its client sees the close up to `late_s` later (so it may still count
    that session at the next arrival) and reconnects 0.5-1.5 s after that. Sessions live
    seconds, so their ages alone look like a short fixed limit. `stall` (k, s): the client sees
    the k-th eviction s seconds late (a stalled process)."""
    end = hours * 3600.0
    pending = sorted((float(rng.uniform(0, 20)), w) for w in range(workers))
    server: list[tuple[float, int]] = []  # (admitted, row) of the sessions it holds
    rows: list[list] = []
    evictions = 0
    while pending:
        t, w = pending.pop(0)
        if t >= end:
            continue
        if len(server) >= cap:
            _, victim = server.pop(0)
            evictions += 1
            seen = t + 0.01 + float(rng.uniform(0, late_s))
            if stall is not None and evictions == stall[0]:
                seen = t + stall[1]
            rows[victim][4:6] = [seen, True]
            pending.append((seen + float(rng.uniform(0.5, 1.5)), rows[victim][6]))
            pending.sort()
        server.append((t, len(rows)))
        rows.append([f"r/v/{len(rows)}/1", "v", t, t + 0.01, end, False, w])
    connections = pd.DataFrame(
        [r[:6] for r in rows],
        columns=["connection", "variant", "opened", "established", "closed", "dropped"],
    )
    connections["cause"] = np.where(connections["dropped"], "abnormal", "scenario_end")
    connections["handshake_status"] = 101
    return connections


@pytest.mark.parametrize(("workers", "cap"), [(8, 5), (4, 3), (12, 9)])
def test_a_drop_oldest_cap_under_churn_is_the_cap_not_a_session_limit(workers, cap) -> None:
    """Every arrival at the cap evicts the oldest session. The client sees each eviction up
    to 0.5 s late, while arrivals come about every 0.6 s (the 60x blind run measured 0.2 s at
    p99, with arrivals every 1.2 s), so many arrivals count a session the server has already
    let go. The cap must still read as `cap`, and the near-constant ages must not read as a
    fixed session limit. Counting the sessions open as the client saw them, at the most any
    arrival before a drop had, read 8 workers under a cap of 5 as 7."""
    connections = _churn(np.random.default_rng(workers), workers, cap, late_s=0.5)
    assert connections["dropped"].sum() > 500
    began = np.sort(connections["established"].to_numpy())
    seen_open = np.searchsorted(began, began, "left") - np.searchsorted(
        np.sort(connections["closed"].to_numpy()), began, "right"
    )
    # with more than one client waiting, what the client saw overcounts the cap
    assert ((seen_open > cap).mean() > 0.1) == (workers - cap > 1)
    verdicts = _verdicts(connections, None, tolerance=1.5)
    cap_verdict = verdicts["concurrency_cap"]
    assert cap_verdict.verdict == "supported", cap_verdict.evidence
    lo, hi = cap_verdict.numbers["threshold_ci"]
    assert lo <= cap <= hi and cap_verdict.numbers["max_sessions"] == cap
    assert [h for h, v in verdicts.items() if v.verdict == "supported"] == ["concurrency_cap"]


def test_an_eviction_seen_too_late_to_match_leaves_the_cap_deterministic() -> None:
    """A stalled client sees one eviction 8 s late, past the 3 s in which a drop is matched
    to the arrival that caused it: that arrival looks as if it evicted nothing. One such
    arrival among hundreds must not make the cap read as a hazard, and the sessions' equal
    ages as a fixed session limit in its place (a loaded 60x run read so)."""
    connections = _churn(np.random.default_rng(8), 8, 5, late_s=0.2, stall=(300, 8.0))
    verdicts = _verdicts(connections, None, tolerance=1.5)
    cap_verdict = verdicts["concurrency_cap"]
    assert cap_verdict.verdict == "supported", cap_verdict.evidence
    assert cap_verdict.numbers["max_sessions"] == 5
    assert "the other came shortly before a drop no arrival claimed" in cap_verdict.evidence
    assert [h for h, v in verdicts.items() if v.verdict == "supported"] == ["concurrency_cap"]


def test_random_loss_with_reconnects_supports_no_concurrency_cap() -> None:
    """Drops that come at random, each followed by a reconnect, are not evictions."""
    connections, _ = _lives(np.random.default_rng(3), 150, None, 1 / 300)
    verdicts = _verdicts(connections, None)
    assert verdicts["concurrency_cap"].verdict != "supported", verdicts["concurrency_cap"]


def _refusals(rng: np.random.Generator, workers: int, cap: int | None, refuse: float = 0.0):
    """`workers` clients against a cap that refuses a handshake when `cap` sessions are open
    (None: no cap), and refuses a share `refuse` of handshakes whatever is open. Sessions die at
    random (a mean life of 5 min); the client sees each close up to 1 s late, so it may count a
    session the server already let go. A refused client retries 2-4 s later."""
    rows: list[tuple] = []
    live: list[float] = []  # when the server's sessions end
    pending = sorted((float(rng.uniform(0, 20)), w) for w in range(workers))
    while pending:
        t, w = pending.pop(0)
        if t >= 3600.0:
            continue
        live = [e for e in live if e > t]
        name = f"r/v/{len(rows)}/1"
        if (cap is not None and len(live) >= cap) or rng.random() < refuse:
            rows.append((name, t, np.nan, t + 0.1, False, "handshake_failed", 429))
            pending.append((t + float(rng.uniform(2, 4)), w))
        else:
            end = t + float(rng.exponential(300))
            live.append(end)
            dropped = end < 3600.0
            seen = min(end + float(rng.uniform(0, 1)), 3600.0) if dropped else 3600.0
            rows.append((name, t, t + 0.01, seen, dropped, "abnormal", 101))
            pending.append((seen + 0.5, w))
        pending.sort()
    connections = pd.DataFrame(
        rows,
        columns=["connection", "opened", "established", "closed", "dropped", "cause", "h"],
    ).rename(columns={"h": "handshake_status"})
    connections.insert(1, "variant", "v")
    return connections


@pytest.mark.parametrize(("workers", "cap"), [(8, 5), (5, 2)])
def test_a_refusing_cap_is_the_cap_and_its_refusals_are_not_handshake_faults(workers, cap) -> None:
    """Refusals begin at the cap, though the client sometimes counts a session that has
    already ended (and then sees an accepted handshake at the cap). A rule that needed every
    accepted handshake below every refused one read this as handshake faults."""
    connections = _refusals(np.random.default_rng(cap), workers, cap)
    verdicts = _verdicts(connections, None, tolerance=1.0)
    cap_verdict = verdicts["concurrency_cap"]
    assert cap_verdict.verdict == "supported", cap_verdict.evidence
    lo, hi = cap_verdict.numbers["threshold_ci"]
    assert lo <= cap <= hi and cap_verdict.numbers["max_sessions"] == cap
    assert verdicts["handshake_faults"].verdict == "not_supported"


def test_refusals_at_any_count_are_handshake_faults_not_a_cap() -> None:
    connections = _refusals(np.random.default_rng(7), 6, None, refuse=0.2)
    verdicts = _verdicts(connections, None, tolerance=1.0)
    assert verdicts["handshake_faults"].verdict == "supported"
    assert verdicts["concurrency_cap"].verdict != "supported", verdicts["concurrency_cap"]


def test_the_per_arrival_p_value_and_odds_ratio_match_fishers_exact_test() -> None:
    """The cap's evidence, against scipy's own Fisher test on the 2x2 table: 30 of 40
    arrivals from the count evicted, 5 of 60 below it."""
    table = [[30, 10], [5, 55]]
    logp = diagnosis._logp(30, 35, 40.0, 100.0, per_arrival=True)
    assert np.exp(logp) == pytest.approx(stats.fisher_exact(table, "greater").pvalue)
    ratio, lo, hi = diagnosis._odds_ratio_ci(30, 35, 40.0, 100.0)
    exact = stats.contingency.odds_ratio(table)
    assert ratio == pytest.approx(exact.statistic)
    assert (lo, hi) == pytest.approx(tuple(exact.confidence_interval(0.95)))
    # the conditional MLE is near the sample odds ratio (30 * 55) / (10 * 5)
    assert ratio == pytest.approx(33.0, rel=0.1)
