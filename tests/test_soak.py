"""Workers against the fake server over loopback, then frames and report from what they wrote."""

from __future__ import annotations

import re

import pytest
from helpers import scenario_from, soak

from harness.core.transcript import parse_transcript
from harness.log.frames import load
from harness.report import build_report

SCENARIO = """
[run]
name = "t"
seed = 3
duration = "4m"
workers = 4
time_scale = 120
[pacing]
chunk_ms = 100
[silence]
gap = "1s"
[turns]
transcript_timeout = "10s"
[reconnect]
initial = "200ms"
[faults.session_age]
mean = "40s"
"""


async def test_soak_records_drops_reconnects_and_censored_ends(
    tmp_path, tone_library, fake_server
) -> None:
    scenario = scenario_from(tmp_path, SCENARIO)
    run_dir = await soak(tmp_path, scenario, tone_library, fake_server)
    frames = load(run_dir)
    conns = frames.connections
    assert set(conns["worker"]) == {0, 1, 2, 3}
    drops = conns[conns["dropped"]]
    assert len(drops) >= 3  # mean 40 s over 4 x 240 s: ~24 expected
    assert set(drops["close_code"]) == {1006}
    assert set(drops["closed_by"]) == {"transport"}
    assert set(drops["injected_fault"]) == {"session_age"}  # server's ground truth joins
    # every worker reconnected after its drops and was closed by the harness at the end,
    # unless its last drop came too late to reconnect
    assert_ends_of_the_run(conns)
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
    lag = frames.events[frames.events["type"] == "loop_lag"]
    assert len(lag) >= 1 and (lag["lag_ms"] >= 0).all()  # the event loop watched itself


def assert_ends_of_the_run(conns) -> None:
    """Each worker's last connection was closed by the harness at the run's end (censored,
    1000), unless the fault dropped it too close to the end to reconnect (seen about once in
    twenty runs: 26 drops over 4 workers)."""
    last = conns.groupby("worker").tail(1)
    ended = last[last["censored"]]
    assert len(ended) >= 3
    assert (ended["cause"] == "scenario_end").all() and (ended["close_code"] == 1000).all()
    late = last[~last["censored"]]
    assert late["dropped"].all() and (late["closed"] > 240 - 2).all()


async def test_report_of_a_soak(tmp_path, tone_library, fake_server) -> None:
    run_dir = await soak(tmp_path, scenario_from(tmp_path, SCENARIO), tone_library, fake_server)
    report = build_report([run_dir])
    assert report.index.is_file()
    for name in ("survival", "close_codes", "utterances", "timeline"):
        assert (report.index.parent / f"{name}.png").stat().st_size > 5000
    summary = report.summary
    (variant,) = summary["variants"]
    conns = load(run_dir).connections
    assert_ends_of_the_run(conns)
    assert variant["drops"] == conns["dropped"].sum() >= 3
    assert variant["censored"] == conns["censored"].sum()
    assert any(row["close_code"] == "1006" for row in summary["close_codes"])
    assert summary["utterances"]["t"]["completed"] >= 20
    html = report.index.read_text()
    assert "data:image/png;base64," in html
    # self-contained: no link out, outside the inlined charts (whose base64 may spell "http")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html.split("<body>")[1])
    assert "http" not in text
    assert (run_dir / "frames" / "connections.parquet").is_file()


async def test_no_drops_without_faults(tmp_path, tone_library, fake_server) -> None:
    scenario = scenario_from(tmp_path, SCENARIO.split("[faults.session_age]")[0])
    assert not scenario.raw_faults
    frames = load(await soak(tmp_path, scenario, tone_library, fake_server))
    assert not frames.connections["dropped"].any()
    assert (frames.connections["cause"] == "scenario_end").all()


async def test_progress_lines_count_what_workers_do(tmp_path) -> None:
    import asyncio

    from harness.edge.clock import ScaledClock
    from harness.edge.worker import Progress
    from harness.log.recorder import Recorder
    from harness.run.runner import report_progress

    progress, lines = Progress(open=3, drops=2, completed=40, lost=1), []
    recorder = Recorder(tmp_path / "events-client.arrows")
    task = asyncio.ensure_future(
        report_progress(
            progress, recorder, ScaledClock(60.0), 1800.0, lines.append, tty=False, period=0.01
        )
    )
    while not lines:
        await asyncio.sleep(0.01)
    task.cancel()
    recorder.close()
    assert "3 open  2 drops  40 utterances (1 lost)" in lines[0]
    assert "/30.0 min" in lines[0] and "events/s" in lines[0]


async def test_workers_run_with_setup_frozen_out_of_the_collector(
    tmp_path, tone_library, fake_server
) -> None:
    """A full collection mid-run would stall every sender for as long as it scans the
    modules, the audio and the open connections: run_workers freezes them (and unfreezes at
    the end, so a process that goes on to build reports collects as usual)."""
    import asyncio
    import gc

    from harness.config.target import Target
    from harness.edge.clock import ScaledClock
    from harness.run.runner import freeze_after_ramp, run_workers

    scenario = scenario_from(tmp_path, SCENARIO.split("[faults.session_age]")[0])
    server = await fake_server()
    gc.unfreeze()
    run = asyncio.ensure_future(
        run_workers(
            scenario,
            ScaledClock(scenario.run.time_scale),
            Target.fake(server.url),
            tone_library,
            tmp_path,
            log=lambda *_: None,
            handle_signals=False,
        )
    )
    await asyncio.sleep(0.2)
    assert gc.get_freeze_count() > 0  # frozen from the start
    await run
    assert gc.get_freeze_count() == 0

    frozen = gc.get_freeze_count()
    later = [[] for _ in range(100)]  # allocated after the start: frozen once the ramp is over
    await freeze_after_ramp(ScaledClock(1000.0), ramp_up=0.0, settle=0.0)
    assert gc.get_freeze_count() >= frozen + len(later)
    gc.unfreeze()
