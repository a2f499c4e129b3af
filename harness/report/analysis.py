"""Disconnect-timing statistics from the frames: survival with censoring, drop rates, outcomes.

Functions take frames and return DataFrames or plain numbers; charts and HTML live in report/.
Connections that the harness ended itself (scenario end, planned rotation) are censored
observations, not drops.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times
from scipy import stats

__all__ = [
    "ALPHA",
    "MIN_DROPS",
    "POWER",
    "CoxResult",
    "SurvivalSummary",
    "cox_by_factors",
    "drop_rate",
    "hazard_by_age",
    "holm",
    "hours_to_separate",
    "kaplan_meier",
    "pairwise_logrank",
    "poisson_rate_ci",
    "power",
    "ranking",
    "survival_by_variant",
    "weibull_by_variant",
]

# The fewest drops behind any number the report states: per variant (Weibull shape, hazard
# bands), per compared pair (power), per Cox coefficient (the model needs MIN_DROPS for each).
# Below it a result says "too few drops" (a verdict, or NaN) instead of a number. Why 10: it is
# the "10 events per variable" rule for proportional-hazards models (Peduzzi et al. 1995), the
# point where the large-sample approximations behind Weibull, Cox and log-rank start to hold;
# with 10 drops a Garwood rate interval already spans a factor of 3.8 (4.8-18.4), and two equal
# arms can only detect a hazard ratio of 5.9 (Schoenfeld), so fewer drops tell nothing useful.
MIN_DROPS = 10
ALPHA = 0.05  # two-sided significance level of every test and power computation here
POWER = 0.80  # power of every "how much would a run need" computation here


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
    """(drops, connection-hours, drops per connection-hour, its Garwood 95 % CI). The hours
    are every connection's time at risk, censored ones included: that is what makes drops /
    hours the maximum-likelihood rate under censoring."""
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
        summary, fitters[str(variant)] = survival_summary(group, str(variant))
        summaries.append(summary)
    return summaries, fitters


def survival_summary(
    observed: pd.DataFrame, label: str
) -> tuple[SurvivalSummary, KaplanMeierFitter]:
    """One group's Kaplan-Meier fit and the numbers the report gives for it."""
    kmf = kaplan_meier(observed["lifetime"], observed["dropped"], label)
    ci = median_survival_times(kmf.confidence_interval_)
    drops, hours, rate, rate_ci = drop_rate(observed)
    summary = SurvivalSummary(
        variant=label,
        connections=len(observed),
        drops=drops,
        censored=int((~observed["dropped"]).sum()),
        connection_hours=hours,
        drops_per_hour=rate,
        drops_per_hour_ci=rate_ci,
        median_s=float(kmf.median_survival_time_),
        median_ci_s=(float(ci.iloc[0, 0]), float(ci.iloc[0, 1])),
    )
    return summary, kmf


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


def weighted_percentiles(
    values: np.ndarray, counts: np.ndarray, qs: tuple[float, ...] = (50, 90, 99)
) -> np.ndarray:
    """np.percentile's (linear) percentiles of `values` each repeated `counts` times, without
    repeating them: what counted lateness (ReportFrames.lateness) needs."""
    order = np.argsort(values, kind="stable")
    values, counts = np.asarray(values, float)[order], np.asarray(counts, np.int64)[order]
    keep = counts > 0
    values, counts = values[keep], counts[keep]
    n = int(counts.sum())
    if n == 0:
        return np.full(len(qs), np.nan)
    ends = np.cumsum(counts)  # the rank after each value's last copy
    rank = (n - 1) * np.asarray(qs, float) / 100
    lo, hi = np.floor(rank).astype(np.int64), np.ceil(rank).astype(np.int64)
    at_lo = values[np.searchsorted(ends, lo, side="right")]
    at_hi = values[np.searchsorted(ends, hi, side="right")]
    return at_lo + (rank - lo) * (at_hi - at_lo)


