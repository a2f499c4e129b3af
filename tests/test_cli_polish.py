"""The command line as a new user meets it: signals on the long-running commands, help texts,
--version, validate catching what run would refuse, and the README's commands against the real
--help."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import ROOT
from websockets.sync.client import connect

from harness.frames import read_log


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert " listening on " in first, proc.stderr.read() if proc.stderr else first
    return proc, first.split(" listening on ", 1)[1].strip()


def test_serve_stops_on_sigterm_with_its_log_complete(tmp_path) -> None:
    """SIGTERM (what systemd, docker and CI send) closes the open session and the log: the
    closing row of a session still open is in the log, and the exit is a clean 0."""
    proc, url = _serve("--out", str(tmp_path / "log"))
    try:
        with connect(url, additional_headers={"Authorization": "Bearer k"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    table, torn = read_log(tmp_path / "log" / "events-server.arrows")
    types = table.column("type").to_pylist()
    assert torn == 0
    assert types.count("session_open") == 1 and types.count("session_close") == 1, types
    close = table.filter(table.column("type").to_numpy(zero_copy_only=False) == "session_close")
    assert close.column("text").to_pylist() == ["shutdown"]  # closed 1001 by the server


def test_proxy_stops_on_sigterm_with_0_and_its_report(tmp_path) -> None:
    """Ctrl-C (or SIGTERM) is how a proxy session ends: exit 0, the report written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "proxy", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" listening on ", 1)[1].strip()
        with connect(url, additional_headers={"Authorization": "Bearer k"}) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "rtsoak: report" in out
