"""`rtsoak proxy` as a run: a run directory with its manifest and event log around the relay,
the embedded fake upstream when asked for, signals and a bounded duration. When it stops, the
run directory is like any other: `rtsoak report` reads it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.config.scenario import TargetSection
from harness.config.target import Target, build_target
from harness.core.policies import FaultProfile
from harness.edge.clock import ScaledClock
from harness.edge.proxy import HANDSHAKE_TIMEOUT, RealtimeProxy
from harness.edge.tls import TlsFiles, server_context
from harness.log.recorder import Recorder
from harness.log.rundir import RunDir, open_run, run_facts, write_json
from harness.run.runner import new_run_dir, run_event_loop
from harness.run.server import EmbeddedServer, banner

__all__ = ["ProxyOptions", "ProxyResult", "resolve_upstream", "run_proxy"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    host: str = "127.0.0.1"
    port: int = 0
    upstream: str = "fake"  # fake | openai | azure | a ws(s):// URL
    upstream_key_env: str = "OPENAI_API_KEY"  # a URL upstream: where its key is
    upstream_header: str = "Authorization"
    faults: FaultProfile | None = None
    faults_source: str | None = None
    out: Path = Path("reports")
    name: str = "proxy"
    duration: float = 24 * 3600.0  # scenario seconds; the proxy always stops by itself
    time_scale: float = 1.0
    seed: int = 0
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # wall s for a client's handshake, or idle HTTP
    tls: TlsFiles | None = None  # serve wss:// to the client (harness.edge.tls)


@dataclass(frozen=True, slots=True)
class ProxyResult:
    run_dir: Path
    rows: int


def resolve_upstream(options: ProxyOptions, env=None) -> Target | None:
    """The upstream Target, credentials from the environment; None for the embedded fake."""
    kind = options.upstream
    if kind == "fake":
        return None
    if kind in ("openai", "azure"):
        return build_target(kind, TargetSection(), env)
    section = TargetSection(
        url=kind, key_env=options.upstream_key_env, header=options.upstream_header
    )
    return build_target("url", section, env)


def _manifest(options: ProxyOptions, started: str) -> dict[str, Any]:
    faults = options.faults or FaultProfile()
    return {
        **run_facts(),
        "kind": "proxy",
        "scenario": {
            "run": {
                "name": options.name,
                "duration": options.duration,
                "time_scale": options.time_scale,
                "seed": options.seed,
                "target": options.upstream
                if options.upstream in ("fake", "openai", "azure")
                else "url",
            },
            "faults": faults.describe(),
            "thresholds": {},
        },
        "proxy": {"faults_source": options.faults_source, "listen": None},
        "seed": options.seed,
        "time_scale": options.time_scale,
        "target": None,
        **open_run(started),
    }


def run_proxy(options: ProxyOptions, log=print) -> ProxyResult:
    """Relay until the duration ends or a signal comes (the usual end: Ctrl-C when the
    client is done); a second signal flushes the log and leaves at once."""
    target = resolve_upstream(options)  # a missing key fails here, before anything is written
    run_dir = new_run_dir(options.out, options.name)
    layout = RunDir(run_dir)
    doc = _manifest(options, datetime.now(UTC).isoformat())
    layout.write_manifest(doc)
    server = None
    if target is None:
        write_json(layout.server_config, {})  # the fake upstream is clean: faults are ours
        server = EmbeddedServer(layout.server_config, run_dir, options.time_scale, options.seed)
    try:
        if server is not None:
            target = Target.fake(server.start())
        clock = ScaledClock(options.time_scale)
        if server is not None:
            assert server.proc is not None and server.proc.stdin is not None
            server.proc.stdin.write(f"{clock.origin!r}\n")
            server.proc.stdin.flush()
        assert target is not None
        doc["target"] = target.describe()
        rows = run_event_loop(_serve(options, clock, target, run_dir, doc, log))
    finally:
        if server is not None:
            server.stop()
    doc.update(ended=datetime.now(UTC).isoformat(), interrupted=False, rows=rows)
    layout.write_manifest(doc)
    return ProxyResult(run_dir, rows)


async def _serve(
    options: ProxyOptions,
    clock: ScaledClock,
    target: Target,
    run_dir: Path,
    doc: dict[str, Any],
    log,
) -> int:
    loop = asyncio.get_running_loop()
    layout = RunDir(run_dir)
    recorder = Recorder(layout.client_log())
    recorder.start()
    proxy = RealtimeProxy(
        clock,
        target,
        recorder,
        options.faults,
        options.name,
        options.seed,
        handshake_timeout=options.handshake_timeout,
    )
    stop = loop.create_future()

    def on_signal() -> None:
        if stop.done():  # a second signal: leave now; the log is intact, the run "crashed"
            recorder.flush()
            log("rtsoak: interrupted again: exiting now; `rtsoak report` reads what was recorded")
            os._exit(130)
        log("rtsoak: proxy stopping; closing connections (again to quit at once)")
        stop.set_result(True)

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        context = None if options.tls is None else server_context(options.tls)
        url = await proxy.start(options.host, options.port, context)
        if context is not None:
            url = url.replace("ws://", "wss://", 1)
        doc["proxy"]["listen"] = url
        layout.write_manifest(doc)
        log(banner(url, "rtsoak proxy", "; it is never forwarded", tls=options.tls))
        log(f"rtsoak: relaying to {target.describe()['url']}; recording into {run_dir}")
        try:
            await asyncio.wait_for(asyncio.shield(stop), clock.wall_seconds(options.duration))
        except TimeoutError:
            log("rtsoak: proxy duration reached; closing connections")
        await proxy.stop()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        await recorder.aclose()
    return recorder.count
