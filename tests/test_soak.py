"""Workers against the fake server over loopback, then frames and report from what they wrote."""

from __future__ import annotations

import dataclasses
import gc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.clock import ScaledClock
from harness.fakeserver.app import ServerConfig
from harness.fakeserver.faults import parse_faults
from harness.fakeserver.session import SessionLimits
from harness.fakeserver.transcript import parse_transcript
from harness.frames import load
from harness.recorder import Recorder
from harness.report import build_report
from harness.runner import manifest, run_workers, write_json
from harness.scenario import Scenario, load_scenario
from harness.target import Target

SCENARIO = """
[run]
name = "t"
seed = 3
duration = "4m"
workers = 4
time_scale = 120
[pacing]
chunk_ms = 100
[turns]
gap = "1s"
transcript_timeout = "10s"
[reconnect]
initial = "200ms"
[faults.session_age]
mean = "40s"
"""


def scenario_from(tmp_path: Path, text: str = SCENARIO) -> Scenario:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return load_scenario(path)


async def soak(tmp_path: Path, scenario: Scenario, library, fake_server) -> Path:
    """What `rtsoak run` does, with the fake server in this process."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json(run_dir / "manifest.json", manifest(scenario, None, datetime.now(UTC).isoformat()))
    clock = ScaledClock(scenario.run.time_scale)
    server_log = Recorder(run_dir / "events-server.arrows")
    limits = SessionLimits(latency_base=0.2, latency_per_audio_second=0.05)
    server = await fake_server(ServerConfig(faults=scenario.faults, limits=limits,
                                            seed=scenario.run.seed), clock, server_log)
    # The transcript timeout is 83 wall ms at 120x; a full collection of the whole pytest
    # process (frames and charts of earlier tests) measured up to 117 ms. Freeze what exists,
    # as design.md advises for real runs, so collections see only the soak's own objects.
    gc.collect()
    gc.freeze()
    try:
        await run_workers(scenario, clock, Target.fake(server.url), library, run_dir,
                          log=lambda *_: None, handle_signals=False)
    finally:
        gc.unfreeze()
    server_log.close()
    return run_dir


async def test_soak_records_drops_reconnects_and_censored_ends(tmp_path, tone_library,
                                                               fake_server) -> None:
    scenario = scenario_from(tmp_path)
    run_dir = await soak(tmp_path, scenario, tone_library, fake_server)
    frames = load(run_dir)
    conns = frames.connections
    assert set(conns["worker"]) == {0, 1, 2, 3}
    drops = conns[conns["dropped"]]
    assert len(drops) >= 3  # mean 40 s over 4 x 240 s: ~24 expected
    assert set(drops["close_code"]) == {1006}
    assert set(drops["closed_by"]) == {"transport"}
    assert set(drops["injected_fault"]) == {"session_age"}  # server's ground truth joins
    # every worker reconnected after its drops and was closed by the harness at the end
    last = conns.groupby("worker").tail(1)
    assert set(last["cause"]) == {"scenario_end"} and last["censored"].all()
    assert (last["close_code"] == 1000).all()
    assert conns["request_id"].str.startswith("req_").all()
    # utterances: most complete with a matching CRC; drops mid-utterance are lost, not hidden
    utts = frames.utterances
    completed = utts[utts["status"] == "completed"]
    assert len(completed) >= 20
    for row in completed.itertuples():
        assert parse_transcript(row.transcript).crc32 == row.crc32
    assert set(utts["status"]) <= {"completed", "lost", "unfinished"}
    lost_states = conns.loc[conns["dropped"], "state"]
    assert len(utts[utts["status"] == "lost"]) >= (lost_states != "idle").sum() - 1
    appends = frames.events[frames.events["type"] == "input_audio_buffer.append"]
    assert appends["audio_ms"].max() == pytest.approx(100)
    assert appends["detail"].isna().all()  # no per-frame payloads


async def test_report_of_a_soak(tmp_path, tone_library, fake_server) -> None:
    run_dir = await soak(tmp_path, scenario_from(tmp_path), tone_library, fake_server)
    report = build_report([run_dir])
    assert report.index.is_file()
    for name in ("survival", "close_codes", "utterances", "timeline"):
        assert (report.index.parent / f"{name}.png").stat().st_size > 5000
    summary = report.summary
    (variant,) = summary["variants"]
    assert variant["drops"] >= 3 and variant["censored"] == 4
    assert any(row["close_code"] == "1006" for row in summary["close_codes"])
    assert summary["utterances"]["t"]["completed"] >= 20
    html = report.index.read_text()
    assert "data:image/png;base64," in html and "http" not in html.split("<body>")[1]
    assert (run_dir / "frames" / "connections.parquet").is_file()


async def test_no_drops_without_faults(tmp_path, tone_library, fake_server) -> None:
    scenario = scenario_from(tmp_path)
    scenario = dataclasses.replace(scenario, faults=parse_faults(None, "t"))
    frames = load(await soak(tmp_path, scenario, tone_library, fake_server))
    assert not frames.connections["dropped"].any()
    assert (frames.connections["cause"] == "scenario_end").all()
