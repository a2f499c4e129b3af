"""Runs a scenario: embedded fake server, N workers on one clock, signals, then frames and report.

The runner owns process-level concerns only: run directory, manifest, signals, ramp-up and the
end of the run. Workers record; nothing here computes statistics.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from harness import __version__
from harness.audio import AudioLibrary
from harness.clock import ScaledClock
from harness.fakeserver.process import EmbeddedServer
from harness.recorder import Recorder
from harness.scenario import Scenario
from harness.target import Target
from harness.worker import Worker, WorkerSetup

__all__ = ["RunResult", "new_run_dir", "run_scenario", "run_workers", "manifest", "write_json"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class RunResult:
    run_dir: Path
    interrupted: bool
    wall_seconds: float


def new_run_dir(base: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = base / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{name}-{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)


def manifest(scenario: Scenario, target: dict[str, str] | None, started: str) -> dict[str, Any]:
    import aiohttp as _aiohttp

    return {
        "rtsoak": __version__, "git_revision": _git_revision(), "scenario": scenario.to_dict(),
        "seed": scenario.run.seed, "time_scale": scenario.run.time_scale, "target": target,
        "host": {"python": sys.version.split()[0], "platform": platform.platform(),
                 "cpus": os.cpu_count(), "aiohttp": _aiohttp.__version__},
        "started": started, "ended": None, "interrupted": None,
    }


def server_config_doc(scenario: Scenario) -> dict[str, Any]:
    """What the embedded fake server needs: limits, and each variant's fault policies."""
    return {"faults": scenario.raw_faults, "server": scenario.to_dict()["server"],
            "variants": {v.variant: v.raw_faults for v in scenario.variants}}


def run_scenario(scenario: Scenario, out_base: Path, log=print) -> RunResult:
    library = AudioLibrary.from_dir(scenario.audio_dir())
    run_dir = new_run_dir(out_base, scenario.run.name)
    started = datetime.now(UTC).isoformat()
    doc = manifest(scenario, None, started)
    write_json(run_dir / "manifest.json", doc)
    write_json(run_dir / "server.json", server_config_doc(scenario))
    server = EmbeddedServer(run_dir / "server.json", run_dir, scenario.run.time_scale,
                            scenario.run.seed)
    wall0 = time.monotonic()
    try:
        url = server.start()
        clock = ScaledClock(scenario.run.time_scale)
        server.set_origin(clock.origin)
        target = Target.fake(url)
        doc["target"] = target.describe()
        write_json(run_dir / "manifest.json", doc)
        variants = scenario.variants or (scenario,)
        workers = sum(v.run.workers for v in variants)
        log(f"rtsoak: {workers} workers in {len(variants)} variant(s), "
            f"{scenario.run.duration:.0f} s scenario time at {clock.scale:g}x against {url}")
        interrupted = _event_loop_run(run_workers(scenario, clock, target, library, run_dir,
                                                  log))
    finally:
        server.stop()
    doc.update(ended=datetime.now(UTC).isoformat(), interrupted=interrupted)
    write_json(run_dir / "manifest.json", doc)
    return RunResult(run_dir, interrupted, time.monotonic() - wall0)


def _event_loop_run(coro) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def run_workers(scenario: Scenario, clock: ScaledClock, target: Target,
                      library: AudioLibrary, run_dir: Path, log=print,
                      handle_signals: bool = True) -> bool:
    """Run the scenario's workers against `target` until its duration (or a signal); record
    into run_dir/events-client.arrows. Returns whether the run was interrupted."""
    loop = asyncio.get_running_loop()
    recorder = Recorder(run_dir / "events-client.arrows")
    recorder.start()
    stop: asyncio.Future = loop.create_future()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if stop.done():  # second signal: leave now, the log is flushed by the OS buffer
            recorder.flush()
            os._exit(130)
        interrupted = True
        log("rtsoak: interrupted; closing connections (again to quit at once)")
        stop.set_result(True)

    signals = SIGNALS if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    run = scenario.run
    workers = []
    for variant in scenario.variants or (scenario,):
        n = variant.run.workers
        workers += [Worker(WorkerSetup(worker=i, variant=variant.variant, scenario=variant,
                                       clock=clock, recorder=recorder, target=target,
                                       library=library, stop=stop,
                                       start_at=run.ramp_up * i / max(1, n)))
                    for i in range(n)]
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            tasks = [loop.create_task(w.run(http)) for w in workers]
            end_wait = loop.create_task(clock.sleep_until(run.duration))
            all_done = asyncio.gather(*tasks, return_exceptions=True)
            # the run ends at its duration, on a signal, or when every worker has stopped
            await asyncio.wait([stop, end_wait, all_done], return_when=asyncio.FIRST_COMPLETED)
            end_wait.cancel()
            if not stop.done():
                stop.set_result(True)
            # Workers close with 1000 and stop; bounded so a stuck socket cannot hang the run.
            _, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log(f"rtsoak: worker failed: {task.exception()!r}")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await recorder.aclose()
    return interrupted
