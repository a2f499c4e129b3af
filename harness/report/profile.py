"""A fault profile fitted from a run (`rtsoak fit`): the blind diagnosis's supported theories
and the connections' lifetimes turned into `[faults.*]` tables the fake server loads, each
parameter commented with its estimate, 95 % CI and the data it came from.

Pure: connections, verdicts and the drops each supported theory explains in, a dict and TOML
text out. Loading the run and writing the file is the command's business (harness/cli.py).
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.log.sends import SendSource
from harness.report.analysis import MIN_DROPS
from harness.report.diagnosis import THRESHOLD_KEY, Verdict
from harness.report.exposure import LOUD_DBFS, exposure_tables

__all__ = [
    "FitSource",
    "FittedParam",
    "FittedPolicy",
    "VariantFit",
    "explained_drops",
    "fit_profile",
    "profile_dict",
    "profile_toml",
]

# the fake server ends every session at 60 min unless [server] max_session says otherwise
SERVER_LIMIT_S = 3600.0
NO_LIMIT_S = 24 * 3600.0
# the shapes the fake server's session_age policy takes (core/policies.SessionAgeConfig)
MIN_SHAPE, MAX_SHAPE = 0.05, 20.0
MIN_LEFT = 5  # unexplained drops a constant loss rate is fitted from (a theory's MIN_IN_STATE)


@dataclass(frozen=True, slots=True)
class FitSource:
    """Where a profile came from, for its header."""

    runs: tuple[str, ...]
    fitted_at: str  # ISO 8601, UTC
    version: str  # rtsoak's


@dataclass(frozen=True, slots=True)
class FittedParam:
    key: str
    value: float | int | str | list[int]
    note: str = ""  # the comment above it: estimate, 95 % CI, data


@dataclass(frozen=True, slots=True)
class FittedPolicy:
    policy: str
    params: tuple[FittedParam, ...]
    why: str  # the comment above the table: which verdict, and why this form

    def table(self) -> dict[str, Any]:
        return {p.key: p.value for p in self.params}


@dataclass(frozen=True, slots=True)
class VariantFit:
    variant: str
    policies: tuple[FittedPolicy, ...]
    drops: int
    hours: float
    notes: tuple[str, ...] = ()  # what was left out, and why
    oldest_s: float = 0.0  # the oldest connection's age: past the fake's 60 min, lift it
    extra: dict[str, Any] = field(default_factory=dict)

    def faults(self) -> dict[str, dict[str, Any]]:
        return {p.policy: p.table() for p in self.policies}


def _as_dicts(verdicts: Iterable[Verdict | Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for v in verdicts:
        d = v.as_dict() if isinstance(v, Verdict) else dict(v)
        out[d["hypothesis"]] = d
    return out


def _opened(connections: pd.DataFrame, variant: str) -> pd.DataFrame:
    ok = connections["established"].notna() & connections["closed"].notna()
    mine = connections[ok & (connections["variant"].astype(str) == variant)]
    return mine.assign(
        connection=mine["connection"].astype(str),
        life=(mine["closed"] - mine["established"]).astype(float),
        dropped=mine["dropped"].astype(bool),
    )


def explained_drops(
    connections: pd.DataFrame,
    sends: SendSource | pd.DataFrame | None,
    tolerance_s: float,
    verdicts: Mapping[str, Iterable[Verdict | Mapping[str, Any]]],
) -> dict[str, set[str]]:
    """Per variant, the dropped connections a supported covariate theory explains: those whose
    covariate reached its threshold (less the timing tolerance, for seconds), as the diagnosis
    sets them aside before it fits the age hazard of what is left."""
    covariates = exposure_tables(connections, sends, tolerance_s)
    out: dict[str, set[str]] = {}
    for variant, listed in verdicts.items():
        mine: set[str] = set()
        for theory, v in _as_dicts(listed).items():
            key = THRESHOLD_KEY.get(theory)
            if v["verdict"] != "supported" or key not in v or "drops_in_state" not in v:
                continue  # a refusing cap explains refusals, not drops
            matching = [
                c
                for c in covariates
                if c.theory == theory
                and not c.missing
                and ("window_s" not in v or c.window_s == v["window_s"])
            ]
            if not matching:
                continue
            cov = matching[0]
            spells = cov.spells[cov.spells["variant"].astype(str) == variant]
            cut = float(v[key]) - (tolerance_s if cov.unit == "s" else 0.0)
            hit = spells["dropped"].to_numpy(bool) & (spells["x1"].to_numpy(float) >= cut)
            mine |= {c for c in spells.loc[hit, "connection"].astype(str) if c}
        out[variant] = mine
    return out


def _num(value: float, digits: int = 3) -> float:
    """A value rounded to `digits` significant figures: a profile states what the data say."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(round(value, digits - 1 - int(math.floor(math.log10(abs(value))))))


