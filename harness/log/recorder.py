"""Durable, append-only event logs: two Arrow IPC streams per process in the run directory.

`events-X.arrows` holds every row recorded by `row()`; `appends-X.arrows` the audio appends a
client sends, nearly all the rows, in a narrow schema of their own (APPEND_SCHEMA): packed into
bytes when sent and turned into a batch with a few numpy calls per flush, far cheaper for the
senders' loop than converting each to the events schema and interleaving it with the other
rows. The reader (frames.py) turns them back into event rows.

Rows are appended flat to a list, appends packed into bytes (cheap on the per-frame path, and
no object per row that the garbage collector must track and scan) and written every
`flush_every` wall seconds, so a SIGKILL loses at most that much. The list is the same object
for the whole run, so once the runner freezes it out of the collector's sight it is never
scanned again. A flush holds the event loop while it turns rows into a batch, and every sender
due meanwhile is late by as much, so the p99 lateness of a fleet is set by the longest hold.
Flushes come every 0.2 s (more often cost the senders more CPU: each one finds pyarrow's code
and data gone from the caches); the `row()` rows in slices of at most `slice_rows`, with
`slice_gap` seconds between slices for the senders due meanwhile, and the writes go to a thread
of their own. A batch torn by a crash is skipped by the reader, never fatal. No audio payload is
ever logged: bytes, audio milliseconds and CRCs stand for it.

A write that fails (a full disk) is never retried and never swallowed: the recorder writes
nothing more (a batch after a torn one would make the rest of the log unreadable), sets
`failed` for the run to stop on, and `flush()`, `close()` and `aclose()` raise `LogWriteError`
naming the file and the reason. For tests only, the environment variable
`RTSOAK_TEST_DISK_FULL_AFTER=BYTES[:GLOB]` makes every recorder (or those whose log name
matches GLOB) fail with ENOSPC once it has written BYTES bytes: a full disk, in any process of
a real run, without root.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import json
import math
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from harness.core.rows import Row

__all__ = [
    "APPEND",
    "APPEND_SCHEMA",
    "EVENT_SCHEMA",
    "LatenessHistogram",
    "LogWriteError",
    "Recorder",
    "appends_log",
    "pack_append",
]

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
        ("dbfs", pa.float32()),  # level of the audio an append carries (core/audio_level)
        ("code", pa.int32()),  # close code or HTTP status
        ("item", pa.string()),  # item id / request id / utterance key
        ("text", pa.string()),  # transcript, error code, close reason
        ("detail", pa.string()),  # JSON object for meta rows
    ]
)
_FIELDS = EVENT_SCHEMA.names
_STRING = pa.string()
_TYPES = [f.type for f in EVENT_SCHEMA]
_WIDTH = len(_FIELDS)
_LAG = _FIELDS.index("lag_ms")
_APPEND_WIDTH = 7  # wall, t, bytes, audio_ms, lag_ms, dbfs, stream (see Recorder.appends)
_APPEND_ROW = struct.Struct(f"={_APPEND_WIDTH}d")  # native float64s, as numpy reads them
pack_append = _APPEND_ROW.pack
_STREAM_WIDTH = 3  # variant code, worker, conn
APPEND = "input_audio_buffer.append"
# An append's row in its own log: the events columns that vary from one append to the next.
# Read back as event rows with src "client", dir "send", type APPEND and nulls for the rest.
APPEND_SCHEMA = pa.schema(
    [
        ("wall", pa.float64()),
        ("t", pa.float64()),
        ("variant", pa.dictionary(pa.int32(), pa.string())),
        ("worker", pa.int32()),
        ("conn", pa.int32()),
        ("bytes", pa.int32()),
        ("audio_ms", pa.float32()),
        ("lag_ms", pa.float32()),
        ("dbfs", pa.float32()),
    ]
)
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # what an IPC stream writer closes with


FULL_DISK_ENV = "RTSOAK_TEST_DISK_FULL_AFTER"  # reserved for tests (see the module docstring)


class LogWriteError(OSError):
    """An event log could not be written (disk full, I/O error): what was written before is
    intact and readable; nothing after it was kept. `errno` is the failed write's."""

    def __init__(self, path: Path, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(error.errno, reason)
        self.path = path
        self.error = error
        self.message = (
            f"{path}: cannot write the event log ({reason}); recording stopped there. "
            "Free space (or pass another --out) and run again"
        )

    def __str__(self) -> str:
        return self.message


class _FullAfter:
    """A binary file that fails with ENOSPC once its recorder's files took `budget` bytes:
    the test seam of FULL_DISK_ENV, shared by a recorder's two logs."""

    def __init__(self, path: Path, budget: list[int]) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._budget = budget

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self._budget[0] -= size
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def writable(self) -> bool:
        return True


def _full_disk_budget(path: Path) -> list[int] | None:
    """The bytes FULL_DISK_ENV lets the recorder of `path` write, if it applies to it."""
    spec = os.environ.get(FULL_DISK_ENV)
    if not spec:
        return None
    size, _, pattern = spec.partition(":")
    if pattern and not fnmatch.fnmatch(path.name, pattern):
        return None
    return [int(size)]


def appends_log(events_log: Path) -> Path:
    """Where the recorder writing `events_log` puts its appends: events-client.arrows ->
    appends-client.arrows."""
    return events_log.with_name("appends-" + events_log.name.removeprefix("events-"))


class LatenessHistogram:
    """Send lateness of every row that has one, in 0.1 ms bins up to 1 s (one overflow bin):
    enough to say at the end of a run whether the sender kept its deadlines, at the cost of
    one vectorised pass per flush rather than work per row."""

    RESOLUTION_MS = 0.1
    BINS = 10_000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 1, dtype=np.int64)

    def add(self, lag_ms: np.ndarray) -> None:
        if len(lag_ms):
            bins = np.clip(lag_ms / self.RESOLUTION_MS, 0, self.BINS).astype(np.intp)
            counts = np.bincount(bins)  # up to the largest bin seen, not all 10,001
            self.counts[: len(counts)] += counts

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
    """Appends rows and persists them in batches: `row()` rows to `path` in the order they
    were recorded, appends to `appends_log(path)` in the order they were sent.

    An append is seven numbers packed as float64s onto a bytearray, with no Python call of the
    recorder's (`appends()`): its connection's identity is filled in at flush time, a column
    at a time. Packed at once, the numbers' objects die while still in the cache; kept in a
    list until the flush, each would be a cache miss to convert and another to free."""

    def __init__(
        self,
        path: Path,
        flush_every: float = 0.2,
        slice_rows: int = 1000,
        slice_gap: float = 0.002,
    ) -> None:
        self.path = path
        self.flush_every = flush_every
        self.slice_rows = slice_rows
        self.slice_gap = slice_gap
        self.rows: list[Any] = []  # _WIDTH values per row; never replaced (see above)
        self.sends = bytearray()  # an _APPEND_ROW per append sent
        self._variants: dict[str | None, int] = {}
        self._variant_names = pa.array([], _STRING)  # by code
        # variant code, worker and conn (rows) of each stream (column = stream number), and
        # of the streams opened since the last flush, not yet in that table
        self._streams = np.empty((_STREAM_WIDTH, 0), np.int32)
        self._new_streams: list[int] = []
        self.count = 0
        self.lateness = LatenessHistogram()
        # Each batch of rows is serialised on the loop into one buffer and written by a
        # thread of its own, which holds no GIL in write(2), so a write never holds the loop
        # (or the senders due meanwhile). The file's bytes are those an
        # Arrow IPC stream writer makes. The appends' writer, made on the first append,
        # serialises in that thread too (pyarrow lets go of the GIL there).
        self._budget = _full_disk_budget(path)
        self._file: Any = (
            open(path, "wb")  # noqa: SIM115 (closed by close())
            if self._budget is None
            else _FullAfter(path, self._budget)
        )
        self._appends_file: pa.NativeFile | None = None
        self._appends_writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="rtsoak-log")
        # oldest first, until seen done, with the log each writes
        self._writes: deque[tuple[Future[bool], Path, int]] = deque()
        self._broken = False  # set by the log's thread when a write fails
        self._task: asyncio.Task | None = None
        self.error: LogWriteError | None = None  # the first failed write; nothing after it
        self.failed_at: float | None = None  # time.monotonic() when the failure was seen
        self.failed: asyncio.Future[LogWriteError] | None = None  # set by start()
        try:
            self._file.write(EVENT_SCHEMA.serialize())
            self._file.flush()
        except OSError as exc:
            self._fail(path, exc)
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
        *,
        dbfs: float | None = None,
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
                dbfs,
                code,
                item,
                text,
                None if detail is None else json.dumps(detail, default=str),
            )
        )

    def record(
        self, row: Row, wall: float, src: str, variant: str | None, worker: int, conn: int
    ) -> None:
        """A typed row (harness.core.rows), at `wall` epoch seconds, for one connection."""
        self.row(wall, row.t, src, variant, worker, conn, row.dir, row.type, **row.fields)

    def appends(
        self, variant: str | None, worker: int, conn: int
    ) -> tuple[Callable[[bytes], None], int]:
        """For the per-frame path, once per client connection: `(record, stream)`, where
        `record(pack_append(wall, t, bytes_, audio_ms, lag_ms, dbfs, stream))` records one
        `input_audio_buffer.append` that connection sent (two C calls)."""
        if self._appends_writer is None and self.error is None:
            path = appends_log(self.path)
            try:
                self._appends_file = (
                    pa.OSFile(str(path), "wb")
                    if self._budget is None
                    else pa.PythonFile(_FullAfter(path, self._budget), mode="w")
                )
                self._appends_writer = pa.ipc.new_stream(self._appends_file, APPEND_SCHEMA)
            except OSError as exc:
                self._fail(path, exc)
        stream = self._streams.shape[1] + len(self._new_streams) // _STREAM_WIDTH
        if variant not in self._variants:
            self._variants[variant] = len(self._variants)
            self._variant_names = pa.array(list(self._variants), _STRING)
        self._new_streams.extend((self._variants[variant], worker, conn))
        return self.sends.extend, stream

    @property
    def recorded(self) -> int:
        """Rows recorded so far, written or not."""
        return self.count + self._pending_rows() + self._pending_appends()

    def _pending_rows(self) -> int:
        return len(self.rows) // _WIDTH

    def _pending_appends(self) -> int:
        return len(self.sends) // _APPEND_ROW.size

    def _write_rows(self, rows: int) -> None:
        """The oldest `rows` rows of `row()` to the events log, dropped from the buffer.
        Each column is sliced straight from the buffer: a copy of the head first touched every
        row's objects once more, and by flush time they are no longer in the cache."""
        end = rows * _WIDTH
        flat = self.rows
        columns = [pa.array(flat[i:end:_WIDTH], type=typ) for i, typ in enumerate(_TYPES)]
        del flat[:end]
        if columns[_LAG].null_count < rows:  # rare: appends come by appends()
            self.lateness.add(columns[_LAG].drop_null().to_numpy())
        batch = pa.RecordBatch.from_arrays(columns, schema=EVENT_SCHEMA)
        self._submit(self._write, batch.serialize(), rows, self.path)

    def _write_appends(self) -> None:
        """Every append recorded so far to the appends log, as one batch: a few numpy and
        pyarrow calls whatever the number of rows, 0.2 s of 600 sockets' appends in well
        under a millisecond."""
        rows = self._pending_appends()
        # transposed into a copy: contiguous columns, and no view of the buffer outlives
        # this line (a bytearray that has one cannot shrink)
        values = np.frombuffer(self.sends, np.float64, rows * _APPEND_WIDTH)
        values = values.reshape(rows, _APPEND_WIDTH).T.copy()
        del self.sends[: rows * _APPEND_ROW.size]
        if self._new_streams:  # only the new ones converted: a long soak opens thousands
            new = np.array(self._new_streams, np.int32).reshape(-1, _STREAM_WIDTH)
            self._streams = np.concatenate([self._streams, new.T], axis=1)
            del self._new_streams[:]
        wall, t, bytes_, audio_ms, lag_ms, dbfs, stream = values
        self.lateness.add(lag_ms)
        variant, worker, conn = self._streams[:, stream.astype(np.intp)]
        columns = [
            pa.array(wall),
            pa.array(t),
            pa.DictionaryArray.from_arrays(pa.array(variant), self._variant_names),
            pa.array(worker),
            pa.array(conn),
            pa.array(bytes_.astype(np.int32)),
            pa.array(audio_ms.astype(np.float32)),
            pa.array(lag_ms.astype(np.float32)),
            pa.array(dbfs.astype(np.float32)),
        ]
        if self._appends_writer is None:  # its file could not be made: failed already
            return
        batch = pa.RecordBatch.from_arrays(columns, schema=APPEND_SCHEMA)
        self._submit(self._appends_writer.write_batch, batch, rows, appends_log(self.path))

    def _submit(self, write: Callable[[Any], None], data: Any, rows: int, path: Path) -> None:
        """`write(data)` in the log's thread, after every write submitted before it; nothing
        once a write has failed (the rows are dropped: the log ends at its last good batch)."""
        self._reap()
        if self.error is not None:
            return
        self._writes.append((self._io.submit(self._guarded, write, data), path, rows))
        self.count += rows

    def _guarded(self, write: Callable[[Any], None], data: Any) -> bool:
        """In the log's thread: `write(data)`, unless an earlier write failed (decided here,
        in write order, so nothing ever follows a torn batch). False if skipped."""
        if self._broken:
            return False
        try:
            write(data)
        except OSError:
            self._broken = True
            raise
        return True

    def _reap(self, wait: bool = False) -> None:
        """Forget the writes done (all of them, waiting, if `wait`), noting the first failure;
        rows that were not written leave `count`."""
        while self._writes and (wait or self._writes[0][0].done()):
            future, path, rows = self._writes.popleft()
            exc = future.exception()
            if exc is None and future.result():
                continue
            self.count -= rows
            if isinstance(exc, OSError):
                self._fail(path, exc)
            elif exc is not None:
                raise exc

    def _fail(self, path: Path, exc: OSError) -> None:
        if self.error is not None:
            return
        self.error = LogWriteError(path, exc)
        self.failed_at = time.monotonic()
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(self.error)

    def _write(self, data: pa.Buffer) -> None:
        """In the log's thread: one batch to the events log."""
        self._file.write(data)
        self._file.flush()

    def flush(self) -> None:
        """Write everything recorded so far, at once (at close, or before a hard exit).
        Raises LogWriteError if this or an earlier write failed."""
        if self.error is None and self._pending_appends():
            self._write_appends()
        if self.error is None and self._pending_rows():
            self._write_rows(self._pending_rows())
        self._reap(wait=True)
        if self.error is not None:
            raise self.error

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            self._reap()
            if self.error is not None:
                del self.rows[:]  # never written: don't let them pile up until the end
                del self.sends[:]
                continue
            if self._pending_appends():
                self._write_appends()
            # only the rows there when the flush began: rows keep arriving between slices
            left = self._pending_rows()
            if not left:
                continue
            slices = math.ceil(left / self.slice_rows)
            size = math.ceil(left / slices)  # even slices: no small one at the end
            while left > 0:
                step = min(left, size, self._pending_rows())  # `flush()` may have run meanwhile
                if not step:
                    break
                self._write_rows(step)
                left -= step
                if left:
                    await asyncio.sleep(self.slice_gap)

    def start(self) -> None:
        """Begin periodic flushing on the running loop. `failed` resolves (to the error) as
        soon as a write fails: a run stops on it."""
        loop = asyncio.get_running_loop()
        self.failed = loop.create_future()
        if self.error is not None:
            self.failed.set_result(self.error)
        self._task = loop.create_task(self._flush_periodically())

    async def aclose(self) -> None:
        """Stop flushing, write the rest and close; raises LogWriteError if a write failed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Write the rest and close the logs; raises LogWriteError if a write failed (the
        files are closed all the same, ending at their last good batch)."""
        if self._file.closed:
            if self.error is not None:
                raise self.error
            return
        try:
            if self.error is None:
                self.flush()
            if self.error is None:
                self._file.write(_END_OF_STREAM)
                if self._appends_writer is not None:
                    self._appends_writer.close()
        except OSError as exc:
            self._fail(self.path, exc)
        finally:
            self._io.shutdown()
            for file in (self._file, self._appends_file):
                try:
                    if file is not None:
                        file.close()
                except OSError as exc:  # a buffered write failing on its way out
                    self._fail(self.path, exc)
        if self.error is not None:
            raise self.error
