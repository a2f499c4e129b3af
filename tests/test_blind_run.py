"""A blind run on one machine (issue 31): `rtsoak run --target ws://127.0.0.1:PORT/...` against
a separately started `rtsoak serve` runs compressed and uncapped, and its run directory holds
only the client's view, as a real endpoint's does; anything but loopback keeps real time. Such a
run stops at the first handshake that is not rtsoak's fake server's (a proxy to a paid service)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ROOT, rtsoak, write_scenario
from helpers import start_listener, stop_listener

from harness.config.scenario import TargetSection, load_scenario
from harness.config.target import LOOPBACK_PLACEHOLDER_KEY, TargetError, build_target
from harness.core.protocol import FAKE_SERVER_HEADER
from harness.log.frames import load
from harness.log.rundir import RunDir

SCALE = "60"

BLIND = """
[run]
name = "blind"
workers = 3
duration = "10m"
time_scale = 1
[audio]
dir = "{audio}"
[pacing]
chunk_ms = 50
"""

# 60 drops per connection-hour: some 30 over the run's half connection-hour, all 1006
LOSS = """
[faults.random_loss]
per_hour = 60
action = "abort"
"""


def start_serve(tmp_path: Path, faults: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`rtsoak serve` on an ephemeral loopback port at the run's time scale; its URL, read
    from the banner (stdout goes to a file: nobody has to drain a pipe)."""
    args = ["serve", "--port", "0", "--time-scale", SCALE, "--faults", str(faults), "--seed", "7"]
    return start_listener(tmp_path / "serve.out", args, timeout)


def test_a_blind_run_against_a_loopback_serve_is_compressed_uncapped_and_without_ground_truth(
    tmp_path: Path,
) -> None:
    write_scenario(tmp_path)  # the audio
    scenario = tmp_path / "blind.toml"
    scenario.write_text(BLIND.format(audio=tmp_path / "audio"))
    faults = tmp_path / "loss.toml"
    faults.write_text(LOSS)
    runs = tmp_path / "runs"
    # no key in the environment, no caps: nothing paid is reached
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    serve, url = start_serve(tmp_path, faults)
    try:
        assert url.startswith("ws://127.0.0.1:") and "/v1/realtime" in url
        result = rtsoak(
            "run", str(scenario), "--target", url, "--time-scale", SCALE, "--seed", "3",
            "--out", str(runs), timeout=180, env=env,
        )  # fmt: skip
    finally:
        stop_listener(serve)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is on this machine: no caps needed" in result.stdout
    assert f"at {SCALE}x against ws://127.0.0.1:" in result.stdout
    (run_dir,) = runs.iterdir()
    layout = RunDir(run_dir)
    manifest = layout.read_manifest()
    assert manifest["target"]["kind"] == "url"
    assert manifest["target"]["url"].startswith("ws://127.0.0.1:")
    assert manifest["time_scale"] == float(SCALE)
    # the client's view only, as against a real endpoint: no server log beside it
    assert not layout.server_log.exists()
    assert not list(run_dir.glob("events-server*"))
    frames = load(run_dir)
    assert set(frames.events["src"].astype(str)) == {"client"}
    conns = frames.connections
    assert conns["injected_fault"].isna().all()
    drops = conns[conns["dropped"]]
    assert len(drops) >= 3, conns[["cause", "close_code"]]
    assert (drops["close_code"] == 1006).all(), drops[["cause", "close_code"]]
    # the report is built and claims no ground truth
    assert layout.report.summary.is_file()
    html = layout.report.index.read_text()
    assert "ground truth" not in html.lower()
    assert "rtsoak injected" not in html


def test_a_compressed_run_against_a_url_off_this_machine_is_refused_before_any_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    def no_network(*args, **kwargs):
        raise AssertionError(f"network traffic attempted: {args}")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # main's handlers: not pytest's
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    write_scenario(tmp_path)
    scenario = tmp_path / "blind.toml"
    scenario.write_text(BLIND.format(audio=tmp_path / "audio"))
    runs = tmp_path / "runs"
    remote = ["--target", "wss://stt.example.invalid/v1/realtime", "--out", str(runs)]
    caps = ["--max-minutes", "20", "--max-audio-hours", "1"]
    code = main(["run", str(scenario), *remote, *caps, "--time-scale", SCALE])
    err = capsys.readouterr().err
    assert code == 2 and "real time" in err and "--time-scale 1" in err, err
    assert "loopback" in err
    code = main(["run", str(scenario), *remote, "--time-scale", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-minutes and --max-audio-hours" in err, err
    # openai with a loopback base URL is a stand-in for the paid service: today's rules
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    stand_in = ["--target", "openai", "--out", str(runs), *caps, "--time-scale", SCALE]
    code = main(["run", str(scenario), *stand_in])
    err = capsys.readouterr().err
    assert code == 2 and "real time" in err, err
    assert not runs.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "url",
    ["ws://127.0.0.1:9/v1/realtime", "ws://127.8.9.10/x", "ws://[::1]:9/x", "ws://localhost/x"],
)
def test_a_url_target_on_loopback_is_unpaid_and_needs_no_key(url: str) -> None:
    target = build_target("url", TargetSection(url=url), {})
    assert not target.paid
    assert target.headers == {"Authorization": f"Bearer {LOOPBACK_PLACEHOLDER_KEY}"}
    # a key that is set is sent, as to any url
    assert build_target("url", TargetSection(url=url), {"OPENAI_API_KEY": "k"}).headers == {
        "Authorization": "Bearer k"
    }


def test_every_other_real_target_is_paid() -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    for kind, url in (
        ("url", "wss://stt.example/v1/realtime"),
        ("url", "wss://localhost.example.com/v1/realtime"),
        ("url", "wss://10.0.0.1/v1/realtime"),
        ("openai", ""),  # a loopback base URL: a stand-in for the paid service
    ):
        assert build_target(kind, TargetSection(url=url), env).paid, (kind, url)
    with pytest.raises(TargetError, match="set OPENAI_API_KEY"):
        build_target("url", TargetSection(url="wss://stt.example/v1/realtime"), {})


def test_target_given_as_a_url_is_target_url_with_that_url(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path)).with_overrides(
        target="ws://127.0.0.1:9/v1/realtime"
    )
    assert scenario.run.target == "url"
    assert scenario.target.url == "ws://127.0.0.1:9/v1/realtime"
    assert all(v.target.url == scenario.target.url for v in scenario.variants)


