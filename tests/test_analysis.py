"""Statistics on data with known answers, each checked against an independent computation
(lifelines fitted directly, or plain numpy/scipy in the test).

The known-answer fixtures censor heavily before the median: connections are rotated at random
ages (uniform up to the mean lifetime), so about half of all connections are censored before
the median lifetime. A Kaplan-Meier, rate or hazard that mishandles censoring fails them;
tests/test_statistics_mutants.py checks that it does.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, WeibullFitter
from lifelines.statistics import logrank_test, proportional_hazard_test
from scipy import optimize, stats

from harness.report import analysis


def exponential_connections(
    mean: float, n: int, censor_at: float, seed: int, variant: str = "a"
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return _frame(rng.exponential(mean, n), np.full(n, censor_at), variant)


def rotated_connections(
    scale: float, n: int, seed: int, variant: str = "a", shape: float = 1.0, rotate_by: float = 0
) -> pd.DataFrame:
    """Weibull (exponential at shape 1) lifetimes of `scale`, each connection rotated by the
    harness at a uniform random age up to `rotate_by` (default: the scale): heavy censoring,
    much of it before the median."""
    rng = np.random.default_rng(seed)
    life = scale * rng.weibull(shape, n)
    return _frame(life, rng.uniform(0.0, rotate_by or scale, n), variant)


def _frame(life: np.ndarray, censor: np.ndarray, variant: str) -> pd.DataFrame:
    n = len(life)
    observed = np.minimum(life, censor)
    return pd.DataFrame(
        {
            "run": "r",
            "variant": variant,
            "worker": np.arange(n),
            "conn": 1,
            "established": 0.0,
            "closed": observed,
            "lifetime": observed,
            "dropped": life < censor,
        }
    )


def hand_kaplan_meier(life: np.ndarray, dropped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Product-limit estimate by hand: at each drop age t, S *= 1 - drops(t) / at_risk(t)."""
    times = np.unique(life[dropped])
    at_risk = np.array([(life >= t).sum() for t in times])
    drops = np.array([((life == t) & dropped).sum() for t in times])
    return times, np.cumprod(1.0 - drops / at_risk)


def hand_logrank(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float]:
    """Two-sample log-rank chi-square and p by hand: observed minus expected drops in `a`."""
    life = np.concatenate([a["lifetime"], b["lifetime"]])
    dropped = np.concatenate([a["dropped"], b["dropped"]]).astype(bool)
    in_a = np.arange(len(life)) < len(a)
    o_minus_e = variance = 0.0
    for t in np.unique(life[dropped]):
        risk = life >= t
        n, n_a = risk.sum(), (risk & in_a).sum()
        d, d_a = (dropped & (life == t)).sum(), (dropped & (life == t) & in_a).sum()
        o_minus_e += d_a - d * n_a / n
        if n > 1:
            variance += d * (n_a / n) * (1 - n_a / n) * (n - d) / (n - 1)
    chi2 = o_minus_e**2 / variance
    return chi2, float(stats.chi2.sf(chi2, 1))


def garwood(events: int, exposure: float) -> tuple[float, float]:
    lo = 0.0 if events == 0 else stats.chi2.ppf(0.025, 2 * events) / 2
    return lo / exposure, stats.chi2.ppf(0.975, 2 * events + 2) / 2 / exposure


# --- heavy censoring before the median: known answers ------------------------------------------
MEAN = 600.0  # s: 6 drops per connection-hour, median lifetime 416 s


def test_rotations_at_random_ages_censor_half_the_connections_before_the_median() -> None:
    conns = rotated_connections(MEAN, 4000, seed=21)
    early = (~conns["dropped"]) & (conns["lifetime"] < MEAN * math.log(2))
    assert 0.45 < early.mean() < 0.55


def test_km_matches_a_hand_product_limit_under_heavy_censoring() -> None:
    conns = rotated_connections(MEAN, 4000, seed=21)
    (s,), fitters = analysis.survival_by_variant(conns)
    life, dropped = conns["lifetime"].to_numpy(), conns["dropped"].to_numpy()
    times, survival = hand_kaplan_meier(life, dropped)
    got = fitters["a"].survival_function_at_times(times).to_numpy()
    np.testing.assert_allclose(got, survival, rtol=1e-9)
    assert s.median_s == pytest.approx(times[np.argmax(survival <= 0.5)])
    assert s.median_ci_s[0] <= MEAN * math.log(2) <= s.median_ci_s[1]
    assert (s.drops, s.censored) == (dropped.sum(), (~dropped).sum())


