"""The report's models, fitted once per report: the HTML tables, the charts, the thresholds and
summary.json all read this one object, so no two of them can disagree about a number."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter

from harness.log.frames import ReportFrames
from harness.report import analysis, fidelity
from harness.report.diagnosis import Verdict, diagnose_variants
from harness.report.findings import agreement_table, diagnose, findings
from harness.report.history import night_rows

__all__ = ["ReportModel", "fit", "stopped_workers"]


@dataclass(frozen=True, slots=True)
class ReportModel:
    connections: pd.DataFrame
    survival: list[analysis.SurvivalSummary]
    fitters: dict[str, KaplanMeierFitter]
    ranking: pd.DataFrame
    trend: list[dict[str, Any]]  # the night's rows for `--history` (history.night_rows)
    logrank: pd.DataFrame
    cox: analysis.CoxResult | None
    power: dict[str, float]
    weibull: pd.DataFrame
    hazard: pd.DataFrame
    recovery: pd.DataFrame
    latency: pd.DataFrame
    outcomes: pd.DataFrame
    close_codes: pd.DataFrame
    stopped: pd.DataFrame
    diagnosis: pd.Series  # per drop: the rule category of findings.diagnose
    verdicts: dict[str, list[Verdict]]  # per variant: the blind diagnosis, theory by theory
    findings: list[dict[str, Any]]
    agreement: pd.DataFrame
    client_lateness: pd.DataFrame
    fault_lateness: pd.DataFrame

    def variant(self, name: str) -> analysis.SurvivalSummary:
        return next(s for s in self.survival if s.variant == name)


def scales(frames: ReportFrames) -> dict[str, float]:
    """Each run's time scale (scenario seconds per wall second)."""
    return {name: float(m.get("time_scale") or 1.0) for name, m in frames.manifests.items()}


def fit(frames: ReportFrames) -> ReportModel:
    conns, utts, events = frames.connections, frames.utterances, frames.events
    survival, fitters = analysis.survival_by_variant(conns)
    drops = sum(s.drops for s in survival)
    hours = sum(s.connection_hours for s in survival)
    by_scale = scales(frames)
    diagnosis = diagnose(conns, events, by_scale)
    weibull = analysis.weibull_by_variant(conns)
    client_lateness = fidelity.client_lateness(frames.lateness)
    return ReportModel(
        connections=conns,
        survival=survival,
        fitters=fitters,
        ranking=analysis.ranking(conns, utts),
        trend=night_rows(conns, utts, survival),
        logrank=analysis.pairwise_logrank(conns),
        cox=analysis.cox_by_factors(conns),
        power=analysis.power(drops, drops / hours if hours else 0.0),
        weibull=weibull,
        hazard=analysis.hazard_by_age(conns),
        recovery=analysis.recovery(conns, utts),
        latency=analysis.latency_percentiles(utts),
        outcomes=analysis.final_outcomes(utts),
        close_codes=analysis.close_codes(conns),
        stopped=stopped_workers(events),
        diagnosis=diagnosis,
        verdicts=diagnose_variants(conns, frames.sends, timing_tolerance(frames, by_scale)),
        findings=findings(conns, events, frames.lateness, by_scale, diagnosis, weibull),
        agreement=agreement_table(conns, events, by_scale, diagnosis),
        client_lateness=client_lateness,
        fault_lateness=fidelity.fault_lateness(events, by_scale),
    )


# wall seconds a client's view of an event may be off by beyond its send lateness: the time a
# server's close takes to reach it, on loopback or a near region
REACTION_S = 0.050


def timing_tolerance(frames: ReportFrames, by_scale: dict[str, float]) -> float:
    """Scenario seconds the clients' timing may be off by: the worst run's p99 send lateness
    plus REACTION_S, times its time scale (a wall millisecond is k scenario ms at k x)."""
    worst = 0.0
    lateness = frames.lateness
    for run, scale in by_scale.items():
        p99 = analysis.lateness_percentiles(lateness[lateness["run"].astype(str) == run], (99,))[
            "p99"
        ]
        worst = max(worst, scale * ((0.0 if np.isnan(p99) else p99 / 1000) + REACTION_S))
    return worst


STOPPED_COLUMNS = ["variant", "worker", "at", "reason", "failures", "close_code", "status"]


def stopped_workers(events: pd.DataFrame) -> pd.DataFrame:
    """Workers that stopped before the run ended (their reconnect policy gave up), and why:
    a worker that stops sends nothing more, so its silence must not pass for survival."""
    rows = events[(events["type"] == "worker_stopped") & (events["src"] == "client")]
    out = []
    for row in rows.itertuples(index=False):
        detail = json.loads(row.detail) if isinstance(row.detail, str) else {}
        out.append(
            {
                "variant": str(row.variant),
                "worker": int(row.worker),
                "at": float(row.t),
                "reason": detail.get("reason", ""),
                "failures": detail.get("failures"),
                "close_code": None if pd.isna(row.code) else int(row.code),
                "status": detail.get("status"),
            }
        )
    return pd.DataFrame(out, columns=STOPPED_COLUMNS)
