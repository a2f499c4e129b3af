"""`rtsoak recommend --verify`: soak the current and the recommended strategy side by side
against the run's fitted fault profile, and say whether the recommendation's prediction held
(docs/diagnosis.md, "Recommend").

This module builds the verification scenario (a copy of the run's, two variants, the fitted
faults) and compares the two variants of the run it gave; running it is the caller's, through
the same code path as `rtsoak run` (the report layer may not import harness.run).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.config.scenario import Scenario, scenario_from_doc
from harness.core.spec import ConfigError
from harness.log.frames import ReportFrames, load_for_report
from harness.log.rundir import RunDir
from harness.report.analysis import observed_connections, poisson_rate_ci

__all__ = [
    "WORKERS",
    "compare",
    "verification_hours",
    "describe",
    "fitted_faults",
    "scenario_toml",
    "verification_doc",
    "verify_variant",
]

# the verification soak: per variant, this many workers at this compression, for as long as
# telling the predicted difference in lost utterances takes (verification_hours), between 8
# and 32 connection-hours a variant: 60 s to 4 min of wall time on the embedded fake server
WORKERS = 8
MIN_HOURS, MAX_HOURS = 8.0, 32.0
TIME_SCALE = 60
POWER = 0.95  # of the verification, to tell the predicted difference at the 5 % level
CURRENT, RECOMMENDED = "current", "recommended"
Z95 = float(stats.norm.ppf(0.975))

# runs a scenario file into a new directory under a base and returns the run directory
Runner = Callable[[Path, Path], Path]


def fitted_faults(frames: ReportFrames, runs: list[str], variant: str) -> dict[str, Any]:
    """The fault profile `rtsoak fit --variant VARIANT` would write, as a dict: {"faults":
    {...}} and, when a connection outlived the fake's limit, {"server": {...}}."""
    from harness.report.diagnosis import diagnose_variants
    from harness.report.model import scales, timing_tolerance
    from harness.report.profile import explained_drops, fit_profile, profile_dict

    tolerance = timing_tolerance(frames, scales(frames))
    verdicts = diagnose_variants(frames.connections, frames.sends, tolerance)
    explained = explained_drops(frames.connections, frames.sends, tolerance, verdicts)
    fits = fit_profile(frames.connections, verdicts, explained, runs, variant)
    return profile_dict(fits)


def _run_scenario(run_dir: Path) -> Scenario | None:
    path = RunDir(run_dir).scenario
    if not path.is_file():
        return None
    kept = json.loads(path.read_text())
    try:
        return scenario_from_doc(kept["doc"], kept.get("source", str(path)))
    except (ConfigError, KeyError, TypeError):
        return None


def verification_hours(lost_per_hour: tuple[float, float] | None) -> float:
    """Connection-hours per variant that tell the predicted lost utterances per hour (current,
    recommended) apart with POWER at the 5 % level (two Poisson rates, normal approximation),
    between MIN_HOURS and MAX_HOURS; MIN_HOURS without a predicted difference."""
    if lost_per_hour is None:
        return MIN_HOURS
    current, recommended = lost_per_hour
    if not (math.isfinite(current) and math.isfinite(recommended)) or current <= recommended:
        return MIN_HOURS
    z = Z95 + float(stats.norm.ppf(POWER))
    hours = z**2 * (current + recommended) / (current - recommended) ** 2
    return float(min(MAX_HOURS, max(MIN_HOURS, hours)))


def predicted_lost_per_hour(
    dist: Any, current_s: float | None, rotate_at_s: float, lost_per_drop: float
) -> tuple[float, float]:
    """Lost utterances per connection-hour the fitted lifetimes predict as the run rotates
    and as recommended: drops per hour (rotation.drops_per_hour) times the run's lost
    utterances per drop (a make-before-break rotation loses none)."""
    from harness.report.rotation import drops_per_hour

    return (
        float(drops_per_hour(dist, current_s)) * lost_per_drop,
        float(drops_per_hour(dist, rotate_at_s)) * lost_per_drop,
    )


def lost_per_drop(frames: ReportFrames, variant: str) -> float:
    """The run's lost utterances (final status `lost`) per drop, in `variant`."""
    conns = frames.connections
    drops = int(conns.loc[conns["variant"].astype(str) == variant, "dropped"].sum())
    utts = frames.utterances
    lost = int(
        (
            (utts["variant"].astype(str) == variant)
            & utts["final"].astype(bool)
            & (utts["status"].astype(str) == "lost")
        ).sum()
    )
    return lost / drops if drops else 0.0


