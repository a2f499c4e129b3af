"""The known-answer tests earn trust: plant a known bug in the statistics (a mutant) and the
test that guards it must fail. Each mutant is a classic way to get survival data wrong."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
import test_analysis as known

from harness.report import analysis

_kaplan_meier, _pairwise_logrank = analysis.kaplan_meier, analysis.pairwise_logrank


def km_ignoring_censoring(lifetimes: pd.Series, dropped: pd.Series, label: str):
    """Every connection counted as a drop (event_observed all true)."""
    return _kaplan_meier(lifetimes, pd.Series(True, index=dropped.index), label)


def logrank_without_holm(connections: pd.DataFrame) -> pd.DataFrame:
    """p_holm = p: many comparisons, no correction."""
    table = _pairwise_logrank(connections)
    return table.assign(p_holm=table["p"])


def rate_ignoring_censored_exposure(conns: pd.DataFrame):
    """Connection-hours of the dropped connections only: censored time at risk left out."""
    drops = int(conns["dropped"].sum())
    hours = float(conns.loc[conns["dropped"], "lifetime"].sum()) / 3600.0
    rate = drops / hours if hours > 0 else float("nan")
    return drops, hours, rate, analysis.poisson_rate_ci(drops, hours)


@pytest.mark.parametrize(
    ("name", "mutant", "guard"),
    [
        (
            "kaplan_meier",
            km_ignoring_censoring,
            known.test_km_matches_a_hand_product_limit_under_heavy_censoring,
        ),
        (
            "pairwise_logrank",
            logrank_without_holm,
            known.test_logrank_and_holm_match_a_hand_computation_under_heavy_censoring,
        ),
        (
            "drop_rate",
            rate_ignoring_censored_exposure,
            known.test_drop_rate_counts_censored_exposure_under_heavy_censoring,
        ),
        (
            "drop_rate",
            rate_ignoring_censored_exposure,
            known.test_ranking_groups_variants_the_run_cannot_tell_apart,
        ),
    ],
    ids=["km-all-drops", "logrank-no-holm", "rate-no-censored-time", "ranking-no-censored-time"],
)
def test_a_known_answer_test_catches_the_mutant(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    mutant: Callable[..., object],
    guard: Callable[[], None],
) -> None:
    guard()  # the real function passes
    monkeypatch.setattr(analysis, name, mutant)
    with pytest.raises(AssertionError):
        guard()
