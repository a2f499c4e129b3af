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


def read_table(path: Path) -> pa.Table:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def test_a_sent_append_is_logged_as_the_same_row_would_be(tmp_path: Path) -> None:
    """The hot path's typed buffer writes exactly the row `row()` writes, variants and all."""
    appends = [
        (1.7e9 + i / 7, i * 0.02, variant, i % 5, 1 + i % 2, 1330 + i, 20.0 - i % 3, i * 0.37)
        for i, variant in enumerate(["a", None, "b", "a", None, "a"] * 4)
    ]
    typed, plain = Recorder(tmp_path / "typed.arrows"), Recorder(tmp_path / "plain.arrows")
    for wall, t, variant, worker, conn, size, audio_ms, lag_ms in appends:
        typed.sent_append(
            wall, t, typed.variant_code(variant), worker, conn, size, audio_ms, lag_ms
        )
        plain.row(
            wall, t, "client", variant, worker, conn, "send", "input_audio_buffer.append",
            size, audio_ms, lag_ms,
        )  # fmt: skip
    assert typed.recorded == plain.recorded == len(appends)
    typed.close()
    plain.close()
    assert read_table(tmp_path / "typed.arrows").equals(read_table(tmp_path / "plain.arrows"))
    assert typed.lateness.total == len(appends)
    assert (typed.lateness.counts == plain.lateness.counts).all()


async def test_sliced_flushes_of_both_buffers_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """Other rows and appends sent, arriving before and during a sliced flush and met by a hard
    flush between slices: every row is written once, each kind in the order it came."""
    rec = Recorder(tmp_path / "events.arrows", flush_every=0.01, slice_rows=10)
    code = rec.variant_code("v")

    def add(i: int) -> None:
        if i % 3:
            rec.sent_append(float(i), 0.0, code, 0, 1, 100, 20.0, 1.0)
        else:
            rec.row(float(i), 0.0, "client", "v", 0, 1, "recv", "x", 1, None, None)

    for i in range(60):
        add(i)
    rec.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0  # bounded: the periodic flush is due within 10 ms
    while not rec.count and loop.time() < deadline:
        await asyncio.sleep(0)
    assert rec.count == 10  # one slice, then the loop got a turn
    for i in range(60, 66):  # arrive mid-flush
        add(i)
    rec.flush()  # what a second SIGINT does
    assert rec.count == rec.recorded == 66
    await rec.aclose()
    table = read_table(tmp_path / "events.arrows")
    walls, kinds = table.column("wall").to_pylist(), table.column("dir").to_pylist()
    assert sorted(walls) == [float(i) for i in range(66)]
    for kind in ("send", "recv"):
        mine = [w for w, k in zip(walls, kinds, strict=True) if k == kind]
        assert mine == sorted(mine)
    assert rec.lateness.total == 44  # the appends sent carry a lateness, the others not
