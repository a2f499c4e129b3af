"""Durable, append-only event log: one Arrow IPC stream per process in the run directory.

Rows are appended flat to one list (cheap on the per-frame path, and no object per row that
the garbage collector must track: a tuple per row made full collections four times as
frequent, each a pause of tens of ms with hundreds of sockets open) and written every
`flush_every` wall seconds, so a SIGKILL loses at most that much. The list is the same object
for the whole run: once the runner freezes it out of the collector's sight it is never scanned,
where a fresh list per flush was scanned item by item by every young collection that met it
(5-10 ms pauses at 600 sockets). A flush writes slices of `slice_rows` with a yield to the
event loop between them: its rows written in one burst made a backlog every sender paid for.
Flushes come every 0.2 s, not more often: each one finds pyarrow's code and data gone from the
CPU caches, costs twice what it does warm, and evicts the senders' in turn, which costs them
as much again (bench/RESULTS.md). A batch torn by a crash is skipped by the reader (frames.py),
never fatal. No audio payload is ever logged: bytes, audio milliseconds and CRCs stand for it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["EVENT_SCHEMA", "LatenessHistogram", "Recorder"]

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
    """Appends rows and persists them in batches. `row()` is the only per-frame call."""

    def __init__(self, path: Path, flush_every: float = 0.2, slice_rows: int = 1000) -> None:
        self.path = path
        self.flush_every = flush_every
        self.slice_rows = slice_rows
        self.rows: list[Any] = []  # flat: _WIDTH values per row; never replaced (see above)
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

    @property
    def recorded(self) -> int:
        """Rows recorded so far, written or not."""
        return self.count + len(self.rows) // _WIDTH

    def _write_head(self, rows: int) -> None:
        """Write the oldest `rows` rows and drop them from the buffer (no await in between).
        Each column is sliced straight from the buffer: a copy of the head first touched
        every row's objects once more, and by flush time they are no longer in the cache."""
        end = rows * _WIDTH
        flat = self.rows
        columns = [pa.array(flat[i:end:_WIDTH], type=typ) for i, typ in enumerate(_TYPES)]
        del flat[:end]
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, names=_FIELDS))
        self._sink.flush()
        self.count += rows
        self.lateness.add(columns[_LAG])

    def flush(self) -> None:
        """Write everything recorded so far, at once (at close, or before a hard exit)."""
        if self.rows:
            self._write_head(len(self.rows) // _WIDTH)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            # only what was there when the flush began: rows keep arriving between slices
            left = len(self.rows) // _WIDTH
            while left > 0 and self.rows:  # `flush()` may have run between slices
                step = min(left, self.slice_rows, len(self.rows) // _WIDTH)
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
