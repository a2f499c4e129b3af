"""What recording every append costs: (1) rows/s the Recorder absorbs and CPU per row, flushes
included; (2) a paced sender over loopback WebSockets with and without recording each frame:
its CPU per frame, send lateness and achieved rate; (3) the same sender unpaced (flood), where
recording can only show up as lost throughput; (4) the paced sender in one process with
recording switched on and off every few seconds, which pairs each "on" with an "off" a moment
apart: on this VM separate runs of each differ by ±10 % from minute to minute, more than the
recorder costs.

The sender mirrors the worker's hot path (harness/edge/worker.py `_send_frames`): sleep to the
deadline, `ws.send_str` of a pre-built ~2.6 KB append, the append recorded as the worker
records it (`Recorder.appends`). The sink is a
bare aiohttp server in another process that reads and discards, so the client is what is
measured. Usage:
    python bench/recorder_overhead.py [--connections 300 --seconds 8 --repeats 7 --pairs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.log.recorder import Recorder, appends_log, pack_append  # noqa: E402

CHUNK_MS = 20
FRAME = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(CHUNK_MS * 48)).decode()}
)
DBFS = -120.0  # FRAME's level, recorded with it as the worker records `frame.dbfs`


def micro(rows: int = 1_000_000, batch: int = 3_000, repeats: int = 3) -> dict[str, float]:
    """Recording appends + flush alone, flushing every `batch` rows (300
    connections x 50 frames/s fill 0.2 s with 3,000 rows). Median of `repeats` after a
    warm-up (the first conversion pays pyarrow's lazy initialisation)."""
    _micro_once(10_000, batch)
    runs = sorted(
        (_micro_once(rows, batch) for _ in range(repeats)), key=lambda r: r["cpu_us_per_row"]
    )
    return runs[len(runs) // 2]


def _micro_once(rows: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(Path(tmp) / "events.arrows")
        streams = [rec.appends("v", worker, 1) for worker in range(300)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(rows):
            record, stream = streams[i % 300]
            record(pack_append(1.7e9 + i, i * 0.02, 2618, 20.0, 0.3, DBFS, stream))
            if i % batch == batch - 1:
                rec.flush()
        rec.close()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        size = sum(path.stat().st_size for path in (rec.path, appends_log(rec.path)))
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "cpu_us_per_row": cpu / rows * 1e6,
        "bytes_per_row": size / rows,
    }


SINK = """
import asyncio, sys
from aiohttp import web
async def ws(request):
    w = web.WebSocketResponse(max_msg_size=0)
    await w.prepare(request)
    async for _ in w:
        pass
    return w
async def main():
    app = web.Application(); app.router.add_get("/", ws)
    runner = web.AppRunner(app); await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
try:
    import uvloop; uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


async def _connect_and_freeze(http, port: int, connections: int) -> list:
    """`connections` sockets to the sink, then `gc.freeze()`, as the runner does once its
    workers are connected (harness/run/runner.py): what exists now lives as long as the run, so
    the collector stops scanning it (the recorder's buffer among it)."""
    sockets = [
        await http.ws_connect(f"ws://127.0.0.1:{port}/", max_msg_size=0) for _ in range(connections)
    ]
    gc.freeze()
    return sockets


async def sender(
    port: int, connections: int, seconds: float, record: bool, paced: bool, log_dir: Path
) -> dict[str, float]:
    import aiohttp

    rec = Recorder(log_dir / f"events-{record}-{paced}.arrows") if record else None
    if rec is not None:
        rec.start()
    lateness: list[float] = []
    sent = 0
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = await _connect_and_freeze(http, port, connections)
        start = loop.time() + 0.2
        end = start + seconds

        async def one(i: int, ws) -> None:
            nonlocal sent
            log_append, stream = rec.appends("v", i, 1) if rec is not None else (None, 0)
            k = 0
            due = start + i * CHUNK_MS / 1000 / connections  # spread the phases
            while True:
                if paced:
                    now = loop.time()
                    if now < due:
                        await asyncio.sleep(due - now)
                now = loop.time()
                if now >= end:
                    break
                await ws.send_str(FRAME)
                lag = (now - due) * 1000.0
                if log_append is not None:
                    log_append(
                        pack_append(time.time(), now, len(FRAME), CHUNK_MS, lag, DBFS, stream)
                    )
                if paced and k % 10 == 0:
                    lateness.append(lag)
                k += 1
                due += CHUNK_MS / 1000
                if not paced and k % 8 == 0:
                    await asyncio.sleep(0)  # let the others in, as a real loop would
            sent += k

        await asyncio.sleep(max(0.0, start - loop.time()))
        cpu0 = time.process_time()
        await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)))
        cpu = time.process_time() - cpu0
        for ws in sockets:
            await ws.close()
    gc.unfreeze()
    if rec is not None:
        await rec.aclose()
    lateness.sort()
    p99 = lateness[int(0.99 * (len(lateness) - 1))] if lateness else float("nan")
    return {
        "frames_per_s": sent / seconds,
        "cpu_us_per_frame": cpu / sent * 1e6,
        "cpu_share": cpu / seconds,
        "lateness_p99_ms": p99,
    }


SETTLE = 0.5  # s into a segment before its CPU counts: the last one's rows are flushed by then


async def alternating(
    port: int, connections: int, pairs: int, segment: float, log_dir: Path
) -> dict[str, object]:
    """The paced sender on one set of sockets for `pairs` pairs of `segment`-second segments,
    each pair one segment recording and one not (in turn first), CPU per frame measured in
    each after `SETTLE` s, once the other segment's rows are flushed. The recorder runs
    throughout, so what the pairs differ by is what recording the frames costs."""
    import aiohttp
    import numpy as np

    rec = Recorder(log_dir / "events-alternating.arrows")
    rec.start()
    loop = asyncio.get_running_loop()
    recording, frames = False, 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = await _connect_and_freeze(http, port, connections)
        start = loop.time() + 0.2
        end = start + 2 * pairs * segment

        async def one(i: int, ws) -> None:
            nonlocal frames
            record, stream = rec.appends("v", i, 1)
            due = start + i * CHUNK_MS / 1000 / connections
            while True:
                now = loop.time()
                if now < due:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                if now >= end:
                    return
                await ws.send_str(FRAME)
                if recording:
                    lag = (now - due) * 1000.0
                    record(pack_append(time.time(), now, len(FRAME), CHUNK_MS, lag, DBFS, stream))
                frames += 1
                due += CHUNK_MS / 1000

        async def switch() -> list[tuple[float, float]]:
            nonlocal recording
            cpu: dict[bool, list[float]] = {False: [], True: []}
            for k in range(2 * pairs):
                at = start + k * segment
                await asyncio.sleep(max(0.0, at - loop.time()))
                recording = (k % 2 == 0) == (k // 2 % 2 == 0)  # on-off, then off-on
                await asyncio.sleep(max(0.0, at + SETTLE - loop.time()))
                cpu0, frames0 = time.process_time(), frames
                await asyncio.sleep(max(0.0, at + segment - loop.time()))
                cpu[recording].append((time.process_time() - cpu0) / (frames - frames0) * 1e6)
            return list(zip(cpu[False], cpu[True], strict=True))

        measured = asyncio.ensure_future(switch())
        await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)))
        pairs_us = await measured
        for ws in sockets:
            await ws.close()
    gc.unfreeze()
    await rec.aclose()
    change = np.array([(on / off - 1) * 100 for off, on in pairs_us])
    half_ci = 1.96 * change.std(ddof=1) / np.sqrt(len(change))
    return {
        "mode": f"paced, {connections} connections, recording on and off in one process",
        "pairs": len(change),
        "cpu_us_per_frame_off_median": statistics.median(off for off, _ in pairs_us),
        "cpu_us_per_frame_on_median": statistics.median(on for _, on in pairs_us),
        "cpu_per_frame_change_pct_median_pair": float(np.median(change)),
        "cpu_per_frame_change_pct_quartiles": np.percentile(change, [25, 75]).round(1).tolist(),
        "cpu_per_frame_change_pct_mean_ci95": [
            round(float(change.mean() - half_ci), 1),
            round(float(change.mean() + half_ci), 1),
        ],
    }


