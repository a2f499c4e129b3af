"""What kills the connections, judged blind: a verdict per theory and variant, from what the
client saw and how long it spent in each state (harness.report.exposure). The method, its
rules and its assumptions are in docs/diagnosis.md; this module is that text as code.

For each covariate theory: is the drop rate higher once the covariate passes a threshold than
the connection time spent past it explains? A piecewise-exponential model with one change
point: drops past a candidate threshold against exposure past it, by the exact conditional
(binomial) test, corrected for the candidates and windows looked at, then Holm across the
theories of a variant. The strongest supported theory is taken first and the drops it explains
are set aside before the next is judged, so one cause is not counted twice. Age comes last:
a fixed limit is a threshold in age; otherwise the Weibull shape of what is left says wear-out,
flat (random loss) or falling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats.contingency import odds_ratio

from harness.log.sends import SendSource
from harness.report.analysis import MIN_DROPS, weibull_fit
from harness.report.exposure import Covariate, exposure_tables, handshake_attempts

__all__ = ["HYPOTHESES", "Verdict", "diagnose_variants"]

HYPOTHESES = (
    "idle_timeout",
    "buffer_pressure",
    "rate",
    "micro_burst",
    "silence_hazard",
    "concurrency_cap",
    "max_duration",
    "session_age",
    "random_loss",
    "handshake_faults",
)
ALPHA = 0.01  # a theory is supported below this, after the corrections
MIN_IN_STATE = 5  # drops past the threshold a supported theory needs
MIN_RATE_RATIO = 2.0  # and the lower CI bound of its effect
RULED_OUT_RATIO = 3.0  # not supported: the run rules out an effect this large
MAX_CANDIDATES = 40
THRESHOLD_KEY = {
    "idle_timeout": "threshold_s",
    "silence_hazard": "threshold_s",
    "max_duration": "threshold_s",
    "buffer_pressure": "threshold_ms",
    "concurrency_cap": "max_sessions",
    "rate": "threshold_speed",
    "micro_burst": "threshold_appends",
}
NEXT_STEP = {
    "idle_timeout": "send a frame (a keepalive) more often than every {half} s, and compare "
    "keepalive strategies",
    "buffer_pressure": "commit before the buffer holds {value} of audio (shorter turns, or "
    "commit and clear more often)",
    "rate": "pace appends at real time (20–50 ms chunks on a steady clock) and compare pacing "
    "strategies",
    "micro_burst": "pace evenly: no catch-up bursts after a stall; compare pacing strategies",
    "silence_hazard": "stop streaming long silence: send nothing between utterances, or "
    "commit and clear",
    "concurrency_cap": "keep at most {value} per key (make-before-break rotation "
    "opens a second one)",
    "max_duration": "rotate sessions before {value} (reconnect.rotate_every)",
    "session_age": "rotate sessions proactively and compare rotation ages (rtsoak recommend)",
    "random_loss": "rotation will not help a constant hazard: make reconnect and replay cheap "
    "(reconnect.replay, make-before-break)",
    "handshake_faults": "back off on refused handshakes (honour Retry-After) and check quotas",
}


@dataclass(slots=True)
class Verdict:
    hypothesis: str
    verdict: str  # supported | not_supported | inconclusive
    evidence: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hypothesis": self.hypothesis,
            "verdict": self.verdict,
            "evidence": self.evidence,
            **self.numbers,
        }


@dataclass(slots=True)
class _Test:
    """One covariate's change-point test in one variant."""

    cov: Covariate
    logp: float  # log p-value, corrected for the candidate thresholds (and windows)
    tau: float
    drops_in: int
    drops: int
    exposure_in: float
    exposure: float
    ratio: float
    ratio_ci: tuple[float, float]
    max_survived: float
    min_drop: float
    deterministic: bool
    spread: float = math.inf  # of the drops past the threshold: (q90 - q10) / median
    threshold: float | None = None
    threshold_ci: tuple[float, float] | None = None
    reference: tuple[float, float, float] | None = None  # ratio, lo, hi in the top decile


def _above(spells: pd.DataFrame, tau: float, linear: bool) -> np.ndarray:
    """Each spell's connection time with the covariate at or past `tau`."""
    x0, x1, d = (spells[c].to_numpy(float) for c in ("x0", "x1", "duration"))
    if not linear:
        return np.where(x1 >= tau, d, 0.0)
    rise = x1 - x0
    share = np.where(rise > 0, np.clip((x1 - tau) / np.where(rise > 0, rise, 1.0), 0, 1), 0.0)
    return np.where(rise > 0, d * share, np.where(x0 >= tau, d, 0.0))


