"""Disconnect-timing statistics from the frames: survival with censoring, drop rates, outcomes.

Functions take frames and return DataFrames or plain numbers; charts and HTML live in report/.
Connections that the harness ended itself (scenario end, planned rotation) are censored
observations, not drops.
"""

from __future__ import annotations

import math
import warnings
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


def survival_by_variant(
    connections: pd.DataFrame,
) -> tuple[list[SurvivalSummary], dict[str, KaplanMeierFitter]]:
    conns = observed_connections(connections)
    summaries, fitters = [], {}
    for variant, group in conns.groupby("variant", observed=True):
        kmf = kaplan_meier(group["lifetime"], group["dropped"], str(variant))
        fitters[str(variant)] = kmf
        ci = median_survival_times(kmf.confidence_interval_)
        drops, hours, rate, rate_ci = drop_rate(group)
        summaries.append(
            SurvivalSummary(
                variant=str(variant),
                connections=len(group),
                drops=drops,
                censored=int((~group["dropped"]).sum()),
                connection_hours=hours,
                drops_per_hour=rate,
                drops_per_hour_ci=rate_ci,
                median_s=float(kmf.median_survival_time_),
                median_ci_s=(float(ci.iloc[0, 0]), float(ci.iloc[0, 1])),
            )
        )
    return summaries, fitters


def close_codes(connections: pd.DataFrame) -> pd.DataFrame:
    """Connections by variant, close code, cause and who closed."""
    table = (
        connections.assign(close_code=connections["close_code"].astype("string").fillna("none"))
        .groupby(["variant", "close_code", "cause", "closed_by"], observed=True)
        .size()
        .rename("connections")
        .reset_index()
    )
    return table[table["connections"] > 0].sort_values(
        ["variant", "connections"], ascending=[True, False]
    )


def utterance_outcomes(utterances: pd.DataFrame) -> pd.DataFrame:
    table = utterances.groupby(["variant", "status"], observed=False).size().unstack(fill_value=0)
    return table.loc[:, (table.sum(axis=0) > 0)]


def percentiles(values: np.ndarray, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}


# --- comparisons ------------------------------------------------------------------------------
def survival_at(kmf: KaplanMeierFitter, age: float) -> tuple[float, float, float]:
    """S(age) with its 95 % CI (lower, upper)."""
    s = float(kmf.survival_function_at_times(age).iloc[0])
    ci = kmf.confidence_interval_survival_function_
    before = ci[ci.index <= age]
    if before.empty:
        return s, 1.0, 1.0
    lo, hi = before.iloc[-1]
    return s, float(lo), float(hi)


def pairwise_logrank(connections: pd.DataFrame) -> pd.DataFrame:
    """Log-rank test for every pair of variants, p-values Holm-corrected for the number of
    pairs (so a table of many comparisons does not find differences by chance)."""
    from lifelines.statistics import pairwise_logrank_test

    conns = observed_connections(connections)
    if conns["variant"].nunique() < 2:
        return pd.DataFrame(columns=["a", "b", "statistic", "p", "p_holm"])
    result = pairwise_logrank_test(
        conns["lifetime"].to_numpy(float),
        conns["variant"].astype(str).to_numpy(),
        conns["dropped"].to_numpy(bool),
    ).summary
    table = result.reset_index().rename(
        columns={"level_0": "a", "level_1": "b", "test_statistic": "statistic"}
    )
    table = table[["a", "b", "statistic", "p"]].sort_values("p").reset_index(drop=True)
    m = len(table)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * table["p"].to_numpy()))
    table["p_holm"] = adjusted
    return table


def hazard_by_age(connections: pd.DataFrame, bins: int = 8) -> pd.DataFrame:
    """Drops per connection-hour in bands of connection age, with exact Poisson CIs: a flat
    profile is random loss; a rising one, sessions that wear out."""
    conns = observed_connections(connections)
    if conns.empty:
        return pd.DataFrame()
    edges = np.linspace(0.0, float(conns["lifetime"].max()), bins + 1)
    rows = []
    for variant, group in conns.groupby("variant", observed=True):
        life = group["lifetime"].to_numpy(float)
        dropped = group["dropped"].to_numpy(bool)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            exposure = float(np.clip(life - lo, 0.0, hi - lo).sum()) / 3600.0
            events = int(((life > lo) & (life <= hi) & dropped).sum())
            ci = poisson_rate_ci(events, exposure)
            rows.append(
                {
                    "variant": str(variant),
                    "age_from": lo,
                    "age_to": hi,
                    "drops": events,
                    "connection_hours": exposure,
                    "per_hour": events / exposure if exposure > 0 else float("nan"),
                    "per_hour_lo": ci[0],
                    "per_hour_hi": ci[1],
                }
            )
    return pd.DataFrame(rows)