def _s(value: float) -> str:
    if not math.isfinite(value):
        return "unbounded"
    if abs(value) >= 120:
        return f"{value:.0f} s ({value / 60:.1f} min)"
    return f"{value:.1f} s" if abs(value) >= 1 else f"{value * 1000:.0f} ms"


def _ci(lo: float, hi: float, unit: str = "s") -> str:
    if unit == "s":
        return f"95 % CI {_s(lo)} to {_s(hi)}"
    return f"95 % CI {lo:g} to {hi:g}{unit}"


def _poisson_ci(count: int, exposure: float) -> tuple[float, float]:
    """Exact 95 % CI of a rate of `count` events in `exposure`."""
    lo = stats.chi2.ppf(0.025, 2 * count) / 2 if count else 0.0
    hi = stats.chi2.ppf(0.975, 2 * count + 2) / 2
    return lo / exposure, hi / exposure


def _in_state(v: dict[str, Any], what: str) -> str:
    d, h, n = v.get("drops_in_state"), v.get("hours_in_state"), v.get("arrivals_in_state")
    if d is not None and n is not None:  # a cap: judged per arrival
        return f"; {d} of {n} arrivals with {what} evicted a session"
    if d is None or h is None:
        return ""
    return f"; {d} drops came with {what} past it, in {h:.2f} connection-hours there"


def _weibull(life: np.ndarray, observed: np.ndarray) -> dict[str, float] | None:
    """lifelines' Weibull fit: shape (rho) and scale (lambda, s) with their 95 % CIs."""
    from lifelines import WeibullFitter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wf = WeibullFitter().fit(np.clip(life, 1e-3, None), observed.astype(bool))
        s = wf.summary
        return {
            "shape": float(wf.rho_),
            "shape_lo": float(s.loc["rho_", "coef lower 95%"]),
            "shape_hi": float(s.loc["rho_", "coef upper 95%"]),
            "scale": float(wf.lambda_),
            "scale_lo": float(s.loc["lambda_", "coef lower 95%"]),
            "scale_hi": float(s.loc["lambda_", "coef upper 95%"]),
        }
    except Exception:  # lifelines raises several kinds on degenerate data
        return None


def _refusals(connections: pd.DataFrame, variant: str) -> list[int]:
    """The HTTP statuses this variant's failed handshakes answered with, most common first."""
    if "cause" not in connections or "handshake_status" not in connections:
        return []
    mine = connections[
        (connections["variant"].astype(str) == variant)
        & (connections["cause"].astype(str) == "handshake_failed")
    ]
    status = pd.to_numeric(mine["handshake_status"], errors="coerce").dropna().astype(int)
    return [int(s) for s in status[(status >= 400) & (status < 600)].value_counts().index]