def _ratio_ci(d_in: int, d: int, e_in: float, e: float) -> tuple[float, float, float]:
    """Rate ratio in-state against out-of-state, with its exact 95 % CI (the conditional
    binomial of the drops' split, Clopper-Pearson)."""
    e_out = e - e_in
    if d == 0 or e_in <= 0 or e_out <= 0:
        return math.nan, math.nan, math.nan
    ci = stats.binomtest(d_in, d).proportion_ci(0.95, "exact")

    def odds(p: float) -> float:
        return math.inf if p >= 1 else p / (1 - p) * e_out / e_in

    return odds(d_in / d), odds(ci.low), odds(ci.high)


def _logp(d_in: int, d: int, e_in: float, e: float, per_arrival: bool) -> float:
    """log p of `d_in` or more of `d` drops past a threshold that holds `e_in` of `e` exposure,
    if the covariate did not matter: binomial for a rate over time, hypergeometric for
    arrivals (each evicts or not: a rare-event approximation fails when nearly all do)."""
    if per_arrival:
        return float(stats.hypergeom.logsf(d_in - 1, round(e), d, round(e_in)))
    share = min(1.0, e_in / e)
    return float(stats.binom.logsf(d_in - 1, d, share)) if share < 1 else 0.0


def _odds_ratio_ci(d_in: int, d: int, n_in: float, n: float) -> tuple[float, float, float]:
    """Odds of an arrival evicting a session past the threshold against below it, with the
    exact conditional 95 % CI (Fisher's)."""
    n_in, n = round(n_in), round(n)
    if d == 0 or n_in <= 0 or n_in >= n:
        return math.nan, math.nan, math.nan
    table = [[d_in, n_in - d_in], [d - d_in, n - n_in - (d - d_in)]]
    result = odds_ratio(table)
    ci = result.confidence_interval(0.95)
    return float(result.statistic), float(ci.low), float(ci.high)


def _change_point(
    cov: Covariate,
    spells: pd.DataFrame,
    drops: int,
    exposure: float,
    explained: set[str],
    tol: float,
) -> _Test | None:
    tol = tol if cov.unit == "s" else 0.0  # the timing tolerance, in the covariate's unit
    dropped = spells["dropped"].to_numpy(bool) & ~spells["connection"].isin(explained).to_numpy()
    x1 = spells["x1"].to_numpy(float)
    drop_x = np.sort(x1[dropped])
    # a threshold in scenario seconds finer than the run's timing can resolve is not one
    floor = tol if cov.unit == "s" else 0.0
    drop_x = drop_x[drop_x > floor]
    if cov.per_arrival:  # evictions among arrivals: the drops no arrival claims are not in it
        drops, exposure = len(drop_x), float(spells["duration"].sum())
    if drops == 0 or exposure <= 0 or len(drop_x) == 0:
        return None
    # A threshold just under each drop (by the timing tolerance, for covariates that grow
    # with time): a drop's own spell then counts the time it spent past the threshold, and no
    # drop sits on a set of no exposure. A threshold needs MIN_IN_STATE drops past it, where
    # there are as many.
    candidates = np.unique(np.maximum(drop_x - (tol if cov.linear else 0.0), floor))
    enough = candidates[(drop_x[None, :] >= candidates[:, None]).sum(axis=1) >= MIN_IN_STATE]
    if len(enough):
        candidates = enough
    if len(candidates) > MAX_CANDIDATES:
        candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, MAX_CANDIDATES)))
    relevant = spells[x1 >= candidates[0]]
    best = None
    for tau in candidates:
        e_in = float(_above(relevant, tau, cov.linear).sum())
        d_in = int((drop_x >= tau).sum())
        # log p: past ~1e-300 p-values underflow to 0 and could no longer rank theories
        logp = _logp(d_in, drops, e_in, exposure, cov.per_arrival)
        if best is None or logp < best[0] or (logp == best[0] and d_in > best[2]):
            best = (logp, tau, d_in, e_in)
    assert best is not None
    logp, tau, d_in, e_in = best
    ratio, lo, hi = (_odds_ratio_ci if cov.per_arrival else _ratio_ci)(d_in, drops, e_in, exposure)
    alive = ~spells["dropped"].to_numpy(bool) & ~spells["dying"].to_numpy(bool)
    surv_x = spells.loc[alive, "x1"].to_numpy(float)
    in_state = drop_x[drop_x >= tau]
    min_drop = float(in_state.min()) if len(in_state) else math.nan
    below = surv_x[surv_x < min_drop + tol] if len(surv_x) else surv_x
    max_survived = float(below.max()) if len(below) else 0.0
    # every spell that got past the least drop (by more than the timing) dropped
    deterministic = bool(len(surv_x) == 0 or surv_x.max() < min_drop + tol)
    test = _Test(
        cov,
        min(0.0, logp + math.log(len(candidates))),
        float(tau),
        d_in,
        drops,
        e_in,
        exposure,
        ratio,
        (lo, hi),
        max_survived,
        min_drop,
        deterministic,
    )
    if cov.timing_spread is not None:
        test.spread = cov.timing_spread
    elif len(in_state) and np.median(in_state) > 0:
        q10, q50, q90 = np.quantile(in_state, [0.1, 0.5, 0.9])
        test.spread = float((q90 - q10) / q50)
    test.threshold, test.threshold_ci = _threshold(
        test, spells if cov.per_arrival else relevant, drop_x, exposure, tol
    )
    test.reference = _reference(cov, spells, drop_x, drops, exposure)
    return test


