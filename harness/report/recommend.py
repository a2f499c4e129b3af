"""What to change, from the blind diagnosis and what the run measured: a planned rotation age
by the age-replacement policy (harness.report.rotation), a keepalive when an idle timeout is
supported, pacing when a rate or burst theory is. Each with its expected effect against the
run's own setting (docs/diagnosis.md, "Recommend").

Costs are in seconds of lost service, as the run measured them unless the user states them:
- a drop costs its recovery, from the drop to the first transcript on a later connection of
  the same worker (reconnect, configure, the lost utterance sent again);
- a planned rotation costs its handshake: made before the old connection is closed, it loses
  no audio, and the new session's handshake and configuration are its only price.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config.scenario import scenario_from_doc
from harness.core.spec import ConfigError
from harness.log.frames import ReportFrames, load_for_report
from harness.log.rundir import RunDir, write_json
from harness.report import rotation
from harness.report.analysis import recovery

__all__ = ["Advice", "Costs", "measured_costs", "recommend", "recommend_runs"]

# below this many recoveries or handshakes the run's median cost is a guess
MIN_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Costs:
    drop_s: float
    rotate_s: float
    source: str  # how they were found, in words


@dataclass(slots=True)
class Advice:
    variant: str
    lines: list[str] = field(default_factory=list)  # what to do, one sentence each
    model: str = ""  # the lifetime model rotation was judged on
    rotation: dict[str, Any] = field(default_factory=dict)
    effect: rotation.RotationEffect | None = None
    recommendation: rotation.Recommendation | None = None
    dist: rotation.Lifetimes | None = None
    verify: dict[str, Any] | None = None  # `--verify`: harness.report.verify's comparison

    def as_dict(self) -> dict[str, Any]:
        out = {
            "variant": self.variant,
            "advice": self.lines,
            "model": self.model,
            "rotation": self.rotation,
        }
        if self.verify is not None:
            out["verify"] = self.verify
        return out


def measured_costs(
    connections: pd.DataFrame,
    utterances: pd.DataFrame,
    variant: str,
    drop_s: float | None = None,
    rotate_s: float | None = None,
) -> Costs:
    """The variant's costs: those stated, else the run's medians (recovery per drop, handshake
    latency), else a conservative default said as such."""
    mine = connections[connections["variant"].astype(str) == variant]
    said = []
    if drop_s is None:
        rec = recovery(mine, utterances[utterances["variant"].astype(str) == variant])
        times = rec["recovery"].dropna().to_numpy(float)
        if len(times) >= MIN_SAMPLES:
            drop_s = float(np.median(times))
            said.append(f"a drop {drop_s:.1f} s (median recovery of {len(times)} drops)")
        else:
            drop_s = 30.0
            said.append("a drop 30 s (too few recoveries measured: a guess, state --cost-drop)")
    else:
        said.append(f"a drop {drop_s:g} s (stated)")
    if rotate_s is None:
        latency = mine["handshake_latency"].dropna().to_numpy(float)
        if len(latency) >= MIN_SAMPLES:
            rotate_s = float(np.median(latency))
            said.append(f"a rotation {rotate_s:.2f} s (median handshake of {len(latency)})")
        else:
            rotate_s = 1.0
            said.append("a rotation 1 s (too few handshakes measured: state --cost-rotate)")
    else:
        said.append(f"a rotation {rotate_s:g} s (stated)")
    return Costs(float(drop_s), float(rotate_s), "; ".join(said))


def _lifetimes(verdicts: dict[str, dict[str, Any]]) -> tuple[Any, str]:
    """The age model the diagnosis supports: a fixed limit, a Weibull (with its estimate for
    the CIs), or constant hazard; None when it cannot tell."""
    limit = verdicts.get("max_duration", {})
    if limit.get("verdict") == "supported":
        return rotation.FixedLimit(float(limit["threshold_s"])), "a fixed session limit"
    age = verdicts.get("session_age", {})
    if age.get("weibull_shape") is not None and age.get("weibull_cov") is not None:
        estimate = rotation.WeibullEstimate.from_covariance(
            age["weibull_shape"], age["weibull_scale_s"], np.asarray(age["weibull_cov"], float)
        )
        shape_lo, shape_hi = age["weibull_shape_ci"]
        if age.get("verdict") == "supported":
            why = f"Weibull, shape {age['weibull_shape']:.2f} [{shape_lo:.2f}, {shape_hi:.2f}]"
            return estimate, why
        loss = verdicts.get("random_loss", {})
        if loss.get("verdict") == "supported" and loss.get("drops_per_hour"):
            # flat, as the diagnosis found: a constant hazard, not the shape's point estimate
            flat = rotation.exponential(3600.0 / loss["drops_per_hour"])
            return flat, f"constant hazard (Weibull shape CI [{shape_lo:.2f}, {shape_hi:.2f}])"
        return estimate, f"Weibull shape {age['weibull_shape']:.2f}, not shown to rise"
    return None, "no age model: too few drops no other theory explains"


def recommend(
    diagnosis: dict[str, list[dict[str, Any]]],
    connections: pd.DataFrame,
    utterances: pd.DataFrame,
    current_rotation: dict[str, float | None],
    drop_s: float | None = None,
    rotate_s: float | None = None,
) -> list[Advice]:
    """Per variant of the summary's `diagnosis`: what to change and what it should give.
    `current_rotation`: each variant's rotate_every in seconds (None: never rotates)."""
    out = []
    for variant, verdict_list in diagnosis.items():
        verdicts = {v["hypothesis"]: v for v in verdict_list}
        advice = Advice(variant)
        costs = measured_costs(connections, utterances, variant, drop_s, rotate_s)
        current = current_rotation.get(variant)
        model, advice.model = _lifetimes(verdicts)
        causes = [
            h
            for h, v in verdicts.items()
            if v.get("verdict") == "supported" and h not in ("session_age", "random_loss")
        ]
        if model is None and causes:
            advice.lines.append(
                f"Rotation: not the fix: the drops come from {', '.join(causes)}; fix that "
                "first (below), then measure again."
            )
        elif model is None:
            advice.lines.append(f"Rotation: can't tell yet ({advice.model}).")
        else:
            _rotation(advice, model, costs, current)
        idle = verdicts.get("idle_timeout", {})
        if idle.get("verdict") == "supported":
            lo = idle["threshold_ci"][0]
            advice.lines.append(
                f"Keepalive: the service drops a connection after {idle['threshold_s']:.1f} s "
                f"without a frame (at least {lo:.1f} s): send a frame at least every "
                f"{lo / 2:.1f} s. WebSocket pings may not count; test with [keepalive] "
                "against a variant without."
            )
        for theory in ("rate", "micro_burst"):
            if verdicts.get(theory, {}).get("verdict") == "supported":
                advice.lines.append(
                    f"Pacing: {theory} is supported ({verdicts[theory]['evidence']}) Pace "
                    "appends on a steady clock at real time (20–50 ms chunks) and compare "
                    "pacing strategies."
                )
        for theory, verdict in verdicts.items():
            if verdict.get("verdict") == "supported" and theory in (
                "buffer_pressure",
                "silence_hazard",
                "concurrency_cap",
            ):
                advice.lines.append(f"{theory}: {verdict.get('next_step', '')}.")
        out.append(advice)
    return out