def test_drop_rate_counts_censored_exposure_under_heavy_censoring() -> None:
    conns = rotated_connections(MEAN, 4000, seed=22)
    (s,), _ = analysis.survival_by_variant(conns)
    hours = conns["lifetime"].sum() / 3600  # every connection's time at risk, censored or not
    drops = int(conns["dropped"].sum())
    assert s.connection_hours == pytest.approx(hours)
    assert s.drops_per_hour == pytest.approx(drops / hours)
    assert s.drops_per_hour_ci == pytest.approx(garwood(drops, hours))
    assert s.drops_per_hour_ci[0] <= 3600 / MEAN <= s.drops_per_hour_ci[1]


def test_hazard_by_age_matches_hand_exposure_under_heavy_censoring() -> None:
    conns = rotated_connections(MEAN, 8000, seed=23)
    hazard = analysis.hazard_by_age(conns, bins=4)
    life, dropped = conns["lifetime"].to_numpy(), conns["dropped"].to_numpy()
    edges = np.linspace(0, life.max(), 5)
    assert len(hazard) == 4
    for row, lo, hi in zip(hazard.itertuples(), edges[:-1], edges[1:], strict=True):
        exposure = sum(min(max(t - lo, 0.0), hi - lo) for t in life) / 3600
        drops = int((dropped & (life > lo) & (life <= hi)).sum())
        assert (row.age_from, row.age_to) == pytest.approx((lo, hi))
        assert row.drops == drops and row.connection_hours == pytest.approx(exposure)
        assert row.per_hour == pytest.approx(drops / exposure)
        assert (row.per_hour_lo, row.per_hour_hi) == pytest.approx(garwood(drops, exposure))
        assert row.per_hour_lo <= 3600 / MEAN <= row.per_hour_hi  # flat: exponential
    assert not hazard["too_few"].any()


def three_variants() -> pd.DataFrame:
    return pd.concat(
        [
            rotated_connections(600, 500, 11, "slow"),
            rotated_connections(300, 500, 12, "fast"),
            rotated_connections(600, 500, 13, "slow-too"),
        ]
    )


def test_logrank_and_holm_match_a_hand_computation_under_heavy_censoring() -> None:
    conns = three_variants()
    table = analysis.pairwise_logrank(conns)
    by = {v: g for v, g in conns.groupby("variant")}
    hand = []
    for row in table.itertuples():
        chi2, p = hand_logrank(by[row.a], by[row.b])
        assert row.statistic == pytest.approx(chi2, rel=1e-6)
        assert row.p == pytest.approx(p, rel=1e-6, abs=1e-300)
        hand.append(p)
    # Holm by hand: the i-th smallest of m p-values times (m - i), kept monotone
    order = np.argsort(hand)
    m = len(hand)
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * hand[i]))
        holm[i] = running
    np.testing.assert_allclose(table["p_holm"], holm, rtol=1e-6)
    pairs = {frozenset((r.a, r.b)): r for r in table.itertuples()}
    assert pairs[frozenset({"slow", "fast"})].p_holm < 0.001
    assert pairs[frozenset({"slow", "slow-too"})].p_holm > 0.05


def test_weibull_shape_matches_lifelines_and_the_truth_under_heavy_censoring() -> None:
    conns = rotated_connections(MEAN, 3000, seed=24, shape=1.5)
    (row,) = analysis.weibull_by_variant(conns).itertuples()
    wf = WeibullFitter().fit(conns["lifetime"], conns["dropped"])
    assert row.shape == pytest.approx(wf.rho_, rel=1e-6)
    assert row.shape_lo <= 1.5 <= row.shape_hi
    assert row.verdict == "rising"


# --- per variant, not pooled -------------------------------------------------------------------
def test_per_variant_weibull_recovers_shapes_that_pooling_turns_into_a_falling_hazard() -> None:
    conns = pd.concat(
        [
            rotated_connections(200, 1500, 31, "short", shape=1.3, rotate_by=400),
            rotated_connections(3000, 1500, 32, "long", shape=1.5, rotate_by=6000),
        ]
    )
    pooled = WeibullFitter().fit(conns["lifetime"], conns["dropped"])
    assert pooled.summary.loc["rho_", "coef upper 95%"] < 1  # the mixing artefact
    weibull = analysis.weibull_by_variant(conns).set_index("variant")
    for variant, shape in (("short", 1.3), ("long", 1.5)):
        row = weibull.loc[variant]
        assert row["shape_lo"] <= shape <= row["shape_hi"]
        assert row["verdict"] == "rising"