def _threshold(
    test: _Test, spells: pd.DataFrame, drop_x: np.ndarray, exposure: float, tol: float
) -> tuple[float, tuple[float, float]]:
    """The threshold and its 95 % interval. Deterministic (every spell that reached it
    dropped): between the most any survivor reached and the least any of its drops came at,
    widened by the run's timing tolerance. Otherwise the profile likelihood of the change point
    (a likelihood-ratio interval over a grid)."""
    if test.cov.per_arrival:
        arrivals = spells.loc[~spells["dropped"].to_numpy(bool), "x1"].to_numpy(float)
        return _count_threshold(arrivals, drop_x)
    if test.deterministic:
        return test.min_drop, (max(0.0, test.max_survived - tol), test.min_drop + tol)
    grid = np.linspace(0.0, test.min_drop, 60)
    d = test.drops

    def loglik(tau: float) -> float:
        e_in = float(_above(spells, tau, test.cov.linear).sum()) if tau > 0 else exposure
        d_in = int((drop_x >= tau).sum())
        total = 0.0
        for k, e in ((d_in, e_in), (d - d_in, exposure - e_in)):
            if k > 0 and e > 0:
                total += k * math.log(k / e) - k
        return total

    values = np.array([loglik(t) for t in grid])
    best = float(values.max())
    inside = grid[values >= best - stats.chi2.ppf(0.95, 1) / 2]
    low = max(0.0, float(inside.min()) - tol)  # where the client saw it, less its timing
    return float(grid[values.argmax()]), (low, test.min_drop + tol)


def _count_threshold(trials: np.ndarray, events: np.ndarray) -> tuple[float, tuple[float, float]]:
    """A cap: the count of sessions open from which a trial (an arrival, a handshake) ends in an
    event (an eviction, a refusal), and its 95 % interval. The profile likelihood over whole
    counts of two event probabilities, below the cap and from it, each trial a Bernoulli one.
    `trials`: every trial's count; `events`: the count of each trial with an event.
    Deterministic data (every trial from the cap had one, none below) give one count."""
    counts = np.arange(1, int(max(trials.max(), events.max())) + 1)

    def bernoulli(k: int, n: int) -> float:
        return sum(m * math.log(m / n) for m in (k, n - k) if m > 0) if n else 0.0

    loglik = np.array(
        [
            bernoulli(int((events >= c).sum()), int((trials >= c).sum()))
            + bernoulli(int((events < c).sum()), int((trials < c).sum()))
            for c in counts
        ]
    )
    best = int(loglik.argmax())
    inside = counts[loglik >= loglik[best] - stats.chi2.ppf(0.95, 1) / 2]
    return float(counts[best]), (float(inside.min()), float(inside.max()))


def _reference(
    cov: Covariate, spells: pd.DataFrame, drop_x: np.ndarray, drops: int, exposure: float
) -> tuple[float, float, float] | None:
    """Rate ratio in the top tenth of the connection time by this covariate: what rules a
    theory out when no threshold stood out."""
    if not len(spells):
        return None
    x = spells["x1"].to_numpy(float)
    d = spells["duration"].to_numpy(float)
    order = np.argsort(x)
    cum = np.cumsum(d[order])
    cut = np.searchsorted(cum, 0.9 * exposure) if cum[-1] >= 0.1 * exposure else len(cum) - 1
    tau = float(x[order][min(cut, len(cum) - 1)])
    if tau <= 0:
        return None
    e_in = float(_above(spells, tau, cov.linear).sum())
    return _ratio_ci(int((drop_x >= tau).sum()), drops, e_in, exposure)


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value >= 120:
            return f"{value / 60:.1f} min"
        return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"
    if unit == "ms":
        return f"{value / 1000:.1f} s"
    if unit == "sessions":
        return f"{value:.0f} sessions"
    if unit == "appends":
        return f"{value:.0f} appends"
    return f"{value:.2f}x real time"