def blind_scenario(tmp_path: Path) -> Path:
    write_scenario(tmp_path)  # the audio
    scenario = tmp_path / "blind.toml"
    scenario.write_text(BLIND.format(audio=tmp_path / "audio"))
    return scenario


def assert_refused_before_any_audio(code: int, out: str, err: str, runs: Path) -> None:
    """The run stopped at its first handshake as a configuration error (exit 2), said why and
    how to fix it, and sent nothing on any connection: no session.update, no append."""
    assert code == 2, out + err
    assert "the run stopped early: the server at ws://127.0.0.1:" in err, err
    assert f"is not rtsoak's fake server (no {FAKE_SERVER_HEADER} header)" in err, err
    assert "--max-audio-hours" in err and "--time-scale 1" in err, err
    (run_dir,) = runs.iterdir()
    manifest = RunDir(run_dir).read_manifest()
    assert "is not rtsoak's fake server" in manifest["stopped"]["error"]
    assert manifest["interrupted"] is True
    frames = load(run_dir)
    sent = frames.events[frames.events["dir"] == "send"]
    assert sent.empty, sent[["type"]]
    conns = frames.connections
    assert len(conns) >= 1 and (conns["handshake_status"] == 101).all()
    assert (conns["cause"].astype(str) == "scenario_end").all(), conns[["cause"]]  # censored


async def stand_in(received: list[str]) -> tuple[web.AppRunner, str]:
    """A loopback WebSocket server that is not rtsoak's fake server (no FAKE_SERVER_HEADER):
    it accepts any handshake, answers a session.update, and keeps what it receives."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
            if '"session.update"' in msg.data:
                await ws.send_str('{"type": "session.updated", "session": {}}')
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"ws://127.0.0.1:{port}/v1/realtime"


async def rtsoak_async(*args: str) -> tuple[int, str, str]:
    """`rtsoak ...` in a subprocess while this loop serves the stand-in."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_an_uncapped_blind_run_stops_at_a_server_that_is_not_the_fake_one(
    tmp_path: Path,
) -> None:
    scenario = blind_scenario(tmp_path)
    runs = tmp_path / "runs"
    received: list[str] = []
    runner, url = await stand_in(received)
    try:
        code, out, err = await rtsoak_async(
            "run", str(scenario), "--target", url, "--time-scale", SCALE, "--seed", "3",
            "--out", str(runs), "--no-report",
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert_refused_before_any_audio(code, out, err, runs)
    assert received == []  # the server got nothing either


async def test_a_blind_run_held_as_a_paid_one_goes_on_without_the_fake_server(
    tmp_path: Path,
) -> None:
    """What the refusal says to do works: at 1x with an audio budget, the run goes on."""
    scenario = blind_scenario(tmp_path)
    runs = tmp_path / "runs"
    received: list[str] = []
    runner, url = await stand_in(received)
    try:
        code, out, err = await rtsoak_async(
            "run", str(scenario), "--target", url, "--time-scale", "1", "--duration", "2s",
            "--max-audio-hours", "0.01", "--out", str(runs), "--no-report",
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert "stopped early" not in err, out + err
    assert any('"session.update"' in m for m in received)
    assert any('"input_audio_buffer.append"' in m for m in received)


def test_a_blind_run_through_rtsoak_proxy_is_refused_even_in_front_of_rtsoak_serve(
    tmp_path: Path,
) -> None:
    """The proxy never says it is the fake server, whatever its upstream says: a proxy may
    relay to a paid service, so a compressed, uncapped run must not go through one."""
    scenario = blind_scenario(tmp_path)
    faults = tmp_path / "loss.toml"
    faults.write_text(LOSS)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    serve, upstream = start_serve(tmp_path, faults)
    proxy = None
    try:
        proxy_args = ["proxy", "--upstream", upstream, "--time-scale", SCALE]
        proxy_args += ["--out", str(tmp_path / "proxy-runs"), "--duration", "30m"]
        proxy, url = start_listener(tmp_path / "proxy.out", proxy_args, 60)
        result = rtsoak(
            "run", str(scenario), "--target", url, "--time-scale", SCALE, "--seed", "3",
            "--out", str(runs), "--no-report", timeout=120, env=env,
        )  # fmt: skip
    finally:
        if proxy is not None:
            stop_listener(proxy)
        stop_listener(serve)
    assert_refused_before_any_audio(result.returncode, result.stdout, result.stderr, runs)
