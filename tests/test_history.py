"""`rtsoak report --history`: the nightly trend from each night's small files (manifest.json and
report/summary.json, what the nightly workflow keeps), a night worse than its baseline marked,
scenarios never mixed in one baseline, and version changes said where they happen."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import rtsoak, write_scenario

from harness.log.frames import load_for_report
from harness.report.history import night_rows, worse_than_baseline

SCENARIO = {
    "run": {"name": "nightly", "seed": 7, "duration": 1200.0, "workers": 2, "time_scale": 30.0},
    "faults": {"session_age": {"mean": "30s"}},
    "source": "scenarios/nightly.toml",
}


def _rate_row(variant: str, drops: int, hours: float, lost: int) -> dict:
    """A `trend` row as summary.json keeps it (CIs are not what these tests read)."""
    rate = drops / hours
    median = math.log(2) / rate * 3600 if drops else None
    return {
        "variant": variant,
        "connections": drops + 4,
        "drops": drops,
        "connection_hours": hours,
        "drops_per_hour": rate,
        "drops_per_hour_lo": rate * 0.7,
        "drops_per_hour_hi": rate * 1.4,
        "median_s": median,
        "median_lo_s": None if median is None else median * 0.8,
        "median_hi_s": None if median is None else median * 1.25,
        "lost_utterances": lost,
        "lost_per_hour": lost / hours,
        "lost_per_hour_lo": lost / hours * 0.5,
        "lost_per_hour_hi": lost / hours * 2 + 0.4,
    }


def write_night(
    base: Path,
    day: int,
    drops: int,
    lost: int = 2,
    hours: float = 10.0,
    scenario: dict | None = None,
    git: str = "a" * 40,
) -> Path:
    """A night as the nightly restores it: manifest.json and report/summary.json, no events."""
    night = base / f"nightly-202612{day:02d}T031700Z"
    (night / "report").mkdir(parents=True)
    doc = json.loads(json.dumps(scenario or SCENARIO))
    doc["run"]["seed"] = day  # a seed is a sample, not a setting: never splits a scenario
    manifest = {
        "versions": {"rtsoak": "0.1.0", "python": "3.11.7"},
        "git_revision": git,
        "scenario": doc,
        "started": f"2026-12-{day:02d}T03:17:00+00:00",
        "ended": f"2026-12-{day:02d}T03:27:00+00:00",
        "interrupted": False,
    }
    (night / "manifest.json").write_text(json.dumps(manifest))
    rows = [_rate_row("all", drops, hours, lost), _rate_row("backoff", drops, hours, lost)]
    (night / "report" / "summary.json").write_text(json.dumps({"trend": rows}))
    return night


def history(tmp_path: Path, nights: list[Path]) -> list[dict]:
    out = tmp_path / "trend"
    result = rtsoak("report", "--history", *map(str, nights), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return [r for r in json.loads((out / "trend.json").read_text()) if r["variant"] == "all"]


def test_three_nights_two_alike_one_worse_only_the_worse_is_flagged(tmp_path: Path) -> None:
    nights = [
        write_night(tmp_path / "n", 1, drops=20),
        write_night(tmp_path / "n", 2, drops=22),
        write_night(tmp_path / "n", 3, drops=60),
    ]
    overall = history(tmp_path, nights)
    assert [r["run"] for r in overall] == [n.name for n in nights]  # three points, in order
    assert [r["worse"] for r in overall] == [False, False, True]
    assert overall[2]["worse_in"] == "drops"
    # the baseline is the other nights pooled: 42 drops over 20 hours
    assert overall[2]["baseline_drops_per_hour"] == pytest.approx(2.1)
    assert overall[2]["baseline_nights"] == 2
    assert overall[2]["p_drops_worse"] < 0.025 < overall[0]["p_drops_worse"]
    assert all(r["source"] == "summary.json" for r in overall)  # no event log needed
    trend = tmp_path / "trend"
    assert (trend / "trend.png").stat().st_size > 10_000
    md = (trend / "trend.md").read_text()
    assert md.count("WORSE (drops)") == 1 and nights[2].name in md
    assert 'class="worse"' in (trend / "trend.html").read_text()


def test_lost_utterances_alone_can_mark_a_night(tmp_path: Path) -> None:
    nights = [
        write_night(tmp_path / "n", 1, drops=20, lost=2),
        write_night(tmp_path / "n", 2, drops=21, lost=3),
        write_night(tmp_path / "n", 3, drops=20, lost=25),
    ]
    overall = history(tmp_path, nights)
    assert [r["worse_in"] for r in overall] == ["", "", "lost"]


def test_a_night_within_the_noise_is_not_flagged(tmp_path: Path) -> None:
    # 30 drops against 20 and 22: more, but well within what chance gives at this exposure
    nights = [write_night(tmp_path / "n", d, drops=n) for d, n in ((1, 20), (2, 22), (3, 30))]
    assert not any(r["worse"] for r in history(tmp_path, nights))


def test_a_night_of_another_scenario_is_trended_apart_not_in_the_baseline(
    tmp_path: Path,
) -> None:
    other = json.loads(json.dumps(SCENARIO))
    other["faults"]["session_age"]["mean"] = "5s"
    nights = [
        write_night(tmp_path / "n", 1, drops=20),
        write_night(tmp_path / "n", 2, drops=22),
        write_night(tmp_path / "n", 3, drops=60),
        write_night(tmp_path / "n", 4, drops=400, scenario=other),
    ]
    overall = history(tmp_path, nights)
    by_run = {r["run"]: r for r in overall}
    apart = by_run[nights[3].name]
    assert apart["scenario"] != by_run[nights[0].name]["scenario"]
    assert "faults.session_age.mean='5s'" in apart["scenario"]  # says how it differs
    assert apart["baseline_nights"] == 0 and not apart["worse"]
    # the first scenario's baselines are exactly those without the other night
    assert by_run[nights[0].name]["baseline_drops_per_hour"] == pytest.approx(82 / 20)
    assert [by_run[n.name]["worse"] for n in nights[:3]] == [False, False, True]
    assert "2 scenarios" in (tmp_path / "trend" / "trend.html").read_text()


def test_a_version_change_is_said_on_the_night_it_happens(tmp_path: Path) -> None:
    nights = [
        write_night(tmp_path / "n", 1, drops=20),
        write_night(tmp_path / "n", 2, drops=22, git="b" * 40),
        write_night(tmp_path / "n", 3, drops=21, git="b" * 40),
    ]
    overall = history(tmp_path, nights)
    assert [r["notes"] for r in overall] == ["", "version changed: git aaaaaaa → bbbbbbb", ""]
    assert len({r["scenario"] for r in overall}) == 1  # a new version is the same scenario


def test_the_exact_test_of_two_poisson_rates() -> None:
    assert worse_than_baseline(0, 1.0, 0, 1.0) == 1.0
    assert worse_than_baseline(5, 1.0, 10, 2.0) > 0.4  # equal rates
    assert worse_than_baseline(30, 1.0, 20, 2.0) < 0.001
    assert worse_than_baseline(3, 0.0, 20, 2.0) == 1.0  # no exposure: nothing to say


def test_a_night_restored_from_its_small_files_trends_as_from_its_event_log(
    tmp_path: Path,
) -> None:
    """Real soaks: what summary.json keeps equals what the event log gives, two seeds of one
    scenario are one scenario, and a night with another fault mean is reported apart."""
    runs, restored = tmp_path / "runs", tmp_path / "restored"
    path = write_scenario(tmp_path, name="nightly")  # one path, as scenarios/nightly.toml
    scenario = path.read_text()
    for seed, mean in (("1", "30s"), ("2", "30s"), ("3", "8s")):
        path.write_text(scenario.replace('mean = "30s"', f'mean = "{mean}"'))
        result = rtsoak("run", str(path), "--out", str(runs), "--seed", seed)
        assert result.returncode == 0, result.stderr
    nights = sorted(runs.iterdir())
    for night in nights:  # what the nightly workflow keeps of a night
        (restored / night.name / "report").mkdir(parents=True)
        shutil.copy(night / "manifest.json", restored / night.name)
        shutil.copy(night / "report" / "summary.json", restored / night.name / "report")
    overall = history(tmp_path, sorted(restored.iterdir()))
    assert [r["run"] for r in overall] == [n.name for n in nights]
    assert overall[0]["scenario"] == overall[1]["scenario"] != overall[2]["scenario"]
    assert overall[2]["baseline_nights"] == 0
    frames = load_for_report(nights[0])
    (from_log,) = [
        r for r in night_rows(frames.connections, frames.utterances) if r["variant"] == "all"
    ]
    for key, value in from_log.items():
        assert overall[0][key] == (pytest.approx(value) if isinstance(value, float) else value), key