NOUN = {
    "idle_timeout": "time since the last frame sent",
    "buffer_pressure": "uncommitted audio",
    "rate": "sending speed",
    "micro_burst": "bunching of appends",
    "silence_hazard": "low-energy streaks",
    "concurrency_cap": "sessions open at once",
    "max_duration": "session age",
}
_WHAT = {
    "idle_timeout": ("nothing sent for", "idle gaps longer than {x} (e.g. [silence] gap_max)"),
    "buffer_pressure": ("uncommitted audio of", "utterances longer than {x} before a commit"),
    "rate": ("audio sent at", "audio sent faster than {x}"),
    "micro_burst": ("bursts of", "bursts of more than {x}"),
    "silence_hazard": (
        "low-energy audio streamed for",
        'silence streamed for longer than {x} ([silence] fill = "zeros" or "noise")',
    ),
    "concurrency_cap": ("arrivals with", "more than {x} open at once"),
    "max_duration": ("session age of", "sessions older than {x} (a longer run, no rotation)"),
}


_DETERMINISTIC = {"sessions": "; every arrival there evicted a session"}


def _evicted_all(test: _Test) -> str:
    """A deterministic cap's clause: every arrival past it evicted, or came shortly before a
    drop no arrival claimed (exposure.py: an eviction the client saw late)."""
    late = round(test.exposure_in) - test.drops_in
    if late <= 0:
        return _DETERMINISTIC["sessions"]
    which = "the other" if late == 1 else f"the other {late} each"
    return f"; {which} came shortly before a drop no arrival claimed (an eviction seen late)"


def _sentence(test: _Test, verdict: str, variant_drops: int) -> str:
    cov = test.cov
    what, more = _WHAT[cov.theory]
    window = (
        f" (over {cov.window_s * 1000:g} ms)"
        if cov.window_s and cov.window_s < 1
        else (f" (over {cov.window_s:g} s)" if cov.window_s else "")
    )
    share = test.exposure_in / test.exposure if test.exposure else 1.0
    if math.isnan(test.ratio):
        ratio = "a rate the run cannot compare (no time spent elsewhere)"
    elif math.isinf(test.ratio):
        ratio = "every connection that got there dropped"
    else:
        ratio = (
            f"{test.ratio:.1f}x the rate elsewhere (95 % CI {test.ratio_ci[0]:.1f}–"
            f"{test.ratio_ci[1]:.1f})"
        )
    if cov.per_arrival:
        arrivals, elsewhere = round(test.exposure_in), round(test.exposure - test.exposure_in)
        ratio = (
            f"{test.drops_in} of {arrivals} arrivals with {_fmt(test.tau, cov.unit)} or more "
            f"open were followed by a drop, {test.drops - test.drops_in} of {elsewhere} with "
            "fewer"
            + (
                ""
                if math.isnan(test.ratio)
                else f" (odds ratio {_fmt_ratio(test.ratio)}, 95 % CI "
                f"{_fmt_ratio(test.ratio_ci[0])}–{_fmt_ratio(test.ratio_ci[1])})"
            )
        )
    if verdict == "supported" and cov.per_arrival:
        lo, hi = test.threshold_ci or (math.nan, math.nan)
        return (
            f"{ratio}. Threshold {_fmt(test.threshold or test.tau, cov.unit)} (95 % CI "
            f"{_fmt(lo, cov.unit)} to {_fmt(hi, cov.unit)})"
            + (_evicted_all(test) if test.deterministic else "")
            + "."
        )
    if verdict == "supported":
        lo, hi = test.threshold_ci or (math.nan, math.nan)
        return (
            f"{test.drops_in} of {variant_drops} drops came at {what} "
            f"{_fmt(test.tau, cov.unit)} or more{window}, in {test.exposure_in / 3600:.2f} of "
            f"{test.exposure / 3600:.1f} connection-hours: {ratio}. Threshold "
            f"{_fmt(test.threshold or test.tau, cov.unit)} (95 % CI {_fmt(lo, cov.unit)} to "
            f"{_fmt(hi, cov.unit)})"
            + (
                _DETERMINISTIC.get(cov.unit, "; no connection outlived it")
                if test.deterministic
                else ""
            )
            + "."
        )
    if cov.per_arrival:
        if verdict == "not_supported":
            return f"Arrivals with more sessions open evicted no more often: {ratio}."
        return (
            f"Can't tell yet: {ratio}; to settle it, "
            + more.format(x=_fmt(max(_most(test), test.tau), cov.unit))
            + " (more workers than the cap you suspect)."
        )
    if verdict == "not_supported":
        most = _fmt(_most(test), cov.unit)
        if cov.theory == "max_duration" and not test.deterministic:
            return (
                f"No fixed limit: connections lived past the ages at which others dropped "
                f"(drops from {_fmt(test.min_drop, cov.unit)}, the oldest lived {most})."
            )
        ref = test.reference
        if ref is not None and ref[2] < RULED_OUT_RATIO:
            return (
                f"Drops were no more frequent at high {NOUN[cov.theory]}: in the top tenth of "
                f"connection time by it the rate was {ref[0]:.1f}x the rest (95 % CI "
                f"{ref[1]:.1f}–{ref[2]:.1f}); the most reached was {most}."
            )
        return (
            f"No threshold up to {most} stands out: the strongest, "
            f"{_fmt(test.tau, cov.unit)}, held {test.drops_in} of {variant_drops} drops at "
            f"{ratio}."
        )
    if share > 0.9:
        return (
            f"Can't tell yet: the run spent {100 * share:.0f} % of its connection time at "
            f"{_fmt(test.tau, cov.unit)} or more of {NOUN[cov.theory]}, so there is nothing to "
            f"compare with; to settle it, vary it (e.g. "
            + more.format(x=_fmt(test.tau, cov.unit))
            + " against less)."
        )
    return (
        f"Can't tell yet: the best threshold, {_fmt(test.tau, cov.unit)}, held "
        f"{test.drops_in} of {variant_drops} drops at {ratio}; to settle it, "
        + more.format(x=_fmt(max(_most(test), test.tau) * 2, cov.unit))
        + "."
    )


