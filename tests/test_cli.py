"""The rtsoak command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rtsoak(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_missing_scenario_is_exit_2_without_traceback(tmp_path: Path) -> None:
    result = rtsoak("run", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_toml_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nworkers = 2\n")
    result = rtsoak("validate", str(bad))
    assert result.returncode == 2
    assert "bad.toml: is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_of_a_non_run_directory_is_exit_2(tmp_path: Path) -> None:
    result = rtsoak("report", str(tmp_path))
    assert result.returncode == 2
    assert "not a run directory" in result.stderr


def test_serve_refuses_a_non_loopback_host() -> None:
    result = rtsoak("serve", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr


def test_run_end_to_end_with_embedded_server(tmp_path: Path) -> None:
    """`rtsoak run` starts the fake server in its own process, soaks it, writes the report."""
    audio = tmp_path / "audio"
    audio.mkdir()
    import numpy as np
    import soundfile

    t = np.arange(16000) / 16000  # 1 s at 16 kHz: loading resamples to 24 kHz
    soundfile.write(audio / "a.wav", 0.3 * np.sin(2 * np.pi * 300 * t), 16000)
    scenario = tmp_path / "s.toml"
    scenario.write_text(f"""
[run]
name = "cli"
workers = 3
duration = "3m"
time_scale = 120
[audio]
dir = "{audio}"
[pacing]
chunk_ms = 50
[faults.session_age]
mean = "30s"
""")
    result = rtsoak("run", str(scenario), "--out", str(tmp_path / "runs"), "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "report " in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "report" / "index.html").is_file()
    assert (run_dir / "events-server.arrows").stat().st_size > 0
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["variants"][0]["drops"] >= 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["interrupted"] is False
    assert "rtsoak-fake-key" not in (run_dir / "manifest.json").read_text()


def test_list_shows_every_shipped_profile_and_scenario() -> None:
    from harness.fakeserver.faults import shipped_profiles

    result = rtsoak("list")
    assert result.returncode == 0
    for name in shipped_profiles():
        assert f"  {name} " in result.stdout
    assert "  smoke " in result.stdout


def test_serve_with_a_shipped_profile_listens_on_loopback() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "harness", "serve", "--faults",
                             "bad-key-loop", "--port", "0"], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        first = proc.stdout.readline()
        assert first.startswith("rtsoak fake server listening on ws://127.0.0.1:")
        import asyncio

        import aiohttp

        url = first.split(" on ")[1].strip()

        async def observe() -> tuple[int | None, str]:
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    url, headers={"Authorization": "Bearer k"}) as ws:
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type is aiohttp.WSMsgType.CLOSE:
                        return msg.data, msg.extra

        assert asyncio.run(observe()) == (1008, "Invalid API key")
    finally:
        proc.terminate()
        proc.wait(10)
