"""`rtsoak import`: production logs in the documented CSV / JSON lines shape become a run
directory whose frames say what the original run's say."""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import rtsoak, write_scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.log.frames import load
from harness.log.importer import (
    ImportOptions,
    LogImportError,
    import_logs,
)
from harness.report.analysis import survival_by_variant
from harness.report.diagnosis import HYPOTHESES, THRESHOLD_KEY

CENSORED_BY_THE_HARNESS = {"scenario_end": "client_close", "proactive": "client_close"}


def _value(value: Any) -> Any:
    return (
        None
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
        else value
    )


def export(run_dir: Path, out: Path, fmt: str, levels: bool = True) -> tuple[Path, Path]:
    """A run's connections and events frames in the shape docs/import.md documents: times as
    epoch seconds (the run's scenario seconds), one file per row kind; `levels`: with each
    append's dBFS."""
    frames = load(run_dir)
    conns = []
    for c in frames.connections.to_dict(orient="records"):
        status = _value(c["handshake_status"])
        conns.append(
            {
                "connection": str(c["connection"]),
                "open": c["opened"],
                "close": c["closed"],
                "code": _value(c["close_code"]),
                "established": _value(c["established"]),
                "status": "none" if status is None else int(status),
                "reason": _value(c["close_reason"]),
                "closed_by": str(c["closed_by"]),
                "variant": str(c["variant"]),
                "worker": int(c["worker"]),
                "request_id": _value(c["request_id"]),
                "session_id": _value(c["session_id"]),
            }
        )
    ev = frames.events
    ev = ev[(ev["src"] == "client") & ev["dir"].isin(["send", "recv"])]
    events = [
        {
            "time": e["t"],
            "connection": str(e["connection"]),
            "dir": str(e["dir"]),
            "type": str(e["type"]),
            "audio_ms": _value(e["audio_ms"]),
            **({"dbfs": _value(e["dbfs"])} if levels else {}),
            "item": _value(e["item"]),
            "text": _value(e["text"]),
            "bytes": _value(e["bytes"]),
        }
        for e in ev.to_dict(orient="records")
    ]
    return write(out / f"connections.{fmt}", conns), write(out / f"events.{fmt}", events)


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _listed(column: pd.Series) -> list[Any]:
    return [_value(v) for v in column.astype(object)]