def verification_doc(
    scenario: Scenario,
    variant: str,
    profile: dict[str, Any],
    rotate_at_s: float,
    hours: float = MIN_HOURS,
) -> dict[str, Any]:
    """The scenario doc: `variant`'s settings as the run had them, its faults replaced by the
    fitted `profile`, run as two variants of WORKERS workers at TIME_SCALE x for `hours`
    connection-hours each (in whole quarter-hours of scenario time): `current` (its reconnect
    as it was) and `recommended` (make-before-break rotation every `rotate_at_s` scenario
    seconds)."""
    minutes = 15 * math.ceil(hours * 60 / WORKERS / 15)
    mine = next((v for v in scenario.variants if v.variant == variant), None)
    base = copy.deepcopy((mine or scenario).doc)
    for key in ("variant", "matrix", "faults"):
        base.pop(key, None)
    run = base.setdefault("run", {})
    run.update(
        name=f"verify-{_slug(variant)}",
        workers=WORKERS,
        duration=f"{minutes}m",
        time_scale=TIME_SCALE,
        target="fake",
    )
    # the audio as the run found it, wherever the verification scenario is written
    base.setdefault("audio", {})["dir"] = str((mine or scenario).audio_dir().resolve())
    base["faults"] = copy.deepcopy(profile.get("faults") or {})
    if "server" in profile:
        base.setdefault("server", {}).update(profile["server"])
    rotate = {
        "strategy": "on-drop",
        "rotate_every": f"{max(1.0, round(rotate_at_s)):.0f}s",
        "rotate_jitter": "0s",
        "make_before_break": True,
    }
    base["variant"] = [{"name": CURRENT}, {"name": RECOMMENDED, "reconnect": rotate}]
    scenario_from_doc(base, "verification scenario")  # refuses what `run` would
    return base


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(x) for x in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _key(name: str) -> str:
    plain = name and all(c.isalnum() or c in "-_" for c in name)
    return name if plain else json.dumps(name)


def _tables(doc: dict[str, Any], prefix: str, lines: list[str]) -> None:
    plain = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in doc.items() if isinstance(v, dict)}
    if plain or (prefix and not nested):
        lines.append(f"[{prefix}]")
        lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in plain.items()]
        lines.append("")
    for k, v in nested.items():
        _tables(v, f"{prefix}.{_key(k)}" if prefix else _key(k), lines)


