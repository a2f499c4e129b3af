"""The report's numbers against independent computations on real runs: recovery per variant
when worker numbers repeat across variants, and what a report says of variants that dropped
nothing, workers that gave up and runs with too few drops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, rtsoak, write_scenario

from harness.log.frames import load


def _run(tmp_path: Path, *args: str) -> tuple[Path, dict]:
    result = rtsoak("run", *args, "--out", str(tmp_path / "runs"), timeout=300)
    assert result.returncode in (0, 1), result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir, json.loads((run_dir / "report" / "summary.json").read_text())


def _recovery_by_hand(conns: pd.DataFrame, utts: pd.DataFrame) -> dict[str, list[float]]:
    """Per variant, seconds from each drop to the first transcript completed on a later
    connection of the same worker of the same variant: one plain loop per drop."""
    good = utts[utts["status"].astype(str).isin(["completed", "retried_ok"])]
    out: dict[str, list[float]] = {}
    for drop in conns[conns["dropped"]].itertuples():
        later = good[
            (good["run"] == drop.run)
            & (good["variant"].astype(str) == str(drop.variant))
            & (good["worker"] == drop.worker)
            & (good["conn"] > drop.conn)
            & (good["ended"] >= drop.closed)
        ]
        out.setdefault(str(drop.variant), []).append(later["ended"].min() - drop.closed)
    return out


def test_repro_recovery_per_variant_matches_a_hand_computation(tmp_path: Path) -> None:
    """repro-1006 numbers its workers 0-9 in each of six variants: a join that leaves the
    variant out pairs a drop with another variant's transcripts (p90 302-442 s where the
    truth was 7 s)."""
    run_dir, summary = _run(tmp_path, str(ROOT / "scenarios/repro-1006.toml"), "--duration", "6m")
    frames = load(run_dir)
    conns = frames.connections
    assert conns.duplicated(["worker", "conn"]).any(), "workers must repeat across variants"
    by_hand = _recovery_by_hand(conns, frames.utterances)
    reported = {r["variant"]: r for r in summary["recovery_s"]}
    checked = 0
    for variant, values in by_hand.items():
        recovered = np.array([v for v in values if not math.isnan(v)])
        row = reported[variant]
        assert row["drops"] == len(values) and row["recovered"] == len(recovered)
        if len(recovered):
            assert row["p90"] == pytest.approx(np.percentile(recovered, 90), abs=1.0)
            checked += 1
    assert checked >= 3


def test_report_says_what_it_cannot_tell(tmp_path: Path) -> None:
    """A variant that never dropped, workers whose reconnect policy gave up, and variants
    with too few drops each get a sentence, not a confident number."""
    extra = """
[reconnect]
max_attempts = 2
initial = "100ms"
max = "200ms"
[[variant]]
name = "doomed"
faults.session_age.mean = "1s"
[[variant]]
name = "calm"
faults.session_age.mean = "1000h"
"""
    scenario = write_scenario(tmp_path, name="truth", workers=2, duration="2m", extra=extra)
    run_dir, summary = _run(tmp_path, str(scenario))
    stopped = summary["stopped_workers"]
    assert stopped and {s["variant"] for s in stopped} == {"doomed"}
    assert all(s["failures"] >= 2 for s in stopped)
    calm = next(v for v in summary["variants"] if v["variant"] == "calm")
    assert calm["drops"] == 0
    weibull = {w["variant"]: w for w in summary["weibull"]}
    assert weibull["calm"]["verdict"] == "too few drops" and weibull["calm"]["shape"] is None
    pair = next(p for p in summary["logrank"] if {p["a"], p["b"]} == {"calm", "doomed"})
    assert pair["detectable_hazard_ratio"] is None  # too few drops for a power figure
    (said,) = [f["finding"] for f in summary["findings"] if f["variant"] == "calm"]
    assert "fired no fault" in said and "longest utterance held 1.0 s" in said
    page = (run_dir / "report" / "index.html").read_text()
    assert "calm: no drop in" in page and "Workers that stopped" in page
    assert "worker(s) stopped before the end" in page
    assert "too few drops to tell" in page


def test_one_connection_says_too_few_drops_not_a_hazard_ratio(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, name="one", workers=1, duration="1m")
    run_dir, summary = _run(tmp_path, str(scenario))
    assert summary["power"]["detectable_hazard_ratio"] is None
    page = (run_dir / "report" / "index.html").read_text()
    assert "too few to tell" in page and "detects a hazard ratio of" not in page
