"""`serve --tls` and `proxy --tls`: the official SDKs, at their defaults, configured by nothing
but the `export` lines the banner prints, transcribe a fixture over wss:// on loopback."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from conftest import ROOT

from harness.config.audio import load_file
from harness.core.transcript import parse_transcript
from harness.edge.tls import tls_files

FIXTURE = ROOT / "fixtures" / "audio" / "espeak-confirm.wav"

# The client sees only what the banner printed (and PATH to find its tools).
PYTHON_CLIENT = textwrap.dedent(
    """
    import asyncio, base64, sys
    from openai import AsyncAzureOpenAI, AsyncOpenAI

    async def transcribe(client, **kwargs):
        pcm = open(sys.argv[1], "rb").read()
        async with client.realtime.connect(extra_query={"intent": "transcription"}, **kwargs) as c:
            await c.session.update(
                session={"type": "transcription", "audio": {"input": {"turn_detection": None}}}
            )
            for i in range(0, len(pcm), 9600):  # 200 ms appends
                await c.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 9600]).decode())
            await c.input_audio_buffer.commit()
            async for event in c:
                assert event.type != "error", event
                if event.type == "conversation.item.input_audio_transcription.completed":
                    return event.transcript

    async def main():
        print(await transcribe(AsyncOpenAI()))
        print(await transcribe(AsyncAzureOpenAI(), model="stt-deployment"))

    asyncio.run(main())
    """
)

NODE_CLIENT = textwrap.dedent(
    """
    const { createRequire } = require('node:module');
    const req = createRequire(process.argv[2] + '/');
    const { OpenAI, AzureOpenAI } = req('openai');
    const { OpenAIRealtimeWS } = req('openai/realtime/ws');
    const pcm = require('node:fs').readFileSync(process.argv[3]);

    function transcribe(rt) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no transcript in 20 s')), 20000);
        rt.on('error', (err) => { clearTimeout(timer); reject(err); });
        rt.on('session.created', () => {
          rt.send({ type: 'session.update', session: { type: 'transcription',
                    audio: { input: { turn_detection: null } } } });
          rt.send({ type: 'input_audio_buffer.append', audio: pcm.toString('base64') });
          rt.send({ type: 'input_audio_buffer.commit' });
        });
        rt.on('conversation.item.input_audio_transcription.completed', (ev) => {
          clearTimeout(timer); rt.close(); resolve(ev.transcript);
        });
      });
    }

    (async () => {
      console.log(await transcribe(new OpenAIRealtimeWS({ model: 'gpt-realtime' }, new OpenAI())));
      const azure = await OpenAIRealtimeWS.azure(new AzureOpenAI(), { deploymentName: 'stt' });
      console.log(await transcribe(azure));
    })().catch((err) => { console.error(err.message); process.exit(1); });
    """
)


def _node_openai() -> Path | None:
    """A directory whose node_modules holds the openai package (6.x) and ws, installed by hand
    (the suite never installs): $RTSOAK_NODE_OPENAI, or ~/.cache/rtsoak/node-openai."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = Path(os.environ.get("RTSOAK_NODE_OPENAI") or home / "rtsoak" / "node-openai")
    ok = all((where / "node_modules" / p / "package.json").is_file() for p in ("openai", "ws"))
    return where if ok else None


class Listening:
    """`python -m harness ARGS` until its banner is whole; the exports it printed, parsed."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **(env or {})},
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        while not self.lines or not self.lines[-1].startswith("Stop with Ctrl-C"):
            line = self.proc.stdout.readline()
            assert line, f"exited {self.proc.wait()}: {self.proc.stderr.read()}"
            self.lines.append(line.rstrip("\n"))
        self.url = self.lines[0].split(" listening on ", 1)[1]
        self.exports: dict[str, str] = {}
        for line in self.lines:
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                self.exports.update(w.split("=", 1) for w in words[1:])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=60)
        return out + err


@pytest.fixture
def listening(tmp_path):
    started: list[Listening] = []

    def start(*args: str, **kwargs) -> Listening:
        started.append(Listening(tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


@pytest.fixture
def fixture_pcm(tmp_path) -> Path:
    path = tmp_path / "fixture.pcm"
    path.write_bytes(load_file(FIXTURE).pcm)
    return path


def _client(argv: list[str], exports: dict[str, str]) -> list[str]:
    """Run a client with the banner's environment and nothing else of ours."""
    env = {"PATH": os.environ["PATH"], **exports}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def _assert_transcribed(lines: list[str], pcm: Path) -> None:
    assert len(lines) == 2  # the OpenAI and the Azure client
    for transcript in lines:
        assert parse_transcript(transcript).crc32 == zlib.crc32(pcm.read_bytes())


