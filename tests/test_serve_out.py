"""`rtsoak serve --out DIR` records like the proxy (issue 33): each session's events both ways,
the server's ground truth beside them and a manifest, so `rtsoak report DIR` works."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import zlib
from pathlib import Path

import aiohttp
import numpy as np
from conftest import ROOT, rtsoak

from harness.config.audio import RATE, to_pcm16
from harness.config.faults import parse_faults
from harness.core.session import SessionLimits
from harness.core.transcript import parse_transcript
from harness.edge.clock import ScaledClock
from harness.edge.server import FakeServer, ServerConfig
from harness.log.frames import load
from harness.log.recorder import Recorder

COMPLETED = "conversation.item.input_audio_transcription.completed"
VAD_OFF = {
    "type": "session.update",
    "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
}


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return to_pcm16(0.3 * np.sin(2 * np.pi * 330 * t), RATE)


async def one_utterance(url: str, pcm: bytes) -> dict:
    """A client of its own (no rtsoak headers): own VAD, one turn, then it closes."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers={"Authorization": "Bearer any-key"}) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "session.created"
            await ws.send_json(VAD_OFF)
            audio = base64.b64encode(pcm).decode()
            await ws.send_json({"type": "input_audio_buffer.append", "audio": audio})
            await ws.send_json({"type": "input_audio_buffer.commit"})
            while (event := await ws.receive_json(timeout=10))["type"] != COMPLETED:
                assert event["type"] != "error", event
    return event


async def test_serve_out_is_a_run_directory_that_rtsoak_report_reads(tmp_path: Path) -> None:
    out = tmp_path / "served"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "harness", "serve", "--port", "0", "--out", str(out)),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = "ws://" + first.split("ws://", 1)[1].split()[0]
        pcm = tone(0.6)
        completed = await one_utterance(url, pcm)
        assert parse_transcript(completed["transcript"]).crc32 == zlib.crc32(pcm)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "serve" and manifest["ended"] is not None
    result = rtsoak("report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["utterances"]["serve"]["completed"] == 1, summary["utterances"]
    frames = load(out)
    assert len(frames.connections) == 1
    (utt,) = frames.utterances.itertuples()
    assert utt.status == "completed" and utt.crc_match
    # both ways, every event: what the client sent and what it was sent
    events = frames.events[frames.events["src"] == "client"]
    sent = set(events[events["dir"] == "send"]["type"])
    received = set(events[events["dir"] == "recv"]["type"])
    assert {"session.update", "input_audio_buffer.append", "input_audio_buffer.commit"} <= sent
    assert {"session.created", "session.updated", "input_audio_buffer.committed", COMPLETED} <= (
        received
    )
    # the server's ground truth is beside it
    server = set(frames.events[frames.events["src"] == "server"]["type"])
    assert {"session_open", "session_close"} <= server


async def test_a_fault_is_the_ground_truth_of_the_drop_it_caused(tmp_path: Path) -> None:
    """A session the fake drops (1006): the connection is a drop, classified as the client
    saw it, and the report's ground truth names the policy, joined by request id."""
    faults = parse_faults({"session_age": {"mean": "100ms"}}, "t", seed=3)
    recorder = Recorder(tmp_path / "events-server.arrows")
    recorder.start()
    server = FakeServer(
        ScaledClock(1.0),
        ServerConfig(faults=faults, seed=5, limits=SessionLimits(latency_base=0.01)),
        recorder,
    )
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url, headers={"Authorization": "Bearer k"}) as ws:
                while (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.TEXT:
                    pass
    finally:
        await server.stop()
        await recorder.aclose()
    conns = load(tmp_path).connections
    (conn,) = conns.itertuples()
    assert conn.cause == "abnormal" and conn.close_code == 1006 and conn.dropped
    assert conn.injected_fault == "session_age"


async def test_an_embedded_server_does_not_record_its_clients(tmp_path: Path) -> None:
    """Embedded in a run (its clock waits for the runner), the workers record themselves:
    the server writes no client rows and no manifest of its own."""
    recorder = Recorder(tmp_path / "events-server.arrows")
    recorder.start()
    server = FakeServer(ScaledClock(1.0), ServerConfig(), recorder)
    server.clock_ready.clear()
    url = await server.start()
    server.clock_ready.set()
    try:
        await one_utterance(url, tone(0.3))
    finally:
        await server.stop()
        await recorder.aclose()
    assert not (tmp_path / "manifest.json").exists()
    from harness.log.frames import read_log

    table, _ = read_log(tmp_path / "events-server.arrows")
    assert set(table.column("src").to_pylist()) == {"server"}