def _rotation(advice: Advice, model: Any, costs: Costs, current: float | None) -> None:
    dist = (
        rotation.Weibull(model.shape, model.scale)
        if isinstance(model, rotation.WeibullEstimate)
        else model
    )
    best = rotation.optimal_rotation(dist, costs.drop_s, costs.rotate_s)
    advice.dist, advice.recommendation = dist, best
    where = "never" if current is None else f"every {current / 60:.1f} min"
    info: dict[str, Any] = {
        "model": advice.model,
        "cost_drop_s": costs.drop_s,
        "cost_rotate_s": costs.rotate_s,
        "costs": costs.source,
        "current_s": current,
        "recommended_s": best.rotate_at,
        "reason": best.reason,
    }
    if isinstance(model, rotation.WeibullEstimate):
        effect = rotation.rotation_effect(model, costs.drop_s, costs.rotate_s, current)
        advice.effect = effect
        rec, cur = effect.recommended, effect.current
        info.update(
            drops_per_hour=_estimate(rec.drops_per_hour),
            drops_per_hour_current=_estimate(cur.drops_per_hour),
            drops_saved_per_hour=_estimate(effect.drops_saved_per_hour),
            cost_saved_s_per_hour=_estimate(effect.cost_saved_per_hour),
        )
        saved = effect.drops_saved_per_hour
        gain = (
            f" Against rotating {where}: {saved.value:+.2f} drops per connection-hour saved "
            f"(95 % CI {saved.low:+.2f} to {saved.high:+.2f})."
        )
    else:
        gain = ""
    if best.rotate_at is None:
        advice.lines.append(f"Rotation: {best.reason}{gain}")
    else:
        advice.lines.append(
            f"Rotation: rotate every {best.rotate_at / 60:.1f} min (make-before-break), now "
            f"{where}; costs {costs.source}. {best.reason}{gain}"
        )
    advice.rotation = info


