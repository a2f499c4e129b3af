"""`rtsoak run` interrupted as users and machines do it: SIGINT, SIGINT twice, SIGKILL. Real
processes on loopback; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, rtsoak, write_scenario

from harness.frames import is_run_dir, load

if sys.platform == "win32":
    pytest.skip("POSIX signals", allow_module_level=True)


class Run:
    """A long `rtsoak run` in the background (an hour of scenario time at 60x: a minute of
    wall time, far longer than any test waits), output to files so no pipe fills up."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        scenario = write_scenario(tmp_path, name="long", workers=3, duration="1h", time_scale=60)
        self.out = tmp_path / "runs"
        self.stdout = (tmp_path / "stdout.txt").open("w")
        self.stderr = (tmp_path / "stderr.txt").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", str(scenario), "--out", str(self.out), *args],
            cwd=ROOT,
            stdout=self.stdout,
            stderr=self.stderr,
        )

    @property
    def run_dir(self) -> Path:
        (run_dir,) = self.out.iterdir()
        return run_dir

    def wait_for_rows(self, timeout: float = 30.0) -> None:
        """Until the event log holds established connections and some appends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if self.out.is_dir() and any(self.out.iterdir()) and is_run_dir(self.run_dir):
                frames = load(self.run_dir)
                appends = (frames.events["type"] == "input_audio_buffer.append").sum()
                if frames.connections["established"].notna().sum() >= 3 and appends > 50:
                    return
            time.sleep(0.1)
        raise AssertionError(f"no rows within {timeout} s\n{self.output()}")

    def wait_for_server_exit(self, timeout: float = 10.0) -> None:
        """Until the embedded fake server is gone. Left behind by a second signal, it sees its
        stdin close and writes its last rows on the way out; reading the run before then
        can catch that batch half-written."""
        marker = str(self.run_dir).encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = False
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes().split(b"\0")
                except OSError:  # gone meanwhile
                    continue
                alive |= b"serve" in args and marker in args
            if not alive:
                return
            time.sleep(0.05)
        raise AssertionError(f"the embedded server outlived its run by {timeout} s")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.stdout.close()
            self.stderr.close()

    def output(self) -> str:
        self.stdout.flush()
        self.stderr.flush()
        return Path(self.stdout.name).read_text() + Path(self.stderr.name).read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def background_run(tmp_path: Path):
    runs: list[Run] = []

    def start(*args: str) -> Run:
        runs.append(Run(tmp_path, *args))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_first_signal_stops_cleanly_writes_frames_and_partial_report(
    background_run, sig: int
) -> None:
    run = background_run()
    run.wait_for_rows()
    run.proc.send_signal(sig)
    assert run.wait() == 130, run.output()
    run_dir = run.run_dir
    for name in ("events", "connections", "utterances"):
        assert (run_dir / "frames" / f"{name}.parquet").stat().st_size > 0
    assert "Partial report: " in (run_dir / "report" / "index.html").read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["interrupted"] is True and manifest["ended"] is not None
    assert isinstance(manifest["saturated"], bool)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["runs"][run_dir.name]["status"] == "interrupted"
    # the workers closed their open connections with 1000 and count them as censored; a
    # worker's last connection may instead be one the session-age fault dropped just before
    # the signal, while its reconnect was still waiting out its backoff
    frames = load(run_dir)
    assert frames.torn_batches == 0
    last = frames.connections.groupby("worker").tail(1)
    assert len(last) == 3
    ours = last[last["injected_fault"].isna()]
    assert len(ours) >= 1 and (last.loc[last["injected_fault"].notna(), "dropped"]).all()
    assert (ours["cause"] == "scenario_end").all() and ours["censored"].all()
    assert (ours["closed_by"] == "client").all() and (ours["close_code"] == 1000).all()


def test_second_sigint_exits_at_once_with_the_log_intact(background_run) -> None:
    run = background_run("--no-report")
    run.wait_for_rows()
    run.proc.send_signal(signal.SIGINT)
    run.proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert run.wait(timeout=10) == 130, run.output()
    assert time.monotonic() - started < 5
    run.wait_for_server_exit()
    frames = load(run.run_dir)
    assert frames.torn_batches == 0
    assert frames.connections["established"].notna().sum() >= 3


def test_sigkill_loses_at_most_about_a_second_and_report_works(background_run) -> None:
    run = background_run()
    run.wait_for_rows()
    time.sleep(1.0)  # a stretch of steady recording before the crash
    killed_at = time.time()
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    run_dir = run.run_dir
    frames = load(run_dir)
    client = frames.events[frames.events["src"] == "client"]
    lost = killed_at - client["wall"].max()
    print(f"rows up to {lost:.3f} s before the kill are in the log")
    assert 0 <= lost < 1.0, f"the last {lost:.2f} s before the kill were not in the log"
    # connections still open are censored at the last event, not counted as drops
    open_at_kill = frames.connections[frames.connections["cause"] == "interrupted"]
    assert len(open_at_kill) >= 1 and open_at_kill["censored"].all()
    assert json.loads((run_dir / "manifest.json").read_text())["ended"] is None
    result = rtsoak("report", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "Partial report: " in (run_dir / "report" / "index.html").read_text()
    assert (run_dir / "frames" / "connections.parquet").is_file()