def test_the_python_sdk_transcribes_over_serve_tls_with_only_the_printed_environment(
    listening, fixture_pcm, tmp_path
) -> None:
    server = listening("serve", "--tls", "--port", "0")
    assert server.url.startswith("wss://127.0.0.1:")
    assert set(server.exports) == {
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_API_KEY",
        "OPENAI_API_VERSION",
    }
    port = server.url.split(":")[2].split("/")[0]
    assert server.exports["OPENAI_BASE_URL"] == f"https://127.0.0.1:{port}/v1"
    assert server.exports["AZURE_OPENAI_ENDPOINT"] == f"https://127.0.0.1:{port}"
    assert Path(server.exports["SSL_CERT_FILE"]).is_relative_to(tmp_path / "cache" / "rtsoak")
    lines = _client([sys.executable, "-c", PYTHON_CLIENT, str(fixture_pcm)], server.exports)
    _assert_transcribed(lines, fixture_pcm)
    out = server.stop()
    assert server.proc.returncode == 0, out


def test_the_python_sdk_transcribes_through_proxy_tls_in_front_of_a_serve(
    listening, fixture_pcm, tmp_path
) -> None:
    upstream = listening("serve", "--port", "0")
    origin = upstream.url.split("/v1/")[0]
    proxy = listening(
        "proxy",
        "--tls",
        "--upstream",
        f"{origin}/v1/realtime",
        "--out",
        str(tmp_path / "runs"),
        env={"OPENAI_API_KEY": "sk-upstream-only"},
    )
    assert proxy.url.startswith("wss://127.0.0.1:")
    assert proxy.exports["OPENAI_BASE_URL"].startswith("https://127.0.0.1:")
    lines = _client([sys.executable, "-c", PYTHON_CLIENT, str(fixture_pcm)], proxy.exports)
    _assert_transcribed(lines, fixture_pcm)
    out = proxy.stop()
    assert proxy.proc.returncode == 0, out
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["utterances"]["proxy"]["completed"] == 2


def test_the_certificates_are_made_once_and_reused(tmp_path) -> None:
    first = tls_files(tmp_path / "tls")
    ca = first.ca.read_bytes()
    assert tls_files(tmp_path / "tls") == first and first.ca.read_bytes() == ca
    assert first.bundle.read_bytes().startswith(ca)  # the CA, then this machine's roots
    assert first.server.stat().st_mode & 0o077 == 0  # the private key is the user's only


def test_without_tls_the_banner_shows_only_what_works(listening) -> None:
    server = listening("serve", "--port", "0")
    text = "\n".join(server.lines)
    assert server.exports == {}  # settings made of the environment alone need --tls
    assert f"websocket_base_url='{server.url.split('/v1/')[0]}/v1'" in text
    assert "Node SDK" in text and "--tls" in text


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.skipif(
    _node_openai() is None,
    reason="the openai npm package is not installed: "
    "cd ~/.cache/rtsoak/node-openai && npm install openai@6 ws",
)
def test_the_node_sdk_transcribes_over_serve_tls_with_only_the_printed_environment(
    listening, fixture_pcm, tmp_path
) -> None:
    server = listening("serve", "--tls", "--port", "0")
    script = tmp_path / "client.cjs"
    script.write_text(NODE_CLIENT)
    argv = ["node", str(script), str(_node_openai()), str(fixture_pcm)]
    _assert_transcribed(_client(argv, server.exports), fixture_pcm)
