"""Durable, append-only event log: one Arrow IPC stream per process in the run directory.

Rows are appended flat to one list (cheap on the per-frame path, and no object per row that
the garbage collector must track: a tuple per row made full collections four times as
frequent, each a pause of tens of ms with hundreds of sockets open) and written every
`flush_every` wall seconds, so a SIGKILL loses at most that much. The list is the same object
for the whole run: once the runner freezes it out of the collector's sight it is never scanned,
where a fresh list per flush was scanned item by item by every young collection that met it
(5-10 ms pauses at 600 sockets). Appends sent, the bulk of a client's rows, go as numbers into
a typed buffer of their own instead (`sent_append`), written as whole columns. Flushes are
frequent and small, in slices of `slice_rows` with a yield to the event loop between them:
writing a list's rows costs about 0.5 µs a row, and a flush's rows written in one burst made a
backlog every sender paid for (bench/RESULTS.md). Rows are in the order they came within each
buffer; a flush writes the list's rows before the appends'. A batch torn by a crash is skipped
by the reader (frames.py), never fatal. No audio payload is ever logged: bytes, audio
milliseconds and CRCs stand for it.
"""

from __future__ import annotations

import array
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
# An append a client sent, as numbers: wall, t, variant code, worker, conn, bytes, audio_ms,
# lag_ms. Its other columns are the same for every such row.
_SENT_WIDTH = 8
_SENT_CONSTANT = {"src": "client", "dir": "send", "type": "input_audio_buffer.append"}
_SENT_NUMBERS = {"wall": 0, "t": 1, "worker": 3, "conn": 4, "bytes": 5, "audio_ms": 6, "lag_ms": 7}


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

    def __init__(self, path: Path, flush_every: float = 0.05, slice_rows: int = 1000) -> None:
        self.path = path
        self.flush_every = flush_every
        self.slice_rows = slice_rows
        self.rows: list[Any] = []  # flat: _WIDTH values per row; never replaced (see above)
        self.sent = array.array("d")  # appends sent: _SENT_WIDTH numbers per row (`sent_append`)
        self._variants: dict[str | None, int] = {}
        self.count = 0
        self.lateness = LatenessHistogram()
        self._sink = pa.OSFile(str(path), "wb")
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

    def variant_code(self, variant: str | None) -> int:
        """The number `sent_append` takes for a variant."""
        return self._variants.setdefault(variant, len(self._variants))

    def sent_append(
        self,
        wall: float,
        t: float,
        variant_code: int,
        worker: int,
        conn: int,
        bytes_: int,
        audio_ms: float,
        lag_ms: float,
    ) -> None:
        """`row()` of an append a client sent, for the per-frame hot path: numbers into a typed
        buffer, which is written as whole columns rather than converted value by value (0.7 µs
        of client CPU a frame saved at 450 sockets, bench/RESULTS.md). Logged after the other
        rows of its flush."""
        self.sent.extend((wall, t, variant_code, worker, conn, bytes_, audio_ms, lag_ms))

    @property
    def recorded(self) -> int:
        """Rows recorded so far, written or not."""
        return self.count + len(self.rows) // _WIDTH + len(self.sent) // _SENT_WIDTH

    def _write(self, flat: list[Any]) -> None:
        self._write_columns([pa.array(flat[i::_WIDTH], type=typ) for i, typ in enumerate(_TYPES)])

    def _write_columns(self, columns: list[pa.Array]) -> None:
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, names=_FIELDS))
        self._sink.flush()
        self.count += len(columns[0])
        self.lateness.add(columns[_LAG])

    def _write_sent_head(self, rows: int) -> None:
        """Write the oldest `rows` appends sent and drop them from their buffer."""
        end = rows * _SENT_WIDTH
        block = np.frombuffer(self.sent[:end], dtype=np.float64).reshape(rows, _SENT_WIDTH)
        del self.sent[:end]
        variants = pa.array(list(self._variants), pa.string())
        columns = []
        for name, typ in zip(_FIELDS, _TYPES, strict=True):
            if name in _SENT_NUMBERS:
                columns.append(
                    pa.array(block[:, _SENT_NUMBERS[name]].astype(typ.to_pandas_dtype()))
                )
            elif name in _SENT_CONSTANT:
                columns.append(_repeat(_SENT_CONSTANT[name], rows))
            elif name == "variant":
                columns.append(variants.take(pa.array(block[:, 2].astype(np.int32))))
            else:
                columns.append(pa.nulls(rows, typ))
        self._write_columns(columns)

    def _write_head(self, rows: int) -> None:
        """Write the oldest `rows` rows and drop them from the buffer (no await in between:
        the slice taken lives only as long as this call)."""
        end = rows * _WIDTH
        head = self.rows[:end]
        del self.rows[:end]
        self._write(head)

    def flush(self) -> None:
        """Write everything recorded so far, at once (at close, or before a hard exit)."""
        if self.rows:
            self._write_head(len(self.rows) // _WIDTH)
        if self.sent:
            self._write_sent_head(len(self.sent) // _SENT_WIDTH)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            # only what was there when the flush began: rows keep arriving between slices
            for buffer, width, write in (
                (self.rows, _WIDTH, self._write_head),
                (self.sent, _SENT_WIDTH, self._write_sent_head),
            ):
                left = len(buffer) // width
                while left > 0 and buffer:  # `flush()` may have run between slices
                    step = min(left, self.slice_rows, len(buffer) // width)
                    write(step)
                    left -= step
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


def _repeat(text: str, rows: int) -> pa.Array:
    """A string column holding `text` in each of `rows` rows, built from its buffers."""
    data = text.encode()
    offsets = np.arange(rows + 1, dtype=np.int32) * len(data)
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data * rows))