def run_on_uvloop(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_sender(
    port: int, connections: int, seconds: float, record: bool, paced: bool, log_dir: Path
) -> dict[str, float]:
    return run_on_uvloop(sender(port, connections, seconds, record, paced, log_dir))


def capacity(port: int, steps: list[int], seconds: float, repeats: int, log_dir: Path) -> None:
    """The paced sender's throughput ceiling: the most connections (x 50 frames/s) whose
    median (over `repeats`) p99 send lateness stays within 10 ms, with and without a recorder
    row per frame. One run's p99 hangs on a rare stall (a full GC), hence the repeats."""
    best: dict[bool, int] = {False: 0, True: 0}
    for conns in steps:
        p99s: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(repeats):
            for record in (False, True):
                r = run_sender(port, conns, seconds, record, True, log_dir)
                p99s[record].append(r["lateness_p99_ms"])
                print(
                    json.dumps({"record": record, "connections": conns, "repeat": rep, **r}),
                    flush=True,
                )
        for record in (False, True):
            median = statistics.median(p99s[record])
            print(
                json.dumps(
                    {"record": record, "connections": conns, "median_lateness_p99_ms": median}
                ),
                flush=True,
            )
            if median <= 10.0:
                best[record] = max(best[record], conns)
    print(
        json.dumps({"capacity_connections": {"without": best[False], "with": best[True]}}),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--flood-connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--repeats", type=int, default=7, help="separate runs of each mode (0: none)"
    )
    parser.add_argument("--micro-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--pairs", type=int, default=40, help="on/off pairs of the alternating measure (0: none)"
    )
    parser.add_argument("--segment", type=float, default=2.0, help="seconds per segment")
    parser.add_argument(
        "--capacity",
        type=int,
        nargs="*",
        metavar="N",
        help="paced connection counts to step through: the most that keep "
        "p99 lateness <= 10 ms, with and without recording",
    )
    args = parser.parse_args()
    if args.pairs and args.segment <= SETTLE:
        parser.error(f"--segment must be longer than the {SETTLE} s each segment settles for")

    print("## micro: appends recorded + flush", flush=True)
    print(json.dumps(micro(args.micro_rows)), flush=True)

    sink = subprocess.Popen(
        [sys.executable, "-c", SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(sink.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            if args.capacity:
                capacity(port, args.capacity, args.seconds, args.repeats, Path(tmp))
                return
            separate = ((True, args.connections), (False, args.flood_connections))
            for paced, conns in separate if args.repeats else ():
                mode = (
                    f"paced, {conns} connections x 50 frames/s"
                    if paced
                    else f"flood, {conns} connections"
                )
                print(f"## {mode}", flush=True)
                results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
                for rep in range(args.repeats):  # interleaved, so drift hits both alike
                    for record in (False, True):
                        r = run_sender(port, conns, args.seconds, record, paced, Path(tmp))
                        results[record].append(r)
                        print(json.dumps({"record": record, "repeat": rep, **r}), flush=True)
                for record in (False, True):
                    med = {
                        k: statistics.median(r[k] for r in results[record])
                        for k in results[record][0]
                    }
                    print(json.dumps({"record": record, "median": med}), flush=True)
                off = statistics.median(r["frames_per_s"] for r in results[False])
                on = statistics.median(r["frames_per_s"] for r in results[True])
                cpu_off = statistics.median(r["cpu_us_per_frame"] for r in results[False])
                cpu_on = statistics.median(r["cpu_us_per_frame"] for r in results[True])
                # each repeat's pair ran back to back: their ratios show the run-to-run spread
                # that the medians hide
                pairs = sorted(
                    (b["cpu_us_per_frame"] / a["cpu_us_per_frame"] - 1) * 100
                    for a, b in zip(results[False], results[True], strict=True)
                )
                print(
                    json.dumps(
                        {
                            "mode": mode,
                            "throughput_change_pct": (on / off - 1) * 100,
                            "cpu_per_frame_change_pct": (cpu_on / cpu_off - 1) * 100,
                            "cpu_per_frame_change_pct_by_pair": [round(p, 1) for p in pairs],
                            "cpu_per_frame_change_pct_median_pair": statistics.median(pairs),
                        }
                    ),
                    flush=True,
                )
            if args.pairs:
                print(f"## paced, {args.connections} connections, alternating", flush=True)
                coro = alternating(port, args.connections, args.pairs, args.segment, Path(tmp))
                print(json.dumps(run_on_uvloop(coro)), flush=True)
    finally:
        sink.stdin.close()
        sink.wait(10)
    print(json.dumps({"cpus": os.cpu_count(), "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