def test_weibull_says_too_few_drops_instead_of_a_shape() -> None:
    conns = exponential_connections(600, 60, censor_at=30, seed=3)
    assert 0 < conns["dropped"].sum() < analysis.MIN_DROPS
    (row,) = analysis.weibull_by_variant(conns).itertuples()
    assert row.verdict == "too few drops" and math.isnan(row.shape)


def test_hazard_bands_span_each_variants_own_lifetimes() -> None:
    conns = pd.concat(
        [
            exponential_connections(60, 500, censor_at=120, seed=4, variant="short"),
            exponential_connections(3000, 500, censor_at=9000, seed=5, variant="long"),
            exponential_connections(600, 20, censor_at=60, seed=6, variant="quiet"),
        ]
    )
    hazard = analysis.hazard_by_age(conns, bins=8)
    for variant, group in hazard.groupby("variant"):
        life = conns.loc[conns["variant"] == variant, "lifetime"]
        assert len(group) == 8
        assert group["age_to"].max() == pytest.approx(life.max())
        assert group["drops"].sum() == conns.loc[conns["variant"] == variant, "dropped"].sum()
        assert group["connection_hours"].sum() == pytest.approx(life.sum() / 3600)
    too_few = hazard.groupby("variant")["too_few"].all()
    assert too_few["quiet"] and not too_few["short"] and not too_few["long"]


# --- power -------------------------------------------------------------------------------------
def test_power_matches_schoenfeld() -> None:
    p = analysis.power(drops=65, drops_per_hour=6.5)
    assert p["drops_for_2x"] == pytest.approx(65.3, abs=0.1)
    assert p["detectable_hazard_ratio"] == pytest.approx(2.0, abs=0.01)
    assert p["connection_hours_for_2x"] == pytest.approx(10.05, abs=0.05)


def test_power_below_the_minimum_drops_is_no_number() -> None:
    p = analysis.power(drops=1, drops_per_hour=3.0)
    assert math.isnan(p["detectable_hazard_ratio"]) and math.isnan(p["connection_hours_for_2x"])
    one = exponential_connections(600, 1, censor_at=1e9, seed=1)
    assert math.isnan(analysis.power(int(one["dropped"].sum()), 6.0)["detectable_hazard_ratio"])
    pair = pd.concat(
        [
            exponential_connections(600, 30, censor_at=60, seed=7, variant="x"),
            exponential_connections(600, 30, censor_at=60, seed=8, variant="y"),
        ]
    )
    (row,) = analysis.pairwise_logrank(pair).itertuples()
    assert row.drops < analysis.MIN_DROPS and row.too_few
    assert math.isnan(row.detectable_hazard_ratio) and math.isnan(row.connection_hours_for_2x)


def test_power_per_pair_is_schoenfeld_at_the_bonferroni_level() -> None:
    conns = pd.concat(
        [
            rotated_connections(600, 500, 41, "a"),
            rotated_connections(600, 200, 42, "b"),
            exponential_connections(600, 40, censor_at=60, seed=43, variant="c"),
        ]
    )
    table = analysis.pairwise_logrank(conns).set_index(["a", "b"])
    z = stats.norm.ppf(1 - 0.05 / 3 / 2) + stats.norm.ppf(0.8)  # three pairs
    for (a, b), row in table.iterrows():
        pair = conns[conns["variant"].isin([a, b])]
        drops = int(pair["dropped"].sum())
        share = (pair["variant"] == a).mean()
        assert row["drops"] == drops
        if drops < analysis.MIN_DROPS:
            assert row["too_few"] and math.isnan(row["detectable_hazard_ratio"])
            continue
        d_2x = z**2 / (share * (1 - share) * math.log(2) ** 2)
        assert row["detectable_hazard_ratio"] == pytest.approx(
            math.exp(z / math.sqrt(share * (1 - share) * drops))
        )
        rate = drops / (pair["lifetime"].sum() / 3600)
        assert row["connection_hours_for_2x"] == pytest.approx(d_2x / rate)


def test_detectable_hazard_ratio_has_its_power_in_a_lifelines_simulation() -> None:
    # two arms of 100 connections, every one dropping: 200 drops, at the alpha of three pairs
    alpha = 0.05 / 3
    hr = analysis.power(200, 1.0, alpha=alpha)["detectable_hazard_ratio"]
    rng = np.random.default_rng(44)
    trials = 200
    hits = sum(
        logrank_test(rng.exponential(1.0, 100), rng.exponential(1.0 / hr, 100)).p_value < alpha
        for _ in range(trials)
    )
    assert hits / trials == pytest.approx(0.80, abs=0.07)  # 2.5 standard errors