def _fmt_ratio(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.1f}"


def _most(test: _Test) -> float:
    x = test.cov.spells["x1"]
    return float(x.max()) if len(x) else 0.0


def _judge(test: _Test | None, cov: Covariate, logp_holm: float, drops: int) -> Verdict:
    if cov.missing:
        return Verdict(cov.theory, "inconclusive", f"Can't judge: {cov.missing}.")
    if drops < MIN_IN_STATE:
        said = "no drops" if drops == 0 else f"only {drops} drop{'s' * (drops > 1)}"
        return Verdict(
            cov.theory,
            "inconclusive",
            f"Can't tell yet: {said} to explain"
            + (" after the supported theories" if test is not None or drops else "")
            + f"; a theory needs {MIN_IN_STATE} drops in its state.",
        )
    if test is None:
        return Verdict(
            cov.theory,
            "not_supported",
            "No drop came with this covariate above zero.",
        )
    numbers: dict[str, Any] = {
        "rate_ratio": test.ratio,
        "rate_ratio_ci": list(test.ratio_ci),
        # JSON has no infinity: true when every connection past the threshold dropped (the
        # ratio and its upper bound, written null, are then unbounded, not unknown)
        "rate_ratio_unbounded": math.isinf(test.ratio),
        "p": math.exp(logp_holm),
        "drops_in_state": test.drops_in,
    }
    if cov.per_arrival:  # the ratio is the odds of an arrival evicting a session
        numbers["arrivals_in_state"] = round(test.exposure_in)
        numbers["arrivals"] = round(test.exposure)
    else:
        numbers["hours_in_state"] = test.exposure_in / 3600
    if cov.window_s:
        numbers["window_s"] = cov.window_s
    supported = (
        logp_holm < math.log(ALPHA)
        and test.drops_in >= MIN_IN_STATE
        and test.ratio_ci[0] >= MIN_RATE_RATIO
    )
    if supported:
        key = THRESHOLD_KEY[cov.theory]
        numbers[key] = test.threshold
        numbers["threshold_ci"] = list(test.threshold_ci or ())
        verdict = "supported"
    elif drops >= MIN_DROPS and (
        (test.reference is not None and test.reference[2] < RULED_OUT_RATIO)
        or test.ratio_ci[1] < RULED_OUT_RATIO
        or (cov.theory == "max_duration" and not test.deterministic)
    ):
        verdict = "not_supported"
    else:
        verdict = "inconclusive"
    return Verdict(cov.theory, verdict, _sentence(test, verdict, drops), numbers)