def _covariate_policies(
    v: dict[str, dict[str, Any]], data: str, statuses: list[int]
) -> list[FittedPolicy]:
    """One table per supported covariate theory, its threshold from the verdict."""
    out = []

    def ok(theory: str) -> bool:
        return v.get(theory, {}).get("verdict") == "supported"

    def why(theory: str) -> str:
        return f"{theory} supported: {v[theory]['evidence']}"

    if ok("idle_timeout"):
        t = v["idle_timeout"]
        lo, hi = t["threshold_ci"]
        out.append(
            FittedPolicy(
                "idle_timeout",
                (
                    FittedParam(
                        "after",
                        _num(t["threshold_s"]),
                        f"estimate {_s(t['threshold_s'])} ({_ci(lo, hi)})"
                        + _in_state(t, "nothing sent for that long")
                        + f"; {data}",
                    ),
                ),
                why("idle_timeout"),
            )
        )
    if ok("buffer_pressure"):
        t = v["buffer_pressure"]
        lo, hi = t["threshold_ci"]
        out.append(
            FittedPolicy(
                "buffer_pressure",
                (
                    FittedParam(
                        "max_ms",
                        _num(t["threshold_ms"]),
                        f"estimate {t['threshold_ms']:.0f} ms of uncommitted audio "
                        f"({_ci(lo, hi, ' ms')})"
                        + _in_state(t, "that much uncommitted audio")
                        + f"; {data}",
                    ),
                ),
                why("buffer_pressure"),
            )
        )
    if ok("rate") and "threshold_speed" in v["rate"]:
        t = v["rate"]
        lo, hi = t["threshold_ci"]
        out.append(
            FittedPolicy(
                "rate",
                (
                    FittedParam(
                        "max_speed",
                        _num(t["threshold_speed"]),
                        f"estimate {t['threshold_speed']:.2f}x real time "
                        f"({_ci(lo, hi, 'x')})"
                        + _in_state(t, "audio sent that fast")
                        + f"; {data}",
                    ),
                    FittedParam(
                        "window",
                        float(t.get("window_s", 2.0)),
                        "the diagnosis's window that showed it best (not estimated: one of "
                        "0.5, 2 and 5 s)",
                    ),
                ),
                why("rate"),
            )
        )
    if ok("micro_burst") and "threshold_appends" in v["micro_burst"]:
        t = v["micro_burst"]
        lo, hi = t["threshold_ci"]
        n = int(round(t["threshold_appends"]))
        out.append(
            FittedPolicy(
                "micro_burst",
                (
                    FittedParam(
                        "frames",
                        max(1, n - 1),
                        f"drops from {n} appends in the window on: more than {max(1, n - 1)} "
                        f"({_ci(lo, hi, ' appends')})"
                        + _in_state(t, "bursts that large")
                        + f"; {data}",
                    ),
                    FittedParam(
                        "within",
                        float(t.get("window_s", 0.05)),
                        "the diagnosis's window that showed it best (not estimated: 20 or 50 ms)",
                    ),
                ),
                why("micro_burst"),
            )
        )
    if ok("silence_hazard"):
        t = v["silence_hazard"]
        lo, hi = t["threshold_ci"]
        d, h = int(t.get("drops_in_state", 0)), float(t.get("hours_in_state", 0.0))
        params = [
            FittedParam(
                "threshold_dbfs",
                LOUD_DBFS,
                f"the level the diagnosis judges silence at (not estimated: {LOUD_DBFS:g} dBFS)",
            ),
            FittedParam(
                "after",
                _num(t["threshold_s"]),
                f"estimate {_s(t['threshold_s'])} of low-energy audio ({_ci(lo, hi)}); {data}",
            ),
        ]
        if d > 0 and h > 0:
            rate_lo, rate_hi = _poisson_ci(d, h * 3600)
            params.append(
                FittedParam(
                    "mean",
                    _num(h * 3600 / d),
                    f"mean time to drop past it: {h * 3600:.0f} s of streaks past it / {d} "
                    f"drops = {_s(h * 3600 / d)} "
                    f"({_ci(1 / rate_hi, 1 / rate_lo if rate_lo else math.inf)}); {data}",
                )
            )
        out.append(FittedPolicy("silence_hazard", tuple(params), why("silence_hazard")))
    if ok("concurrency_cap"):
        t = v["concurrency_cap"]
        lo, hi = t["threshold_ci"]
        refused = "drops_in_state" not in t  # judged on refused handshakes, not on drops
        out.append(
            FittedPolicy(
                "concurrency_cap",
                (
                    FittedParam(
                        "max_sessions",
                        int(round(t["max_sessions"])),
                        f"estimate {t['max_sessions']:.0f} sessions "
                        f"({_ci(lo, hi, ' sessions')})"
                        + _in_state(t, "that many sessions open")
                        + f"; {data}",
                    ),
                    FittedParam("per", "key", "the fake server counts a variant's sessions"),
                    FittedParam(
                        "over",
                        "reject" if refused else "drop_oldest",
                        "handshakes were refused once the cap was reached"
                        if refused
                        else "open sessions dropped when one more opened",
                    ),
                ),
                why("concurrency_cap"),
            )
        )
    if ok("max_duration"):
        t = v["max_duration"]
        lo, hi = t["threshold_ci"]
        out.append(
            FittedPolicy(
                "max_duration",
                (
                    FittedParam(
                        "after",
                        _num(t["threshold_s"]),
                        f"estimate {_s(t['threshold_s'])} ({_ci(lo, hi)})"
                        + _in_state(t, "a session age")
                        + f"; {data}",
                    ),
                ),
                why("max_duration") + " A fixed limit: the age hazard is not fitted.",
            )
        )
    hs = v.get("handshake_faults", {})
    cap = next((p for p in out if p.policy == "concurrency_cap"), None)
    capped = cap is not None and cap.table()["over"] == "reject"
    if hs.get("verdict") == "supported" and not capped and hs.get("attempts"):
        share = hs["failed"] / hs["attempts"]
        lo, hi = hs.get("share_ci", (math.nan, math.nan))
        params = [
            FittedParam(
                "share",
                _num(share),
                f"estimate {share:.3f} (95 % CI {lo:.3f} to {hi:.3f}): {hs['failed']} of "
                f"{hs['attempts']} handshakes failed; {data}",
            )
        ]
        if statuses:  # a 401 stops a worker, a 429 backs it off: keep what the service said
            params.append(
                FittedParam("statuses", statuses, "the statuses the failed handshakes got")
            )
        out.append(FittedPolicy("handshake_faults", tuple(params), why("handshake_faults")))
    return out


