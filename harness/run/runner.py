"""Runs a scenario: embedded fake server, N workers on one clock, signals, then frames and report.

The runner owns process-level concerns only: run directory, manifest, signals, ramp-up and the
end of the run. Workers record; nothing here computes statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from harness.config.audio import AudioLibrary
from harness.config.scenario import Scenario
from harness.config.target import Target, TargetError, build_target
from harness.core.pacing import SATURATED_P99_MS
from harness.edge.clock import ScaledClock
from harness.edge.worker import Progress, StopError, Worker, WorkerSetup
from harness.log.recorder import LogWriteError, Recorder
from harness.log.rundir import RunDir, open_run, run_facts, write_json
from harness.run.server import EmbeddedServer

__all__ = [
    "AudioBudget",
    "Caps",
    "OutputDirError",
    "RunResult",
    "WorkersResult",
    "check_output_dir",
    "manifest",
    "new_run_dir",
    "run_scenario",
    "run_workers",
    "server_config_doc",
]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORKERS_PER_PROC = 300  # a process paces 500-850 20 ms sockets (bench/RESULTS.md): room to spare
# Refuse to start below this much free space: a run that dies of a full disk at minute 40
# leaves a log cut short for a reason that has nothing to do with the service.
MIN_FREE_BYTES = 64 * 2**20


class OutputDirError(Exception):
    """The output directory cannot take a run (unwritable, not a directory, or full)."""


class AudioBudget:
    """Audio a run may still send to a paid endpoint, shared by its workers."""

    def __init__(self, hours: float) -> None:
        self.remaining_ms = hours * 3_600_000.0

    def take(self, ms: float) -> bool:
        self.remaining_ms -= ms
        return self.remaining_ms >= 0


@dataclass(frozen=True, slots=True)
class Caps:
    """Limits a run against a real endpoint must be given: wall minutes and audio hours."""

    max_minutes: float | None = None
    max_audio_hours: float | None = None


def planned_audio_hours(scenario: Scenario, library: AudioLibrary) -> float:
    """About how much audio the run sends: what a real endpoint bills."""
    mean_utt = sum(u.seconds for u in library.utterances) / len(library.utterances)
    hours = 0.0
    for v in scenario.variants or (scenario,):
        streamed = v.silence.fill != "idle" or v.turns.mode == "server_vad"
        share = 1.0 if streamed else mean_utt / (mean_utt + v.silence.gap + 0.5)
        hours += share * v.run.duration * v.run.workers / 3600.0
    return hours


def check_caps(scenario: Scenario, library: AudioLibrary, caps: Caps, log, paid: bool) -> None:
    """Refuse to start a run against a paid endpoint that is unbounded, compressed or over its
    caps; a run that reaches nothing paid is held only to the caps it was given."""
    if paid and (caps.max_minutes is None or caps.max_audio_hours is None):
        raise TargetError(
            "a real target needs caps: give --max-minutes and --max-audio-hours "
            "(only a url target on loopback, such as a local `rtsoak serve`, needs none)"
        )
    if paid and scenario.run.time_scale != 1:
        raise TargetError(
            "a real endpoint runs in real time: set run.time_scale = 1 (or --time-scale 1); "
            "only a url target on loopback (a local `rtsoak serve`) may be compressed"
        )
    wall_minutes = scenario.run.duration / scenario.run.time_scale / 60
    if caps.max_minutes is not None and wall_minutes > caps.max_minutes:
        raise TargetError(
            f"run.duration is {wall_minutes:.1f} min"
            f"{' wall' if scenario.run.time_scale != 1 else ''}, over "
            f"--max-minutes {caps.max_minutes:g}; shorten it with --duration"
        )
    if caps.max_audio_hours is None:
        return
    hours = planned_audio_hours(scenario, library)
    log(
        f"rtsoak: this run will send about {hours:.2f} audio hours "
        f"(cap {caps.max_audio_hours:g}) to {scenario.run.target}"
    )
    if hours > caps.max_audio_hours:
        raise TargetError(
            f"about {hours:.2f} audio hours is over --max-audio-hours "
            f"{caps.max_audio_hours:g}; use fewer workers or a shorter duration"
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    run_dir: Path
    interrupted: bool
    wall_seconds: float
    # why the run stopped early on its own (an event log it could not write), if it did
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WorkersResult:
    interrupted: bool
    rows: int
    append_lateness_p99_ms: float | None  # wall ms; None when no append was sent
    # set when the workers stopped because their event log (or a process the run depends
    # on) failed: the message, and the wall seconds from the failure to the workers' stop
    error: str | None = None
    stopped_after_s: float | None = None


def check_output_dir(base: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail before the run, naming the path, if run directories cannot be written under
    `base`: a probe file is written and synced, then free space is checked."""
    probe = base / f".rtsoak-probe-{os.getpid()}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(64 * 1024))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputDirError(
            f"{base}: cannot write a run directory here "
            f"({exc.strerror or exc}); pass a writable --out"
        ) from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    free = shutil.disk_usage(base).free
    if free < min_free:
        raise OutputDirError(
            f"{base}: only {free / 2**20:.1f} MiB free, a run needs at least "
            f"{min_free / 2**20:.0f} MiB; free space or pass another --out"
        )


