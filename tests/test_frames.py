"""Frames from event logs: torn batches after a crash, connections left open, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.log.frames import load
from harness.log.recorder import APPEND, Recorder, appends_log, pack_append
from harness.log.rundir import RunDirError


def make_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"seed": 1}))
    rec = Recorder(run_dir / "events-client.arrows")
    row = rec.row
    row(1.0, 0.0, "client", "v", 0, 1, "meta", "conn_open")
    row(
        1.0,
        0.1,
        "client",
        "v",
        0,
        1,
        "meta",
        "handshake",
        code=101,
        item="req_a",
        detail={"latency": 0.1},
    )
    row(
        1.0,
        0.5,
        "client",
        "v",
        0,
        1,
        "meta",
        "utt_start",
        item="v/0/1",
        audio_ms=500.0,
        detail={"name": "x", "crc32": 5},
    )
    row(1.0, 0.6, "client", "v", 0, 1, "send", "input_audio_buffer.append", 2000, 20.0, 0.3)
    row(
        1.0,
        9.0,
        "client",
        "v",
        0,
        1,
        "meta",
        "conn_close",
        code=1006,
        item="req_a",
        detail={
            "closed_by": "transport",
            "cause": "abnormal",
            "state": "streaming",
            "opened": 0.0,
            "since_sent": 0.1,
            "since_recv": 0.2,
            "uncommitted_ms": 20.0,
            "audio_ms": 20.0,
            "completed": 0,
            "session_id": "sess_1",
        },
    )
    row(
        1.0,
        9.0,
        "client",
        "v",
        0,
        1,
        "meta",
        "utt_end",
        item="v/0/1",
        text="lost",
        detail={"item_id": None, "transcript": None, "latency": None},
    )
    rec.flush()
    row(2.0, 10.0, "client", "v", 0, 2, "meta", "conn_open")
    row(
        2.0,
        10.1,
        "client",
        "v",
        0,
        2,
        "meta",
        "handshake",
        code=101,
        item="req_b",
        detail={"latency": 0.1},
    )
    row(2.0, 30.0, "client", "v", 0, 2, "recv", "session.created", 900)
    rec.close()  # the second connection never closed: the process "crashed"
    return run_dir


def test_connections_and_utterances_from_events(tmp_path: Path) -> None:
    frames = load(make_run(tmp_path))
    conns = frames.connections
    assert list(conns["conn"]) == [1, 2]
    first, second = conns.iloc[0], conns.iloc[1]
    assert (first["close_code"], first["cause"], first["dropped"]) == (1006, "abnormal", True)
    assert first["lifetime"] == 9.0 - 0.1
    # cut off by the crash: censored at the last event seen, never counted as a drop
    assert (second["cause"], second["censored"], second["dropped"]) == ("interrupted", True, False)
    assert second["closed"] == 30.0
    assert frames.utterances.iloc[0]["status"] == "lost"
    assert isinstance(frames.events["type"].dtype, pd.CategoricalDtype)
    assert isinstance(conns["cause"].dtype, pd.CategoricalDtype)


def test_torn_last_batch_is_skipped_and_counted(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    log = run_dir / "events-client.arrows"
    data = log.read_bytes()
    log.write_bytes(data[:-40])  # a batch cut mid-write, as by SIGKILL
    frames = load(run_dir)
    assert frames.torn_batches == 1
    assert len(frames.connections) >= 1  # the first batch survives whole


def test_appends_read_back_as_sends_and_a_torn_appends_batch_is_skipped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    rec = Recorder(run_dir / "events-client.arrows")
    record, stream = rec.appends("v", 3, 2)
    for batch in range(2):
        for i in range(5):
            record(pack_append(1e9 + i, batch + i / 50, 2000, 20.0, 0.5, -42.5, stream))
        rec.flush()
    rec.close()
    log = appends_log(run_dir / "events-client.arrows")
    assert load(run_dir).events["type"].eq(APPEND).sum() == 10
    log.write_bytes(log.read_bytes()[:-60])  # the second batch cut mid-write
    frames = load(run_dir)
    assert frames.torn_batches == 1
    sends = frames.events
    assert len(sends) == 5 and (sends["t"] < 1).all()
    assert set(map(tuple, sends[["src", "variant", "dir", "type"]].astype(str).to_numpy())) == {
        ("client", "v", "send", APPEND)
    }
    assert (
        (sends["worker"] == 3).all() and (sends["conn"] == 2).all() and sends["code"].isna().all()
    )
    assert sends["lag_ms"].tolist() == [0.5] * 5
    assert sends["dbfs"].tolist() == [-42.5] * 5


def test_utterance_times_and_crc_of_a_real_run(finished_run: Path) -> None:
    utts = load(finished_run).utterances
    done = utts[utts["status"] == "completed"]
    assert len(done) >= 5 and done["crc_match"].all() and (done["attempt"] == 1).all()
    assert (done["started"] < done["committed"]).all() and (done["committed"] < done["ended"]).all()
    # latency is the utt_end row's time less the commit row's, whatever the machine did
    # between them (a 4 ms stall of a slow host is half a scenario second at 120x)
    assert (done["latency"] - (done["ended"] - done["committed"])).abs().max() < 1e-9
    assert utts.loc[utts["status"] == "lost", "crc_match"].isna().all()


def test_a_run_with_no_events_yet_loads_to_the_same_schema(
    tmp_path: Path, finished_run: Path
) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    empty, full = load(run_dir), load(finished_run)
    for name in ("events", "connections", "utterances"):
        frame = getattr(empty, name)
        assert frame.empty
        assert frame.dtypes.map(str).to_dict() == getattr(full, name).dtypes.map(str).to_dict()


def test_a_run_loaded_twice_is_refused(finished_run: Path) -> None:
    with pytest.raises(RunDirError, match="already loaded"):
        load([finished_run, finished_run])


def test_meta_details_that_disagree_on_types_still_parse() -> None:
    """Arrow's JSON reader wants one type per field; rows that disagree fall back to json."""
    from harness.log.frames import _details

    details = [json.dumps({"latency": 0.1, "x": "a"}), None, json.dumps({"latency": "slow"})]
    rows = pd.DataFrame({"detail": pd.array(details, dtype="string[pyarrow]")}, index=[5, 6, 7])
    parsed = _details(rows)
    assert list(parsed.index) == [5, 6, 7]
    assert parsed.loc[5, "latency"] == 0.1 and parsed.loc[7, "latency"] == "slow"
    assert pd.isna(parsed.loc[6, "latency"])


