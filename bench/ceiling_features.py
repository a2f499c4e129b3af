"""Where rtsoak's client CPU per frame goes beyond the bare ceiling's (issue 9): the ceiling
sender of bench/capacity.py with one rtsoak feature at a time added, at one socket count
below every sender's limit, runs interleaved so a busy spell falls on all of them.

Features: `reader` (a task per socket reading the server's events), `hb` (aiohttp heartbeat
pings, as keepalive.ping_interval = 20 s), `imports` (pandas, pyarrow and the harness loaded:
the process's size), `rec` (each frame recorded by a harness Recorder as the worker records
it, flushed as the runner does), `conv` (the conversation: clear before each utterance of the
fixtures, commit after it, wait for its transcript, which implies `reader`), `waker`
(sleeping through the clock's shared deadline timer, as the workers do, instead of
`asyncio.sleep`), and `rtsoak` (the real worker fleet, bench/capacity.py's rtsoak sender).
Usage:
    python bench/ceiling_features.py [--n 450] [--seconds 6] [--repeats 3]
About 5 minutes; results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from capacity import PERIOD, VAD_OFF, start_server, write_frames  # noqa: E402

VARIANTS = (
    *("", "reader", "hb", "imports", "rec", "conv", "waker"),
    *("hb,imports,conv,rec,waker", "rtsoak"),
)
COMPLETED = "conversation.item.input_audio_transcription.completed"


def asyncio_sleep_until(when: float) -> Awaitable[None]:
    """A timer of its own per sleeper, as the bare ceiling sleeps."""
    return asyncio.sleep(when - time.monotonic())


async def sender(url: str, n: int, seconds: float, frames_path: Path, features: set[str]) -> dict:
    """The ceiling's loop plus `features`; CPU (user, system) over the window. The pacing lines
    repeat bench/capacity.py's ceiling on purpose: that one stays bare, this one grows."""
    import aiohttp
    import numpy as np

    if "imports" in features:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401

        import harness.log.frames  # noqa: F401
        import harness.run.runner  # noqa: F401
    from harness.edge.clock import sleep_until_monotonic

    conv = "conv" in features
    sleep_until = sleep_until_monotonic if "waker" in features else asyncio_sleep_until

    lines = frames_path.read_text().splitlines()
    frames = [line.encode() for line in lines if line]
    # utterance boundaries: the fixtures' utterances, one after the other, as frames.jsonl has them
    utt_frames = json.loads((frames_path.parent / "utterances.json").read_text())
    utt_starts = [0, *itertools.accumulate(utt_frames)]
    text = aiohttp.WSMsgType.TEXT
    recorder = None
    if "rec" in features:
        from harness.log.recorder import Recorder
        from harness.log.recorder import pack_append as pack

        recorder = Recorder(frames_path.parent / f"events-{os.getpid()}.arrows")
        recorder.start()
    lateness = array.array("d")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gate = asyncio.Semaphore(50)

        async def connect() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await http.ws_connect(
                    url,
                    headers={"Authorization": "Bearer bench"},
                    max_msg_size=0,
                    heartbeat=20.0 if "hb" in features else None,
                )
                await ws.receive()
                await ws.send_str(VAD_OFF)
                await ws.receive()
                return ws

        sockets = await asyncio.gather(*(connect() for _ in range(n)))
        transcripts = [asyncio.Queue() for _ in sockets]

        async def read(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if conv and json.loads(msg.data).get("type") == COMPLETED:
                    transcripts[i].put_nowait(None)

        readers = (
            [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(sockets)]
            if conv or "reader" in features
            else []
        )
        start = time.monotonic() + 0.1
        win_start, win_end = start + 1.5, start + 1.5 + seconds

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            due = start + i * PERIOD / n
            k, u, left, spoken = 0, i % len(utt_frames), 0, False
            record, stream = recorder.appends("v", i, 1) if recorder is not None else (None, 0)
            while True:
                if conv and left == 0:  # utterance boundary: commit, transcript, clear
                    if spoken:
                        await ws.send_str('{"type":"input_audio_buffer.commit"}')
                        await transcripts[i].get()
                        due = max(due, time.monotonic())
                    await ws.send_str('{"type":"input_audio_buffer.clear"}')
                    u = (u + 1) % len(utt_frames)
                    k, left, spoken = utt_starts[u], utt_frames[u], True
                now = time.monotonic()
                if now < due:
                    await sleep_until(due)
                    now = time.monotonic()
                if now >= win_end:
                    return
                await ws.send_frame(frames[k], text)
                if record is not None:  # as the worker records an append
                    lag = (now - due) * 1e3
                    record(pack(time.time(), now, len(frames[k]), 20.0, lag, -30.0, stream))
                if now >= win_start:
                    lateness.append((now - due) * 1000.0)
                k, left, due = (k + 1) % len(frames), left - 1, due + PERIOD

        async def cpu() -> tuple[float, float]:
            await asyncio.sleep(max(0.0, win_start - time.monotonic()))
            t0 = os.times()
            await asyncio.sleep(max(0.0, win_end - time.monotonic()))
            t1 = os.times()
            return t1.user - t0.user, t1.system - t0.system

        cpu_task = asyncio.ensure_future(cpu())
        await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)))
        user, system = await cpu_task
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    if recorder is not None:
        await recorder.aclose()
    lag = np.frombuffer(lateness, dtype=np.float64)
    return {"frames": len(lag), "user_s": user, "sys_s": system, "p99_ms": np.percentile(lag, 99)}


