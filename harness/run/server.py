"""Running the fake server as its own process: `rtsoak serve`, and the embedded server a run
starts on the other core (one Python process cannot both pace hundreds of sockets and parse
their frames at 60x).

The embedded server shares the run's clock: both processes read the system-wide monotonic clock,
and the runner hands over its origin on the server's stdin once the server is listening. When
the runner's end of stdin closes, the server exits, so it never outlives its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.config.faults import parse_faults, shipped_profiles
from harness.config.toml import load_toml
from harness.core.session import SessionLimits
from harness.core.spec import ConfigError, read_section
from harness.edge.clock import ScaledClock
from harness.edge.server import FakeServer, ServerConfig
from harness.log.recorder import Recorder
from harness.log.rundir import RunDir

__all__ = [
    "EmbeddedServer",
    "banner",
    "load_server_config",
    "serve",
    "server_config_from_doc",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_server_config(path: Path | None, seed: int) -> ServerConfig:
    """A TOML (or JSON) file with `[faults.*]` policies and an optional `[server]` table of
    limits; a scenario file works as it is."""
    if path is None:
        return ServerConfig(seed=seed)
    if not path.exists() and path.suffix == "" and str(path) in shipped_profiles():
        return ServerConfig(
            faults=parse_faults({"profile": str(path)}, str(path), seed=seed), seed=seed
        )
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(str(path), "", f"cannot be read as JSON: {exc}") from None
    else:
        doc = load_toml(path)
    return server_config_from_doc(doc, str(path), seed)


def server_config_from_doc(doc: dict[str, Any], source: str, seed: int) -> ServerConfig:
    """`[server]` limits, `[faults.*]` policies and (from a run) each variant's faults."""
    from harness.config.scenario import ServerSection

    server = read_section(ServerSection, doc.get("server"), source, "server")
    limits = SessionLimits(
        max_duration=server.max_session,
        latency_base=server.latency_base,
        latency_per_audio_second=server.latency_per_audio_second,
    )
    variants = {
        name: parse_faults(table, source, seed=seed)
        for name, table in (doc.get("variants") or {}).items()
    }
    return ServerConfig(
        faults=parse_faults(doc.get("faults"), source, seed=seed),
        limits=limits,
        seed=seed,
        variant_faults=variants,
    )


async def serve(
    host: str,
    port: int,
    config: ServerConfig,
    scale: float,
    out: Path | None,
    sync_stdin: bool,
    tls=None,
) -> None:
    """Serve until SIGINT or SIGTERM (or, embedded, until stdin closes). The first signal
    closes every session and the log, so its closing rows are written; a second exits at once
    (130) with the log flushed. `tls`: a harness.edge.tls.TlsFiles to serve wss:// with."""
    loop = asyncio.get_running_loop()
    recorder = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        recorder = Recorder(RunDir(out).server_log)
        recorder.start()
    clock = ScaledClock(scale)
    # standalone with a log, record what its clients did as the proxy does (a run directory
    # `rtsoak report` reads); embedded in a run, the workers record their own side
    config = dataclasses.replace(config, record_clients=out is not None and not sync_stdin)
    server = FakeServer(clock, config, recorder)
    if sync_stdin:
        server.clock_ready.clear()
    context = None
    if tls is not None:
        from harness.edge.tls import server_context

        context = server_context(tls)
    url = await server.start(host, port, context)
    if context is not None:
        url = url.replace("ws://", "wss://", 1)
    ids = f"Session and item ids from seed {server.seed} (--seed {server.seed} repeats them)."
    print(
        json.dumps({"url": url, "port": server.port})
        if sync_stdin
        else banner(url, tls=tls) + "\n" + ids,
        flush=True,
    )
    stop = loop.create_future()

    def on_signal() -> None:
        if stop.done():
            if recorder is not None:
                with contextlib.suppress(OSError):  # a full disk: nothing more can be saved
                    recorder.flush()
            os._exit(130)
        stop.set_result(True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    async def serving() -> None:
        if sync_stdin:
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            line = await reader.readline()
            if line.strip():
                clock.origin = float(line)
            server.clock_ready.set()
            await reader.read()  # EOF: the runner is done with us
        else:
            await asyncio.Event().wait()

    main = asyncio.ensure_future(serving())
    try:
        # a log that cannot be written (a full disk) stops the server: aclose() says why
        ends = [main, stop]
        if recorder is not None and recorder.failed is not None:
            ends.append(recorder.failed)
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    finally:
        main.cancel()
        await server.stop()
        if recorder is not None:
            await recorder.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


AZURE_API_VERSION = "2025-04-01-preview"  # any version works with the fake; the SDKs need one


def banner(url: str, title: str = "rtsoak fake server", keys: str = "", tls=None) -> str:
    """How to point each official SDK at a server on `url`: only settings that work. Both SDKs
    turn an https:// base into wss:// (the Node SDK any base), so without TLS only the Python
    SDK's `websocket_base_url` reaches a ws:// listener; with TLS the `export` lines are the
    whole configuration of either SDK (`tls`: a harness.edge.tls.TlsFiles)."""
    origin = url.split("/v1/realtime")[0]
    http = origin.replace("wss://", "https://").replace("ws://", "http://")
    lines = [f"{title} listening on {url}", f"Any non-empty key is accepted{keys}."]
    if tls is not None:
        lines += [
            "Point the official openai SDKs at it (Python and Node alike):",
            f"  export OPENAI_BASE_URL={http}/v1 OPENAI_API_KEY=any-key",
            f"  export SSL_CERT_FILE={shlex.quote(str(tls.bundle))}  # Python: rtsoak's CA",
            f"  export NODE_EXTRA_CA_CERTS={shlex.quote(str(tls.ca))}  # Node: rtsoak's CA",
            "Azure clients (GA and preview paths both work):",
            f"  export AZURE_OPENAI_ENDPOINT={http} AZURE_OPENAI_API_KEY=any-key "
            f"OPENAI_API_VERSION={AZURE_API_VERSION}",
        ]
    else:
        lines += [
            "Point the official openai Python SDK at it:",
            f"  AsyncOpenAI(api_key='any-key', websocket_base_url='{origin}/v1')",
            f"  AsyncAzureOpenAI(api_key='any-key', api_version='{AZURE_API_VERSION}', "
            f"azure_endpoint='{http}', websocket_base_url='{origin}/openai')",
            "The Node SDK always dials wss://: start with --tls for it (and for settings "
            "made of environment variables only).",
        ]
    return "\n".join([*lines, "Stop with Ctrl-C."])


class EmbeddedServer:
    """The fake server in a child process, for the duration of a run."""

    def __init__(self, config_path: Path, out: Path, scale: float, seed: int) -> None:
        self.args = [
            sys.executable,
            "-m",
            "harness",
            "serve",
            "--port",
            "0",
            "--sync-stdin",
            "--faults",
            str(config_path),
            "--time-scale",
            repr(scale),
            "--seed",
            str(seed),
            "--out",
            str(out),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and return its URL; it serves once the run clock's origin is
        written to its stdin."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout)
            raise RuntimeError(f"embedded fake server exited with {code} before listening")
        ready: dict[str, Any] = json.loads(line)
        self.url = ready["url"]
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
