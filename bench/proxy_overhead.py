"""What putting `rtsoak proxy` between a client and the service costs: the round trip of a probe
event (`input_audio_buffer.clear` -> `cleared`) direct to the fake server and through the proxy,
while N other connections stream 20 ms appends; and the proxy's CPU per relayed frame.

Three processes on loopback: the fake server (`rtsoak serve`), the proxy (`rtsoak proxy`, URL
upstream, recording as always) and this load generator (uvloop). Every loop is bounded by
`--seconds`. Usage:  python bench/proxy_overhead.py [--counts 50 200 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-upstream-key"
APPEND = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()}
)
VAD_OFF = json.dumps(
    {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
    }
)
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _start(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start `python -m harness ...` and return it with the ws:// URL from its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = json.loads(line)["url"] if line.startswith("{") else line.split(" on ", 1)[1].strip()
    return proc, url


async def _stream(http: aiohttp.ClientSession, url: str, until: float, sent: list[int]) -> None:
    async with http.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send_str(VAD_OFF)
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        n = 0
        while deadline < until:
            await ws.send_str(APPEND)
            n += 1
            if n % 250 == 0:  # a 5 s turn: commit, so the buffer stays bounded
                await ws.send_str('{"type": "input_audio_buffer.commit"}')
            deadline += 0.02
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        sent.append(n)


async def _probe(http: aiohttp.ClientSession, url: str, until: float) -> tuple[list[float], str]:
    """Round trips of clear -> cleared, every 50 ms, in wall ms, and why the probe stopped:
    "done", or the frame that ended it early (a saturated path closes or times out)."""
    rtts: list[float] = []
    async with http.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send_str(VAD_OFF)
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            t0 = time.perf_counter()
            await ws.send_str('{"type": "input_audio_buffer.clear"}')
            while True:
                try:
                    msg = await ws.receive(timeout=10)
                except TimeoutError:
                    return rtts, "no answer in 10 s"
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return rtts, f"{msg.type.name} {ws.close_code}"
                if json.loads(msg.data)["type"] == "input_audio_buffer.cleared":
                    break
            rtts.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.05)
    return rtts, "done"


async def _measure(url: str, connections: int, seconds: float) -> dict[str, float | str]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        sent: list[int] = []
        load = [asyncio.create_task(_stream(http, url, until, sent)) for _ in range(connections)]
        await asyncio.sleep(1.0)  # let the load settle before probing
        rtts, ended = await _probe(http, url, until)
        await asyncio.gather(*load)
    a = np.array(rtts[5:])  # the first few pay the connection's warm-up
    # none left (a saturated path): nan, and the row says why the probe stopped
    p50, p99 = np.percentile(a, [50, 99]) if len(a) else (math.nan, math.nan)
    return {
        "rtt_p50_ms": float(p50),
        "rtt_p99_ms": float(p99),
        "frames": float(sum(sent)),
        "probe": ended,
    }


def run(counts: list[int], seconds: float, repeats: int) -> list[dict[str, float | str]]:
    import uvloop

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "server.json").write_text("{}")
        server, server_url = _start(
            ["serve", "--port", "0", "--sync-stdin", "--faults", f"{tmp}/server.json"]
        )
        assert server.stdin is not None
        server.stdin.write(f"{time.monotonic()!r}\n")
        server.stdin.flush()
        proxy, proxy_url = _start(
            ["proxy", "--upstream", server_url.split("?")[0], "--upstream-key-env", "BENCH_KEY"]
            + ["--out", tmp, "--no-report"],
            env={"BENCH_KEY": KEY},
        )
        try:
            for n in counts:
                for _ in range(repeats):
                    direct = uvloop.run(_measure(server_url, n, seconds))
                    cpu0 = _cpu_seconds(proxy.pid)
                    proxied = uvloop.run(_measure(proxy_url, n, seconds))
                    cpu = _cpu_seconds(proxy.pid) - cpu0
                    rows.append(
                        {
                            "connections": n,
                            "direct_p50_ms": direct["rtt_p50_ms"],
                            "direct_p99_ms": direct["rtt_p99_ms"],
                            "proxied_p50_ms": proxied["rtt_p50_ms"],
                            "proxied_p99_ms": proxied["rtt_p99_ms"],
                            "proxy_cpu_us_per_frame": cpu
                            / proxied["frames"]
                            * 1e6,  # per client frame
                            "proxy_cpu_share": cpu / seconds,
                            "probe_direct": direct["probe"],
                            "probe_proxied": proxied["probe"],
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            proxy.terminate()
            proxy.wait(30)
            server.stdin.close()
            server.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200, 400])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.seconds < 2:
        parser.error("--seconds must be at least 2: the load settles for 1 s before probing")
    rows = run(args.counts, args.seconds, args.repeats)
    print(
        "\n| connections | direct p50 / p99 ms | proxied p50 / p99 ms "
        "| proxy CPU µs/frame | proxy CPU |"
    )
    print("| --- | --- | --- | --- | --- |")
    for n in args.counts:
        mine = [r for r in rows if r["connections"] == n]

        def med(key: str, mine=mine) -> float:
            """Median of the runs that measured it; nan (printed so) if none did."""
            values = [r[key] for r in mine if not math.isnan(r[key])]
            return statistics.median(values) if values else math.nan

        print(
            f"| {n} | {med('direct_p50_ms'):.2f} / {med('direct_p99_ms'):.2f} | "
            f"{med('proxied_p50_ms'):.2f} / {med('proxied_p99_ms'):.2f} | "
            f"{med('proxy_cpu_us_per_frame'):.1f} | {med('proxy_cpu_share') * 100:.0f} % |"
        )


if __name__ == "__main__":
    main()
