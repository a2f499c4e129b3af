"""Statistics on data with known answers: exponential lifetimes with known mean and censoring."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness import analysis


def exponential_connections(
    mean: float, n: int, censor_at: float, seed: int, variant: str = "a"
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    life = rng.exponential(mean, n)
    dropped = life < censor_at
    return pd.DataFrame(
        {
            "run": "r",
            "variant": variant,
            "worker": np.arange(n),
            "conn": 1,
            "established": 0.0,
            "closed": np.minimum(life, censor_at),
            "lifetime": np.minimum(life, censor_at),
            "dropped": dropped,
        }
    )


def test_km_median_and_rate_recover_a_known_exponential() -> None:
    mean = 600.0
    conns = exponential_connections(mean, 2000, censor_at=1200.0, seed=1)
    (s,), _ = analysis.survival_by_variant(conns)
    assert s.median_ci_s[0] <= mean * math.log(2) <= s.median_ci_s[1]
    # the MLE of an exponential rate under censoring is drops / exposure
    lo, hi = s.drops_per_hour_ci
    assert lo <= 3600 / mean <= hi
    assert s.censored == (~conns["dropped"]).sum() > 0


def test_exact_poisson_interval_matches_known_values() -> None:
    # Garwood interval for 10 events in 1 unit: [4.795, 18.39]
    lo, hi = analysis.poisson_rate_ci(10, 1.0)
    assert (lo, hi) == pytest.approx((4.7954, 18.3904), abs=1e-3)
    assert analysis.poisson_rate_ci(0, 2.0) == pytest.approx((0.0, 3.6889 / 2), abs=1e-3)


def test_survival_at_is_exp_minus_t_over_mean() -> None:
    conns = exponential_connections(600.0, 3000, censor_at=2000.0, seed=2)
    _, fitters = analysis.survival_by_variant(conns)
    value, lo, hi = analysis.survival_at(fitters["a"], 300.0)
    assert lo <= math.exp(-0.5) <= hi and lo < value < hi


def test_logrank_finds_a_2x_hazard_and_not_a_null_difference() -> None:
    conns = pd.concat(
        [
            exponential_connections(600, 400, 1800, 11, "slow"),
            exponential_connections(300, 400, 1800, 12, "fast"),
            exponential_connections(600, 400, 1800, 13, "slow-too"),
        ]
    )
    table = analysis.pairwise_logrank(conns).set_index(["a", "b"])
    pairs = {frozenset(k): row for k, row in table.iterrows()}
    assert pairs[frozenset({"slow", "fast"})]["p_holm"] < 0.001
    assert pairs[frozenset({"slow", "slow-too"})]["p_holm"] > 0.05
    assert (table["p_holm"] >= table["p"]).all()


def test_hazard_by_age_is_flat_for_an_exponential() -> None:
    conns = exponential_connections(600, 4000, censor_at=1200, seed=6)
    hazard = analysis.hazard_by_age(conns, bins=4)
    assert len(hazard) == 4
    for row in hazard.itertuples():  # ~600 drops a band: 15 % is about 3.7 standard errors
        assert row.per_hour == pytest.approx(6.0, rel=0.15)
        assert row.per_hour_lo < row.per_hour < row.per_hour_hi


def test_cox_recovers_the_factor_that_matters() -> None:
    parts = []
    for block, mean_block in (("steady", 600), ("burst", 300)):
        for chunk in (20, 100):
            v = f"{block},chunk_ms={chunk}"
            parts.append(exponential_connections(mean_block, 400, 1800, hash(v) % 1000, v))
    cox = analysis.cox_by_factors(pd.concat(parts)).set_index("factor")
    assert cox.loc["block_steady", "hazard_ratio"] == pytest.approx(0.5, rel=0.2)
    assert cox.loc["chunk_ms", "p"] > 0.01  # chunk size does not matter here


def test_power_matches_schoenfeld() -> None:
    p = analysis.power(drops=65, drops_per_hour=6.5)
    assert p["drops_for_2x"] == pytest.approx(65.3, abs=0.1)
    assert p["detectable_hazard_ratio"] == pytest.approx(2.0, abs=0.01)
    assert p["connection_hours_for_2x"] == pytest.approx(10.05, abs=0.05)


def test_variant_factors_parse_matrix_names() -> None:
    f = analysis.variant_factors(["steady,chunk_ms=20", "burst,chunk_ms=100", "solo"])
    assert f.loc["burst,chunk_ms=100", "chunk_ms"] == 100.0
    assert f.loc["steady,chunk_ms=20", "block"] == "steady"