# --- Cox ---------------------------------------------------------------------------------------
def factorial(means: dict[str, float], shapes: dict[str, float] | None = None) -> pd.DataFrame:
    """Blocks (known hazard each) x chunk_ms 20/50/100 (no effect), rotated at random ages."""
    parts = []
    for i, (block, scale) in enumerate(means.items()):
        for j, chunk in enumerate((20, 50, 100)):
            shape = (shapes or {}).get(block, 1.0)
            parts.append(
                rotated_connections(
                    scale, 600, 100 * i + j, f"{block},chunk_ms={chunk}", shape, rotate_by=2400
                )
            )
    conns = pd.concat(parts, ignore_index=True)
    return conns.astype({"variant": pd.CategoricalDtype(list(dict.fromkeys(conns["variant"])))})


def test_cox_matches_lifelines_on_known_hazard_ratios_without_a_penalty() -> None:
    conns = factorial({"steady": 600.0, "burst": 300.0})  # burst: hazard ratio 2
    cox = analysis.cox_by_factors(conns)
    assert cox is not None and cox.problem is None and cox.penalizer == 0.0
    table = cox.table.set_index("factor")
    burst, chunk = table.loc["block"], table.loc["chunk_ms"]
    assert (burst["level"], burst["reference"]) == ("burst", "steady")
    assert chunk["unit"] == "per 30 ms" and chunk["reference"] is None
    # the same model, coded by hand and fitted by lifelines directly
    block, chunk_ms = conns["variant"].astype(str).str.split(",chunk_ms=", expand=True).T.values
    data = pd.DataFrame(
        {
            "lifetime": conns["lifetime"],
            "dropped": conns["dropped"],
            "burst": (block == "burst").astype(float),
            "chunk": chunk_ms.astype(float) / 30,
        }
    )
    direct = CoxPHFitter().fit(data, "lifetime", "dropped").summary
    assert burst["hazard_ratio"] == pytest.approx(direct.loc["burst", "exp(coef)"], rel=1e-6)
    assert chunk["hazard_ratio"] == pytest.approx(direct.loc["chunk", "exp(coef)"], rel=1e-6)
    assert chunk["p"] == pytest.approx(direct.loc["chunk", "p"], rel=1e-6)
    assert burst["lo"] <= 2.0 <= burst["hi"]
    assert chunk["lo"] <= 1.0 <= chunk["hi"] and chunk["p"] > 0.05
    assert cox.ph_violated == []


def test_cox_ph_test_flags_hazards_that_cross() -> None:
    # equal medians; "wearout" is safe young and risky old, "infant" the other way round
    conns = factorial({"infant": 600.0, "wearout": 600.0}, shapes={"infant": 0.5, "wearout": 3})
    cox = analysis.cox_by_factors(conns)
    assert cox is not None and cox.problem is None
    assert "block" in cox.ph_violated and "chunk_ms" not in cox.ph_violated
    block = (conns["variant"].astype(str).str.startswith("wearout")).astype(float)
    chunk = conns["variant"].astype(str).str.split("=").str[1].astype(float) / 30
    data = pd.DataFrame(
        {"lifetime": conns["lifetime"], "dropped": conns["dropped"], "b": block, "c": chunk}
    )
    fitted = CoxPHFitter().fit(data, "lifetime", "dropped")
    direct = proportional_hazard_test(fitted, data, time_transform="rank").summary
    ph = cox.ph_test.set_index("factor")["p"]
    assert ph["block"] == pytest.approx(direct.loc["b", "p"], rel=1e-6, abs=1e-300)
    assert ph["chunk_ms"] == pytest.approx(direct.loc["c", "p"], rel=1e-6)


def test_cox_says_a_factor_separates_drops_from_survivors_instead_of_penalising() -> None:
    conns = factorial({"fine": 600.0, "doomed": 600.0})
    doomed = conns["variant"].astype(str).str.startswith("doomed")
    # every doomed connection drops within 5 s; no fine one drops before 10 s
    conns.loc[doomed, "lifetime"] = np.linspace(0.1, 5, doomed.sum())
    conns.loc[doomed, "dropped"] = True
    conns.loc[~doomed, "lifetime"] += 10
    cox = analysis.cox_by_factors(conns)
    assert cox is not None and cox.penalizer == 0.0
    assert cox.problem is not None and "block=doomed" in cox.problem
    assert cox.table.empty


def test_cox_needs_two_varied_factors_and_enough_drops() -> None:
    one = pd.concat(
        [rotated_connections(600, 300, s, f"steady,chunk_ms={c}") for s, c in ((1, 20), (2, 50))]
    )
    assert analysis.cox_by_factors(one) is None
    few = factorial({"steady": 600.0, "burst": 300.0}).groupby("variant", observed=True).head(2)
    assert analysis.cox_by_factors(few) is None