def _by_key(conns: pd.DataFrame) -> pd.DataFrame:
    return conns.sort_values(["variant", "worker", "conn"]).reset_index(drop=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_round_trip_gives_the_same_connections_and_survival(
    finished_run: Path, tmp_path: Path, fmt: str
) -> None:
    conn_file, event_file = export(finished_run, tmp_path / "export", fmt)
    out = tmp_path / "imported"
    result = import_logs(ImportOptions((conn_file,), out, (event_file,)))
    original, imported = load(finished_run), load(out)
    a, b = _by_key(original.connections), _by_key(imported.connections)
    assert result.connections == len(a) and result.skipped == 0
    for col in ("variant", "worker", "conn", "dropped", "censored", "closed_by"):
        assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col
    for col in ("close_code", "handshake_status", "request_id", "session_id", "close_reason"):
        assert _listed(a[col]) == _listed(b[col]), col
    causes = a["cause"].astype(str).replace(CENSORED_BY_THE_HARNESS)
    assert causes.tolist() == b["cause"].astype(str).tolist()
    for col in ("lifetime", "handshake_latency", "audio_sent_ms"):
        pd.testing.assert_series_equal(a[col], b[col], check_names=False, atol=1e-6)
    # inferring, a commit sent empties the buffer at once; the worker waits for its answer
    unanswered = a["state"] == "awaiting_transcript"
    pd.testing.assert_series_equal(
        a["uncommitted_ms"][~unanswered], b["uncommitted_ms"][~unanswered], check_names=False
    )
    assert (b["uncommitted_ms"][unanswered] <= a["uncommitted_ms"][unanswered]).all()
    # the quiet before each end, and what was being done: the same interpretation of frames
    for col in ("since_sent", "since_recv"):
        pd.testing.assert_series_equal(a[col], b[col], check_names=False, atol=1e-6)
    assert (a["utterances_completed"] == b["utterances_completed"]).all()
    assert (b["closed"] - b["opened"]).round(6).equals((a["closed"] - a["opened"]).round(6))
    sa, _ = survival_by_variant(original.connections)
    sb, _ = survival_by_variant(imported.connections)
    assert [(s.variant, s.connections, s.drops, s.censored) for s in sa] == [
        (s.variant, s.connections, s.drops, s.censored) for s in sb
    ]
    for x, y in zip(sa, sb, strict=True):
        assert x.connection_hours == pytest.approx(y.connection_hours)
        assert x.median_s == pytest.approx(y.median_s, nan_ok=True)
        assert x.drops_per_hour == pytest.approx(y.drops_per_hour)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "import" and manifest["ground_truth"] is False
    assert [s["path"] for s in manifest["import"]["sources"]] == [str(conn_file), str(event_file)]
    assert "closed_by" in manifest["import"]["columns"]["connections"]
    assert "audio_ms" in manifest["import"]["columns"]["events"]


def test_round_trip_utterances_keep_their_fates(finished_run: Path, tmp_path: Path) -> None:
    conn_file, event_file = export(finished_run, tmp_path / "export", "jsonl")
    out = tmp_path / "imported"
    import_logs(ImportOptions((conn_file,), out, (event_file,)))
    original, imported = load(finished_run), load(out)
    a = original.utterances["status"].astype(str).value_counts()
    b = imported.utterances["status"].astype(str).value_counts()
    # the fake transcript's CRC cannot be checked without the audio: a completion stays one
    assert b.get("completed", 0) == a.reindex(["completed", "retried_ok", "mismatch"]).sum()
    # an utterance begins at its first append: one the worker began but dropped before any
    # audio left (state streaming, nothing uncommitted) is no utterance to an observer
    conns = original.connections
    unsent = conns["dropped"] & (conns["state"] == "streaming") & (conns["uncommitted_ms"] == 0)
    assert 0 <= a.get("lost", 0) - b.get("lost", 0) <= unsent.sum()
    assert set(b.index) <= {"completed", "lost", "failed", "rejected", "unfinished"}


CONNS = """\
connection,open,close,code,closed_by
a,2025-01-31T12:00:00Z,2025-01-31T12:05:00Z,1006,
b,1738324800,1738325000,1000,client
c,1738324800.5,1738325100,1011,server
"""


def test_connections_only_leave_the_state_unknown(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(CONNS)
    import_logs(ImportOptions((tmp_path / "c.csv",), tmp_path / "run"))
    conns = load(tmp_path / "run").connections
    assert conns["cause"].astype(str).tolist() == ["abnormal", "client_close", "server_close"]
    assert conns["dropped"].tolist() == [True, False, True]
    assert conns["lifetime"].tolist() == [300.0, 200.0, 299.5]
    assert conns["state"].isna().all() and conns["audio_sent_ms"].isna().all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["import"]["columns"] == {"connections": ["closed_by"], "events": None}


def test_without_closed_by_a_normal_closure_is_the_callers_and_others_the_servers(
    tmp_path: Path,
) -> None:
    (tmp_path / "c.jsonl").write_text(
        "".join(
            json.dumps({"connection": str(code), "open": 100, "close": 200, "code": code}) + "\n"
            for code in (1000, 1001, 1006, 1011, 4000)
        )
    )
    import_logs(ImportOptions((tmp_path / "c.jsonl",), tmp_path / "run"))
    conns = load(tmp_path / "run").connections.sort_values("close_code")
    assert conns["closed_by"].astype(str).tolist() == [
        "client",
        "client",
        "transport",
        "server",
        "server",
    ]
    assert conns["censored"].tolist() == [True, True, False, False, False]


def test_a_refused_handshake_is_handshake_failed_and_not_a_drop(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(
        "connection,open,close,code,status\nok,10,20,1000,101\nno,10,11,,429\nnone,10,15,,none\n"
    )
    import_logs(ImportOptions((tmp_path / "c.csv",), tmp_path / "run"))
    conns = load(tmp_path / "run").connections.set_index("handshake_error")
    failed = conns.loc[["HTTP 429", "no HTTP answer"]]
    assert (failed["cause"] == "handshake_failed").all() and not failed["dropped"].any()
    assert failed["close_code"].tolist()[0] == 429


def test_bad_rows_fail_with_file_line_and_field(tmp_path: Path) -> None:
    bad = CONNS.replace("1011,server", "abc,server").replace("b,1738324800,", "b,yesterday,")
    (tmp_path / "c.csv").write_text(bad)
    result = rtsoak("import", str(tmp_path / "c.csv"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'c.csv'}:3: open: not a time: 'yesterday'" in result.stderr
    assert f"{tmp_path / 'c.csv'}:4: code: not a whole number: 'abc'" in result.stderr
    assert "2 bad row(s)" in result.stderr and "--skip-bad" in result.stderr
    assert not (tmp_path / "run").exists()


def test_skip_bad_counts_what_it_skipped(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(CONNS + "d,1738324800,1738324700,1000,client\n")
    (tmp_path / "e.jsonl").write_text(
        json.dumps({"time": 1738324801, "connection": "d", "dir": "send", "type": "x"})
        + "\nnot json\n"
    )
    result = rtsoak(
        "import",
        str(tmp_path / "c.csv"),
        "--events",
        str(tmp_path / "e.jsonl"),
        "--out",
        str(tmp_path / "run"),
        "--skip-bad",
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 3 bad row(s)" in result.stderr
    assert "c.csv:5: close: before the connection opened" in result.stderr
    assert "e.jsonl:1: connection: 'd': its row (" in result.stderr
    assert "e.jsonl:2: not JSON" in result.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["import"]["skipped"] == 3
    assert len(load(tmp_path / "run").connections) == 3


def test_map_flags_read_a_logs_own_column_names(tmp_path: Path) -> None:
    renamed = CONNS.replace("connection,open,close,code", "conn_id,started_at,ended_at,close_code")
    (tmp_path / "c.csv").write_text(renamed)
    out = tmp_path / "run"
    unmapped = rtsoak("import", str(tmp_path / "c.csv"), "--out", str(out))
    assert unmapped.returncode == 2
    assert f"{tmp_path / 'c.csv'}:1: no column 'connection', 'open', 'close', 'code'" in (
        unmapped.stderr
    )
    assert "--map connection=NAME" in unmapped.stderr
    args = ["--map", "connection=conn_id", "--map", "open=started_at", "--map", "close=ended_at"]
    mapped = rtsoak(
        "import", str(tmp_path / "c.csv"), "--out", str(out), *args, "--map", "code=close_code"
    )
    assert mapped.returncode == 0, mapped.stderr
    assert "rtsoak report" in mapped.stdout
    assert load(out).connections["close_code"].tolist() == [1006, 1000, 1011]
    typo = rtsoak("import", str(tmp_path / "c.csv"), "--out", str(tmp_path / "x"), "--map", "opn=a")
    assert typo.returncode == 2 and "did you mean 'open'" in typo.stderr


def test_an_unknown_format_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(CONNS)
    result = rtsoak("import", str(tmp_path / "c.txt"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "c.txt: unknown format '.txt'; give .csv, .jsonl, .ndjson" in result.stderr


def test_an_imported_run_is_reported(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(CONNS)
    assert rtsoak("import", str(tmp_path / "c.csv"), "--out", str(tmp_path / "run")).returncode == 0
    report = rtsoak("report", str(tmp_path / "run"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "run" / "report" / "index.html").is_file()


def test_dbfs_on_appends_is_carried_into_the_event_log(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("connection,open,close,code\na,10,20,1006\n")
    (tmp_path / "e.csv").write_text(
        "time,connection,dir,type,audio_ms,dbfs\n"
        "11,a,send,input_audio_buffer.append,50,-12.5\n"
        "12,a,send,input_audio_buffer.append,50,\n"  # unknown
        "13,a,send,input_audio_buffer.append,50,-300\n"  # quieter than the floor: the floor
        "14,a,send,input_audio_buffer.commit,,-3\n"  # only appends carry a level
    )
    import_logs(ImportOptions((tmp_path / "c.csv",), tmp_path / "run", (tmp_path / "e.csv",)))
    ev = load(tmp_path / "run").events
    sent = ev[ev["dir"] == "send"]
    assert _listed(sent["dbfs"]) == [-12.5, None, -120.0, None]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "dbfs" in manifest["import"]["columns"]["events"]


def test_a_frame_logged_just_after_its_close_counts_at_the_close(tmp_path: Path) -> None:
    """A send in flight when the close came is logged when it returns: up to 5 s after the
    close it counts at the close; later it is a bad row, named."""
    (tmp_path / "c.csv").write_text("connection,open,close,code\na,10,20,1006\n")
    (tmp_path / "e.csv").write_text(
        "time,connection,dir,type,audio_ms\n"
        "19,a,send,input_audio_buffer.append,50\n"
        "23,a,send,input_audio_buffer.append,50\n"  # 3 s late: at the close
    )
    import_logs(ImportOptions((tmp_path / "c.csv",), tmp_path / "run", (tmp_path / "e.csv",)))
    ev = load(tmp_path / "run").events
    sent = ev[ev["dir"] == "send"]
    (closed,) = load(tmp_path / "run").connections["closed"]
    assert sent["t"].tolist() == [pytest.approx(closed - 1), pytest.approx(closed)]
    (tmp_path / "late.csv").write_text(
        "time,connection,dir,type,audio_ms\n26,a,send,input_audio_buffer.append,50\n"
    )
    result = rtsoak(
        "import", str(tmp_path / "c.csv"), "--events", str(tmp_path / "late.csv"),
        "--out", str(tmp_path / "run2"),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{tmp_path / 'late.csv'}:2: time: not between its connection's open and close" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("level", "message"),
    [("loud", "not a level in dBFS: 'loud'"), ("3", "3 dBFS: no PCM16 audio is louder")],
)
def test_a_level_that_is_no_dbfs_is_a_bad_row(tmp_path: Path, level: str, message: str) -> None:
    (tmp_path / "c.csv").write_text("connection,open,close,code\na,10,20,1006\n")
    (tmp_path / "e.csv").write_text(
        f"time,connection,dir,type,audio_ms,dbfs\n11,a,send,input_audio_buffer.append,50,{level}\n"
    )
    with pytest.raises(LogImportError) as caught:
        import_logs(ImportOptions((tmp_path / "c.csv",), tmp_path / "run", (tmp_path / "e.csv",)))
    assert f"e.csv:2: dbfs: {message}" in str(caught.value)


# A run with one known cause: a 23 s idle timeout, met by gaps of 2-45 s with nothing sent.
# 40 min at 60x is some 40 s wall and some 380 drops.
IDLE_FAULT = '[faults.idle_timeout]\nafter = "23s"\n'
IDLE_GAPS = '[silence]\ngap = "2s"\ngap_max = "45s"\nfill = "idle"\n'
FRAME_THEORIES = ("idle_timeout", "buffer_pressure", "rate", "micro_burst", "silence_hazard")
CONNECTION_THEORIES = ("max_duration", "session_age", "random_loss", "concurrency_cap")
NO_FRAMES = "Can't judge: the log has no per-frame rows (frames sent)."
NO_LEVELS = "Can't judge: the log has no audio levels (dbfs) of the appends sent."


def report(run_dir: Path) -> dict[str, Any]:
    """`rtsoak report` of a run directory: its summary.json."""
    result = rtsoak("report", str(run_dir), timeout=300)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return json.loads((run_dir / "report" / "summary.json").read_text())


def diagnosis(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """summary.json's diagnosis as {variant: {hypothesis: verdict}}."""
    return {
        variant: {v["hypothesis"]: v for v in verdicts}
        for variant, verdicts in summary["diagnosis"].items()
    }


def verdicts(summary: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        variant: {h: v["verdict"] for h, v in by.items()}
        for variant, by in diagnosis(summary).items()
    }


@pytest.fixture(scope="module")
def idle_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A real `rtsoak run` whose only fault is an idle timeout, and its report's summary."""
    tmp = tmp_path_factory.mktemp("idle")
    scenario = write_scenario(
        tmp, "idle", workers=6, duration="40m", time_scale=60, faults=IDLE_FAULT, extra=IDLE_GAPS
    )
    result = rtsoak("run", str(scenario), "--out", str(tmp / "runs"), "--seed", "7", "--no-report")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp / "runs").iterdir()
    return run_dir, report(run_dir)


def imported(
    run_dir: Path, out: Path, fmt: str, events: bool = True, levels: bool = True
) -> dict[str, Any]:
    """Export `run_dir` (its event rows, with levels or not, or none), import it into `out`,
    report it: its summary.json."""
    conn_file, event_file = export(run_dir, out.with_name(out.name + "-export"), fmt, levels)
    # the export's times are the run's scenario seconds, compressed as the run was
    scale = json.loads((run_dir / "manifest.json").read_text())["time_scale"]
    import_logs(ImportOptions((conn_file,), out, (event_file,) if events else (), time_scale=scale))
    return report(out)


def test_round_trip_of_a_run_with_a_known_cause_gives_the_same_diagnosis(
    idle_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, original = idle_run
    copy = imported(run_dir, tmp_path / "prod", "csv")
    assert len(copy["variants"]) == len(original["variants"])
    for x, y in zip(original["variants"], copy["variants"], strict=True):
        assert {k: y[k] for k in x} == {
            k: pytest.approx(v) if isinstance(v, float | list) else v for k, v in x.items()
        }
    assert verdicts(copy) == verdicts(original)
    a, b = diagnosis(original)["idle"], diagnosis(copy)["idle"]
    # the run's own cause, found in both
    assert a["idle_timeout"]["verdict"] == "supported"
    assert a["idle_timeout"]["threshold_ci"][0] <= 23 <= a["idle_timeout"]["threshold_ci"][1]
    for theory, v in a.items():
        if v["verdict"] == "supported" and theory in THRESHOLD_KEY:
            (lo, hi), (lo2, hi2) = v["threshold_ci"], b[theory]["threshold_ci"]
            assert lo <= hi2 and lo2 <= hi, (theory, v, b[theory])
    assert set(a) == set(b) == set(HYPOTHESES)


def test_an_import_without_levels_cannot_judge_silence_and_judges_the_rest_alike(
    idle_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, original = idle_run
    copy = imported(run_dir, tmp_path / "prod", "jsonl", levels=False)
    a, b = diagnosis(original)["idle"], diagnosis(copy)["idle"]
    assert b["silence_hazard"]["verdict"] == "inconclusive"
    assert b["silence_hazard"]["evidence"] == NO_LEVELS
    others = [h for h in HYPOTHESES if h != "silence_hazard"]
    assert {h: b[h]["verdict"] for h in others} == {h: a[h]["verdict"] for h in others}


def test_an_import_of_connection_rows_only_says_which_theories_it_cannot_judge(
    idle_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = idle_run
    out = tmp_path / "prod"
    summary = imported(run_dir, out, "csv", events=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["import"]["columns"]["events"] is None
    by = diagnosis(summary)["idle"]
    for theory in FRAME_THEORIES:
        assert (by[theory]["verdict"], by[theory]["evidence"]) == ("inconclusive", NO_FRAMES)
    for theory in (*CONNECTION_THEORIES, "handshake_faults"):
        assert not by[theory]["evidence"].startswith("Can't judge"), by[theory]
    cannot = {h for h, v in by.items() if v["evidence"].startswith("Can't judge")}
    assert cannot == set(FRAME_THEORIES)
    # the page says so too
    page = (out / "report" / "index.html").read_text()
    assert "the log has no per-frame rows" in page


HEADER = "connection,open,close,code,established,status,closed_by\n"
EVENTS_HEADER = "time,connection,dir,type,audio_ms,dbfs,item,text,bytes\n"
junk_line = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.one_of(
            st.sampled_from(["a", "b", "", "1000", "1006", "101", "none", "client", "1e400"]),
            st.text(max_size=12),
            st.floats(allow_nan=True).map(str),
        ),
        max_size=9,
    ).map(",".join),
    st.dictionaries(
        st.sampled_from(
            ["connection", "open", "close", "code", "time", "dir", "type", "audio_ms", "dbfs"]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    ).map(json.dumps),
    st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2)).map(json.dumps),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    conn_lines=st.lists(junk_line, max_size=5),
    event_lines=st.lists(junk_line, max_size=5),
    fmt=st.sampled_from(["csv", "jsonl"]),
    skip_bad=st.booleans(),
    raw=st.binary(max_size=20),
)
def test_junk_lines_give_the_clear_error_and_nothing_else(
    conn_lines: list[str], event_lines: list[str], fmt: str, skip_bad: bool, raw: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        conns, events = base / f"c.{fmt}", base / f"e.{fmt}"
        head = (HEADER, EVENTS_HEADER) if fmt == "csv" else ("", "")
        good = (
            "a,10,20,1006,,,\n"
            if fmt == "csv"
            else '{"connection":"a","open":10,"close":20,"code":1006}\n'
        )
        conns.write_bytes((head[0] + good + "\n".join(conn_lines)).encode() + raw)
        events.write_text(head[1] + "\n".join(event_lines))
        try:
            result = import_logs(
                ImportOptions((conns,), base / "run", (events,), skip_bad=skip_bad)
            )
        except LogImportError as exc:
            assert str(exc)
            assert not (base / "run").exists()
        else:
            assert result.connections >= 1
            assert skip_bad or result.skipped == 0