def _age_verdicts(
    conns: pd.DataFrame, explained: set[str], limit_supported: bool, covariates_supported: bool
) -> list[Verdict]:
    """session_age and random_loss from the drops no other theory explains (those count as
    censored at their time: something else ended them)."""
    life = (conns["closed"] - conns["established"]).to_numpy(float)
    left = conns["dropped"].to_numpy(bool) & ~conns["connection"].isin(explained).to_numpy()
    n_left = int(left.sum())
    fitted = weibull_fit(pd.Series(life), pd.Series(left)) if left.sum() >= 3 else None
    shape, numbers = None, {}
    if fitted is not None:
        ci = fitted.summary
        shape = (
            float(fitted.rho_),
            float(ci.loc["rho_", "coef lower 95%"]),
            float(ci.loc["rho_", "coef upper 95%"]),
        )
        # the scale and the covariance too: what `rtsoak recommend` and `fit` need of the model
        numbers = {
            "weibull_shape": shape[0],
            "weibull_shape_ci": [shape[1], shape[2]],
            "weibull_scale_s": float(fitted.lambda_),
            "weibull_scale_ci_s": [
                float(ci.loc["lambda_", "coef lower 95%"]),
                float(ci.loc["lambda_", "coef upper 95%"]),
            ],
            "weibull_cov": fitted.variance_matrix_.loc[["rho_", "lambda_"], ["rho_", "lambda_"]]
            .to_numpy(float)
            .tolist(),
        }
    hours = life.sum() / 3600
    fit = f"Weibull shape {shape[0]:.2f} (95 % CI {shape[1]:.2f}–{shape[2]:.2f})" if shape else ""
    if limit_supported:
        age = Verdict(
            "session_age",
            "not_supported",
            "The drops come at one age: a fixed session limit (max_duration), not wear-out.",
            numbers,
        )
    elif shape is None or n_left < MIN_DROPS:
        need = max(MIN_DROPS - n_left, 1)
        age = Verdict(
            "session_age",
            "inconclusive",
            f"Can't tell yet: {n_left} drops left unexplained in {hours:.1f} connection-hours; "
            f"the age hazard's shape needs {MIN_DROPS} (about {need} more drops).",
            numbers,
        )
    else:
        if shape[1] > 1.0:
            age = Verdict(
                "session_age",
                "supported",
                f"The hazard rises with session age: {fit}; sessions wear out.",
                numbers,
            )
        elif shape[2] < 1.0:
            age = Verdict(
                "session_age",
                "not_supported",
                f"The hazard falls with age ({fit}): early deaths, not wear-out.",
                numbers,
            )
        else:
            age = Verdict(
                "session_age",
                "not_supported" if shape[2] < 1.5 else "inconclusive",
                f"No wear-out shown: {fit} includes a flat hazard.",
                numbers,
            )
    drops = int(conns["dropped"].sum())
    if drops == 0:
        loss = Verdict("random_loss", "inconclusive", "Can't tell yet: no drops.")
    elif n_left < MIN_DROPS:
        ruled_out = covariates_supported and n_left <= drops // 10
        rate = n_left / hours if hours else 0.0
        more = MIN_DROPS - n_left
        settle = (
            ""
            if ruled_out
            else f" Can't tell yet: a flat hazard needs {MIN_DROPS} unexplained drops; "
            + (
                f"about {more / rate:.0f} more connection-hours at this rate would give them."
                if rate > 0
                else "run longer, or with more workers."
            )
        )
        loss = Verdict(
            "random_loss",
            "not_supported" if ruled_out else "inconclusive",
            f"{drops - n_left} of {drops} drops are explained by the supported theories; "
            f"{n_left} are left." + settle,
        )
    elif shape is not None and shape[1] <= 1.0 <= shape[2]:
        rate = n_left / hours if hours else math.nan
        loss = Verdict(
            "random_loss",
            "supported",
            f"{n_left} drops no state explains, at a flat hazard ({fit}): "
            f"{rate:.2f} per connection-hour, whatever the session did.",
            {"drops_per_hour": rate},
        )
    else:
        loss = Verdict(
            "random_loss",
            "not_supported",
            "The hazard of the drops left is not flat in age.",
            numbers,
        )
    return [age, loss]


def _handshakes(attempts: pd.DataFrame) -> tuple[Verdict, Verdict | None]:
    """handshake_faults, and a refusing concurrency cap: refusals that begin at a count of
    sessions open (judged like evictions, per attempt). The refusals a supported cap explains
    are not handshake faults."""
    if len(attempts) == 0:
        return Verdict("handshake_faults", "inconclusive", "No handshakes."), None
    trials = attempts["open_now"].to_numpy(float)
    events = attempts.loc[attempts["failed"].to_numpy(bool), "open_now"].to_numpy(float)
    cap = _refusing_cap(trials, events)
    if cap is not None:  # what is left: the refusals below the cap
        below = trials < cap.numbers["max_sessions"]
        trials, events = trials[below], events[events < cap.numbers["max_sessions"]]
    n, failed = len(trials), len(events)
    if n == 0:
        return Verdict("handshake_faults", "not_supported", "Every refusal is the cap's."), cap
    ci = stats.binomtest(failed, n).proportion_ci(0.95, "exact")
    numbers = {"failed": failed, "attempts": n, "share_ci": [ci.low, ci.high]}
    besides = " besides the cap's refusals" if cap is not None else ""
    if failed >= MIN_IN_STATE:
        hs = Verdict(
            "handshake_faults",
            "supported",
            f"{failed} of {n} handshakes failed{besides} "
            f"(95 % CI {100 * ci.low:.1f}–{100 * ci.high:.1f} %).",
            numbers,
        )
    elif failed == 0:
        hs = Verdict(
            "handshake_faults",
            "not_supported",
            f"None of {n} handshakes failed{besides} (under {100 * ci.high:.1f} %, 95 %).",
            numbers,
        )
    else:
        hs = Verdict(
            "handshake_faults",
            "inconclusive",
            f"{failed} of {n} handshakes failed{besides}: too few attempts to tell.",
            numbers,
        )
    return hs, cap


