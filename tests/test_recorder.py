"""The event log: sliced periodic flushes lose and duplicate nothing; the lateness histogram
that decides `saturated` in the manifest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa

from harness.recorder import LatenessHistogram, Recorder


def read_walls(path: Path) -> tuple[list[float], int]:
    with pa.OSFile(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    return table.column("wall").to_pylist(), len(table.to_batches())


async def test_a_hard_flush_between_slices_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "events.arrows", flush_every=0.01, slice_rows=10)
    for i in range(35):
        rec.row(
            float(i),
            0.0,
            "client",
            "v",
            0,
            1,
            "send",
            "input_audio_buffer.append",
            100,
            20.0,
            float(i),
        )
    rec.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0  # bounded: the periodic flush is due within 10 ms
    while not rec.count and loop.time() < deadline:
        await asyncio.sleep(0)  # one loop turn: we run between the flusher's slices
    assert rec.count == 10  # one slice written, then the loop got a turn
    rec.flush()  # what a second SIGINT does before exiting
    assert rec.count == 35
    await rec.aclose()
    walls, batches = read_walls(tmp_path / "events.arrows")
    assert walls == [float(i) for i in range(35)] and batches == 2
    assert rec.lateness.total == 35


def test_lateness_histogram_quantiles() -> None:
    hist = LatenessHistogram()
    assert hist.quantile(0.99) is None
    hist.add(pa.array([0.5] * 98 + [None, 12.0, 2000.0], pa.float32()))
    assert hist.total == 100  # nulls (rows without lateness) are not counted
    assert hist.quantile(0.5) == 0.6  # upper edge of the 0.1 ms bin
    assert hist.quantile(0.985) == 12.1
    assert hist.quantile(1.0) == 1000.0  # capped: "a second or more"


async def test_rows_recorded_between_slices_keep_their_order(tmp_path: Path) -> None:
    """Rows keep arriving while a flush is between slices: each is written once, in order,
    and the buffer stays the one list the runner froze out of the collector's sight."""
    rec = Recorder(tmp_path / "events.arrows", flush_every=0.01, slice_rows=10)
    buffer = rec.rows

    def add(i: int) -> None:
        rec.row(float(i), 0.0, "client", "v", 0, 1, "send", "x", 1, None, None)

    for i in range(25):
        add(i)
    rec.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not rec.count and loop.time() < deadline:
        await asyncio.sleep(0)
    assert rec.count == 10
    for i in range(25, 30):  # arrive mid-flush
        add(i)
    while rec.count < 25 and loop.time() < deadline:
        await asyncio.sleep(0)
    assert rec.count == 25 and rec.recorded == 30  # the flush took only what it began with
    await rec.aclose()
    assert rec.rows is buffer
    walls, _ = read_walls(tmp_path / "events.arrows")
    assert walls == [float(i) for i in range(30)]


def test_each_flushed_batch_is_on_disk_while_the_log_is_still_open(tmp_path: Path) -> None:
    """What a SIGKILL leaves: every batch written so far, readable by another reader, even
    though the sink buffers a batch's pieces in memory until the flush."""
    rec = Recorder(tmp_path / "events.arrows")
    for batch in range(3):
        for i in range(4):
            rec.row(float(batch * 4 + i), 0.0, "client", "v", 0, 1, "send", "x", 1, None, None)
        rec.flush()
        walls, batches = read_walls(tmp_path / "events.arrows")
        assert walls == [float(i) for i in range((batch + 1) * 4)] and batches == batch + 1
    rec.close()
