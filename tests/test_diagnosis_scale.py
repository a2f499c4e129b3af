"""The diagnosis of a drop is about the sender's strategy, so the same seeded run gets the same
diagnosis at any time scale, and `make soak` is not told of bursts it never had. Real runs on
the embedded fake server."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, rtsoak

from harness.log.frames import load
from harness.log.recorder import APPEND
from harness.report import findings as rules

# Three strategies, three faults: steady pacing dies of session age, 24-frame bursts trip the
# server's micro_burst at once, 12 s gaps trip its idle timeout. micro_burst's 20 frames in 20
# ms keep it well above 60x jitter (docs/faults.md), so most drops fire alike at both scales.
SCENARIO = f"""
[run]
name = "scale"
seed = 7
duration = "4m"
workers = 2
time_scale = 10
[audio]
dir = "{ROOT / "fixtures" / "audio"}"
[pacing]
chunk_ms = 20
[silence]
gap = "1s"
fill = "idle"
[reconnect]
initial = "500ms"
max = "4s"
max_attempts = 1000
[faults.session_age]
mean = "40s"
[faults.micro_burst]
frames = 20
within = "20ms"
[faults.idle_timeout]
after = "11s"
[[variant]]
name = "steady"
[[variant]]
name = "burst"
pacing.mode = "burst"
pacing.burst_frames = 24
reconnect.initial = "8s"
reconnect.max = "8s"
[[variant]]
name = "long-gaps"
silence.gap = "12s"
"""


def run(scenario: Path, out: Path, *args: str) -> tuple[pd.DataFrame, pd.Series, object]:
    """One `rtsoak run`: its frames, each drop's diagnosis, and the frames object."""
    result = rtsoak("run", str(scenario), "--out", str(out), "--no-report", *args, timeout=150)
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    frames = load(run_dir)
    scales = {name: m["time_scale"] for name, m in frames.manifests.items()}
    conns = frames.connections
    return conns, rules.diagnose(conns, frames.events, scales), frames


def drops_by_key(conns: pd.DataFrame, diagnosis: pd.Series) -> pd.Series:
    """Diagnosis per (variant, worker, conn, injected fault): the same seeded session."""
    drops = conns[conns["dropped"]]
    index = pd.MultiIndex.from_arrays(
        [drops[c].astype(str) for c in ("variant", "worker", "conn", "injected_fault")]
    )
    return pd.Series(diagnosis[drops.index].to_numpy(), index=index)


@pytest.mark.timeout(300)
def test_the_same_seeded_run_gets_the_same_diagnosis_at_10x_and_60x(tmp_path) -> None:
    scenario = tmp_path / "scale.toml"
    scenario.write_text(SCENARIO)
    at = {
        s: drops_by_key(*run(scenario, tmp_path / f"x{s}", "--time-scale", str(s))[:2])
        for s in (10, 60)
    }
    both = pd.concat(at, axis=1, join="inner").dropna()
    # a drop the harness was too late to judge at either scale says so; it is not compared
    judged = both[(both != "late").all(axis=1)]
    same = (judged[10] == judged[60]).mean()
    assert len(judged) >= 40, both
    assert len(judged) >= 0.8 * len(both), both
    assert same >= 0.95, pd.crosstab(judged[10], judged[60])
    assert {"burst", "idle", "age"} <= set(judged[10]), judged[10].value_counts()


@pytest.mark.timeout(300)
def test_make_soak_findings_agree_with_the_fault_and_say_nothing_of_bursts(tmp_path) -> None:
    """scenarios/smoke.toml injects session-age faults only, at 60x: its drops are `age`,
    and its findings report no bunched appends (they once said 81 % "followed bunched
    appends", from the sent times of a harness never more than 7 ms late)."""
    conns, diagnosis, frames = run(ROOT / "scenarios" / "smoke.toml", tmp_path, "--duration", "20m")
    drops = conns[conns["dropped"]]
    expected = drops["injected_fault"].astype(str).map(rules.INJECTED_TO_DIAGNOSIS)
    judged = diagnosis[drops.index] != "late"  # the harness's own stall: said, not graded
    agree = (expected == diagnosis[drops.index])[judged]
    assert len(agree) >= 10 and agree.mean() >= 0.9, diagnosis[drops.index].value_counts()

    scales = {name: m["time_scale"] for name, m in frames.manifests.items()}
    lateness = frames.events.loc[frames.events["type"] == APPEND, ["variant", "lag_ms"]]
    said = rules.findings(conns, frames.events, lateness, scales)
    bursts = next(f["finding"] for f in said if f["hypothesis"] == "bursts")
    assert not re.search(r"\d+ of \d+ \(\d+ %\) drops followed appends scheduled bunched", bursts)
    if not (diagnosis[drops.index] != "age").any():
        assert bursts.startswith("no drop followed bunched, fast or late appends"), bursts
    assert all(f["variant"] is None for f in said)
    truth = next(f["finding"] for f in said if f["hypothesis"] == "ground truth")
    assert "session_age" in truth, truth
