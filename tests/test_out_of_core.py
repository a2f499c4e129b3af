"""The report out of core (issue 35): `rtsoak report` spills the clients' sends to partition
files and reads them back a partition at a time (harness.log.sends), counts send lateness
instead of keeping it, and never holds the appends. On a real run with several variants and
different faults, split into many partitions, every summary.json field is the same as a
report of frames loaded whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rtsoak, write_scenario

from harness.log import sends
from harness.log.frames import lateness_counts, load
from harness.report import build_report
from harness.report.analysis import weighted_percentiles

VARIANTS = """
[silence]
gap = "1s"
gap_max = "8s"
fill = "zeros"
[[variant]]
name = "idle"
faults.idle_timeout.after = "5s"
[[variant]]
name = "age"
faults.session_age.mean = "40s"
[[variant]]
name = "buffer"
faults.buffer_pressure.max_ms = 3000
"""


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("several")
    scenario = write_scenario(tmp, name="several", workers=3, duration="4m", extra=VARIANTS)
    result = rtsoak("run", str(scenario), "--out", str(tmp / "runs"), "--seed", "3", "--no-report")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp / "runs").iterdir()
    return run_dir


def test_out_of_core_and_in_memory_reports_say_the_same(
    several: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / several.name
    shutil.copytree(several, run_dir)
    monkeypatch.setattr(sends, "PARTITION_ROWS", 500)  # many partitions, each connection whole
    spilled: list[int] = []
    real_init = sends.SpilledSends.__init__

    def counting_init(self, expected_rows, directory=None):
        real_init(self, expected_rows, directory)
        spilled.append(self.partitions)

    monkeypatch.setattr(sends.SpilledSends, "__init__", counting_init)
    build_report([run_dir], out=tmp_path / "lean")
    assert spilled and spilled[0] > 20
    full = build_report([run_dir], out=tmp_path / "full", frames=load(run_dir))
    assert len(full.summary["variants"]) == 3
    assert sum(v["drops"] for v in full.summary["variants"]) > 10
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".rtsoak-sends")] == []
    summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("lean", "full")]
    for summary in summaries:
        summary.pop("generated")
    assert summaries[0] == summaries[1]


def test_counted_lateness_gives_numpys_percentiles_of_the_appends() -> None:
    """Independent of the counting: np.percentile over every append's lateness (to the
    microsecond) against the weighted percentiles of the counts."""
    rng = np.random.default_rng(4)
    lag = np.round(rng.gamma(1.5, 0.4, 20_000), 3)
    lag[::97] = np.nan
    rows = pd.DataFrame({"run": "r", "variant": rng.choice(["a", "b"], len(lag)), "lag_ms": lag})
    counts = lateness_counts(rows)
    assert counts["count"].sum() == np.isfinite(lag).sum()
    assert len(counts) < 5000
    for variant, mine in counts.groupby("variant", observed=True):
        raw = lag[(rows["variant"] == variant).to_numpy() & np.isfinite(lag)]
        got = weighted_percentiles(mine["lag_ms"].to_numpy(), mine["count"].to_numpy(), (1, 50, 99))
        assert got == pytest.approx(np.percentile(raw, [1, 50, 99]), abs=1e-9)


def test_a_big_run_loads_chosen_columns_variants_a_window_and_lazy_appends(
    several: Path,
) -> None:
    full = load(several)
    events = full.events
    appends = events[events["type"] == "input_audio_buffer.append"]
    lazy = load(several, appends="lazy", columns=["t", "type", "audio_ms"])
    assert "input_audio_buffer.append" not in set(lazy.events["type"].astype(str))
    assert list(lazy.events.columns) == [
        "run", "variant", "worker", "conn", "connection", "t", "type", "audio_ms"
    ]  # fmt: skip
    assert len(lazy.events) == len(events) - len(appends)
    assert lazy.appends is not None
    chunks = list(lazy.appends())
    again = pd.concat(chunks, ignore_index=True)
    assert len(again) == len(appends)
    assert again["audio_ms"].sum() == pytest.approx(appends["audio_ms"].sum())
    pd.testing.assert_frame_equal(
        lazy.connections, full.connections, check_categorical=False, check_like=True
    )
    idle = load(several, variants=["idle"])
    assert set(idle.events["variant"].dropna().astype(str)) == {"idle"}
    want = full.connections[full.connections["variant"].astype(str) == "idle"]
    assert sorted(idle.connections["connection"].astype(str)) == sorted(
        want["connection"].astype(str)
    )
    window = load(several, between=(30.0, 60.0))
    t = window.events["t"].to_numpy(float)
    assert ((t >= 30) & (t <= 60)).all()
    assert len(window.events) == int(events["t"].between(30, 60).sum())
    with pytest.raises(ValueError, match="no such events column"):
        load(several, columns=["nope"])
