"""What the report gives people and CI: thresholds as exit codes and JUnit cases, findings, a
comparison of variants, and a page a real browser renders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import rtsoak, write_scenario

STRICT = """
[thresholds]
max_drops_per_hour = 0.5
survival_at = "1m"
min_survival = 0.99
max_lost_utterances = 1000
"""
LENIENT = """
[thresholds]
max_drops_per_hour = 10000
max_lost_utterances = 1000
max_p99_latency = "30s"
"""


def test_failed_thresholds_exit_1_with_a_table_and_junit(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, name="strict", extra=STRICT)
    result = rtsoak("run", str(scenario), "--out", str(tmp_path / "runs"))
    assert result.returncode == 1, result.stderr
    assert "thresholds: 2 of 3 failed" in result.stdout
    assert "FAIL cli" not in result.stdout and "FAIL strict  max_drops_per_hour" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    suite = ET.parse(run_dir / "report" / "junit.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    names = [c.get("name") for c in suite.iter("testcase")]
    assert "max_drops_per_hour" in names and "S(1 min) >= 0.99" in names
    # rebuilding the report judges the same way
    again = rtsoak("report", str(run_dir))
    assert again.returncode == 1 and "2 of 3 failed" in again.stdout


def test_passing_thresholds_exit_0(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, name="lenient", extra=LENIENT)
    result = rtsoak("run", str(scenario), "--out", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    assert "thresholds: all 3 passed" in result.stdout


def test_summary_carries_findings_statistics_and_ground_truth(finished_run: Path) -> None:
    summary = json.loads((finished_run / "report" / "summary.json").read_text())
    hypotheses = [f["hypothesis"] for f in summary["findings"]]
    assert hypotheses == [
        "session age",
        "idle gaps",
        "buffer",
        "bursts",
        "concurrency",
        "ground truth",
    ]
    truth = summary["findings"][-1]["finding"]
    assert "injected session_age" in truth and "agrees" in truth
    assert summary["power"]["drops_for_2x"] == pytest.approx(65.3, abs=0.1)
    assert summary["hazard_by_age"] and summary["latency_s"][0]["p50"] > 0
    html = (finished_run / "report" / "index.html").read_text()
    for heading in ("Findings", "Hazard by session age", "Recovery after a drop", "Pacing"):
        assert f">{heading}<" in html or f">{heading}" in html


def test_comparison_report_of_variants(tmp_path: Path) -> None:
    extra = """
[[variant]]
name = "fast-drops"
faults.session_age.mean = "10s"
[[variant]]
name = "slow-drops"
faults.session_age.mean = "2m"
"""
    scenario = write_scenario(tmp_path, name="cmp", workers=4, extra=extra)
    result = rtsoak("run", str(scenario), "--out", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert {v["variant"] for v in summary["variants"]} == {"fast-drops", "slow-drops"}
    (pair,) = summary["logrank"]
    assert pair["p_holm"] < 0.01  # a 12x hazard difference is plain to see
    assert "Do the variants differ?" in (run_dir / "report" / "index.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(finished_run: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2000",
            f"--screenshot={shot}",
            (finished_run / "report" / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert shot.stat().st_size > 50_000  # a page with charts, not a blank or error page


def test_history_trends_several_nights(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in ("1", "2"):
        result = rtsoak(
            "run",
            str(write_scenario(tmp_path, name="nightly")),
            "--out",
            str(runs),
            "--seed",
            seed,
            "--no-report",
        )
        assert result.returncode == 0, result.stderr
    nights = sorted(runs.iterdir())
    result = rtsoak("report", "--history", *map(str, nights), "--out", str(tmp_path / "trend"))
    assert result.returncode == 0, result.stderr
    trend = json.loads((tmp_path / "trend" / "trend.json").read_text())
    overall = [r for r in trend if r["variant"] == "all"]
    assert [r["run"] for r in overall] == [n.name for n in nights]
    assert all(r["drops"] >= 1 and r["drops_per_hour_lo"] <= r["drops_per_hour"] for r in overall)
    assert (tmp_path / "trend" / "trend.png").stat().st_size > 10_000
    assert "night over night" in (tmp_path / "trend" / "trend.html").read_text()


def test_the_lean_report_has_the_numbers_of_the_full_one(
    finished_run: Path, tmp_path: Path
) -> None:
    """`rtsoak report` never builds the full events frame (load_for_report); a report built
    from frames loaded whole (as `rtsoak run` does) says exactly the same."""
    from harness.log.frames import load
    from harness.report import build_report

    run_dir = tmp_path / finished_run.name
    shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns("report", "frames"))
    full = build_report([run_dir], out=tmp_path / "full", frames=load(run_dir))
    lean = build_report([run_dir], out=tmp_path / "lean")
    assert full.summary["variants"][0]["drops"] > 0  # the drop diagnosis is exercised
    assert (lean.headline, lean.verdicts) == (full.headline, full.verdicts)
    full_summary, lean_summary = (
        json.loads((tmp_path / name / "summary.json").read_text()) for name in ("full", "lean")
    )
    for summary in (full_summary, lean_summary):
        summary.pop("generated")
    assert lean_summary == full_summary
    assert sorted(p.name for p in (run_dir / "frames").iterdir()) == [
        "connections.csv",
        "connections.parquet",
        "events.parquet",
        "utterances.csv",
        "utterances.parquet",
    ]
    # two runs reusing a variant name: relabelled run:variant, the same both ways
    other = tmp_path / f"{finished_run.name}-again"
    shutil.copytree(run_dir, other)
    pair = [run_dir, other]
    full = build_report(pair, out=tmp_path / "full2", frames=load(pair))
    lean = build_report(pair, out=tmp_path / "lean2")
    assert len(full.summary["variants"]) == 2
    for summary in (full.summary, lean.summary):
        summary.pop("generated")
    assert json.dumps(lean.summary, default=str) == json.dumps(full.summary, default=str)


def test_a_report_fits_each_model_once(finished_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Tables, charts, thresholds, findings and summary.json all read one fitted model: one
    Kaplan-Meier fit per variant and one for the run as a whole (the trend's "all" row), one
    recovery, hazard, Weibull, log-rank and Cox fit per report."""
    from collections import Counter

    from lifelines import KaplanMeierFitter

    from harness.log.frames import load
    from harness.report import analysis, build_report

    calls: Counter[str] = Counter()
    names = (
        "recovery",
        "hazard_by_age",
        "weibull_by_variant",
        "pairwise_logrank",
        "cox_by_factors",
    )
    for name in names:
        real = getattr(analysis, name)
        monkeypatch.setattr(
            analysis, name, lambda *a, _r=real, _n=name, **k: calls.update([_n]) or _r(*a, **k)
        )
    real_fit = KaplanMeierFitter.fit
    monkeypatch.setattr(
        KaplanMeierFitter,
        "fit",
        lambda self, *a, **k: calls.update(["km"]) or real_fit(self, *a, **k),
    )
    frames = load(finished_run)
    build_report([finished_run], out=tmp_path / "report", frames=frames)
    variants = frames.connections["variant"].nunique()
    assert calls == Counter({"km": variants + 1, **dict.fromkeys(names, 1)})