def _age_policy(
    conns: pd.DataFrame,
    explained: set[str],
    v: dict[str, dict[str, Any]],
    data: str,
    notes: list[str],
) -> FittedPolicy | None:
    """The age hazard of the drops no covariate theory explains: a Weibull when wear-out (or an
    early-death hazard) is clear, a constant rate when the shape's CI holds 1, else nothing."""
    if v.get("max_duration", {}).get("verdict") == "supported":
        return None
    life = conns["life"].to_numpy(float)
    left = conns["dropped"].to_numpy(bool) & ~conns["connection"].isin(explained).to_numpy()
    n_left, hours = int(left.sum()), float(life.sum()) / 3600
    if n_left == 0:
        return None
    fit = _weibull(life, left) if n_left >= 3 else None
    shape = (
        f"Weibull shape {fit['shape']:.2f} (95 % CI {fit['shape_lo']:.2f} to {fit['shape_hi']:.2f})"
        if fit
        else "no Weibull fit"
    )
    what = (
        f"{n_left} drops no covariate theory explains (the {int(conns['dropped'].sum()) - n_left}"
        f" it explains are censored at their time), {hours:.2f} connection-hours"
    )
    age = v.get("session_age", {}).get("verdict")
    rising = fit is not None and fit["shape_lo"] > 1.0
    falling = fit is not None and fit["shape_hi"] < 1.0 and n_left >= MIN_DROPS
    if fit is not None and not MIN_SHAPE <= fit["shape"] <= MAX_SHAPE:
        notes.append(
            f"{n_left} unexplained drop(s) left out: {shape} is outside what the fake server's "
            f"session_age takes ({MIN_SHAPE:g} to {MAX_SHAPE:g}): lifetimes this alike are a "
            "fixed limit the diagnosis did not find, or too few"
        )
        return None
    if fit is not None and (age == "supported" or rising or falling):
        why = (
            f"session_age {age or 'not judged'}: {shape} "
            + ("rises: sessions wear out" if fit["shape"] > 1 else "falls: early deaths")
            + f", so a Weibull hazard fitted (lifelines WeibullFitter) to {what}."
        )
        return FittedPolicy(
            "session_age",
            (
                FittedParam("distribution", "weibull", ""),
                FittedParam(
                    "shape",
                    _num(fit["shape"]),
                    f"estimate {fit['shape']:.3f} (95 % CI {fit['shape_lo']:.3f} to "
                    f"{fit['shape_hi']:.3f}) from {n_left} drops in {hours:.2f} "
                    f"connection-hours; {data}",
                ),
                FittedParam(
                    "scale",
                    _num(fit["scale"]),
                    f"estimate {_s(fit['scale'])} ({_ci(fit['scale_lo'], fit['scale_hi'])}) "
                    f"from {n_left} drops in {hours:.2f} connection-hours; {data}",
                ),
            ),
            why,
        )
    flat = fit is not None and fit["shape_lo"] <= 1.0 <= fit["shape_hi"]
    if v.get("random_loss", {}).get("verdict") == "supported" or (flat and n_left >= MIN_LEFT):
        rate = n_left / hours
        lo, hi = _poisson_ci(n_left, hours)
        why = (
            f"random_loss {v.get('random_loss', {}).get('verdict', 'not judged')}: {shape} "
            f"holds 1, a flat hazard, so a constant rate fitted to {what}."
        )
        return FittedPolicy(
            "random_loss",
            (
                FittedParam(
                    "per_hour",
                    _num(rate),
                    f"estimate {rate:.3f} drops per connection-hour (95 % CI {lo:.3f} to "
                    f"{hi:.3f}, exact Poisson): {n_left} drops in {hours:.2f} "
                    f"connection-hours; {data}",
                ),
            ),
            why,
        )
    notes.append(
        f"{n_left} unexplained drop(s) left out: {shape}; too few to fit an age hazard"
        if fit is None or n_left < MIN_LEFT
        else f"{n_left} unexplained drop(s) left out: {shape} is neither clearly rising nor "
        "clearly flat"
    )
    return None