def lag_counts(lateness: pd.DataFrame | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(lag_ms values, their counts) of counted lateness (ReportFrames.lateness: a `count`
    column), of rows one per append (an events frame's appends), or of a series of lags."""
    if isinstance(lateness, pd.Series):
        lag = lateness.to_numpy(float, na_value=np.nan)
        counts = np.ones(len(lag), np.int64)
    else:
        lag = lateness["lag_ms"].to_numpy(float, na_value=np.nan)
        counts = (
            lateness["count"].to_numpy(np.int64)
            if "count" in lateness
            else np.ones(len(lag), np.int64)
        )
    ok = ~np.isnan(lag)
    return lag[ok], counts[ok]


def lateness_percentiles(
    lateness: pd.DataFrame | pd.Series, qs: tuple[float, ...] = (50, 90, 99)
) -> dict[str, float]:
    """`percentiles` of send lateness, counted or not (lag_counts)."""
    values, counts = lag_counts(lateness)
    return {
        f"p{q:g}": float(v)
        for q, v in zip(qs, weighted_percentiles(values, counts, qs), strict=True)
    }


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


def _z(alpha: float) -> float:
    """z for a two-sided test at `alpha` plus z for POWER: the sum every sample size needs."""
    return float(stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(POWER))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of p-values, in their original order."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


LOGRANK_COLUMNS = [
    "a",
    "b",
    "statistic",
    "p",
    "p_holm",
    "drops",
    "detectable_hazard_ratio",
    "connection_hours_for_2x",
    "too_few",
]


def pairwise_logrank(connections: pd.DataFrame) -> pd.DataFrame:
    """Log-rank test for every pair of variants, with the power of each comparison.

    Columns: a, b (variants), statistic (chi-square, 1 df), p, p_holm (Holm-corrected for the
    number of pairs, so a table of many comparisons does not find differences by chance),
    drops (the pair's drops), detectable_hazard_ratio (the smallest hazard ratio the pair's
    drops detect, see `power`), connection_hours_for_2x (the pair's pooled connection-hours
    needed to detect a 2x hazard at the pair's pooled drop rate), too_few (the pair has fewer
    than MIN_DROPS drops: the two power columns are NaN). Sorted by p.

    Power is at two-sided ALPHA divided by the number of pairs (Bonferroni: the level of Holm's
    first, strictest step, which every pair must pass to be significant when differences are
    small), for two arms allocated as the pair's connections are (Schoenfeld)."""
    from lifelines.statistics import pairwise_logrank_test

    conns = observed_connections(connections)
    if conns["variant"].nunique() < 2:
        return pd.DataFrame(columns=LOGRANK_COLUMNS)
    variant = conns["variant"].astype(str)
    result = pairwise_logrank_test(
        conns["lifetime"].to_numpy(float), variant.to_numpy(), conns["dropped"].to_numpy(bool)
    ).summary
    table = result.reset_index().rename(
        columns={"level_0": "a", "level_1": "b", "test_statistic": "statistic"}
    )
    table = table[["a", "b", "statistic", "p"]].sort_values("p").reset_index(drop=True)
    table["p_holm"] = holm(table["p"].to_numpy())
    per_variant = conns.assign(variant=variant).groupby("variant")
    n = per_variant.size()
    drops = per_variant["dropped"].sum()
    hours = per_variant["lifetime"].sum() / 3600.0
    alpha = ALPHA / len(table)
    rows = []
    for a, b in zip(table["a"], table["b"], strict=True):
        pair_drops = int(drops[a] + drops[b])
        pair_hours = float(hours[a] + hours[b])
        p = power(
            pair_drops,
            pair_drops / pair_hours if pair_hours > 0 else 0.0,
            allocation=float(n[a] / (n[a] + n[b])),
            alpha=alpha,
        )
        rows.append(
            {
                "drops": pair_drops,
                "detectable_hazard_ratio": p["detectable_hazard_ratio"],
                "connection_hours_for_2x": p["connection_hours_for_2x"],
                "too_few": pair_drops < MIN_DROPS,
            }
        )
    return pd.concat([table, pd.DataFrame(rows)], axis=1)[LOGRANK_COLUMNS]


def power(
    drops: int, drops_per_hour: float, *, allocation: float = 0.5, alpha: float = ALPHA
) -> dict[str, float]:
    """Schoenfeld's approximation for a log-rank comparison of two arms, a fraction
    `allocation` of connections in one: the smallest hazard ratio `drops` drops detect (POWER,
    two-sided `alpha`), and the drops and connection-hours needed to detect a 2x hazard at
    `drops_per_hour`. Keys: detectable_hazard_ratio, drops_for_2x, connection_hours_for_2x.

    Below MIN_DROPS drops the detectable ratio and the hours are NaN (too few drops to tell):
    a one-connection run would otherwise claim it detects a hazard ratio of 271."""
    z = _z(alpha)
    share = allocation * (1.0 - allocation)
    needed = z**2 / (share * math.log(2.0) ** 2) if share > 0 else float("inf")
    if drops < MIN_DROPS or share <= 0:
        return {
            "detectable_hazard_ratio": float("nan"),
            "drops_for_2x": needed,
            "connection_hours_for_2x": float("nan"),
        }
    return {
        "detectable_hazard_ratio": math.exp(z / math.sqrt(share * drops)),
        "drops_for_2x": needed,
        "connection_hours_for_2x": needed / drops_per_hour if drops_per_hour > 0 else math.inf,
    }


HAZARD_COLUMNS = [
    "variant",
    "age_from",
    "age_to",
    "drops",
    "connection_hours",
    "per_hour",
    "per_hour_lo",
    "per_hour_hi",
    "too_few",
]


def hazard_by_age(connections: pd.DataFrame, bins: int = 8) -> pd.DataFrame:
    """Drops per connection-hour in bands of connection age, with exact Poisson CIs: a flat
    profile is random loss; a rising one, sessions that wear out.

    Each variant gets `bins` equal bands from 0 to its own longest lifetime (so a short-lived
    variant is not squeezed into one band by a long-lived one), and each band counts the
    connection-hours its variant's connections spent at those ages (censored ones included).
    Columns: variant, age_from, age_to (s), drops, connection_hours, per_hour, per_hour_lo,
    per_hour_hi (Garwood 95 %), too_few (the variant has fewer than MIN_DROPS drops in all: its
    bands are shown but say little)."""
    conns = observed_connections(connections)
    rows = []
    for variant, group in conns.groupby("variant", observed=True):
        life = group["lifetime"].to_numpy(float)
        dropped = group["dropped"].to_numpy(bool)
        edges = np.linspace(0.0, float(life.max()), bins + 1)
        # a drop at age t falls in the band (lo, hi] holding t; age 0 in the first band
        band = np.clip(np.searchsorted(edges, life, side="left") - 1, 0, bins - 1)
        too_few = int(dropped.sum()) < MIN_DROPS
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            exposure = float(np.clip(life - lo, 0.0, hi - lo).sum()) / 3600.0
            events = int((dropped & (band == i)).sum())
            ci = poisson_rate_ci(events, exposure)
            rows.append(
                {
                    "variant": str(variant),
                    "age_from": float(lo),
                    "age_to": float(hi),
                    "drops": events,
                    "connection_hours": exposure,
                    "per_hour": events / exposure if exposure > 0 else float("nan"),
                    "per_hour_lo": ci[0],
                    "per_hour_hi": ci[1],
                    "too_few": too_few,
                }
            )
    return pd.DataFrame(rows, columns=HAZARD_COLUMNS)


WEIBULL_COLUMNS = ["variant", "drops", "shape", "shape_lo", "shape_hi", "verdict"]


def weibull_by_variant(connections: pd.DataFrame) -> pd.DataFrame:
    """The Weibull shape of each variant's lifetimes, censoring included: above 1 the hazard
    rises with age (sessions wear out), below 1 it falls, at 1 it is flat (random loss).

    Per variant, never pooled: variants with different constant or rising hazards pooled
    together look like a falling hazard (the frail variants' connections leave early), a mixing
    artefact. Columns: variant, drops, shape, shape_lo, shape_hi (lifelines' 95 % CI), verdict:
    "rising" if the CI lies above 1, "falling" if below, "flat" if it holds 1 (no margin: the
    CI already says how sure; a very long run can call a shape of 1.03 rising, so quote the
    shape too: the hazard at twice the age is 2**(shape - 1) times as high), "too few drops"
    below MIN_DROPS (the numbers are NaN), "no fit" if the fit failed."""
    rows = []
    for variant, group in observed_connections(connections).groupby("variant", observed=True):
        drops = int(group["dropped"].sum())
        row: dict[str, object] = {
            "variant": str(variant),
            "drops": drops,
            "shape": float("nan"),
            "shape_lo": float("nan"),
            "shape_hi": float("nan"),
            "verdict": "too few drops",
        }
        if drops >= MIN_DROPS:
            fit = weibull_shape(group["lifetime"], group["dropped"])
            if fit is None:
                row["verdict"] = "no fit"
            else:
                shape, lo, hi = fit
                verdict = "rising" if lo > 1.0 else "falling" if hi < 1.0 else "flat"
                row.update(shape=shape, shape_lo=lo, shape_hi=hi, verdict=verdict)
        rows.append(row)
    return pd.DataFrame(rows, columns=WEIBULL_COLUMNS)


def weibull_fit(lifetimes: pd.Series, dropped: pd.Series) -> Any | None:
    """A lifelines WeibullFitter of these lifetimes (dropped: observed, else censored), or None
    when the fit fails."""
    from lifelines import WeibullFitter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WeibullFitter().fit(
                pd.Series(lifetimes, dtype=float).clip(lower=1e-3),
                pd.Series(dropped).astype(bool),
            )
    except Exception:  # lifelines raises several kinds on degenerate data
        return None


def weibull_shape(lifetimes: pd.Series, dropped: pd.Series) -> tuple[float, float, float] | None:
    """The Weibull shape of these lifetimes with lifelines' 95 % CI, or None when the fit
    fails."""
    wf = weibull_fit(lifetimes, dropped)
    if wf is None:
        return None
    ci = wf.summary.loc["rho_"]
    return float(wf.rho_), float(ci["coef lower 95%"]), float(ci["coef upper 95%"])


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


COX_COLUMNS = ["factor", "level", "reference", "unit", "hazard_ratio", "lo", "hi", "p"]

# a coefficient this large (a hazard ratio above e**10 = 22,000 per step) is the fit running
# off to infinity, not an estimate
_RUNAWAY_COEF = 10.0
_UNITS = {"ms": "ms", "s": "s", "hz": "Hz", "pct": "%", "kb": "KB", "mb": "MB", "x": "x"}


@dataclass(frozen=True, slots=True)
class CoxResult:
    """A Cox model of lifetime over the factors the variants vary.

    table: factor, level, reference, unit, hazard_ratio, lo, hi (95 % CI), p. A categorical
      factor has one row per level but its reference, whose name is in `reference`; a numeric
      one has one row, its hazard ratio per `unit` (e.g. "per 30 ms"), level and reference None.
    ph_test: factor, p: the proportional-hazards test (lifelines, Schoenfeld residuals against
      the rank of time), one p per factor (the smallest over its levels times their number,
      Bonferroni, so a many-level factor is not flagged by chance).
    ph_violated: factors with ph_test p < 0.05: their effect changes with connection age and
      their single hazard ratio averages over ages.
    penalizer: always 0.0: the model is fitted without a penalty, so hazard ratios are not
      shrunk. When that fit has no finite answer, `problem` says why and the tables are empty.
    """

    table: pd.DataFrame
    ph_test: pd.DataFrame
    ph_violated: list[str]
    penalizer: float = 0.0
    problem: str | None = None


def _level_name(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _unit(factor: str, step: float) -> str:
    suffix = factor.rsplit("_", 1)[-1].lower() if "_" in factor else ""
    return f"per {step:g} {_UNITS.get(suffix, factor)}"


def _cox_design(
    conns: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, dict[str, object]]] | None:
    """Per connection: lifetime, dropped and one column per coefficient, and what each
    coefficient means (factor, level, reference, unit); None if fewer than two factors vary.

    A factor is numeric if the scenario sweeps it (a matrix `key=value` in the variant name)
    and every level is a number; it enters per step of its smallest spacing. Otherwise it is
    categorical, against its first level in sorted order; the block (the [[variant]] name) is
    always categorical, against the first block in the variants' order (the category order of
    the frames' variant column)."""
    variant = conns["variant"]
    if isinstance(variant.dtype, pd.CategoricalDtype):
        present = set(variant.astype(str))
        names = [str(c) for c in variant.cat.categories if str(c) in present]
    else:
        names = [str(v) for v in pd.unique(variant.astype(str))]
    factors = variant_factors(names)
    varied = [c for c in factors.columns if factors[c].nunique(dropna=False) > 1]
    if len(varied) < 2:
        return None
    columns: dict[str, pd.Series] = {}
    meaning: dict[str, dict[str, object]] = {}
    for factor in varied:
        values = factors[factor]
        numbers = pd.to_numeric(values, errors="coerce")
        if factor != "block" and numbers.notna().all():
            step = float(np.diff(np.sort(numbers.unique())).min())
            name = f"x{len(columns)}"
            columns[name] = numbers / step
            meaning[name] = {
                "factor": factor,
                "level": None,
                "reference": None,
                "unit": _unit(factor, step),
            }
            continue
        labels = values.map(lambda v: "(none)" if pd.isna(v) else _level_name(v))
        if factor == "block":
            levels = list(pd.unique(labels))
        elif numbers.notna().all():
            levels = [_level_name(v) for v in sorted(numbers.unique())]
        else:
            levels = sorted(labels.unique())
        reference = levels[0]
        for level in levels[1:]:
            name = f"x{len(columns)}"
            columns[name] = (labels == level).astype(float)
            meaning[name] = {"factor": factor, "level": level, "reference": reference, "unit": None}
    design = pd.DataFrame(columns, index=factors.index)
    data = pd.DataFrame(
        {"lifetime": conns["lifetime"].to_numpy(float), "dropped": conns["dropped"].to_numpy(bool)}
    )
    data = pd.concat(
        [data, design.loc[variant.astype(str).to_numpy()].reset_index(drop=True)], axis=1
    )
    return data, meaning


def cox_by_factors(connections: pd.DataFrame) -> CoxResult | None:
    """A Cox proportional-hazards model of lifetime over the factors the variants vary, with
    its proportional-hazards check (see CoxResult and `_cox_design` for the coding).

    None when fewer than two factors vary (the per-variant tables say it all) or when there
    are fewer than MIN_DROPS drops per coefficient. No penalty, ever: a ridge penalty shrinks
    the hazard ratios without saying so; when the unpenalised fit has no finite answer (a
    factor separates drops from survivors), the result carries `problem` instead."""
    from lifelines import CoxPHFitter
    from lifelines.statistics import proportional_hazard_test

    conns = observed_connections(connections)
    if conns.empty:
        return None
    design = _cox_design(conns)
    if design is None:
        return None
    data, meaning = design
    if int(data["dropped"].sum()) < MIN_DROPS * len(meaning):
        return None
    empty = CoxResult(
        table=pd.DataFrame(columns=COX_COLUMNS),
        ph_test=pd.DataFrame(columns=["factor", "p"]),
        ph_violated=[],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fitted = CoxPHFitter(penalizer=0.0).fit(data, "lifetime", "dropped")
        except Exception as exc:  # lifelines raises several kinds on degenerate data
            reason = str(exc).splitlines()[0].split(" See ")[0]
            return replace(empty, problem=f"the Cox model has no unpenalised fit: {reason}")
    summary = fitted.summary
    runaway = summary["coef"].abs().idxmax()
    failed = any("converge" in str(w.message) or "separation" in str(w.message) for w in caught)
    if (
        abs(summary.loc[runaway, "coef"]) > _RUNAWAY_COEF
        or not np.isfinite(summary["se(coef)"]).all()
        or (failed and abs(summary.loc[runaway, "coef"]) > _RUNAWAY_COEF / 2)
    ):
        what = meaning[runaway]
        factor = what["factor"] if what["level"] is None else f"{what['factor']}={what['level']}"
        return replace(
            empty,
            problem=f"the factor {factor} separates drops from survivors completely: "
            "no finite hazard ratio (and no penalty is applied to invent one)",
        )
    if failed:
        return replace(empty, problem="the Cox model did not converge without a penalty")
    table = pd.DataFrame(
        [
            {
                **meaning[name],
                "hazard_ratio": float(summary.loc[name, "exp(coef)"]),
                "lo": float(summary.loc[name, "exp(coef) lower 95%"]),
                "hi": float(summary.loc[name, "exp(coef) upper 95%"]),
                "p": float(summary.loc[name, "p"]),
            }
            for name in meaning
        ],
        columns=COX_COLUMNS,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ph = proportional_hazard_test(fitted, data, time_transform="rank").summary
    by_coefficient = pd.DataFrame(
        {"factor": [meaning[name]["factor"] for name in ph.index], "p": ph["p"].to_numpy(float)}
    )
    ph_test = (
        by_coefficient.groupby("factor", sort=False)["p"]
        .agg(lambda p: min(1.0, len(p) * p.min()))
        .reset_index()
    )
    violated = [str(f) for f in ph_test.loc[ph_test["p"] < ALPHA, "factor"]]
    return CoxResult(table=table, ph_test=ph_test, ph_violated=violated)


RANKING_COLUMNS = [
    "variant",
    "connection_hours",
    "drops",
    "drops_per_hour",
    "drops_per_hour_lo",
    "drops_per_hour_hi",
    "lost",
    "lost_per_hour",
    "lost_per_hour_lo",
    "lost_per_hour_hi",
    "group",
    "p_next",
    "p_next_holm",
    "hours_to_separate",
]


def _group_letter(i: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[i % 26] + ("" if i < 26 else str(i // 26))


def hours_to_separate(rate_a: float, rate_b: float, alpha: float = ALPHA) -> float:
    """Connection-hours per variant for a run to tell two Poisson rates (per hour) apart with
    POWER at two-sided `alpha`: the normal approximation on the log rate ratio, whose variance
    over T hours each is (1/rate_a + 1/rate_b) / T. inf when the rates are equal, NaN when one
    is zero (no finite ratio to aim at)."""
    if not (rate_a > 0 and rate_b > 0):
        return float("nan")
    if rate_a == rate_b:
        return float("inf")
    return _z(alpha) ** 2 * (1.0 / rate_a + 1.0 / rate_b) / math.log(rate_a / rate_b) ** 2


def ranking(connections: pd.DataFrame, utterances: pd.DataFrame) -> pd.DataFrame:
    """Variants best first by drops per connection-hour (then lost utterances per hour), and
    which of them the run could tell apart.

    Columns: variant, connection_hours, drops, drops_per_hour (+ _lo, _hi: Garwood 95 %), lost
    (final utterances whose status is 'lost'), lost_per_hour (per connection-hour, + _lo, _hi),
    group, p_next, p_next_holm, hours_to_separate.

    Grouping rule: each variant is compared with the next one in the ranking by the exact
    conditional test of two Poisson rates (given both variants' drops, the first one's drops
    are binomial with the share of connection-hours it had, under equal rates); the k-1
    p-values (p_next) are Holm-corrected (p_next_holm). A variant starts a new letter when the
    comparison with the one before it is significant at ALPHA, else it shares that one's
    letter. A group is thus a chain of neighbours none of which the run separated; its two
    ends may differ more than any neighbours do.

    hours_to_separate, for a variant the run did not separate from the next one: the
    connection-hours per variant (compare with connection_hours) a run would need to separate
    them at the rate ratio observed (`hours_to_separate`, at ALPHA / (k - 1): Bonferroni, the
    level of Holm's strictest step). inf when the rates are equal; NaN when the pair has fewer
    than MIN_DROPS drops (its rate ratio is noise), when the run did separate them, and on the
    last variant."""
    conns = observed_connections(connections)
    lost_mask = utterances["final"].astype(bool) & (utterances["status"].astype(str) == "lost")
    lost_by = utterances.loc[lost_mask, "variant"].astype(str).value_counts()
    rows = []
    for variant, group in conns.groupby("variant", observed=True):
        drops, hours, rate, (lo, hi) = drop_rate(group)
        lost = int(lost_by.get(str(variant), 0))
        lost_lo, lost_hi = poisson_rate_ci(lost, hours)
        rows.append(
            {
                "variant": str(variant),
                "connection_hours": hours,
                "drops": drops,
                "drops_per_hour": rate,
                "drops_per_hour_lo": lo,
                "drops_per_hour_hi": hi,
                "lost": lost,
                "lost_per_hour": lost / hours if hours > 0 else float("nan"),
                "lost_per_hour_lo": lost_lo,
                "lost_per_hour_hi": lost_hi,
            }
        )
    table = pd.DataFrame(rows, columns=RANKING_COLUMNS[:10])
    if table.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    table = table.sort_values(
        ["drops_per_hour", "lost_per_hour", "variant"], na_position="last"
    ).reset_index(drop=True)
    k = len(table)
    p_next = np.full(k, np.nan)
    for i in range(k - 1):
        a, b = table.iloc[i], table.iloc[i + 1]
        n = int(a["drops"] + b["drops"])
        exposure = a["connection_hours"] + b["connection_hours"]
        if n == 0 or not exposure > 0 or not b["connection_hours"] > 0:
            p_next[i] = 1.0
        else:
            share = a["connection_hours"] / exposure
            p_next[i] = stats.binomtest(int(a["drops"]), n, share).pvalue
    p_holm = np.full(k, np.nan)
    p_holm[: k - 1] = holm(p_next[: k - 1])
    letters, letter = [], 0
    hours = np.full(k, np.nan)
    for i in range(k):
        if i > 0 and p_holm[i - 1] < ALPHA:
            letter += 1
        letters.append(_group_letter(letter))
        if i < k - 1 and not p_holm[i] < ALPHA:
            a, b = table.iloc[i], table.iloc[i + 1]
            if a["drops"] + b["drops"] >= MIN_DROPS:
                hours[i] = hours_to_separate(
                    a["drops_per_hour"], b["drops_per_hour"], ALPHA / (k - 1)
                )
    return table.assign(group=letters, p_next=p_next, p_next_holm=p_holm, hours_to_separate=hours)


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
    first_done = (
        good.groupby(["run", "variant", "worker", "conn"], observed=True)["ended"]
        .min()
        .reset_index()
    )
    out = drops[["variant", "worker", "conn", "closed", "uncommitted_ms"]].reset_index(drop=True)
    out = out.rename(columns={"closed": "dropped_at"}).astype({"variant": str})
    # each drop against its worker's later connections: one merge, not a lookup per drop
    pairs = (
        drops[["run", "variant", "worker", "conn", "closed"]]
        .assign(drop=np.arange(len(drops)))
        .merge(first_done, on=["run", "variant", "worker"], suffixes=("", "_later"))
    )
    later = pairs[(pairs["conn_later"] > pairs["conn"]) & (pairs["ended"] >= pairs["closed"])]
    first = later.groupby("drop")["ended"].min().reindex(range(len(drops)))
    out.insert(4, "recovery", first.to_numpy(float) - out["dropped_at"].to_numpy())
    return out
