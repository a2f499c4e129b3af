"""How faithfully the harness kept time, on both sides of the socket: how late the client sent
its appends, and how late the fake server fired the faults it scheduled. Under time compression
either can fall behind, and then a run's timings describe the machine, not the service.

Both verdicts use the client's one limit, `SATURATED_P99_MS` (p99, wall milliseconds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from harness.core.pacing import SATURATED_P99_MS
from harness.report.analysis import lag_counts, weighted_percentiles

__all__ = ["CLIENT_COLUMNS", "FAULT_COLUMNS", "client_lateness", "fault_lateness"]

CLIENT_COLUMNS = ["run", "variant", "appends", "p50_ms", "p90_ms", "p99_ms", "max_ms", "saturated"]
FAULT_COLUMNS = [
    "run",
    "faults",
    "timed",
    "p50_s",
    "p99_s",
    "max_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "saturated",
]


def client_lateness(lateness: pd.DataFrame) -> pd.DataFrame:
    """Append send lateness (wall ms after the deadline) per run and variant, from
    `ReportFrames.lateness` (run, variant, lag_ms, count; or a row per append).
    `saturated`: p99 above SATURATED_P99_MS, the verdict the run wrote into its manifest,
    here per variant."""
    rows = []
    for (run, variant), group in lateness.groupby(["run", "variant"], observed=True):
        lag, counts = lag_counts(group)
        if not counts.sum():
            continue
        p50, p90, p99 = weighted_percentiles(lag, counts, (50, 90, 99))
        rows.append(
            [
                str(run),
                str(variant),
                int(counts.sum()),
                p50,
                p90,
                p99,
                lag.max(),
                p99 > SATURATED_P99_MS,
            ]
        )
    return pd.DataFrame(rows, columns=CLIENT_COLUMNS)


def fault_lateness(events: pd.DataFrame, scales: Mapping[str, float] | None = None) -> pd.DataFrame:
    """How late the fake server fired its deadline-driven faults, one row per run that logged a
    fault: `faults` all, `timed` those with a scheduled age; p50/p99/max of (fired age - due
    age) in scenario seconds (`_s`) and in wall milliseconds (`_ms`, = s / scale * 1000).
    `saturated`: p99 above SATURATED_P99_MS wall, as for the client; None without a timed
    fault. Faults judged on arrival (micro_burst, rate, buffer) have no due age: they fire on
    the frame that trips them, however late it came."""
    scales = dict(scales or {})
    faults = events[
        (events["src"] == "server").to_numpy(bool) & (events["type"] == "fault").to_numpy(bool)
    ]
    rows = []
    for run, group in faults.groupby(faults["run"].astype(str)):
        details = [json.loads(d) if isinstance(d, str) else {} for d in group["detail"]]
        late = np.array(
            [d["age"] - d["due_age"] for d in details if d.get("due_age") is not None], float
        )
        late_ms = late / scales.get(run, 1.0) * 1000
        if len(late):
            s = np.percentile(late, [50, 99]).tolist() + [late.max()]
            ms = np.percentile(late_ms, [50, 99]).tolist() + [late_ms.max()]
            saturated: bool | None = bool(ms[1] > SATURATED_P99_MS)
        else:
            s = ms = [np.nan] * 3
            saturated = None
        rows.append([run, len(group), len(late), *s, *ms, saturated])
    return pd.DataFrame(rows, columns=FAULT_COLUMNS).astype({"saturated": object})