def new_run_dir(base: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = base / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{name}-{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def manifest(scenario: Scenario, target: dict[str, str] | None, started: str) -> dict[str, Any]:
    """What a run was, for whoever reads its directory later: written at the start (so a
    crashed run has one) and completed at the end (`ended`, `interrupted`, `saturated`)."""
    return {
        **run_facts(),
        "scenario": scenario.to_dict(),
        "seed": scenario.run.seed,
        "time_scale": scenario.run.time_scale,
        "target": target,
        **open_run(started),
    }


def server_config_doc(scenario: Scenario) -> dict[str, Any]:
    """What the embedded fake server needs: limits, and each variant's fault policies."""
    return {
        "faults": scenario.raw_faults,
        "server": scenario.to_dict()["server"],
        "variants": {v.variant: v.raw_faults for v in scenario.variants},
    }


def default_procs(scenario: Scenario) -> int:
    """Client processes for a run: one per WORKERS_PER_PROC workers, as the cores allow
    (the embedded fake server keeps a core of its own)."""
    workers = sum(v.run.workers for v in scenario.variants or (scenario,))
    spare = max(1, (os.cpu_count() or 1) - (1 if scenario.run.target == "fake" else 0))
    return max(1, min(spare, math.ceil(workers / WORKERS_PER_PROC)))


def preflight(
    scenario: Scenario, caps: Caps = Caps(), log=print
) -> tuple[AudioLibrary, Target | None, AudioBudget | None]:
    """What `run` refuses before sending a frame (audio files, target settings and keys,
    caps), and what it needs from them; `rtsoak validate` runs the same checks.

    Only a paid target (`Target.paid`: any real one but a url on loopback) is held to real
    time and caps; a loopback url is this machine, so it runs as the fake does: any time
    scale, and only the caps it is given (its server must run at the same time scale:
    nothing here can tell). Unless it runs at 1x with an audio budget, its workers stop the
    run at the first handshake that is not rtsoak's fake server's (`fake_server_only`)."""
    library = AudioLibrary.from_dir(scenario.audio_dir())
    target, budget = None, None
    if scenario.run.target != "fake":
        target = build_target(scenario.run.target, scenario.target)
        check_caps(scenario, library, caps, log, paid=target.paid)
        if caps.max_audio_hours is not None:  # always, for a paid target (checked above)
            budget = AudioBudget(caps.max_audio_hours)
        if not target.paid:
            held = budget is not None and scenario.run.time_scale == 1  # as worker.py says
            log(
                f"rtsoak: {target.describe()['url']} is on this machine: no caps needed"
                + ("" if held else " (each handshake must be rtsoak's fake server's)")
                + "; its server must run at this run's time scale "
                f"(--time-scale {scenario.run.time_scale:g}), the client cannot check"
            )
            if scenario.raw_faults or any(v.raw_faults for v in scenario.variants):
                log(
                    "rtsoak: this scenario's [faults] act in the embedded fake server only; "
                    f"for this target give them to its server: rtsoak serve --faults "
                    f"{scenario.source}"
                )
    return library, target, budget


def run_scenario(
    scenario: Scenario,
    out_base: Path,
    log=print,
    caps: Caps = Caps(),
    procs: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> RunResult:
    """Check everything a user can get wrong before writing anything, then run."""
    library, target, budget = preflight(scenario, caps, log)
    check_output_dir(out_base)
    return _run(
        scenario, library, out_base, log, target, budget, procs or default_procs(scenario), shard
    )


def _run(
    scenario: Scenario,
    library: AudioLibrary,
    out_base: Path,
    log,
    target: Target | None,
    budget: AudioBudget | None,
    procs: int,
    shard: tuple[int, int],
) -> RunResult:
    name = scenario.run.name
    if shard[1] > 1:
        name += f"-shard{shard[0]}of{shard[1]}"
    run_dir = new_run_dir(out_base, name)
    layout = RunDir(run_dir)
    started = datetime.now(UTC).isoformat()
    doc = manifest(scenario, None, started)
    doc["procs"] = procs
    doc["shard"] = {"index": shard[0], "count": shard[1]}
    layout.write_manifest(doc)
    write_json(layout.server_config, server_config_doc(scenario))
    write_json(
        layout.scenario,
        {"source": scenario.source, "doc": scenario.doc, "shard": list(shard)},
    )
    server = None
    if target is None:
        server = EmbeddedServer(
            layout.server_config, run_dir, scenario.run.time_scale, scenario.run.seed
        )
    wall0 = time.monotonic()
    parts: list[subprocess.Popen] = []
    try:
        if server is not None:
            target = Target.fake(server.start())
        assert target is not None
        hours = None if budget is None else budget.remaining_ms / 3_600_000.0 / procs
        parts = [_start_part(run_dir, k, procs, target, hours) for k in range(1, procs)]
        # everyone is loaded and listening: now the clock starts, the same for all
        clock = ScaledClock(scenario.run.time_scale)
        for child in ([server.proc] if server is not None else []) + parts:
            assert child is not None and child.stdin is not None
            child.stdin.write(f"{clock.origin!r}\n")
            child.stdin.flush()
        url = target.describe()["url"]
        doc["target"] = target.describe()
        layout.write_manifest(doc)
        variants = scenario.variants or (scenario,)
        total = sum(v.run.workers for v in variants)
        workers = len(range(shard[0], total, shard[1]))  # this shard's share
        log(
            f"rtsoak: {workers} workers in {len(variants)} variant(s), "
            f"{scenario.run.duration:.0f} s scenario time at {clock.scale:g}x against {url}"
            + (f", {procs} processes" if procs > 1 else "")
        )
        if budget is not None:
            budget.remaining_ms /= procs
        children = {f"client process {k}/{procs}": proc for k, proc in enumerate(parts, 1)}
        if server is not None and server.proc is not None:
            children["embedded fake server"] = server.proc
        result = None
        try:
            result = run_event_loop(
                run_workers(
                    scenario,
                    clock,
                    target,
                    library,
                    run_dir,
                    log,
                    budget=budget,
                    part=(0, procs),
                    shard=shard,
                    watch=lambda: watch_children(children),
                )
            )
        finally:
            result_parts = _join_parts(
                parts, run_dir, scenario, clock, interrupted=result is None or result.interrupted
            )
    finally:
        if server is not None:
            server.stop()
    result = _merge_results([result, *result_parts])
    complete_manifest(doc, result)
    if result.error is not None:
        doc["stopped"] = {"error": result.error, "stopped_after_s": result.stopped_after_s}
    try:
        layout.write_manifest(doc)
    except OSError as exc:  # the disk that filled up: the log is what counts
        if result.error is None:
            raise
        log(f"rtsoak: could not complete {layout.manifest} ({exc.strerror or exc})")
    if doc["saturated"]:
        log(
            f"rtsoak: warning: append frames left late (p99 {result.append_lateness_p99_ms} "
            "wall ms > "
            f"{SATURATED_P99_MS:g}): this client was saturated; use fewer workers per process"
        )
    return RunResult(run_dir, result.interrupted, time.monotonic() - wall0, result.error)


async def watch_children(children: dict[str, subprocess.Popen], period: float = 0.2) -> str:
    """Returns (a message) once a process the run depends on exited with exit code 2: it
    could not write its event log (its own message, on the shared stderr, says where)."""
    while True:
        await asyncio.sleep(period)
        for name, proc in children.items():
            if proc.poll() == 2:
                return f"the {name} stopped: it could not go on (exit 2, see its message above)"


def _start_part(
    run_dir: Path, k: int, procs: int, target: Target, hours: float | None
) -> subprocess.Popen:
    """A child process for slice k of the workers; returns once it is loaded and waits for
    the clock's origin on its stdin."""
    args = [
        sys.executable,
        "-m",
        "harness",
        "run-part",
        str(run_dir),
        "--part",
        f"{k}/{procs}",
        "--url",
        target.url if target.kind == "fake" else "",
    ]
    if hours is not None:
        args += ["--audio-hours", repr(hours)]
    proc = subprocess.Popen(
        args,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"client process {k}/{procs} failed to start ({proc.wait(30)})")
    return proc


def _join_parts(
    parts: list[subprocess.Popen],
    run_dir: Path,
    scenario: Scenario,
    clock: ScaledClock,
    interrupted: bool,
) -> list[WorkersResult]:
    """Wait for the child processes (bounded: the rest of the duration and their own 30 s to
    close), then read what each recorded. An interrupt is passed on to them."""
    deadline = time.monotonic() + max(0.0, clock.wall_seconds(scenario.run.duration - clock.now()))
    for proc in parts:
        if interrupted and proc.poll() is None:
            proc.terminate()  # a SIGTERM stops their workers gracefully, as ours
        try:
            proc.wait(max(0.0, deadline - time.monotonic()) + 40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    results = []
    for k in range(1, len(parts) + 1):
        path = RunDir(run_dir).part_result(k)
        if path.is_file():
            results.append(WorkersResult(**json.loads(path.read_text())))
    return results


def _merge_results(results: list[WorkersResult | None]) -> WorkersResult:
    """One result of the processes' (None: a process that returned none)."""
    done = [r for r in results if r is not None]
    p99s = [r.append_lateness_p99_ms for r in done if r.append_lateness_p99_ms is not None]
    errors = [r for r in done if r.error is not None]
    return WorkersResult(
        len(done) < len(results) or any(r.interrupted for r in done),
        sum(r.rows for r in done),
        max(p99s) if p99s else None,
        errors[0].error if errors else None,
        errors[0].stopped_after_s if errors else None,
    )


def run_part(
    run_dir: Path, part: tuple[int, int], url: str, audio_hours: float | None
) -> WorkersResult:
    """The child side of --procs: slice `part` of the workers, recorded beside the others.
    Says "ready" once loaded, then takes the clock's origin from stdin."""
    from harness.config.scenario import scenario_from_doc

    layout = RunDir(run_dir)
    saved = json.loads(layout.scenario.read_text())
    scenario = scenario_from_doc(saved["doc"], saved["source"])
    library = AudioLibrary.from_dir(scenario.audio_dir())
    target = Target.fake(url) if url else build_target(scenario.run.target, scenario.target)
    try:
        print("ready", flush=True)
        origin = sys.stdin.readline()
    except BrokenPipeError:
        origin = ""
    if not origin.strip():  # the parent is gone before the run began
        return WorkersResult(True, 0, None)
    clock = ScaledClock(scenario.run.time_scale, float(origin))
    budget = None if audio_hours is None else AudioBudget(audio_hours)
    result = run_event_loop(
        run_workers(
            scenario,
            clock,
            target,
            library,
            run_dir,
            log=lambda *_: None,
            budget=budget,
            part=part,
            shard=tuple(saved.get("shard", (0, 1))),
            watch=parent_gone,
        )
    )
    try:
        write_json(layout.part_result(part[0]), dataclasses.asdict(result))
    except OSError:
        if result.error is None:
            raise
    return result


async def parent_gone() -> None:
    """Returns when stdin reaches its end: the parent holds the other end of that pipe for the
    whole run, so the end means it is gone (killed, even with SIGKILL) and a --procs child
    must stop rather than go on sending traffic nobody records or reports."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()


def run_event_loop(coro) -> Any:
    """Run a coroutine on uvloop when it is installed (a quarter less CPU per frame)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def monitor_loop_lag(recorder: Recorder, clock: ScaledClock, period: float = 0.05) -> None:
    """Once a second, record how late this event loop woke from short sleeps (wall ms): the
    lag every timer in the process suffers, so a saturated client shows in its data."""
    loop = asyncio.get_running_loop()
    worst, samples, window_start = 0.0, 0, loop.time()
    while True:
        asked = loop.time()
        await asyncio.sleep(period)
        now = loop.time()
        worst = max(worst, (now - asked - period) * 1000.0)
        samples += 1
        if now - window_start >= 1.0:
            recorder.row(
                clock.wall(),
                clock.now(),
                "client",
                None,
                -1,
                -1,
                "meta",
                "loop_lag",
                lag_ms=worst,
                detail={"samples": samples},
            )
            worst, samples, window_start = 0.0, 0, now


async def freeze_after_ramp(clock: ScaledClock, ramp_up: float, settle: float = 2.0) -> None:
    """Once the ramp is over and its handshakes had `settle` wall seconds to finish, freeze
    what the workers' first connections allocated (see run_workers)."""
    await clock.sleep_until(ramp_up)
    await asyncio.sleep(settle)
    gc.freeze()


async def report_progress(
    progress: Progress,
    recorder: Recorder,
    clock: ScaledClock,
    duration: float,
    log,
    tty: bool,
    period: float | None = None,
) -> None:
    """A live line on a terminal (every 0.5 s, in place); a plain line every 10 s in CI."""
    period = period or (0.5 if tty else 10.0)
    last_rows, last = recorder.recorded, time.monotonic()
    while True:
        await asyncio.sleep(period)
        rows = recorder.recorded
        now = time.monotonic()
        rate = (rows - last_rows) / (now - last)
        last_rows, last = rows, now
        line = (
            f"rtsoak: {clock.now() / 60:5.1f}/{duration / 60:.1f} min  "
            f"{progress.open} open  {progress.drops} drops  "
            f"{progress.completed} utterances ({progress.lost} lost)  {rate:,.0f} events/s"
        )
        if tty:
            print("\r" + line, end="", flush=True)
        else:
            log(line)


async def run_workers(
    scenario: Scenario,
    clock: ScaledClock,
    target: Target,
    library: AudioLibrary,
    run_dir: Path,
    log=print,
    handle_signals: bool = True,
    budget: AudioBudget | None = None,
    part: tuple[int, int] = (0, 1),
    shard: tuple[int, int] = (0, 1),
    watch: Callable[[], Awaitable[str | None]] | None = None,
) -> WorkersResult:
    """Run the scenario's workers against `target` until its duration (or a signal); record
    into the run's client log (RunDir.client_log). A first signal stops the workers (close
    1000); a second flushes the log and exits 130 at once.

    The workers also stop, at once, when the event log cannot be written (a full disk: the
    result's `error` says where and why), when a worker resolves `stop` with a StopError (an
    uncapped run that reached a server other than rtsoak's fake: an error too) or when
    `watch()` returns: with a message, that is an error too; with None, an interruption (a
    --procs child whose parent is gone)."""
    loop = asyncio.get_running_loop()
    k, procs = part
    recorder = Recorder(RunDir(run_dir).client_log(None if procs == 1 else k))
    recorder.start()
    stop: asyncio.Future = loop.create_future()
    interrupted = False
    error: str | None = None  # why the run stopped on a failure
    failed_at: float | None = None  # time.monotonic() of that failure
    stopped_after: float | None = None  # wall seconds from it to the workers' stop

    def on_signal() -> None:
        nonlocal interrupted
        if stop.done():  # second signal: flush what is recorded and leave at once
            with contextlib.suppress(OSError):  # a log that failed was reported already
                recorder.flush()
            log(
                "rtsoak: interrupted again: exiting now; the event log is intact, "
                "`rtsoak report` rebuilds frames and report from it"
            )
            os._exit(130)
        interrupted = True
        log("rtsoak: interrupted; closing connections (again to quit at once)")
        stop.set_result(True)

    signals = SIGNALS if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    run = scenario.run
    # a shard takes every shard_count-th worker of the whole run, keeping global worker
    # numbers (and so the seeds and fault draws of a single run); processes split the shard
    everyone = [
        (variant, i)
        for variant in scenario.variants or (scenario,)
        for i in range(variant.run.workers)
    ]
    slots = [slot for n, slot in enumerate(everyone) if n % shard[1] == shard[0]]
    progress = Progress()
    workers = [
        Worker(
            WorkerSetup(
                worker=i,
                variant=variant.variant,
                scenario=variant,
                clock=clock,
                recorder=recorder,
                target=target,
                library=library,
                stop=stop,
                budget=budget,
                progress=progress,
                start_at=run.ramp_up * i / max(1, variant.run.workers),
            )
        )
        for n, (variant, i) in enumerate(slots)
        if n % procs == k
    ]
    connector = aiohttp.TCPConnector(limit=0)
    # A full garbage collection stops every sender for as long as it scans every tracked
    # object. What exists now (modules, audio, workers) lives as long as the run, and so do
    # the first connections: both are taken out of the collector's sight, so a collection
    # mid-run scans only what the run allocated since. (Frozen objects are still freed by
    # reference counting; only a cycle among them is kept once it dies.) No collection first:
    # the run's clock is already running, and a time-compressed run would feel the pause.
    gc.freeze()
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            tasks = [loop.create_task(w.run(http)) for w in workers]
            lag_monitor = loop.create_task(monitor_loop_lag(recorder, clock))
            freezer = loop.create_task(freeze_after_ramp(clock, run.ramp_up))
            tty = sys.stdout.isatty() and k == 0 and handle_signals
            ticker = (
                loop.create_task(report_progress(progress, recorder, clock, run.duration, log, tty))
                if k == 0
                else None
            )
            end_wait = asyncio.ensure_future(clock.sleep_until(run.duration))
            all_done = asyncio.gather(*tasks, return_exceptions=True)
            assert recorder.failed is not None
            ends = [stop, end_wait, all_done, recorder.failed]
            watcher = loop.create_task(watch()) if watch is not None else None
            if watcher is not None:
                ends.append(watcher)
            # the run ends at its duration, on a signal, when every worker has stopped, when
            # its log cannot be written, or when the watcher says so
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            end_wait.cancel()
            if recorder.failed.done():
                error = str(recorder.failed.result())
                failed_at = recorder.failed_at
            elif stop.done() and isinstance(stop.result(), StopError):
                error = stop.result().reason  # a worker found the run must not go on
                failed_at = time.monotonic()
            elif watcher is not None and watcher.done() and not watcher.cancelled():
                error = watcher.result()  # None: stopped from outside, as by a signal
                failed_at = time.monotonic()
                interrupted = True
            if watcher is not None:
                watcher.cancel()
            if error is not None:
                interrupted = True
                print(f"rtsoak: {error}; stopping the run", file=sys.stderr, flush=True)
            lag_monitor.cancel()
            freezer.cancel()
            if ticker is not None:
                ticker.cancel()
                if tty:
                    print()
            if not stop.done():
                stop.set_result(True)
            # Workers close with 1000 and stop; bounded so a stuck socket cannot hang the run
            # (tighter when the run stops on a failure: what they say is not recorded anyway).
            _, pending = await asyncio.wait(tasks, timeout=30 if error is None else 2)
            for task in pending:
                task.cancel()
            if failed_at is not None:
                stopped_after = time.monotonic() - failed_at
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log(f"rtsoak: worker failed: {task.exception()!r}")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        try:
            await recorder.aclose()
        except LogWriteError as exc:  # failed while closing, or reported above already
            if error is None:
                error, interrupted = str(exc), True
                print(f"rtsoak: {error}", file=sys.stderr, flush=True)
        finally:
            gc.unfreeze()
    return WorkersResult(
        interrupted, recorder.count, recorder.lateness.quantile(0.99), error, stopped_after
    )


def complete_manifest(doc: dict[str, Any], result: WorkersResult) -> None:
    """The end of a run in its manifest: when, whether interrupted, rows, and the saturation
    verdict of its append lateness (p99 above SATURATED_P99_MS)."""
    p99 = result.append_lateness_p99_ms
    doc.update(
        ended=datetime.now(UTC).isoformat(),
        interrupted=result.interrupted,
        rows=result.rows,
        append_lateness_p99_ms=p99,
        saturated=None if p99 is None else p99 > SATURATED_P99_MS,
    )