def scenario_toml(doc: dict[str, Any], variant: str, run_dirs: list[Path]) -> str:
    """The verification scenario as TOML, with a header saying what it is and what a real
    target needs."""
    lines = [
        f"# rtsoak verification scenario (`rtsoak recommend --verify`), variant {variant!r} of "
        + ", ".join(str(r) for r in run_dirs),
        "# `current` keeps the run's reconnect settings; `recommended` rotates make-before-break",
        "# at the recommended age. The [faults] tables are the run's FITTED profile and act on",
        "# the embedded fake server only. On a real target REMOVE the [faults] section, set",
        "# run.time_scale = 1 and give caps, e.g.:",
        "#   rtsoak run THIS_FILE --target azure --max-minutes 60 --max-audio-hours 2",
        "",
    ]
    body = {k: v for k, v in doc.items() if k != "variant"}
    _tables(body, "", lines)
    for block in doc.get("variant", []):
        lines.append("[[variant]]")
        for k, v in block.items():
            if isinstance(v, dict):
                lines += [f"{_key(k)}.{_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
            else:
                lines.append(f"{_key(k)} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _rate(count: int, hours: float) -> dict[str, Any]:
    lo, hi = poisson_rate_ci(count, hours)
    return {
        "count": count,
        "hours": hours,
        "per_hour": count / hours if hours > 0 else float("nan"),
        "ci": [lo, hi],
    }


def _difference(cur: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """recommended - current per hour: a normal approximation of the difference of two Poisson
    rates (Wald), and the exact conditional test's p (the recommended count given the total is
    binomial with p = its share of the hours when the rates are equal)."""
    a, ea, b, eb = cur["count"], cur["hours"], rec["count"], rec["hours"]
    if ea <= 0 or eb <= 0:
        return {"per_hour": float("nan"), "ci": [float("nan"), float("nan")], "p_exact": 1.0}
    diff = b / eb - a / ea
    se = math.sqrt(b / eb**2 + a / ea**2)
    p = stats.binomtest(b, a + b, eb / (ea + eb)).pvalue if a + b else 1.0
    return {
        "per_hour": diff,
        "ci": [diff - Z95 * se, diff + Z95 * se],
        "method": "normal approximation (Wald) of the difference of two Poisson rates",
        "p_exact": float(p),
    }


def _verdict(diff: dict[str, Any], expect_fewer: bool) -> bool | str:
    """Rotation recommended: held when the CI of recommended - current is below 0, failed when
    above. Rotation will not help: held when the CI holds 0 (or rotating is worse), failed when
    rotating is clearly better."""
    lo, hi = diff["ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "can't tell"
    if expect_fewer:
        return True if hi < 0 else False if lo > 0 else "can't tell"
    return hi >= 0


def compare(connections: pd.DataFrame, utterances: pd.DataFrame, expect_fewer: bool) -> dict:
    """The two variants of a verification run: log-rank, drops and lost utterances per
    connection-hour (exact Garwood CIs), the differences recommended - current with CIs, and
    whether the prediction held."""
    from lifelines.statistics import logrank_test

    conns = observed_connections(connections)
    cur = conns[conns["variant"].astype(str) == CURRENT]
    rec = conns[conns["variant"].astype(str) == RECOMMENDED]
    hours = {
        name: float(g["lifetime"].sum()) / 3600 for name, g in ((CURRENT, cur), (RECOMMENDED, rec))
    }
    utts = utterances[
        utterances["final"].astype(bool) & (utterances["status"].astype(str) == "lost")
    ]
    lost = {name: int((utts["variant"].astype(str) == name).sum()) for name in hours}
    p = float("nan")
    if len(cur) and len(rec):
        p = float(
            logrank_test(cur["lifetime"], rec["lifetime"], cur["dropped"], rec["dropped"]).p_value
        )
    drops = {
        CURRENT: _rate(int(cur["dropped"].sum()), hours[CURRENT]),
        RECOMMENDED: _rate(int(rec["dropped"].sum()), hours[RECOMMENDED]),
    }
    lost_rates = {name: _rate(lost[name], hours[name]) for name in hours}
    drop_diff = _difference(drops[CURRENT], drops[RECOMMENDED])
    lost_diff = _difference(lost_rates[CURRENT], lost_rates[RECOMMENDED])
    return {
        "logrank_p": p,
        "drops_per_hour": drops,
        "drops_difference": drop_diff,
        "lost_per_hour": lost_rates,
        "lost_difference": lost_diff,
        "held": _verdict(drop_diff, expect_fewer),
        "lost_held": _verdict(lost_diff, expect_fewer),
    }


def verify_variant(
    frames: ReportFrames,
    run_dirs: list[Path],
    variant: str,
    rotate_at_s: float | None,
    out: Path,
    run: Runner,
    hours: float = MIN_HOURS,
) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """Write, run and compare `variant`'s verification scenario (`hours`: connection-hours a
    variant): the comparison, and the verification run's connections (None: the run kept no
    scenario, e.g. an imported log). `rotate_at_s` None (rotation will not help): the
    `recommended` variant rotates at the variant's median lifetime, and the prediction is that
    it saves nothing."""
    scenario = _run_scenario(run_dirs[0])
    if scenario is None:
        return None
    expect_fewer = rotate_at_s is not None
    if rotate_at_s is None:
        conns = observed_connections(frames.connections)
        lives = conns.loc[conns["variant"].astype(str) == variant, "lifetime"].to_numpy(float)
        if not len(lives):
            return None
        rotate_at_s = float(np.median(lives))
    profile = fitted_faults(frames, list(frames.manifests), variant)
    doc = verification_doc(scenario, variant, profile, rotate_at_s, hours)
    path = out / f"verify-{_slug(variant)}.toml"
    path.write_text(scenario_toml(doc, variant, run_dirs), encoding="utf-8")
    run_dir = run(path, out / "verify-runs")
    with load_for_report([run_dir]) as done:
        result = compare(done.connections, done.utterances, expect_fewer)
    return {
        "scenario": str(path),
        "run": str(run_dir),
        "rotate_at_s": rotate_at_s,
        "duration_s": float(doc["run"]["duration"][:-1]) * 60,
        "workers": WORKERS,
        "prediction": "fewer drops per hour" if expect_fewer else "no fewer drops per hour",
        **result,
    }, done.connections


def describe(verify: dict[str, Any]) -> list[str]:
    """The comparison in a few lines, for the terminal."""
    d, lost = verify["drops_per_hour"], verify["lost_per_hour"]

    def rate(r: dict[str, Any]) -> str:
        return f"{r['per_hour']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] ({r['count']})"

    def diff(x: dict[str, Any]) -> str:
        return f"{x['per_hour']:+.2f} (95 % CI {x['ci'][0]:+.2f} to {x['ci'][1]:+.2f})"

    held = verify["held"]
    said = (
        {True: "held", False: "did not hold"}.get(held, "can't tell")
        if isinstance(held, bool)
        else held
    )
    return [
        f"Verify: current vs recommended (rotate every {verify['rotate_at_s'] / 60:.1f} min, "
        f"make-before-break) on the fitted faults: {verify['scenario']}",
        f"  drops per connection-hour: current {rate(d['current'])}, recommended "
        f"{rate(d['recommended'])}; difference {diff(verify['drops_difference'])}; "
        f"log-rank p {verify['logrank_p']:.3g}",
        f"  lost utterances per connection-hour: current {rate(lost['current'])}, recommended "
        f"{rate(lost['recommended'])}; difference {diff(verify['lost_difference'])}",
        f"  prediction ({verify['prediction']}): {said}",
    ]
