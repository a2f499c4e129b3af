"""Real targets: the exact URL and headers built for OpenAI, Azure and any URL, caps, and the
key never written anywhere (a local TLS-less stand-in plays the service)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from harness.config.scenario import TargetSection
from harness.config.target import TargetError, build_target
from harness.edge.server import ServerConfig
from harness.log.recorder import Recorder

CANARY = "sk-canary-9f8e7d6c5b4a3210"


def test_openai_url_and_bearer_header() -> None:
    target = build_target("openai", TargetSection(), {"OPENAI_API_KEY": CANARY})
    assert target.url == "wss://api.openai.com/v1/realtime?intent=transcription"
    assert target.headers == {"Authorization": f"Bearer {CANARY}"}
    local = build_target(
        "openai",
        TargetSection(),
        {"OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
    )
    assert local.url == "ws://127.0.0.1:9/v1/realtime?intent=transcription"


def test_azure_ga_and_preview_paths_with_api_key_header() -> None:
    env = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com/", "AZURE_OPENAI_API_KEY": CANARY}
    ga = build_target("azure", TargetSection(deployment="stt"), env)
    assert ga.url == (
        "wss://res.openai.azure.com/openai/v1/realtime?intent=transcription&deployment=stt"
    )
    assert ga.headers == {"api-key": CANARY}
    preview = build_target(
        "azure", TargetSection(deployment="stt", api_version="2025-04-01-preview"), env
    )
    assert preview.url == (
        "wss://res.openai.azure.com/openai/realtime?api-version="
        "2025-04-01-preview&intent=transcription&deployment=stt"
    )


def test_url_target_with_custom_header() -> None:
    target = build_target(
        "url",
        TargetSection(url="wss://stt.example/v1/realtime?x=1", header="api-key", key_env="MY_KEY"),
        {"MY_KEY": CANARY},
    )
    assert target.url == "wss://stt.example/v1/realtime?x=1"
    assert target.headers == {"api-key": CANARY}


@pytest.mark.parametrize(
    ("kind", "section", "env", "message"),
    [
        ("openai", TargetSection(), {}, "set OPENAI_API_KEY"),
        (
            "azure",
            TargetSection(deployment="d"),
            {"AZURE_OPENAI_API_KEY": "k"},
            "set AZURE_OPENAI_ENDPOINT",
        ),
        (
            "azure",
            TargetSection(),
            {"AZURE_OPENAI_ENDPOINT": "https://r", "AZURE_OPENAI_API_KEY": "k"},
            "deployment",
        ),
        (
            "openai",
            TargetSection(),
            {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://10.0.0.1/v1"},
            "only loopback may be reached without TLS",
        ),
        ("url", TargetSection(url="ftp://x"), {"OPENAI_API_KEY": "k"}, "not an http"),
    ],
)
def test_unusable_targets_say_what_to_fix(kind, section, env, message) -> None:
    with pytest.raises(TargetError, match=message):
        build_target(kind, section, env)


def test_key_absent_from_repr_and_description() -> None:
    target = build_target("openai", TargetSection(), {"OPENAI_API_KEY": CANARY})
    assert CANARY not in repr(target) and CANARY not in json.dumps(target.describe())


SCENARIO = """
[run]
name = "real"
duration = "3s"
workers = 2
time_scale = 1
target = "{kind}"
[audio]
dir = "{audio}"
[pacing]
chunk_ms = 100
[silence]
gap = "300ms"
[target]
deployment = "stt-deploy"
"""


def _audio(tmp_path: Path) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(12000) / 24000
    soundfile.write(audio / "a.wav", 0.3 * np.sin(2 * np.pi * 300 * t), 24000)
    return audio


async def _rtsoak(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harness",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode()


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_run_against_a_stand_in_never_writes_the_key(
    tmp_path, fake_server, kind: str
) -> None:
    log = Recorder(tmp_path / "stand-in.arrows")
    server = await fake_server(ServerConfig(api_keys=frozenset({CANARY})), recorder=log)
    base = f"http://127.0.0.1:{server.port}"
    env = dict(
        os.environ,
        OPENAI_API_KEY=CANARY,
        OPENAI_BASE_URL=f"{base}/v1",
        AZURE_OPENAI_API_KEY=CANARY,
        AZURE_OPENAI_ENDPOINT=base,
    )
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(kind=kind, audio=_audio(tmp_path)))
    runs = tmp_path / "runs"
    code, out = await _capped_run(scenario, runs, env)
    assert code == 0, out
    assert "audio hours" in out
    log.close()
    from harness.log.frames import load

    (run_dir,) = runs.iterdir()
    conns = load(run_dir).connections
    assert (conns["handshake_status"] == 101).all()  # the stand-in accepted only the canary
    opened = load_stand_in(tmp_path / "stand-in.arrows")
    expected = (
        "/v1/realtime?intent=transcription"
        if kind == "openai"
        else "/openai/v1/realtime?intent=transcription&deployment=stt-deploy"
    )
    assert {d["path"] for d in opened} == {expected}
    header = "authorization" if kind == "openai" else "api-key"
    assert all(header in [h.lower() for h in d["headers"]] for d in opened)
    # the key is nowhere: not in any file of the run, not in what rtsoak printed
    assert CANARY not in out
    assert_no_canary(run_dir)


async def _capped_run(scenario: Path, out: Path, env: dict[str, str]) -> tuple[int, str]:
    """`rtsoak run` against a real-target kind, with the caps it requires."""
    args = ["run", str(scenario), "--out", str(out), "--max-minutes", "1"]
    return await _rtsoak([*args, "--max-audio-hours", "0.01"], env)


def assert_no_canary(run_dir: Path) -> None:
    """The key is in no file the run wrote."""
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def load_stand_in(path: Path) -> list[dict]:
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.OSFile(str(path))).read_all().to_pylist()
    return [json.loads(r["detail"]) for r in table if r["type"] == "session_open"]


async def test_real_target_refuses_to_start_without_caps(tmp_path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(kind="openai", audio=_audio(tmp_path)))
    env = dict(os.environ, OPENAI_API_KEY=CANARY, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    code, out = await _rtsoak(["run", str(scenario), "--out", str(tmp_path / "r")], env)
    assert code == 2 and "--max-minutes and --max-audio-hours" in out
    code, out = await _rtsoak(
        [
            "run",
            str(scenario),
            "--out",
            str(tmp_path / "r"),
            "--max-minutes",
            "1",
            "--max-audio-hours",
            "0.0001",
        ],
        env,
    )
    assert code == 2 and "over --max-audio-hours" in out
    code, out = await _rtsoak(
        [
            "run",
            str(scenario),
            "--out",
            str(tmp_path / "r"),
            "--max-minutes",
            "1",
            "--max-audio-hours",
            "1",
            "--time-scale",
            "60",
        ],
        env,
    )
    assert code == 2 and "real time" in out
    assert not (tmp_path / "r").exists()  # refused before anything was written
    assert CANARY not in out


def test_keys_in_url_queries_are_refused_and_redacted() -> None:
    from harness.config.target import Target, redact_url

    with pytest.raises(TargetError, match="api-key in its query: keys belong in the environment"):
        build_target(
            "url",
            TargetSection(url=f"wss://stt.example/rt?api-key={CANARY}"),
            {"OPENAI_API_KEY": "k"},
        )
    assert CANARY not in redact_url(f"ws://127.0.0.1:1/v1/realtime?x=1&token={CANARY}")
    leaky = Target("url", f"wss://h/rt?sig={CANARY}&intent=transcription")
    assert CANARY not in repr(leaky) and CANARY not in json.dumps(leaky.describe())
    assert "intent=transcription" in leaky.describe()["url"]


URL_SCENARIO = """
[run]
name = "url"
duration = "2s"
workers = 1
target = "url"
[audio]
dir = "{audio}"
[pacing]
chunk_ms = 100
[target]
url = "ws://127.0.0.1:{port}/openai/v1/realtime?intent=transcription"
header = "api-key"
key_env = "MY_STT_KEY"
"""


async def test_url_target_sends_the_key_only_in_its_header(tmp_path, fake_server) -> None:
    server = await fake_server(ServerConfig(api_keys=frozenset({CANARY})))
    scenario = tmp_path / "s.toml"
    scenario.write_text(URL_SCENARIO.format(audio=_audio(tmp_path), port=server.port))
    env = dict(os.environ, MY_STT_KEY=CANARY)
    code, out = await _capped_run(scenario, tmp_path / "runs", env)
    assert code == 0, out
    (run_dir,) = (tmp_path / "runs").iterdir()
    from harness.log.frames import load

    assert (load(run_dir).connections["handshake_status"] == 101).all()
    assert CANARY not in out
    assert_no_canary(run_dir)


async def test_redirects_are_not_followed(tmp_path, fake_server) -> None:
    """A handshake answered with a redirect to another host fails; nothing connects there."""
    from aiohttp import web

    elsewhere = await fake_server()
    elsewhere_log = Recorder(tmp_path / "elsewhere.arrows")
    elsewhere.recorder = elsewhere_log

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{elsewhere.port}/v1/realtime?intent=transcription")

    app = web.Application()
    app.router.add_get("/v1/realtime", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    env = dict(os.environ, OPENAI_API_KEY=CANARY, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(kind="openai", audio=_audio(tmp_path)))
    code, out = await _capped_run(scenario, tmp_path / "runs", env)
    await runner.cleanup()
    elsewhere_log.close()
    assert code == 0, out
    (run_dir,) = (tmp_path / "runs").iterdir()
    from harness.log.frames import load, read_log

    conns = load(run_dir).connections
    assert len(conns) and (conns["handshake_status"] == 302).all()
    assert (conns["cause"] == "handshake_failed").all()
    # the server at the redirect's target is listening, and nothing reached it
    seen, _ = read_log(tmp_path / "elsewhere.arrows")
    assert len(seen) == 0
    assert load_stand_in(tmp_path / "elsewhere.arrows") == []  # nobody reached the other host
