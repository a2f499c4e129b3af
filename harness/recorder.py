"""Durable, append-only event log: one Arrow IPC stream per process in the run directory.

Rows are appended flat to lists (cheap on the per-frame path, and no object per row that
the garbage collector must track: a tuple per row made full collections four times as
frequent, each a pause of tens of ms with hundreds of sockets open) and written every
`flush_every` wall seconds, so a SIGKILL loses at most that much. Each list is the same object
for the whole run: once the runner freezes it out of the collector's sight it is never scanned,
where a fresh list per flush was scanned item by item by every young collection that met it
(5-10 ms pauses at 600 sockets). A flush writes even slices of at most `slice_rows` with a
yield to the event loop between them: its rows written in one burst made a backlog every
sender paid for. A slice of 4,000 appends takes 2-4 ms; smaller ones cost more a row (their
fixed costs are paid cold).
Flushes come every 0.2 s, not more often: each one finds pyarrow's code and data gone from the
CPU caches, costs twice what it does warm, and evicts the senders' in turn, which costs them
as much again (bench/RESULTS.md). A batch torn by a crash is skipped by the reader (frames.py),
never fatal. No audio payload is ever logged: bytes, audio milliseconds and CRCs stand for it.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["APPEND", "EVENT_SCHEMA", "LatenessHistogram", "Recorder"]

# One row per event sent, received or observed. `detail` holds a JSON object for the rare
# meta rows (connection and utterance summaries), never for per-frame rows.
EVENT_SCHEMA = pa.schema(
    [
        ("wall", pa.float64()),  # epoch seconds
        ("t", pa.float64()),  # scenario seconds
        ("src", pa.string()),  # client | server
        ("variant", pa.string()),
        ("worker", pa.int32()),
        ("conn", pa.int32()),  # connection attempt number within the worker (server: -1)
        ("dir", pa.string()),  # send | recv | meta
        ("type", pa.string()),  # event type, or meta kind
        ("bytes", pa.int32()),  # frame size on the wire (JSON text)
        ("audio_ms", pa.float32()),  # audio carried by an append
        ("lag_ms", pa.float32()),  # send lateness against its deadline, wall milliseconds
        ("code", pa.int32()),  # close code or HTTP status
        ("item", pa.string()),  # item id / request id / utterance key
        ("text", pa.string()),  # transcript, error code, close reason
        ("detail", pa.string()),  # JSON object for meta rows
    ]
)
_FIELDS = EVENT_SCHEMA.names
_TYPES = [f.type for f in EVENT_SCHEMA]
_WIDTH = len(_FIELDS)
_LAG = _FIELDS.index("lag_ms")
_APPEND_WIDTH = 6  # wall, t, bytes, audio_ms, lag_ms, stream (see Recorder.appends)
_STREAM_WIDTH = 3  # variant code, worker, conn
APPEND = "input_audio_buffer.append"


class LatenessHistogram:
    """Send lateness of every row that has one, in 0.1 ms bins up to 1 s (one overflow bin):
    enough to say at the end of a run whether the sender kept its deadlines, at the cost of
    one vectorised pass per flush rather than work per row."""

    RESOLUTION_MS = 0.1
    BINS = 10_000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 1, dtype=np.int64)

    def add(self, lag_ms: pa.Array) -> None:
        values = lag_ms.drop_null().to_numpy(zero_copy_only=False)
        if len(values):
            bins = np.clip(values / self.RESOLUTION_MS, 0, self.BINS).astype(np.int64)
            self.counts += np.bincount(bins, minlength=self.BINS + 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float | None:
        """Upper edge of the bin holding quantile q, in wall ms; 1000.0 means "1 s or more"
        (a finite number, so manifests stay valid JSON). None if nothing was recorded."""
        if not self.total:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), q * self.total))
        return round(min(i + 1, self.BINS) * self.RESOLUTION_MS, 1)


class Recorder:
    """Appends rows and persists them in batches, in the order they were recorded.

    Two buffers: `row()` for every kind of row, and `appends()` for the audio appends a worker
    sends, nearly all the rows. An append is six numbers extended onto a list, with no Python
    call of the recorder's: its constant columns and its connection's identity are filled in
    at flush time, a column at a time. That took the recorder's cost to a paced sender from
    about 4 to about 1 µs a frame (bench/RESULTS.md). Each `row()` notes how many appends came
    before it, so a flush interleaves the two as they were recorded."""

    def __init__(self, path: Path, flush_every: float = 0.2, slice_rows: int = 4000) -> None:
        self.path = path
        self.flush_every = flush_every
        self.slice_rows = slice_rows
        # Both buffers are flat lists, never replaced (see above).
        self.rows: list[Any] = []  # _WIDTH values per row
        self.sends: list[float] = []  # _APPEND_WIDTH numbers per append sent
        self._before: list[int] = []  # per row: appends recorded before it, for log order
        self._appends_written = 0
        self._variants: dict[str | None, int] = {}
        # variant code, worker and conn of each stream (row = stream number), and of the
        # streams opened since the last flush, not yet in that table
        self._streams = np.empty((0, _STREAM_WIDTH), np.int64)
        self._new_streams: list[int] = []
        self.count = 0
        self.lateness = LatenessHistogram()
        # buffered, so that a batch's few dozen buffers reach the file in one write(2) at
        # `flush()` instead of one each: about 85 µs less CPU per batch
        self._sink = pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), buffer_size=1 << 20)
        self._writer = pa.ipc.new_stream(self._sink, EVENT_SCHEMA)
        self._task: asyncio.Task | None = None
        # pyarrow initialises its conversion machinery on first use (~150 ms): pay that
        # now, not in the first flush of a running soak, where it stalls every sender.
        pa.RecordBatch.from_arrays([pa.array([], t) for t in _TYPES], names=_FIELDS)

    def row(
        self,
        wall: float,
        t: float,
        src: str,
        variant: str | None,
        worker: int,
        conn: int,
        dir_: str,
        type_: str,
        bytes_: int | None = None,
        audio_ms: float | None = None,
        lag_ms: float | None = None,
        code: int | None = None,
        item: str | None = None,
        text: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._before.append(self._appends_written + len(self.sends) // _APPEND_WIDTH)
        # extend() with a tuple: the tuple dies at once, so the collector's count stays put
        self.rows.extend(
            (
                wall,
                t,
                src,
                variant,
                worker,
                conn,
                dir_,
                type_,
                bytes_,
                audio_ms,
                lag_ms,
                code,
                item,
                text,
                None if detail is None else json.dumps(detail, default=str),
            )
        )

    def appends(
        self, variant: str | None, worker: int, conn: int
    ) -> tuple[Callable[[tuple[float, ...]], None], int]:
        """For the per-frame path, once per client connection: `(record, stream)`, where
        `record((wall, t, bytes_, audio_ms, lag_ms, stream))` records one
        `input_audio_buffer.append` that connection sent, as `row()` would."""
        stream = len(self._streams) + len(self._new_streams) // _STREAM_WIDTH
        code = self._variants.setdefault(variant, len(self._variants))
        self._new_streams.extend((code, worker, conn))
        return self.sends.extend, stream

    @property
    def recorded(self) -> int:
        """Rows recorded so far, written or not."""
        return self.count + self._pending()

    def _pending(self) -> int:
        return len(self.rows) // _WIDTH + len(self.sends) // _APPEND_WIDTH

    def _row_columns(self, rows: int) -> list[pa.Array]:
        """The oldest `rows` rows of `row()` as columns, dropped from the buffer. Each column
        is sliced straight from the buffer: a copy of the head first touched every row's
        objects once more, and by flush time they are no longer in the cache."""
        end = rows * _WIDTH
        flat = self.rows
        columns = [pa.array(flat[i:end:_WIDTH], type=typ) for i, typ in enumerate(_TYPES)]
        del flat[:end], self._before[:rows]
        return columns

    def _append_columns(self, rows: int) -> list[pa.Array]:
        """The oldest `rows` appends as columns, dropped from the buffer."""
        end, sends = rows * _APPEND_WIDTH, self.sends
        head = sends if end == len(sends) else sends[:end]
        values = np.array(head, dtype=np.float64).reshape(rows, _APPEND_WIDTH)
        del sends[:end]
        self._appends_written += rows
        if self._new_streams:  # only the new ones converted: a long soak opens thousands
            new = np.array(self._new_streams, np.int64).reshape(-1, _STREAM_WIDTH)
            self._streams = np.concatenate([self._streams, new])
            del self._new_streams[:]
        variant, worker, conn = self._streams[values[:, 5].astype(np.intp)].T
        return [
            pa.array(values[:, 0]),
            pa.array(values[:, 1]),
            pa.repeat("client", rows),
            pa.array(list(self._variants), pa.string()).take(pa.array(variant)),
            pa.array(worker.astype(np.int32)),
            pa.array(conn.astype(np.int32)),
            pa.repeat("send", rows),
            pa.repeat(APPEND, rows),
            pa.array(values[:, 2].astype(np.int32)),
            pa.array(values[:, 3].astype(np.float32)),
            pa.array(values[:, 4].astype(np.float32)),
            *(pa.nulls(rows, typ) for typ in _TYPES[_LAG + 1 :]),
        ]

    def _write_head(self, rows: int) -> None:
        """Write the oldest `rows` rows of both buffers, in the order they were recorded, and
        drop them from the buffers (no await in between)."""
        before = np.array(self._before, np.int64) - self._appends_written
        at = np.arange(len(before)) + before  # each row()'s place among all pending rows
        own = int(np.searchsorted(at, rows))
        sent = rows - own
        if not sent:
            columns = self._row_columns(own)
        elif not own:
            columns = self._append_columns(sent)
        else:
            order = np.empty(rows, np.int64)
            is_row = np.zeros(rows, bool)
            is_row[at[:own]] = True
            order[is_row] = np.arange(own)
            order[~is_row] = np.arange(own, rows)
            take = pa.array(order)
            columns = [
                pa.concat_arrays([a, b]).take(take)
                for a, b in zip(self._row_columns(own), self._append_columns(sent), strict=True)
            ]
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, names=_FIELDS))
        self._sink.flush()
        self.count += rows
        self.lateness.add(columns[_LAG])

    def flush(self) -> None:
        """Write everything recorded so far, at once (at close, or before a hard exit)."""
        pending = self._pending()
        if pending:
            self._write_head(pending)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            # only what was there when the flush began: rows keep arriving between slices
            left = self._pending()
            if not left:
                continue
            slices = math.ceil(left / self.slice_rows)
            size = math.ceil(left / slices)  # even slices: no small one at the end
            while left > 0:
                step = min(left, size, self._pending())  # `flush()` may have run between slices
                if not step:
                    break
                self._write_head(step)
                left -= step
                if left:
                    await asyncio.sleep(0)

    def start(self) -> None:
        """Begin periodic flushing on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.close()

    def close(self) -> None:
        self.flush()
        if not self._sink.closed:
            self._writer.close()
            self._sink.close()
