"""Thresholds: the scenario's pass/fail bounds judged per variant, as JUnit test cases and the
exit code of `rtsoak run`/`report` (1 when any fails)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd

from harness.report import analysis

if TYPE_CHECKING:
    from harness.report.model import ReportModel

__all__ = ["Verdict", "judge", "write_junit"]


@dataclass(frozen=True, slots=True)
class Verdict:
    variant: str
    threshold: str
    limit: str
    observed: str
    passed: bool


def _fmt(x: float, unit: str = "") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}{unit}"


def judge(
    thresholds: dict[str, Any],
    model: ReportModel,
    utterances: pd.DataFrame,
    by_variant: dict[str, dict[str, Any]] | None = None,
) -> list[Verdict]:
    """Every configured threshold for every variant: its own `[thresholds]` when it has
    them (`by_variant`), else `thresholds`. Unset ones (0, or -1 for counts) are not judged.
    The numbers judged are the report's own (`model`), never a second fit."""
    fitters, recoveries = model.fitters, model.recovery
    verdicts: list[Verdict] = []
    for s in model.survival:
        v = s.variant
        t = (by_variant or {}).get(v, thresholds) or {}
        checks: list[tuple[str, str, str, bool]] = []
        if t.get("max_drops_per_hour", 0) > 0:
            limit = t["max_drops_per_hour"]
            checks.append(
                (
                    "max_drops_per_hour",
                    _fmt(limit),
                    _fmt(s.drops_per_hour),
                    not s.drops_per_hour > limit,
                )
            )
        if t.get("min_survival", 0) > 0 and t.get("survival_at", 0) > 0:
            at, floor = t["survival_at"], t["min_survival"]
            value, lo, _ = analysis.survival_at(fitters[v], at)
            checks.append(
                (
                    f"S({at / 60:g} min) >= {floor:g}",
                    f"lower 95 % bound {floor:g}",
                    f"{value:.3f} (lower {lo:.3f})",
                    lo >= floor,
                )
            )
        if t.get("min_median", 0) > 0:
            checks.append(
                (
                    "min_median",
                    f"{t['min_median'] / 60:g} min",
                    _fmt(s.median_s / 60, " min"),
                    s.median_s >= t["min_median"],
                )
            )
        mine = utterances[utterances["variant"].astype(str) == v]
        if t.get("max_lost_utterances", -1) >= 0:
            lost = int(((mine["status"].astype(str) == "lost") & mine["final"]).sum())
            checks.append(
                (
                    "max_lost_utterances",
                    str(t["max_lost_utterances"]),
                    str(lost),
                    lost <= t["max_lost_utterances"],
                )
            )
        if t.get("max_p99_latency", 0) > 0:
            lat = mine["latency"].dropna().to_numpy(float)
            p99 = float(np.percentile(lat, 99)) if len(lat) else math.nan
            checks.append(
                (
                    "max_p99_latency",
                    _fmt(t["max_p99_latency"], " s"),
                    _fmt(p99, " s"),
                    not p99 > t["max_p99_latency"],
                )
            )
        if t.get("max_recovery", 0) > 0:
            rec = recoveries[recoveries["variant"] == v]["recovery"]
            worst = float(rec.fillna(math.inf).quantile(0.9)) if len(rec) else 0.0
            checks.append(
                (
                    "max_recovery (p90)",
                    _fmt(t["max_recovery"], " s"),
                    _fmt(worst, " s"),
                    worst <= t["max_recovery"],
                )
            )
        verdicts += [
            Verdict(v, name, limit, observed, bool(ok)) for name, limit, observed, ok in checks
        ]
    return verdicts


def write_junit(verdicts: list[Verdict], path: Path, suite: str) -> None:
    """A test case per threshold per variant, for CI test tabs."""
    failures = sum(not v.passed for v in verdicts)
    root = ET.Element("testsuites", name="rtsoak", tests=str(len(verdicts)), failures=str(failures))
    ts = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(verdicts)), failures=str(failures)
    )
    for v in verdicts:
        case = ET.SubElement(ts, "testcase", classname=f"{suite}.{v.variant}", name=v.threshold)
        if not v.passed:
            failure = ET.SubElement(case, "failure", message=f"{v.observed} (limit {v.limit})")
            failure.text = str(asdict(v))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def console_table(verdicts: list[Verdict]) -> str:
    failed = [v for v in verdicts if not v.passed]
    if not failed:
        return f"thresholds: all {len(verdicts)} passed" if verdicts else ""
    width = max(len(v.variant) for v in failed)
    lines = [f"thresholds: {len(failed)} of {len(verdicts)} failed"]
    lines += [
        f"  FAIL {v.variant:<{width}}  {v.threshold}: {v.observed} (limit {v.limit})"
        for v in failed
    ]
    return "\n".join(lines)
