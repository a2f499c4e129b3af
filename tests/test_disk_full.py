"""A disk that fills up during a run: the run stops within a second or two, says which log it
could not write and why, exits 2, and leaves frames and a partial report of what was written.

The full disk is injected at the recorder's file-write seam (RTSOAK_TEST_DISK_FULL_AFTER,
reserved for tests: every write past a byte budget fails with ENOSPC, as the kernel's does),
so no root or tmpfs is needed; everything else is real: the CLI in its own process, the
embedded fake server, sockets on loopback, --procs children."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import ROOT, write_scenario

from harness.log.frames import load
from harness.log.recorder import FULL_DISK_ENV, LogWriteError, Recorder

# An hour of scenario time at 60x: a minute of wall time unless something stops the run.
LONG = {"name": "full", "workers": 3, "duration": "1h", "time_scale": 60}


def run_with_full_disk(tmp_path: Path, budget: str, *args: str) -> tuple[int, str, str, float]:
    scenario = write_scenario(tmp_path, **LONG)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(scenario), "--out", str(tmp_path / "runs")]
        + list(args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=dict(os.environ, **{FULL_DISK_ENV: budget}),
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def assert_stopped_with_what_was_written(tmp_path: Path, stderr: str) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "Traceback" not in stderr, stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["interrupted"] is True and manifest["ended"] is not None
    # measured by the runner: from the failed write to the workers' stop, in wall seconds
    assert manifest["stopped"]["stopped_after_s"] < 10, manifest["stopped"]
    for name in ("events", "connections", "utterances"):
        assert (run_dir / "frames" / f"{name}.parquet").stat().st_size > 0
    assert "Partial report: " in (run_dir / "report" / "index.html").read_text()
    frames = load(run_dir)
    assert frames.connections["established"].notna().sum() >= 1
    return run_dir


def test_a_full_disk_stops_the_run_says_where_and_why_and_keeps_what_was_written(
    tmp_path: Path,
) -> None:
    code, stdout, stderr, wall = run_with_full_disk(tmp_path, "300000:*-client.arrows")
    assert code == 2, stdout + stderr
    assert re.search(
        r"/(events|appends)-client\.arrows: cannot write the event log "
        r"\(No space left on device\)",
        stderr,
    ), stderr
    assert "the run stopped early" in stderr
    run_dir = assert_stopped_with_what_was_written(tmp_path, stderr)
    assert str(run_dir) in stderr
    assert wall < 45  # the hour at 60x would take 60 s: it stopped long before


def test_a_full_disk_under_the_embedded_server_stops_the_run(tmp_path: Path) -> None:
    code, stdout, stderr, _ = run_with_full_disk(tmp_path, "30000:events-server.arrows")
    assert code == 2, stdout + stderr
    assert "events-server.arrows: cannot write the event log (No space left on device)" in stderr
    assert "the embedded fake server stopped" in stderr
    assert_stopped_with_what_was_written(tmp_path, stderr)


def test_a_full_disk_under_a_procs_child_stops_the_whole_run(tmp_path: Path) -> None:
    code, stdout, stderr, _ = run_with_full_disk(
        tmp_path, "200000:*-client-1.arrows", "--procs", "2"
    )
    assert code == 2, stdout + stderr
    assert re.search(
        r"-client-1\.arrows: cannot write the event log \(No space left on device\)", stderr
    ), stderr
    assert "the client process 1/2 stopped" in stderr
    assert_stopped_with_what_was_written(tmp_path, stderr)


async def test_a_failed_write_resolves_failed_and_nothing_is_written_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder stops at its last good batch (a batch after a torn one would make the rest
    unreadable), tells the run at once (`failed`) and raises LogWriteError on close."""
    monkeypatch.setenv(FULL_DISK_ENV, "20000")
    path = tmp_path / "events-client.arrows"
    rec = Recorder(path, flush_every=0.01)
    rec.start()
    assert rec.failed is not None
    for i in range(10_000):
        rec.row(float(i), 0.0, "client", "v", 0, 1, "recv", "x", 1, text="y" * 20)
        if i % 50 == 49:
            await asyncio.sleep(0.02)
        if rec.failed.done():
            break
    assert rec.failed.done(), "a write past the budget must fail the recorder"
    assert isinstance(rec.failed.result(), LogWriteError)
    size = path.stat().st_size
    with pytest.raises(LogWriteError, match="events-client.arrows: cannot write the event log"):
        await rec.aclose()
    assert path.stat().st_size == size <= 20000
    with pa.OSFile(str(path)) as source:  # what was written reads back
        reader = pa.ipc.open_stream(source)
        assert reader.read_all().num_rows == rec.count > 0
