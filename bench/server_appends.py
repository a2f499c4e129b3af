"""Inbound appends per second one fake-server process sustains (JSON parse + base64 decode +
CRC per append, and with server VAD the energy detector too).

`rtsoak serve` runs in its own process (one core); this process floods it over loopback with
pre-built 20 ms appends on N connections, each batch ending in a commit, and times until every
`input_audio_buffer.committed` is back: by then the server has processed every append before
it. The server's own CPU time per append is read from /proc. Usage:
    python bench/server_appends.py [--connections 20 --appends 5000 --vad]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def speech_like_append(seconds: float = 0.02) -> str:
    t = np.arange(int(24000 * seconds)) / 24000
    pcm = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2").tobytes()
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


async def connection(http, url: str, frame: str, appends: int, batch: int, vad: bool) -> None:
    async with http.ws_connect(url, headers={"Authorization": "Bearer bench"}) as ws:
        await ws.receive()  # session.created
        if not vad:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {"audio": {"input": {"turn_detection": None}}},
                    }
                )
            )
            await ws.receive()
        sent = 0
        while sent < appends:
            n = min(batch, appends - sent)
            for _ in range(n):
                await ws.send_str(frame)
            sent += n
            if not vad:
                await ws.send_str('{"type":"input_audio_buffer.commit"}')
                while json.loads((await ws.receive()).data)["type"] != (
                    "input_audio_buffer.committed"
                ):
                    pass
        if vad:  # a clear is answered only after every append before it
            await ws.send_str('{"type":"input_audio_buffer.clear"}')
            while json.loads((await ws.receive()).data)["type"] != "input_audio_buffer.cleared":
                pass


async def main(args: argparse.Namespace) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        url = server.stdout.readline().split(" on ")[1].strip()
        frame = speech_like_append()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            await asyncio.gather(
                *(
                    connection(http, url, frame, args.appends, args.batch, args.vad)
                    for _ in range(args.connections)
                )
            )
            wall, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
        total = args.connections * args.appends
        print(
            json.dumps(
                {
                    "vad": args.vad,
                    "connections": args.connections,
                    "appends": total,
                    "appends_per_s": round(total / wall),
                    "server_cpu_s": round(cpu, 2),
                    "server_us_per_append": round(cpu / total * 1e6, 1),
                    "appends_per_core_s": round(total / cpu) if cpu else None,
                }
            )
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--appends", type=int, default=5000, help="per connection")
    parser.add_argument("--batch", type=int, default=250, help="appends per commit")
    parser.add_argument("--vad", action="store_true", help="leave server VAD on")
    try:
        import uvloop

        uvloop.run(main(parser.parse_args()))
    except ImportError:
        asyncio.run(main(parser.parse_args()))
