"""Capacity of one client process at 20 ms pacing: the most concurrent WebSockets whose send
lateness p99 stays within 10 ms, for three senders against the same fake server (issue 9):

- rtsoak: the harness's own worker fleet (`harness.run.runner.run_workers`, what `rtsoak run
  --procs 1` runs in its process): own-VAD utterances back to back (clear, steady 20 ms
  appends, commit, transcript), every event recorded; lateness read back from its event log.
- ceiling: a minimal aiohttp + uvloop loop sending the same pre-encoded append frames on N
  sockets on absolute deadlines, nothing else.
- peer: Locust (websocket-client on gevent, bench-only environment bench/.venv-peer), one User
  per socket, the same frames and deadlines (bench/capacity_locust.py).

The fake server (`rtsoak serve`, no faults, transcripts without added latency) runs in its own
process on 127.0.0.1; each sender runs in a process of its own. A run passes when its p99 send
lateness (send time minus deadline, over a measurement window after every socket is open) is
within 10 ms, every socket sent, and the frames sent reach 99 % of N x 50/s, less the time
rtsoak's workers wait for transcripts (when their scenario has no frame due); a count passes
when most of its `--repeats` runs do. Counts step up geometrically until one fails (down if
the first fails), then bisect. A run that failed while other processes were busy, the
hypervisor stole CPU, or a CPU second bought much less than at its fastest (a probe before
and after each run) is measured again after a pause, up to `--retries` times; such failures
left over count only if no other run is left to decide, and the point says so.
Usage:
    python bench/capacity.py [--senders rtsoak ceiling peer] [--start 200] [--growth 1.5]
        [--resolution 0.1] [--seconds 4] [--repeats 3] [--retries 3] [--counts N ...]
        [--max-other 0.15] [--max-steal 0.1] [--max-slowdown 1.3] [--pause 5]
        [--json bench/capacity.json] [--audio fixtures/audio]
About 10 minutes on a quiet 2-core machine; results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "bench" / ".venv-peer"
PEER_PACKAGES = ["locust", "websocket-client"]
PERIOD = 0.020  # 20 ms pacing
LIMIT_MS = 10.0  # p99 send lateness a sender may reach at its capacity
MIN_RATE = 0.99  # share of the frames the schedules called for that must actually leave
RAMP = 1.0  # connections open over this long, spreading their phases
WARMUP = 1.5  # then settle this long before the window opens
SENDERS = ("rtsoak", "ceiling", "peer")
VAD_OFF = json.dumps(
    {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
)


# ---------------------------------------------------------------------------- children
async def ceiling_child(url: str, n: int, seconds: float, frames_path: Path, out: Path) -> None:
    """N sockets, pre-encoded frames on absolute deadlines, lateness sampled before each send."""
    import array

    import aiohttp

    # UTF-8 once, sent as text frames as they are: what rtsoak's workers do
    frames = [line.encode() for line in frames_path.read_text().splitlines()]
    text = aiohttp.WSMsgType.TEXT
    lateness = array.array("d")
    sent_in_window = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gate = asyncio.Semaphore(50)

        async def connect() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await http.ws_connect(
                    url, headers={"Authorization": "Bearer bench"}, max_msg_size=0
                )
                await ws.receive()  # session.created
                await ws.send_str(VAD_OFF)
                await ws.receive()  # session.updated
                return ws

        sockets = await asyncio.gather(*(connect() for _ in range(n)))
        start = time.monotonic() + 0.1
        win_start, win_end = start + WARMUP, start + WARMUP + seconds

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal sent_in_window
            due = start + i * PERIOD / n  # phases spread over the period
            k = i % len(frames)
            while True:
                now = time.monotonic()
                if now < due:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                if now >= win_end:
                    return
                await ws.send_frame(frames[k], text)
                if now >= win_start:
                    lateness.append((now - due) * 1000.0)
                    sent_in_window += 1
                k = (k + 1) % len(frames)
                due += PERIOD

        async def cpu() -> tuple[float, float]:
            await asyncio.sleep(max(0.0, win_start - time.monotonic()))
            c0, s0 = time.process_time(), server_seconds()
            await asyncio.sleep(max(0.0, win_end - time.monotonic()))
            return time.process_time() - c0, server_seconds() - s0

        cpu_task = asyncio.ensure_future(cpu())
        await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)))
        cpu_s, server_s = await cpu_task
        for ws in sockets:
            await ws.close()
    with open(str(out) + ".lag", "wb") as f:
        lateness.tofile(f)
    out.write_text(
        json.dumps(
            {
                "connected": len(sockets),
                "senders_in_window": n,
                "frames_in_window": sent_in_window,
                "window_s": seconds,
                "cpu_s": cpu_s,
                "server_cpu_s": server_s,
            }
        )
    )


def rtsoak_child(url: str, n: int, seconds: float, out: Path, audio: Path) -> None:
    """The harness's workers, as `rtsoak run --procs 1` runs them (on the loop
    `harness.run.runner.run_event_loop` picks: uvloop), against `url`; lateness from the event log
    they record."""
    import gc

    import numpy as np
    import pyarrow as pa

    sys.path.insert(0, str(ROOT))
    from harness.config.audio import AudioLibrary
    from harness.config.scenario import scenario_from_doc
    from harness.config.target import Target
    from harness.edge.clock import ScaledClock
    from harness.log.frames import read_log
    from harness.log.recorder import appends_log
    from harness.run.runner import run_event_loop, run_workers

    win_start, win_end = RAMP + WARMUP, RAMP + WARMUP + seconds
    doc = {
        "run": {
            "name": "capacity",
            "workers": n,
            "duration": win_end + 0.05,
            "ramp_up": RAMP,
            "time_scale": 1,
            "target": "fake",
        },
        "audio": {"dir": str(audio)},
        "pacing": {"chunk_ms": 20, "mode": "steady"},
        "silence": {"gap": 0, "fill": "idle"},  # utterances back to back
        "turns": {"mode": "client"},
    }
    scenario = scenario_from_doc(doc, "bench/capacity.py")
    library = AudioLibrary.from_dir(scenario.audio_dir())
    run_dir = out.parent / f"{out.name}.run"
    run_dir.mkdir()
    gc.collect()
    clock = ScaledClock(1.0)

    async def cpu() -> tuple[float, float, float]:
        await clock.sleep_until(win_start)
        t0, s0 = os.times(), server_seconds()
        await clock.sleep_until(win_end)
        t1, s1 = os.times(), server_seconds()
        return t1.user - t0.user, t1.system - t0.system, s1 - s0

    async def both():
        cpu_task = asyncio.ensure_future(cpu())
        result = await run_workers(
            scenario,
            clock,
            Target.fake(url),
            library,
            run_dir,
            log=lambda *_: None,
            handle_signals=False,
        )
        return result, await cpu_task

    result, (user_s, sys_s, server_s) = run_event_loop(both())
    log = run_dir / "events-client.arrows"
    table = pa.concat_tables(read_log(path)[0] for path in (log, appends_log(log)))
    t = table.column("t").to_numpy()
    kind = table.column("type").to_numpy(zero_copy_only=False)
    direction = table.column("dir").to_numpy(zero_copy_only=False)
    mask = (direction == "send") & (kind == "input_audio_buffer.append")
    mask &= (t >= win_start) & (t < win_end)
    lag = table.column("lag_ms").to_numpy(zero_copy_only=False)[mask].astype(np.float64)
    worker = table.column("worker").to_numpy()
    workers = worker[mask]
    handshakes = int(((direction == "meta") & (kind == "handshake")).sum())
    awaiting = awaiting_server_seconds(worker, t, kind, direction, win_start, win_end)
    lag.tofile(str(out) + ".lag")
    out.write_text(
        json.dumps(
            {
                "connected": handshakes,
                "senders_in_window": int(len(np.unique(workers))),
                "frames_in_window": int(mask.sum()),
                "window_s": seconds,
                "awaiting_server_s": awaiting,
                "cpu_s": user_s + sys_s,
                "user_s": user_s,
                "sys_s": sys_s,
                "server_cpu_s": server_s,
                "rows": result.rows,
                "recorder_p99_ms_whole_run": result.append_lateness_p99_ms,
            }
        )
    )
    if not os.environ.get("CAP_KEEP"):  # CAP_KEEP=1: keep the run dir, to look into a run
        shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- parent
def peer_python() -> Path:
    """The bench-only environment for Locust, created on first use (never in .venv)."""
    python = PEER_VENV / "bin" / "python"
    if not (PEER_VENV / "bin" / "locust").exists():
        print(f"## creating {PEER_VENV} ({', '.join(PEER_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """`rtsoak serve` in its own process: no faults, transcripts without added latency (so
    rtsoak's workers stream back to back rather than wait 0.25 s per utterance)."""
    config = tmp / "server.toml"
    config.write_text("[server]\nlatency_base = 0\nlatency_per_audio_second = 0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--port", "0", "--faults", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " on " not in line:
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split(" on ")[1].strip()


AUDIO = ROOT / "fixtures" / "audio"


def write_frames(tmp: Path, audio: Path = AUDIO) -> Path:
    """The utterances of `audio` as pre-encoded 20 ms appends, one JSON text per line."""
    sys.path.insert(0, str(ROOT))
    from harness.config.audio import AudioLibrary

    library = AudioLibrary.from_dir(audio)
    path = tmp / "frames.jsonl"
    frames = (f.json.decode() for u in library.utterances for f in u.frames(20))
    path.write_text("\n".join(frames) + "\n")
    counts = [len(u.frames(20)) for u in library.utterances]  # where each utterance starts
    (tmp / "utterances.json").write_text(json.dumps(counts))
    return path


SERVER_PID: int | None = None  # the fake server's process, for its CPU time


def server_seconds() -> float:
    """CPU seconds of the fake server so far (its pid in CAP_SERVER_PID): a sender's child
    reads it at the edges of its own measurement window."""
    return process_seconds(int(os.environ["CAP_SERVER_PID"]))


def machine_seconds() -> tuple[float, float]:
    """CPU seconds all cores of the machine have been busy, and steal: seconds the hypervisor
    ran someone else on this VM's CPUs while they had work (/proc/stat). Steal is charged to
    no process, so it slows a sender without showing in its CPU time."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class CpuSpeed:
    """How fast a CPU second is now against the fastest seen in this invocation. On the
    shared VMs of bench/RESULTS.md the same sender took up to 1.9x the CPU a frame for
    minutes at a time, with under 0.1 core of steal or of other processes to show for it; a
    sender measured in such a spell is compared with one that was not."""

    APPEND = {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()}

    def __init__(self) -> None:
        self.fastest = float("inf")

    @classmethod
    def probe(cls) -> float:
        """CPU seconds to encode and decode 2,500 append-sized JSON messages, the median of
        five: a moment's stall is not a slow spell."""
        times = []
        for _ in range(5):
            cpu0 = time.process_time()
            for i in range(2500):
                json.loads(json.dumps({**cls.APPEND, "i": i}))
            times.append(time.process_time() - cpu0)
        return statistics.median(times)

    def slowdown(self) -> float:
        """This moment's CPU cost of the probe over the fastest seen (1.0: as fast as yet)."""
        cost = self.probe()
        self.fastest = min(self.fastest, cost)
        return cost / self.fastest


CPU_SPEED = CpuSpeed()


def process_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def awaiting_server_seconds(worker, t, kind, direction, win_start: float, win_end: float) -> float:
    """Socket-seconds of the window rtsoak's workers spent waiting for the server, from each
    commit sent to the utterance's end (its transcript): no frame is due then, by the
    scenario, so the rate rule expects none. How long it lasts is the server's answer time
    (on this machine tens of ms once the fake server is busy), not the sender's capacity; a
    client too slow to read the answer would show in its frames' lateness as well."""
    import numpy as np

    commit = (direction == "send") & (kind == "input_audio_buffer.commit")
    end = (direction == "meta") & (kind == "utt_end")
    keep = commit | end
    order = np.lexsort((t[keep], worker[keep]))
    w, at, is_commit = worker[keep][order], t[keep][order], commit[keep][order]
    # a commit answered by the next row of its worker, its utterance's end
    pair = is_commit[:-1] & ~is_commit[1:] & (w[:-1] == w[1:])
    lo = np.clip(at[:-1][pair], win_start, win_end)
    hi = np.clip(at[1:][pair], win_start, win_end)
    return float((hi - lo).sum())


def run_once(
    sender: str, url: str, n: int, seconds: float, frames: Path, tmp: Path, audio: Path = AUDIO
) -> dict[str, float]:
    """One run of one sender at n sockets, in its own process. `other_cores` is how busy the
    machine was with anything but this bench (server, sender, parent): another user's load."""
    import numpy as np

    out = tmp / f"{sender}-{n}-{time.monotonic_ns()}.json"
    timeout = 120 + n * 0.05 + seconds
    env = dict(os.environ, CAP_SERVER_PID=str(SERVER_PID))  # children read the server's CPU
    if sender == "peer":
        env.update(
            CAP_URL=url,
            CAP_FRAMES=str(frames),
            CAP_OUT=str(out),
            CAP_WIN_START=repr(RAMP + WARMUP),
            CAP_WIN_END=repr(RAMP + WARMUP + seconds),
        )
        cmd = [
            str(PEER_VENV / "bin" / "locust"),
            "-f",
            str(ROOT / "bench" / "capacity_locust.py"),
            "--headless",
            "--only-summary",
            "--loglevel",
            "ERROR",
            "-u",
            str(n),
            "-r",
            str(n / RAMP),
            "--run-time",
            f"{RAMP + WARMUP + seconds + 1:.0f}s",
            "--stop-timeout",
            "5",
        ]
    else:
        cmd = [sys.executable, __file__, "--child", sender, "--url", url, "--n", str(n)]
        cmd += ["--seconds", repr(seconds), "--frames", str(frames), "--out", str(out)]
        cmd += ["--audio", str(audio)]
    slowdown_before = CPU_SPEED.slowdown()
    marks = (*machine_seconds(), process_seconds(SERVER_PID), children_seconds(), self_seconds())
    wall0 = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.monotonic() - wall0
    now = (*machine_seconds(), process_seconds(SERVER_PID), children_seconds(), self_seconds())
    busy, steal, server_cpu, child_cpu, own = (b - a for a, b in zip(marks, now, strict=True))
    if not out.exists():
        raise RuntimeError(f"{sender} at {n} wrote no result ({proc.returncode}): {proc.stderr}")
    result = json.loads(out.read_text())
    lag = np.fromfile(str(out) + ".lag", dtype=np.float64)
    for p in (out, Path(str(out) + ".lag")):
        p.unlink(missing_ok=True)
    # frames the senders' schedules called for: rtsoak's workers wait for each transcript
    expected = (n * seconds - result.get("awaiting_server_s", 0.0)) / PERIOD
    sender_s, server_s = result["cpu_s"] or 0.0, result.get("server_cpu_s") or 0.0
    frames_sent = max(1, result["frames_in_window"])
    result.update(
        n=n,
        lateness_p50_ms=float(np.percentile(lag, 50)) if len(lag) else None,
        lateness_p99_ms=float(np.percentile(lag, 99)) if len(lag) else None,
        lateness_max_ms=float(lag.max()) if len(lag) else None,
        rate_share=result["frames_in_window"] / expected,
        cpu_share=sender_s / seconds,
        cpu_us_per_frame=sender_s / frames_sent * 1e6,
        server_cores=server_s / seconds,  # over the window, as the sender's child read it
        server_us_per_frame=server_s / frames_sent * 1e6,
        other_cores=max(0.0, busy - server_cpu - child_cpu - own) / wall,
        steal_cores=steal / wall,
        cpu_slowdown=(slowdown_before + CPU_SPEED.slowdown()) / 2,
    )
    return result


def disturbance(r: dict[str, float], args) -> str | None:
    """Why run `r` says more about the machine than the sender, if it does."""
    if r["other_cores"] > args.max_other:
        return f"{r['other_cores']:.2f} cores busy elsewhere"
    if r["steal_cores"] > args.max_steal:
        return f"{r['steal_cores']:.2f} cores stolen by the hypervisor"
    if r["cpu_slowdown"] > args.max_slowdown:
        return f"CPU {r['cpu_slowdown']:.2f}x slower than at its fastest"
    return None


def passes(r: dict[str, float], n: int) -> bool:
    return (
        r["lateness_p99_ms"] is not None
        and r["lateness_p99_ms"] <= LIMIT_MS
        and r["rate_share"] >= MIN_RATE
        and r.get("senders_in_window", n) >= n
    )


def verdict_basis(runs: list[dict], args) -> list[dict]:
    """The runs a point's verdict rests on. A busy or slow machine can make a sender fail but
    never pass, so a disturbed run counts if it passed; disturbed failures decide only when
    they are all there is."""
    sound = [r for r in runs if passes(r, r["n"]) or disturbance(r, args) is None]
    return sound or runs


def measure_point(sender: str, n: int, args, url: str, frames: Path, tmp: Path) -> dict:
    """Up to `repeats` runs; stop once the majority of those that count is decided."""
    runs, disturbed, basis = [], [], []
    while len(runs) < args.repeats:
        r = run_once(sender, url, n, args.seconds, frames, tmp, args.audio)
        print(json.dumps({"sender": sender, **r}), flush=True)
        why = disturbance(r, args)
        if why and not passes(r, n) and len(disturbed) < args.retries:
            # it failed while the machine was busy or slow: measure again, after a longer pause
            disturbed.append(r)
            print(f"# disturbed failure ({why}): again", flush=True)
            time.sleep(args.pause * len(disturbed))
            continue
        runs.append(r)
        basis = verdict_basis(runs, args)
        ok = sum(passes(x, n) for x in basis)
        if ok > args.repeats // 2 or len(basis) - ok > args.repeats // 2:
            break
    point = {
        "n": n,
        "runs": len(runs),
        "other_cores": [round(x["other_cores"], 2) for x in runs],
        "steal_cores": [round(x["steal_cores"], 2) for x in runs],
        "cpu_slowdown": [round(x["cpu_slowdown"], 2) for x in runs],
        "disturbed_runs_discarded": len(disturbed),
        "disturbed_runs_kept": sum(disturbance(x, args) is not None for x in runs),
        "p99_ms": [round(x["lateness_p99_ms"] or float("nan"), 2) for x in runs],
        "median_p99_ms": statistics.median(x["lateness_p99_ms"] or 1e9 for x in runs),
        "median_rate_share": statistics.median(x["rate_share"] for x in runs),
        "median_cpu_share": statistics.median(x["cpu_share"] for x in runs),
        "median_cpu_us_per_frame": statistics.median(x["cpu_us_per_frame"] for x in runs),
        "median_server_cores": statistics.median(x["server_cores"] for x in runs),
        "median_server_us_per_frame": statistics.median(x["server_us_per_frame"] for x in runs),
        "runs_deciding": len(basis),
        "passed": sum(passes(x, n) for x in basis) > len(basis) // 2,
    }
    print(json.dumps({"sender": sender, "point": point}), flush=True)
    return point


def search(args):
    """The counts one sender is measured at, one by one: each `yield n` is sent back whether n
    passed. Steps up by `growth` until a count fails (down, if the first one fails), then
    bisects to within `resolution` (or just the given --counts)."""
    if args.counts:
        for n in args.counts:
            yield n
        return
    best, worst = 0, None
    n = min(args.start, args.max)
    while True:
        if not (yield n):
            worst = n
            break
        best = n
        if n >= args.max:
            break
        n = min(max(int(round(n * args.growth / 10) * 10), n + 10), args.max)
    while worst is not None and not best:  # the first count failed: below it, then
        n = min(int(round(worst / args.growth / 10) * 10), worst - 10)
        if n < 10:
            break
        if (yield n):
            best = n
        else:
            worst = n
    while worst is not None and best and (worst - best) > max(10, args.resolution * best):
        mid = int(round((best + worst) / 2 / 10) * 10)
        if mid in (best, worst):
            break
        if (yield mid):
            best = mid
        else:
            worst = mid


def summarize(points: dict[int, dict]) -> dict:
    passed = [n for n, p in points.items() if p["passed"]]
    best = max(passed) if passed else 0
    above = sorted(n for n, p in points.items() if not p["passed"] and n > best)
    return {
        "max_n": best,
        "at_max": points.get(best),
        "first_failing_n": above[0] if above else None,
        "at_first_failing": points[above[0]] if above else None,
        "points": [points[k] for k in sorted(points)],
    }


def machine() -> dict:
    import aiohttp

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    peer: list[str] = []
    peer_python_path = PEER_VENV / "bin" / "python"
    if peer_python_path.exists():  # made on the peer's first run
        peer = subprocess.run(
            [
                str(peer_python_path),
                "-c",
                "import locust, websocket, gevent; "
                "print(locust.__version__, websocket.__version__, gevent.__version__)",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "locust": peer[0] if peer else None,
        "websocket_client": peer[1] if len(peer) > 1 else None,
        "gevent": peer[2] if len(peer) > 2 else None,
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", nargs="+", choices=SENDERS, default=list(SENDERS))
    parser.add_argument("--start", type=int, default=200, help="first connection count")
    parser.add_argument("--growth", type=float, default=1.5, help="step-up factor")
    parser.add_argument("--max", type=int, default=3000, help="largest count tried")
    parser.add_argument(
        "--resolution", type=float, default=0.1, help="bisect until within this share"
    )
    parser.add_argument("--counts", type=int, nargs="*", help="measure these counts only")
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.15,
        help="a run that failed while other processes kept this many cores busy is run again",
    )
    parser.add_argument(
        "--max-steal",
        type=float,
        default=0.1,
        help="a run that failed while the hypervisor took this many cores is run again",
    )
    parser.add_argument(
        "--max-slowdown",
        type=float,
        default=1.3,
        help="a run that failed when a CPU second bought this much less than at best is run again",
    )
    parser.add_argument("--retries", type=int, default=3, help="re-measurements per count")
    parser.add_argument(
        "--pause", type=float, default=5.0, help="s before a re-measurement, times its number"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "capacity.json")
    parser.add_argument(
        "--audio", type=Path, default=AUDIO, help="utterances every sender streams (a fixture dir)"
    )
    # a sender's own process (internal)
    parser.add_argument("--child", choices=("rtsoak", "ceiling"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ceiling":
        import uvloop

        uvloop.run(ceiling_child(args.url, args.n, args.seconds, args.frames, args.out))
        return
    if args.child == "rtsoak":
        rtsoak_child(args.url, args.n, args.seconds, args.out, args.audio)
        return

    # a SIGTERM unwinds like Ctrl-C, so the fake server and a running sender are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if "peer" in args.senders:
        peer_python()
    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "args": {}}
    report["args"] = {
        k: v
        for k, v in vars(args).items()
        if k in ("senders", "start", "growth", "max", "resolution", "counts", "seconds", "repeats")
    }
    report["args"]["audio"] = str(args.audio)
    print(json.dumps(report), flush=True)
    with tempfile.TemporaryDirectory(prefix="rtsoak-capacity-") as name:
        tmp = Path(name)
        frames = write_frames(tmp, args.audio)
        server, url = start_server(tmp)
        global SERVER_PID
        SERVER_PID = server.pid
        try:
            # the senders take turns, one count each, so a noisy spell on the machine
            # falls on all of them rather than on one sender's whole search
            searches = {sender: search(args) for sender in args.senders}
            points: dict[str, dict[int, dict]] = {sender: {} for sender in args.senders}
            pending = {sender: next(searches[sender]) for sender in args.senders}
            while pending:
                for sender in list(pending):
                    n = pending[sender]
                    point = measure_point(sender, n, args, url, frames, tmp)
                    points[sender][n] = point
                    try:
                        pending[sender] = searches[sender].send(point["passed"])
                    except StopIteration:
                        del pending[sender]
            results = {sender: summarize(points[sender]) for sender in args.senders}
        finally:
            server.terminate()
            server.wait(10)
    report["results"] = results
    r = {s: results[s]["max_n"] for s in results}
    if r.get("rtsoak") and r.get("ceiling"):
        report["rtsoak_over_ceiling"] = round(r["rtsoak"] / r["ceiling"], 3)
    if r.get("rtsoak") and r.get("peer"):
        report["rtsoak_over_peer"] = round(r["rtsoak"] / r["peer"], 3)
    report["targets"] = {"rtsoak_over_ceiling": 0.8, "rtsoak_over_peer": 1.6}
    args.json.write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict) -> None:
    rows = [
        "| sender | max N (p99 <= 10 ms) | p99 at max N (runs) | next N tried: p99 (runs) "
        "| client CPU at max N | CPU per frame | fake server at max N |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sender, res in report["results"].items():
        at, nxt = res.get("at_max"), res.get("at_first_failing")
        rows.append(
            f"| {sender} | {res['max_n']} | "
            + (f"{at['median_p99_ms']:.1f} ms {at['p99_ms']}" if at else "-")
            + " | "
            + (f"{nxt['n']}: {nxt['median_p99_ms']:.1f} ms {nxt['p99_ms']}" if nxt else "-")
            + " | "
            + (f"{at['median_cpu_share'] * 100:.0f} %" if at else "-")
            + " | "
            + (f"{at['median_cpu_us_per_frame']:.1f} µs" if at else "-")
            + " | "
            + (
                f"{at['median_server_cores']:.2f} core, {at['median_server_us_per_frame']:.1f} µs"
                if at
                else "-"
            )
            + " |"
        )
    print("\n".join(rows))
    for sender, res in report["results"].items():
        for point in (res.get("at_max"), res.get("at_first_failing")):
            if point and point.get("disturbed_runs_kept"):
                print(
                    f"# {sender} at {point['n']}: {point['disturbed_runs_kept']} of "
                    f"{point['runs']} runs on a disturbed machine (steal {point['steal_cores']}, "
                    f"CPU slowdown {point['cpu_slowdown']}, other {point['other_cores']}); "
                    f"{point['runs_deciding']} decided"
                )
    for key, target in report["targets"].items():
        if key in report:
            verdict = "met" if report[key] >= target else "missed"
            print(f"{key}: {report[key]:.2f} (target >= {target}): {verdict}")


if __name__ == "__main__":
    main()