def variant_factors(variants: list[str]) -> pd.DataFrame:
    """Factors a variant name encodes: `block,key=value,...` from [[variant]] x [matrix]."""
    rows = []
    for name in variants:
        row: dict[str, object] = {"variant": name}
        for part in name.split(","):
            key, sep, value = part.partition("=")
            if sep:
                number = pd.to_numeric(value, errors="coerce")
                row[key] = value if pd.isna(number) else float(number)
            else:
                row["block"] = part
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def cox_by_factors(connections: pd.DataFrame) -> pd.DataFrame | None:
    """A Cox proportional-hazards model of lifetime over the factors the variants vary (when
    two or more vary): each factor's hazard ratio with its 95 % CI and p-value."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceWarning

    conns = observed_connections(connections)
    if conns.empty:
        return None
    factors = variant_factors(sorted(conns["variant"].astype(str).unique()))
    varied = [c for c in factors.columns if factors[c].nunique(dropna=False) > 1]
    if len(varied) < 2 or conns["dropped"].sum() < 5:
        return None
    data = (
        conns[["lifetime", "dropped", "variant"]]
        .astype({"variant": str})
        .join(factors[varied], on="variant")
        .drop(columns="variant")
    )
    data = pd.get_dummies(data, drop_first=True, dtype=float)
    data = data.loc[:, data.nunique() > 1]
    with warnings.catch_warnings():
        # a factor that separates drops from survivors completely (a profile where every
        # connection drops at once) has no finite hazard ratio: show no model then
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            fitted = CoxPHFitter(penalizer=0.01).fit(data, "lifetime", "dropped")
        except Exception:  # lifelines raises several kinds on degenerate data
            return None
    summary = fitted.summary
    return pd.DataFrame(
        {
            "factor": summary.index,
            "hazard_ratio": summary["exp(coef)"],
            "lo": summary["exp(coef) lower 95%"],
            "hi": summary["exp(coef) upper 95%"],
            "p": summary["p"],
        }
    ).reset_index(drop=True)


Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5 %, 80 % power


def power(drops: int, drops_per_hour: float) -> dict[str, float]:
    """Schoenfeld's approximation for a log-rank comparison of two equal arms: the smallest
    hazard ratio a comparison with this many drops detects (80 % power, 5 % two-sided), and
    the drops and connection-hours needed to detect a 2x hazard."""
    z = Z_ALPHA + Z_POWER
    detectable = math.exp(z / math.sqrt(0.25 * drops)) if drops > 0 else float("inf")
    needed = (z / (0.5 * math.log(2.0))) ** 2
    hours = needed / drops_per_hour if drops_per_hour > 0 else float("inf")
    return {
        "detectable_hazard_ratio": detectable,
        "drops_for_2x": needed,
        "connection_hours_for_2x": hours,
    }


# --- utterances and recovery ----------------------------------------------------------------
def latency_percentiles(utterances: pd.DataFrame) -> pd.DataFrame:
    done = utterances[utterances["latency"].notna()]
    rows = [
        {
            "variant": str(v),
            "transcripts": len(g),
            **percentiles(g["latency"].to_numpy(float), (50, 90, 99)),
        }
        for v, g in done.groupby("variant", observed=True)
    ]
    return pd.DataFrame(rows)


def final_outcomes(utterances: pd.DataFrame) -> pd.DataFrame:
    """Each utterance counted once, by its last attempt."""
    return utterance_outcomes(utterances[utterances["final"]])


def recovery(connections: pd.DataFrame, utterances: pd.DataFrame) -> pd.DataFrame:
    """Per drop: seconds from the drop to the first transcript completed on a later
    connection of the same worker (NA if none came), and audio lost at the drop."""
    drops = connections[connections["dropped"]]
    if drops.empty:
        return pd.DataFrame(
            columns=["variant", "worker", "conn", "dropped_at", "recovery", "uncommitted_ms"]
        )
    good = utterances[utterances["status"].isin(["completed", "retried_ok"])]
    first_done = good.groupby(["run", "worker", "conn"], observed=True)["ended"].min().reset_index()
    out = drops[["variant", "worker", "conn", "closed", "uncommitted_ms"]].reset_index(drop=True)
    out = out.rename(columns={"closed": "dropped_at"}).astype({"variant": str})
    # each drop against its worker's later connections: one merge, not a lookup per drop
    pairs = (
        drops[["run", "worker", "conn", "closed"]]
        .assign(drop=np.arange(len(drops)))
        .merge(first_done, on=["run", "worker"], suffixes=("", "_later"))
    )
    later = pairs[(pairs["conn_later"] > pairs["conn"]) & (pairs["ended"] >= pairs["closed"])]
    first = later.groupby("drop")["ended"].min().reindex(range(len(drops)))
    out.insert(4, "recovery", first.to_numpy(float) - out["dropped_at"].to_numpy())
    return out