# --- ranking -----------------------------------------------------------------------------------
def rated(rate_per_hour: float, hours: float, seed: int, variant: str) -> pd.DataFrame:
    """Exponential lifetimes at a known rate, rotated at random ages, until ~`hours` of
    connection time."""
    mean = 3600 / rate_per_hour
    n = int(hours * 3600 * math.e / mean)  # E[min(T, U(0, mean))] = mean / e
    return rotated_connections(mean, n, seed, variant)


def hand_hours_to_separate(ra: float, rb: float, alpha: float) -> float:
    """Invert the power of the Wald test on the log rate ratio numerically."""
    z = stats.norm.ppf(1 - alpha / 2)

    def power_minus(t: float) -> float:
        se = math.sqrt((1 / ra + 1 / rb) / t)
        return stats.norm.cdf(abs(math.log(ra / rb)) / se - z) - 0.8

    return optimize.brentq(power_minus, 1e-6, 1e9, xtol=1e-9)


def test_ranking_groups_variants_the_run_cannot_tell_apart() -> None:
    conns = pd.concat(
        [rated(8.0, 300, 51, "worst"), rated(2.1, 300, 52, "mid"), rated(2.0, 300, 53, "best")]
    )
    utts = pd.DataFrame(
        {
            "variant": ["best"] * 3 + ["worst"] * 3,
            "status": ["lost", "lost", "completed", "lost", "lost", "lost"],
            "final": [True, False, True, True, True, True],
        }
    )
    table = analysis.ranking(conns, utts)
    assert list(table["variant"]) == ["best", "mid", "worst"]
    assert list(table["group"]) == ["A", "A", "B"]
    assert table["connection_hours"].between(270, 330).all()
    by = {v: g for v, g in conns.groupby("variant")}
    for i, row in enumerate(table.itertuples()):
        g = by[row.variant]
        hours, drops = g["lifetime"].sum() / 3600, int(g["dropped"].sum())
        assert row.drops_per_hour == pytest.approx(drops / hours)
        assert (row.drops_per_hour_lo, row.drops_per_hour_hi) == pytest.approx(
            garwood(drops, hours)
        )
        if i < 2:
            h = by[table["variant"][i + 1]]
            n = drops + int(h["dropped"].sum())
            share = hours / (hours + h["lifetime"].sum() / 3600)
            assert row.p_next == pytest.approx(stats.binomtest(drops, n, share).pvalue)
    assert table["lost"].tolist() == [1, 0, 3]
    assert table["lost_per_hour"][0] == pytest.approx(1 / by["best"]["lifetime"].sum() * 3600)
    # best and mid: how long a run would need at the ratio observed, at the alpha of 2 tests
    rates = table["drops_per_hour"]
    expected = hand_hours_to_separate(rates[0], rates[1], 0.05 / 2)
    assert table["hours_to_separate"][0] == pytest.approx(expected, rel=1e-6)
    assert expected > 300  # the run was too short to tell 2.0 from 2.1
    assert math.isnan(table["hours_to_separate"][1]) and math.isnan(table["hours_to_separate"][2])


def test_ranking_needs_infinitely_long_runs_for_equal_rates() -> None:
    assert analysis.hours_to_separate(2.0, 2.0) == math.inf


# --- factors -----------------------------------------------------------------------------------
def test_exact_poisson_interval_matches_known_values() -> None:
    # Garwood interval for 10 events in 1 unit: [4.795, 18.39]
    lo, hi = analysis.poisson_rate_ci(10, 1.0)
    assert (lo, hi) == pytest.approx((4.7954, 18.3904), abs=1e-3)
    assert analysis.poisson_rate_ci(0, 2.0) == pytest.approx((0.0, 3.6889 / 2), abs=1e-3)


def test_survival_at_is_exp_minus_t_over_mean() -> None:
    conns = rotated_connections(600.0, 3000, seed=2, rotate_by=1200)
    _, fitters = analysis.survival_by_variant(conns)
    value, lo, hi = analysis.survival_at(fitters["a"], 300.0)
    assert lo <= math.exp(-0.5) <= hi and lo < value < hi


def test_variant_factors_parse_matrix_names() -> None:
    f = analysis.variant_factors(["steady,chunk_ms=20", "burst,chunk_ms=100", "solo"])
    assert f.loc["burst,chunk_ms=100", "chunk_ms"] == 100.0
    assert f.loc["steady,chunk_ms=20", "block"] == "steady"