def fit_profile(
    connections: pd.DataFrame,
    verdicts: Mapping[str, Iterable[Verdict | Mapping[str, Any]]],
    explained: Mapping[str, set[str]] | None = None,
    runs: Iterable[str] = (),
    variant: str | None = None,
) -> list[VariantFit]:
    """Each variant's (or only `variant`'s) fitted faults. `verdicts`: diagnose_variants'
    answer (or summary.json's `diagnosis`); `explained`: explained_drops' answer (None: no drop
    explained, e.g. no theory supported)."""
    names = [variant] if variant is not None else list(verdicts)
    run_text = "run " + ", ".join(runs) if runs else "the run"
    out = []
    for name in names:
        v = _as_dicts(verdicts[name])
        conns = _opened(connections, name)
        drops, hours = int(conns["dropped"].sum()), float(conns["life"].sum()) / 3600
        data = f"{drops} drops in {hours:.2f} connection-hours in all, {run_text}"
        notes: list[str] = []
        policies = _covariate_policies(v, data, _refusals(connections, name))
        age = _age_policy(conns, (explained or {}).get(name, set()), v, data, notes)
        if age is not None:
            policies.append(age)
        if not policies:
            notes.append(
                "no fault fitted: no theory is supported" + (" and no drops" if drops == 0 else "")
            )
        out.append(
            VariantFit(
                name,
                tuple(policies),
                drops,
                hours,
                tuple(notes),
                float(conns["life"].max()) if len(conns) else 0.0,
            )
        )
    return out


def profile_dict(fits: list[VariantFit]) -> dict[str, Any]:
    """The profile as `load_server_config` reads it: one variant's faults as `[faults.*]`,
    several as `[variants.NAME.*]`; `[server] max_session` lifted when a connection outlived
    the fake's 60 min limit and no fixed limit was found."""
    doc: dict[str, Any] = {}
    if any(f.oldest_s >= SERVER_LIMIT_S and "max_duration" not in f.faults() for f in fits):
        doc["server"] = {"max_session": NO_LIMIT_S}
    if len(fits) == 1:
        doc["faults"] = fits[0].faults()
    else:
        doc["variants"] = {f.variant: f.faults() for f in fits}
    return doc


def _value(value: float | int | str | list[int]) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value(x) for x in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _key(name: str) -> str:
    plain = name and all(c.isalnum() or c in "-_" for c in name)
    return name if plain else json.dumps(name)


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 96, break_on_hyphens=False)]


def profile_toml(fits: list[VariantFit], source: FitSource) -> str:
    """The profile as commented TOML: a header (fitted, from which runs, when, by which rtsoak),
    then per variant each table with why, and each parameter with its estimate, CI and data."""
    doc = profile_dict(fits)
    lines = [
        f"# rtsoak fault profile, fitted by `rtsoak fit` (rtsoak {source.version}) at "
        f"{source.fitted_at}",
        *_comment("from run(s): " + ", ".join(source.runs)),
        "# Each parameter: its estimate, 95 % CI and the data it came from (drops,",
        "# connection-hours, run). Load it with `rtsoak serve --faults THIS_FILE`, or put its",
        "# tables into a scenario. Times are scenario seconds.",
        "",
    ]
    if "server" in doc:
        oldest = max(f.oldest_s for f in fits)
        lines += _comment(
            f"a connection lived {_s(oldest)} and no fixed session limit was found: the fake "
            "server's default 60 min limit is lifted"
        )
        lines += ["[server]", f"max_session = {_value(doc['server']['max_session'])}", ""]
    for fit in fits:
        prefix = "faults" if len(fits) == 1 else f"variants.{_key(fit.variant)}"
        lines += _comment(
            f"variant {fit.variant}: {fit.drops} drops in {fit.hours:.2f} connection-hours"
        )
        for note in fit.notes:
            lines += _comment(note)
        if len(fits) > 1 and not fit.policies:
            lines += [f"[{prefix}]"]
        lines.append("")
        for policy in fit.policies:
            lines += _comment(policy.why)
            lines.append(f"[{prefix}.{policy.policy}]")
            for p in policy.params:
                if p.note:
                    lines += _comment(p.note)
                lines.append(f"{p.key} = {_value(p.value)}")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
