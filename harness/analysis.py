"""Disconnect-timing statistics from the frames: survival with censoring, drop rates, outcomes.

Functions take frames and return DataFrames or plain numbers; charts and HTML live in report/.
Connections that the harness ended itself (scenario end, planned rotation) are censored
observations, not drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times
from scipy import stats

__all__ = ["SurvivalSummary", "drop_rate", "kaplan_meier", "poisson_rate_ci", "survival_by_variant"]


def observed_connections(connections: pd.DataFrame) -> pd.DataFrame:
    """Connections that were established, so they have a lifetime to analyse."""
    return connections[connections["established"].notna() & connections["lifetime"].notna()]


def kaplan_meier(lifetimes: pd.Series, dropped: pd.Series, label: str) -> KaplanMeierFitter:
    kmf = KaplanMeierFitter(label=label)
    kmf.fit(lifetimes.to_numpy(dtype=float), event_observed=dropped.to_numpy(dtype=bool))
    return kmf


def poisson_rate_ci(events: int, exposure: float, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) confidence interval for a Poisson rate of `events` over `exposure`."""
    if exposure <= 0:
        return (float("nan"), float("nan"))
    alpha = 1.0 - level
    lo = 0.0 if events == 0 else stats.chi2.ppf(alpha / 2, 2 * events) / 2
    hi = stats.chi2.ppf(1 - alpha / 2, 2 * events + 2) / 2
    return (lo / exposure, hi / exposure)


@dataclass(frozen=True, slots=True)
class SurvivalSummary:
    variant: str
    connections: int
    drops: int
    censored: int
    connection_hours: float
    drops_per_hour: float
    drops_per_hour_ci: tuple[float, float]
    median_s: float
    median_ci_s: tuple[float, float]


def drop_rate(conns: pd.DataFrame) -> tuple[int, float, float, tuple[float, float]]:
    drops = int(conns["dropped"].sum())
    hours = float(conns["lifetime"].sum()) / 3600.0
    rate = drops / hours if hours > 0 else float("nan")
    return drops, hours, rate, poisson_rate_ci(drops, hours)


def survival_by_variant(connections: pd.DataFrame) -> tuple[list[SurvivalSummary],
                                                             dict[str, KaplanMeierFitter]]:
    conns = observed_connections(connections)
    summaries, fitters = [], {}
    for variant, group in conns.groupby("variant", observed=True):
        kmf = kaplan_meier(group["lifetime"], group["dropped"], str(variant))
        fitters[str(variant)] = kmf
        ci = median_survival_times(kmf.confidence_interval_)
        drops, hours, rate, rate_ci = drop_rate(group)
        summaries.append(SurvivalSummary(
            variant=str(variant), connections=len(group), drops=drops,
            censored=int((~group["dropped"]).sum()), connection_hours=hours,
            drops_per_hour=rate, drops_per_hour_ci=rate_ci,
            median_s=float(kmf.median_survival_time_),
            median_ci_s=(float(ci.iloc[0, 0]), float(ci.iloc[0, 1]))))
    return summaries, fitters


def close_codes(connections: pd.DataFrame) -> pd.DataFrame:
    """Connections by variant, close code, cause and who closed."""
    table = (connections.assign(close_code=connections["close_code"].astype("string")
                                .fillna("none"))
             .groupby(["variant", "close_code", "cause", "closed_by"], observed=True)
             .size().rename("connections").reset_index())
    return table[table["connections"] > 0].sort_values(["variant", "connections"],
                                                       ascending=[True, False])


def utterance_outcomes(utterances: pd.DataFrame) -> pd.DataFrame:
    table = utterances.groupby(["variant", "status"], observed=False).size().unstack(fill_value=0)
    return table.loc[:, (table.sum(axis=0) > 0)]


def percentiles(values: np.ndarray, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}