def _refusing_cap(trials: np.ndarray, events: np.ndarray) -> Verdict | None:
    """concurrency_cap from refused handshakes, when they step up at a count of sessions open
    (`trials`: every handshake's count, `events`: the refused ones'), else None."""
    if len(events) < MIN_IN_STATE or trials.max() < 1:
        return None
    cap, (lo, hi) = _count_threshold(trials, events)
    n_in, d_in = int((trials >= cap).sum()), int((events >= cap).sum())
    n, d = len(trials), len(events)
    logp = _logp(d_in, d, n_in, n, per_arrival=True) + math.log(trials.max())
    ratio, r_lo, r_hi = _odds_ratio_ci(d_in, d, n_in, n)
    if not (logp < math.log(ALPHA) and d_in >= MIN_IN_STATE and r_lo >= MIN_RATE_RATIO):
        return None
    return Verdict(
        "concurrency_cap",
        "supported",
        f"{d_in} of {n_in} handshakes with {cap:.0f} or more sessions open were refused, "
        f"{d - d_in} of {n - n_in} with fewer (odds ratio {_fmt_ratio(ratio)}, 95 % CI "
        f"{_fmt_ratio(r_lo)}–{_fmt_ratio(r_hi)}): a cap of {cap:.0f} sessions (95 % CI "
        f"{lo:.0f} to {hi:.0f}).",
        {
            "max_sessions": cap,
            "threshold_ci": [lo, hi],
            "refused_in_state": d_in,
            "attempts_in_state": n_in,
            "p": math.exp(logp),
        },
    )


def diagnose_variants(
    connections: pd.DataFrame,
    sends: SendSource | pd.DataFrame | None,
    tolerance_s: float = 0.0,
) -> dict[str, list[Verdict]]:
    """Per variant, one Verdict per hypothesis (HYPOTHESES order). `tolerance_s`: scenario
    seconds the client's timing may be off by (send jitter times the time scale)."""
    covariates = exposure_tables(connections, sends, tolerance_s)
    attempts = handshake_attempts(connections)
    out: dict[str, list[Verdict]] = {}
    opened = connections[connections["established"].notna() & connections["closed"].notna()]
    for variant in connections["variant"].astype(str).unique():
        mine = opened[opened["variant"].astype(str) == variant].assign(
            connection=lambda f: f["connection"].astype(str)
        )
        exposure = float((mine["closed"] - mine["established"]).sum())
        drops = int(mine["dropped"].sum())
        verdicts = _variant(variant, covariates, mine, exposure, drops, tolerance_s)
        hs, cap = _handshakes(
            attempts[attempts["variant"] == variant] if len(attempts) else attempts
        )
        if cap is not None and verdicts["concurrency_cap"].verdict != "supported":
            verdicts["concurrency_cap"] = cap
        verdicts["handshake_faults"] = hs
        out[variant] = [verdicts[h] for h in HYPOTHESES]
    return out


def _sharpness(test: _Test) -> tuple[int, float, float]:
    """Which of several supported theories to take first: a deterministic threshold (a sharp
    prediction: every drop at one value) before a hazard, and of two thresholds the one its
    drops sit on most tightly (an idle timeout's drops all at its idle time; the same drops'
    silence streaks spread by the quiet tail before each gap); among hazards, the smaller
    p-value."""
    if test.deterministic:
        return (0, test.spread, test.logp)
    return (1, test.logp, test.spread)  # a hazard's drops spread by nature: evidence decides


