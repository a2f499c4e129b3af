"""The event logs: sliced periodic flushes lose and duplicate nothing; appends recorded by the
per-frame path read back as the rows `row()` would write for them, in the order recorded; the
lateness histogram that decides `saturated` in the manifest."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.log.frames import read_log
from harness.log.recorder import (
    APPEND,
    EVENT_SCHEMA,
    LatenessHistogram,
    Recorder,
    appends_log,
    pack_append,
)


def read_walls(path: Path) -> tuple[list[float], int]:
    with pa.OSFile(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    return table.column("wall").to_pylist(), len(table.to_batches())


async def test_a_hard_flush_between_slices_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "events.arrows", flush_every=0.01, slice_rows=10)
    for i in range(40):
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
    assert rec.count == 40
    await rec.aclose()
    walls, batches = read_walls(tmp_path / "events.arrows")
    assert walls == [float(i) for i in range(40)] and batches == 2
    assert rec.lateness.total == 40


def test_lateness_histogram_quantiles() -> None:
    hist = LatenessHistogram()
    assert hist.quantile(0.99) is None
    hist.add(np.array([0.5] * 97 + [-0.2, 12.0, 2000.0]))
    assert hist.total == 100
    assert hist.quantile(0.01) == 0.1  # early (a timer rounds to the ms) counts as on time
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

    for i in range(28):
        add(i)
    rec.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not rec.count and loop.time() < deadline:
        await asyncio.sleep(0)
    assert rec.count == 10  # 28 rows in slices of at most 10: 10, 10 and 8
    for i in range(28, 33):  # arrive mid-flush
        add(i)
    while rec.count < 28 and loop.time() < deadline:
        await asyncio.sleep(0)
    assert rec.count == 28 and rec.recorded == 33  # the flush took only what it began with
    await rec.aclose()
    assert rec.rows is buffer
    walls, _ = read_walls(tmp_path / "events.arrows")
    assert walls == [float(i) for i in range(33)]


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


def read_table(path: Path) -> pa.Table:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def read_events(path: Path) -> pa.Table:
    """One log as the reader loads it, its categoricals decoded to the logged strings."""
    table, torn = read_log(path)
    assert not torn
    return table.cast(EVENT_SCHEMA)


# (kind, connection) steps: a row() of some other event, an append on one of three
# connections, or a hard flush (what a second signal does) between them
STEPS = st.lists(
    st.tuples(st.sampled_from(["row", "append", "flush"]), st.integers(0, 2)), max_size=60
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, slice_rows=st.integers(1, 7))
def test_appends_and_rows_read_back_as_row_would_write_them_in_order(
    steps: list[tuple[str, int]], slice_rows: int
) -> None:
    """The per-frame path against the reference it replaces: the same events through `row()`
    alone give the same rows, value for value and each kind in the order recorded, whatever
    the interleaving, slicing and flushes; the appends in their own log."""
    with tempfile.TemporaryDirectory() as tmp:
        fast = Recorder(Path(tmp) / "fast.arrows", flush_every=0.0, slice_rows=slice_rows)
        reference = Recorder(Path(tmp) / "reference.arrows")
        streams: dict[int, tuple] = {}
        for i, (kind, conn) in enumerate(steps):
            variant = "ab"[conn % 2]
            if kind == "flush":
                fast.flush()
            elif kind == "row":
                for rec in (fast, reference):
                    rec.row(1e9 + i, i, "client", variant, conn, 1, "recv", "x", code=i, text="t")
            else:
                if conn not in streams:  # once per connection, as the worker does
                    streams[conn] = fast.appends(variant, conn, conn + 1)
                record, stream = streams[conn]
                level = -100.0 + i
                record(pack_append(1e9 + i, i / 3, 100 + i, 20.0 / (i + 1), i / 7, level, stream))
                reference.row(
                    1e9 + i, i / 3, "client", variant, conn, conn + 1, "send", APPEND,
                    100 + i, 20.0 / (i + 1), i / 7, dbfs=level,
                )  # fmt: skip

        async def drain() -> None:  # the periodic flusher, slice by slice, then close
            fast.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5.0  # bounded: every slice yields to this loop
            while fast.count < fast.recorded and loop.time() < deadline:
                await asyncio.sleep(0)
            await fast.aclose()

        asyncio.run(drain())
        reference.close()
        assert fast.count == reference.count == sum(kind != "flush" for kind, _ in steps)
        expected = read_table(reference.path)
        is_append = pc.equal(expected.column("type"), APPEND)
        assert read_events(fast.path).equals(expected.filter(pc.invert(is_append)))
        if any(kind == "append" for kind, _ in steps):
            assert read_events(appends_log(fast.path)).equals(expected.filter(is_append))
        else:  # no connection sent audio: no appends log
            assert not appends_log(fast.path).exists()
        assert fast.lateness.total == reference.lateness.total


def test_a_write_that_fails_in_the_log_thread_is_raised_not_lost(tmp_path: Path) -> None:
    """Batches are written by a thread of the recorder's: a write that fails there (here the
    file's descriptor is gone, as with a disk that vanished) fails the next flush loudly."""
    rec = Recorder(tmp_path / "events.arrows")
    os.close(rec._file.fileno())
    rec.row(1.0, 0.0, "client", "v", 0, 1, "send", "x", 1, None, None)
    with pytest.raises(OSError):
        rec.flush()
    with pytest.raises(OSError):
        rec.close()


def test_an_appends_write_that_fails_in_the_log_thread_is_raised_not_lost(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "events.arrows")
    record, stream = rec.appends("v", 0, 1)
    os.close(rec._appends_file.fileno())  # as with a disk that vanished
    record(pack_append(1.0, 0.0, 100, 20.0, 0.1, -30.0, stream))
    with pytest.raises(OSError):
        rec.flush()
    with pytest.raises(OSError):
        rec.close()