def test_the_report_loader_agrees_with_the_full_load(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_for_report streams the logs in chunks (tiny ones here, so rows cross chunk
    boundaries) and keeps only what a report reads; its frames are those of `load`."""
    import harness.log.frames as frames_module
    from harness.log.frames import ReportFrames, load_for_report
    from harness.report.findings import WINDOW_S, diagnose

    monkeypatch.setattr(frames_module, "_CHUNK_ROWS", 500)
    crashed = make_run(tmp_path)  # a drop, and a connection cut off by a crash
    for run_dir in (crashed, finished_run):
        full = ReportFrames.from_frames(load(run_dir))
        lean = load_for_report(run_dir, drop_window_s=WINDOW_S)
        pd.testing.assert_frame_equal(lean.connections, full.connections)
        pd.testing.assert_frame_equal(lean.utterances, full.utterances)
        assert (lean.rows, lean.torn_batches) == (full.rows, full.torn_batches)
        assert lean.manifests == full.manifests
        assert len(lean.events) < len(full.events)
        pd.testing.assert_series_equal(
            lean.lateness["lag_ms"], full.lateness["lag_ms"].reset_index(drop=True)
        )
        assert list(lean.lateness["variant"].astype(str)) == list(
            full.lateness["variant"].astype(str)
        )
        assert full.connections["dropped"].any()
        pd.testing.assert_series_equal(
            diagnose(lean.connections, lean.events), diagnose(full.connections, full.events)
        )


def test_the_report_loader_writes_the_events_parquet_of_the_full_frame(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk by chunk, yet the file reads back as the one pandas writes of the whole frame."""
    import harness.log.frames as frames_module
    from harness.log.frames import load_for_report, write_frames

    monkeypatch.setattr(frames_module, "_CHUNK_ROWS", 500)
    path = tmp_path / "lean" / "events.parquet"
    load_for_report(finished_run, events_parquet=path)
    assert not path.with_name("events.parquet.partial").exists()
    write_frames(load(finished_run), tmp_path / "full")
    written = pd.read_parquet(tmp_path / "full" / "events.parquet")
    assert len(written) > 1000
    pd.testing.assert_frame_equal(pd.read_parquet(path), written)


def test_the_report_loader_counts_a_torn_batch(tmp_path: Path) -> None:
    from harness.log.frames import load_for_report

    run_dir = make_run(tmp_path)
    log = run_dir / "events-client.arrows"
    log.write_bytes(log.read_bytes()[:-40])
    lean = load_for_report(run_dir)
    assert lean.torn_batches == 1
    pd.testing.assert_frame_equal(lean.connections, load(run_dir).connections)