def _tests(
    covariates: list[Covariate],
    spells: dict[int, pd.DataFrame],
    accepted: dict[str, Verdict],
    drops: int,
    exposure: float,
    explained: set[str],
    tol: float,
) -> dict[str, _Test]:
    """The best change point of each theory not yet accepted (its best window: the windows
    looked at multiply its p-value)."""
    tests: dict[str, _Test] = {}
    windows = {c.theory: sum(d.theory == c.theory for d in covariates) for c in covariates}
    for cov in covariates:
        if cov.theory in accepted or cov.missing:
            continue
        test = _change_point(cov, spells[id(cov)], drops, exposure, explained, tol)
        if test is None:
            continue
        test.logp = min(0.0, test.logp + math.log(windows[cov.theory]))
        if cov.theory == "max_duration" and not test.deterministic:
            test.logp = 0.0  # an age threshold only as a fixed limit; else the Weibull speaks
        best = tests.get(cov.theory)
        if best is None or test.logp < best.logp:
            tests[cov.theory] = test
    return tests


def _variant(
    variant: str,
    covariates: list[Covariate],
    conns: pd.DataFrame,
    exposure: float,
    drops: int,
    tol: float,
) -> dict[str, Verdict]:
    spells = {id(c): c.spells[c.spells["variant"] == variant] for c in covariates}
    explained: set[str] = set()
    accepted: dict[str, Verdict] = {}
    remaining = drops
    for _ in range(len(HYPOTHESES)):
        tests = _tests(covariates, spells, accepted, remaining, exposure, explained, tol)
        if not tests:
            break
        ranked = sorted(tests.values(), key=lambda t: (t.logp, t.exposure_in))
        holm = np.maximum.accumulate(
            [min(0.0, t.logp + math.log(len(ranked) - i)) for i, t in enumerate(ranked)]
        )
        candidates = [
            (test, verdict)
            for test, logp_holm in zip(ranked, holm, strict=True)
            if (verdict := _judge(test, test.cov, float(logp_holm), remaining)).verdict
            == "supported"
        ]
        if not candidates:
            break
        top, verdict = min(candidates, key=lambda c: _sharpness(c[0]))
        accepted[top.cov.theory] = verdict
        newly = spells[id(top.cov)]
        slack = tol if top.cov.unit == "s" else 0.0
        hit = newly["dropped"].to_numpy(bool) & (newly["x1"].to_numpy(float) >= top.tau - slack)
        explained |= {label for label in newly.loc[hit, "connection"].astype(str) if label}
        remaining = drops - len(explained & set(conns.loc[conns["dropped"], "connection"]))
        if remaining <= 0:
            break
    out: dict[str, Verdict] = dict(accepted)
    tests = _tests(covariates, spells, accepted, remaining, exposure, explained, tol)
    first = {}
    for cov in covariates:  # one covariate per theory: the best window, else the first
        if cov.theory not in accepted:
            first.setdefault(cov.theory, cov)
    for theory, cov in first.items():
        test = tests.get(theory)
        cov = test.cov if test is not None else cov
        logp = min(0.0, test.logp + math.log(len(first))) if test else 0.0
        verdict = _judge(test, cov, logp, remaining)
        if verdict.verdict == "supported":  # what is left after the accepted ones is weak
            verdict.verdict = "inconclusive"
        out[theory] = verdict
    limit = out.get("max_duration")
    out.update(
        {
            v.hypothesis: v
            for v in _age_verdicts(
                conns,
                explained,
                limit is not None and limit.verdict == "supported",
                bool(accepted),
            )
        }
    )
    unjudged = [c.theory for c in covariates if c.missing and c.theory not in accepted]
    if unjudged and drops:
        _hedge_age(out, sorted(set(unjudged)), next(c.missing for c in covariates if c.missing))
    for theory, verdict in out.items():
        if verdict.verdict == "supported":
            verdict.numbers["next_step"] = _next_step(theory, verdict)
    return out


def _hedge_age(out: dict[str, Verdict], unjudged: list[str], why: str) -> None:
    """An age verdict stands only when every covariate theory could be judged: drops an
    unjudged one would explain (an idle timeout on a log of connections only) look like
    wear-out or random loss."""
    for theory in ("session_age", "random_loss"):
        verdict = out.get(theory)
        if verdict is not None and verdict.verdict == "supported":
            verdict.verdict = "inconclusive"
            verdict.evidence = (
                f"Can't tell yet: {verdict.evidence[0].lower()}{verdict.evidence[1:]} But "
                f"{', '.join(unjudged)} could not be judged ({why}) and could explain these "
                "drops; log the frames sent to tell."
            )


def _next_step(theory: str, verdict: Verdict) -> str:
    value = verdict.numbers.get(THRESHOLD_KEY.get(theory, ""), None)
    unit = {"buffer_pressure": "ms", "concurrency_cap": "sessions", "max_duration": "s"}.get(
        theory, "s"
    )
    text = NEXT_STEP[theory]
    return text.format(
        half=f"{value / 2:.0f}" if isinstance(value, int | float) else "?",
        value=_fmt(value, unit) if isinstance(value, int | float) else "?",
    )