def _estimate(e: rotation.Estimate) -> list[float]:
    return [e.value, e.low, e.high] if math.isfinite(e.value) else [e.value]


def current_rotation(run_dirs: list[Path]) -> dict[str, float | None]:
    """Each variant's planned rotation age in seconds, from the run's scenario (None: it never
    rotates, or the run has no scenario, as an imported log)."""
    out: dict[str, float | None] = {}
    for run_dir in run_dirs:
        path = RunDir(run_dir).scenario
        if not path.is_file():
            continue
        kept = json.loads(path.read_text())
        try:
            scenario = scenario_from_doc(kept["doc"], kept.get("source", str(path)))
        except (ConfigError, KeyError, TypeError):
            continue
        for v in scenario.variants or (scenario,):
            every = v.reconnect.rotate_every if v.reconnect.strategy == "on-drop" else 0.0
            out[v.variant or v.run.name] = every or None
    return out


def recommend_runs(
    run_dirs: list[Path],
    out: Path,
    variant: str | None = None,
    drop_s: float | None = None,
    rotate_s: float | None = None,
    run: Callable[[Path, Path], Path] | None = None,
    verify_hours: float | None = None,
) -> list[Advice]:
    """`rtsoak recommend`: the advice for these runs, written to OUT/recommend.json with a
    chart of the expected cost per hour against the rotation age per variant. With `run`
    (`--verify`: it runs a scenario file into a new run directory under a base, as `rtsoak
    run` does), each variant with a rotation verdict is soaked as it is against as
    recommended, on the fitted faults (harness.report.verify), for `verify_hours`
    connection-hours a variant (None: as many as telling the predicted difference takes)."""
    with load_for_report(run_dirs) as frames:
        return _advise(frames, run_dirs, out, variant, drop_s, rotate_s, run, verify_hours)