def run_variant(variant: str, url: str, n: int, seconds: float, frames: Path) -> dict:
    """One run in a fresh process: a feature set of the ceiling, or rtsoak itself."""
    out = frames.parent / f"{variant or 'ceiling'}-{time.monotonic_ns()}.json"
    if variant == "rtsoak":
        cmd = [sys.executable, str(ROOT / "bench" / "capacity.py"), "--child", "rtsoak"]
        cmd += ["--url", url, "--n", str(n), "--seconds", repr(seconds), "--out", str(out)]
        cmd += ["--frames", str(frames)]
    else:
        cmd = [sys.executable, __file__, "--child", variant, "--url", url, "--n", str(n)]
        cmd += ["--seconds", repr(seconds), "--frames", str(frames), "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=120 + n * 0.05 + seconds)
    result = json.loads(out.read_text())
    if variant == "rtsoak":
        import numpy as np

        lag = np.fromfile(str(out) + ".lag", dtype=np.float64)
        result = {
            "frames": len(lag),
            "user_s": result["user_s"],
            "sys_s": result["sys_s"],
            "p99_ms": float(np.percentile(lag, 99)),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=450, help="sockets (below every limit)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        import uvloop

        features = set(args.child.split(",")) - {""}
        result = uvloop.run(sender(args.url, args.n, args.seconds, args.frames, features))
        args.out.write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="rtsoak-features-") as tmp_name:
        tmp = Path(tmp_name)
        frames = write_frames(tmp)
        server, url = start_server(tmp)
        os.environ["CAP_SERVER_PID"] = str(server.pid)  # rtsoak's child reads the server's CPU
        try:
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for _ in range(args.repeats):
                for variant in VARIANTS:
                    runs[variant].append(run_variant(variant, url, args.n, args.seconds, frames))
        finally:
            server.terminate()
            server.wait(timeout=10)
    base = statistics.median((r["user_s"] + r["sys_s"]) / r["frames"] * 1e6 for r in runs[""])
    print(f"| features ({args.n} sockets, median of {args.repeats}) | CPU µs/frame | user | "
          "system | vs ceiling | p99 ms |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, rs in runs.items():
        per = [(r["user_s"] + r["sys_s"]) / r["frames"] * 1e6 for r in rs]
        user = statistics.median(r["user_s"] / r["frames"] * 1e6 for r in rs)
        system = statistics.median(r["sys_s"] / r["frames"] * 1e6 for r in rs)
        p99 = statistics.median(r["p99_ms"] for r in rs)
        name = variant or "ceiling"
        print(
            f"| {name} | {statistics.median(per):.1f} | {user:.1f} | {system:.1f} | "
            f"{statistics.median(per) / base:.2f}x | {p99:.1f} |"
        )


if __name__ == "__main__":
    main()
