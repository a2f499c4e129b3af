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

from harness.log.frames import load
from harness.log.rundir import RunDir

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

    def wait_for_rows(self, timeout: float = 30.0, min_connections: int = 3) -> None:
        """Until the event log holds established connections and some appends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if self.out.is_dir() and any(self.out.iterdir()) and RunDir(self.run_dir).is_run_dir():
                frames = load(self.run_dir)
                appends = (frames.events["type"] == "input_audio_buffer.append").sum()
                established = frames.connections["established"].notna().sum()
                if established >= min_connections and appends > 50:
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


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: stdlib only)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (or init) to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_gone_soon(children: list[int], since: float, within: float = 15.0) -> None:
    while time.monotonic() - since < within and any(map(_alive, children)):
        time.sleep(0.05)
    left = [pid for pid in children if _alive(pid)]
    try:
        assert not left, f"{left} outlived the killed runner by {within} s"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    print(f"children gone {time.monotonic() - since:.2f} s after the kill")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_procs_children_die_with_a_killed_parent_while_their_target_lives_on(
    tmp_path: Path,
) -> None:
    """kill -9 of the runner: its --procs child sees the stdin pipe from it end and stops
    within seconds, not at the end of its duration, though its target is still there to
    send to (a server of the test's own, as a real endpoint would be)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    run = None
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" on ")[1].strip()
        scenario = write_scenario(
            tmp_path,
            name="orphans",
            workers=2,
            duration="10m",
            time_scale=1,
            extra=f'[target]\nurl = "{url}"\n',
        )
        run = Run.__new__(Run)  # Run's files and waits, with a command of our own
        run.out = tmp_path / "runs"
        run.stdout = (tmp_path / "stdout.txt").open("w")
        run.stderr = (tmp_path / "stderr.txt").open("w")
        run.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                str(scenario),
                "--out",
                str(run.out),
                "--target",
                "url",
                "--max-minutes",
                "20",
                "--max-audio-hours",
                "1",
                "--procs",
                "2",
            ],
            cwd=ROOT,
            stdout=run.stdout,
            stderr=run.stderr,
            env=dict(os.environ, OPENAI_API_KEY="rtsoak-test-key"),
        )
        run.wait_for_rows(min_connections=2)
        children = _children(run.proc.pid)
        assert len(children) == 1, children  # one client process; the server is ours
        os.kill(run.proc.pid, signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        _assert_gone_soon(children, time.monotonic())
        assert server.poll() is None  # the target was there all along
    finally:
        if run is not None:
            run.kill()
        server.terminate()
        server.wait(10)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_procs_children_and_the_embedded_server_die_with_a_killed_parent(background_run) -> None:
    """The same with the embedded fake server: it too stops when its stdin pipe ends."""
    run = background_run("--procs", "2")
    run.wait_for_rows()
    children = _children(run.proc.pid)
    assert len(children) == 2, children  # the embedded server and one client process
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    _assert_gone_soon(children, time.monotonic())