def _advise(
    frames: ReportFrames,
    run_dirs: list[Path],
    out: Path,
    variant: str | None,
    drop_s: float | None,
    rotate_s: float | None,
    run: Callable[[Path, Path], Path] | None,
    verify_hours: float | None,
) -> list[Advice]:
    from harness.report.diagnosis import diagnose_variants
    from harness.report.model import scales, timing_tolerance

    # the diagnosis alone: the report's other models (Cox, log-rank, ...) are not needed here
    tolerance = timing_tolerance(frames, scales(frames))
    verdicts = diagnose_variants(frames.connections, frames.sends, tolerance)
    diagnosis = {v: [x.as_dict() for x in vs] for v, vs in verdicts.items()}
    if variant is not None:
        if variant not in diagnosis:
            raise KeyError(variant)
        diagnosis = {variant: diagnosis[variant]}
    advice = recommend(
        diagnosis,
        frames.connections,
        frames.utterances,
        current_rotation(run_dirs),
        drop_s,
        rotate_s,
    )
    out.mkdir(parents=True, exist_ok=True)
    for a in advice:
        if a.dist is not None and a.recommendation is not None:
            a.rotation["chart"] = _chart(a, out)
        if run is not None and a.recommendation is not None:
            from harness.report.verify import verify_variant

            verified = verify_variant(
                frames,
                run_dirs,
                a.variant,
                a.recommendation.rotate_at,
                out,
                run,
                verify_hours or _verify_hours(a, frames),
            )
            if verified is not None:
                a.verify, measured = verified
                a.verify["chart"] = _verify_chart(a, measured, out)
    write_json(out / "recommend.json", {"variants": [a.as_dict() for a in advice]})
    return advice


def _verify_hours(advice: Advice, frames: ReportFrames) -> float:
    """Connection-hours a variant for the verification: what telling the predicted difference
    in lost utterances takes (verify.verification_hours)."""
    from harness.report.verify import (
        lost_per_drop,
        predicted_lost_per_hour,
        verification_hours,
    )

    rotate_at = advice.recommendation.rotate_at if advice.recommendation else None
    if advice.dist is None or rotate_at is None:
        return verification_hours(None)
    per_drop = lost_per_drop(frames, advice.variant)
    current = advice.rotation.get("current_s")
    return verification_hours(predicted_lost_per_hour(advice.dist, current, rotate_at, per_drop))


def _chart(advice: Advice, out: Path) -> str:
    """Expected cost per connection-hour against the rotation age, optimum and current
    setting marked."""
    from harness.report.charts import plt

    assert advice.dist is not None and advice.recommendation is not None
    info = advice.rotation
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rotation.cost_chart(
        ax,
        advice.dist,
        info["cost_drop_s"],
        info["cost_rotate_s"],
        advice.recommendation,
        info["current_s"],
    )
    ax.set_title(f"{advice.variant}: expected cost per connection-hour by rotation age")
    name = "rotation-" + "".join(ch if ch.isalnum() else "-" for ch in advice.variant) + ".png"
    fig.savefig(out / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def _verify_chart(advice: Advice, connections: pd.DataFrame, out: Path) -> str:
    """The verification soak's survival as measured (Kaplan-Meier, 95 % band) against the
    fitted model's prediction, each setting up to the age it rotates at."""
    from lifelines import KaplanMeierFitter

    from harness.report.analysis import observed_connections
    from harness.report.charts import plt

    assert advice.verify is not None and advice.dist is not None
    conns = observed_connections(connections)
    ages = {
        "current": advice.rotation.get("current_s"),
        "recommended": advice.verify["rotate_at_s"],
    }
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, group) in enumerate(conns.groupby(conns["variant"].astype(str))):
        color = f"C{i}"
        kmf = KaplanMeierFitter().fit(
            group["lifetime"] / 60, group["dropped"].astype(bool), label=f"{name}: measured"
        )
        kmf.plot_survival_function(ax=ax, ci_show=True, color=color)
        horizon = ages.get(name) or float(group["lifetime"].max())
        t = np.linspace(0.0, horizon, 200)
        ax.plot(t / 60, advice.dist.survival(t), "--", color=color, label=f"{name}: predicted")
    ax.set_xlabel("session age (min, scenario time)")
    ax.set_ylabel("share still open")
    ax.set_title(f"{advice.variant}: verification soak, predicted against measured")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    name = "verify-" + "".join(ch if ch.isalnum() else "-" for ch in advice.variant) + ".png"
    fig.savefig(out / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name
