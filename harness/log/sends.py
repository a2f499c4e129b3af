"""The frames the clients sent (appends, commits, clears, ...), in connection and time order,
for a run of any size. A report's one pass over the logs spills each chunk's sends to
partition files by connection (`SpilledSends.add`); `batches()` then reads one partition at a
time, sorted, every connection whole. Memory holds one partition (about PARTITION_ROWS rows),
not the run. A measured comparison with DuckDB's out-of-core sort chose this (bench/RESULTS.md,
issue 35). `SendFrame` is the same for sends already in memory (`frames.load`).

A batch is a DataFrame of BATCH_COLUMNS: `connection` (a category of the connection keys),
`t`, `type` (category), `audio_ms`, `dbfs`, `lag_ms`, and the key's parts `run`, `variant`,
`worker`, `conn`. Rows of one connection are in time order, ties in log order."""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.log.keys import connection_codes

__all__ = [
    "BATCH_COLUMNS",
    "PARTITION_ROWS",
    "Keep",
    "SendFrame",
    "SendSource",
    "SpilledSends",
    "dictionary_of",
]

BATCH_COLUMNS = (
    "connection", "t", "type", "audio_ms", "dbfs", "lag_ms", "run", "variant", "worker", "conn"
)  # fmt: skip
PARTITION_ROWS = 1 << 21  # rows a partition is sized for: about 100 MB as a batch
WORKERS = 2  # partitions read and worked on at once
T = TypeVar("T")
_VALUES = ("t", "audio_ms", "dbfs", "lag_ms")
_SCHEMA = pa.schema(
    [
        ("run", pa.int32()),
        ("variant", pa.int32()),
        ("worker", pa.int32()),
        ("conn", pa.int32()),
        ("type", pa.int32()),
        ("t", pa.float64()),
        ("audio_ms", pa.float32()),
        ("dbfs", pa.float32()),
        ("lag_ms", pa.float32()),
    ]
)


class SendSource(Protocol):
    def batches(self) -> Iterator[pd.DataFrame]:
        """The sends in BATCH_COLUMNS, every connection whole within one batch."""
        ...

    def map(
        self, fn: Callable[[pd.DataFrame], T], workers: int = ..., keep: Keep = ...
    ) -> Iterator[T]:
        """`fn` of each batch, in order, several at a time where that helps; with `keep`,
        of the rows it picks only (Keep)."""
        ...


# Picks rows before a batch is built (cheaper than filtering the batch: no sort, no labels):
# given the raw columns (`run`, `variant`, `type` as codes into the names given with them;
# `worker`, `conn`, `t`, ...), a boolean mask.
Keep = Callable[[dict[str, np.ndarray], dict[str, list[str]]], np.ndarray] | None


def _batch(columns: dict[str, np.ndarray], runs: list[str], variants: list[str], types: list[str]):
    """A batch frame of integer-coded columns (codes into `runs`, `variants`, `types`; -1:
    none), sorted by connection, then time (stable: ties stay in log order)."""
    codes, labels = connection_codes(
        columns["run"], runs, columns["variant"], variants, columns["worker"], columns["conn"]
    )
    order = _connection_order(codes, len(labels), columns["t"])
    columns = {
        "connection": pd.Categorical.from_codes(codes[order], labels),
        **{name: columns[name][order] for name in _VALUES},
        "type": pd.Categorical.from_codes(columns["type"][order], types),
        "run": pd.Categorical.from_codes(columns["run"][order], runs),
        "variant": pd.Categorical.from_codes(columns["variant"][order], variants),
        "worker": columns["worker"][order],
        "conn": columns["conn"][order],
    }
    return pd.DataFrame({name: columns[name] for name in BATCH_COLUMNS}, copy=False)


def _connection_order(codes: np.ndarray, labels: int, t: np.ndarray) -> np.ndarray:
    """The order that sorts rows by connection code, then time, ties in log order: a stable
    sort by time (a log is nearly in time order, which timsort makes short work of), then a
    stable radix sort by code when the codes fit 16 bits."""
    if labels >= (1 << 16) - 1:
        return np.lexsort((t, codes))
    by_time = np.argsort(t, kind="stable")
    shifted = (codes[by_time] + 1).astype(np.uint16)  # -1 (no connection) first, as lexsort
    return by_time[np.argsort(shifted, kind="stable")]


def dictionary_of(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """A text column (plain or dictionary-encoded) as one dictionary array for all its chunks."""
    array = column.combine_chunks()
    return array if pa.types.is_dictionary(array.type) else array.dictionary_encode()


def _codes(column: pa.ChunkedArray, names: dict[str, int]) -> np.ndarray:
    """A dictionary column as codes into `names` (grown as new values come; -1: null). A
    column of one word is a read-only view of one code (stride 0): no array a row."""
    array = dictionary_of(column)
    mapped = np.array(
        [names.setdefault(v, len(names)) for v in array.dictionary.to_pylist()] + [-1], np.int32
    )
    if len(mapped) == 2 and not array.null_count:
        return np.broadcast_to(mapped[:1], len(array))
    index = array.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return mapped[index]


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    return column.fill_null(-1).to_numpy().astype(np.int32, copy=False)


def _floats(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    if name not in table.column_names:
        return np.broadcast_to(np.array(np.nan, dtype), len(table))
    return table.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _one_value(column: np.ndarray) -> bool:
    """A stride-0 view (`_codes`, `_floats`): one value for every row."""
    return column.strides == (0,)


def _taken(column: np.ndarray, order: np.ndarray) -> np.ndarray:
    if _one_value(column):
        return np.full(len(order), column[0], column.dtype)
    return np.take(column, order)


class SpilledSends:
    """Sends spilled to partition files in a hidden temporary directory under `directory`
    (None: the system's), by a hash of their connection; sized for `expected_rows`. The files
    go when it is closed or collected, or the process exits (a killed process leaves its
    `.rtsoak-sends-*` directory behind)."""

    def __init__(self, expected_rows: int, directory: Path | None = None) -> None:
        self.partitions = max(1, math.ceil(expected_rows / PARTITION_ROWS))
        self.path = Path(tempfile.mkdtemp(prefix=".rtsoak-sends-", dir=directory))
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, True)
        self._thread = ThreadPoolExecutor(1)
        self._pending: deque[Future] = deque()
        self.names: dict[str, dict[str, int]] = {"run": {}, "variant": {}, "type": {}}
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def add(self, sends: pa.Table) -> None:
        """One chunk of sends (`run`, `variant`, `type` as dictionaries or strings; `worker`,
        `conn`, `t`, and `audio_ms`, `dbfs`, `lag_ms` where the log has them). Written on a
        thread of its own, beside the caller's next chunk (at most two wait)."""
        if not len(sends):
            return
        self._pending.append(self._thread.submit(self._add, sends))
        if len(self._pending) > 2:
            self._pending.popleft().result()

    def _flush(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _add(self, sends: pa.Table) -> None:
        columns = {
            **{k: _codes(sends.column(k), self.names[k]) for k in ("run", "variant", "type")},
            "worker": _ints(sends.column("worker")),
            "conn": _ints(sends.column("conn")),
            "t": _floats(sends, "t", np.float64),
            **{k: _floats(sends, k, np.float32) for k in ("audio_ms", "dbfs", "lag_ms")},
        }
        key = columns["worker"].astype(np.int64) * 104_729
        key += columns["conn"]
        for name, factor in (("run", 1_000_003), ("variant", 7_919)):
            codes = columns[name]
            key += int(codes[0]) * factor if _one_value(codes) else codes.astype(np.int64) * factor
        part = (key % self.partitions).astype(np.uint16 if self.partitions < 1 << 16 else np.int64)
        order = np.argsort(part, kind="stable")  # a radix sort, for 16-bit keys
        part = part[order]
        table = pa.table({f.name: _taken(columns[f.name], order) for f in _SCHEMA}, schema=_SCHEMA)
        bounds = np.flatnonzero(np.r_[True, part[1:] != part[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(part[a])
            if k not in self._writers:
                self._writers[k] = pa.ipc.new_stream(str(self.path / f"{k}.arrows"), _SCHEMA)
            self._writers[k].write_table(table.slice(a, b - a))

    def batches(self) -> Iterator[pd.DataFrame]:
        """One batch a partition, in partition order."""
        return self.map(lambda batch: batch, workers=1)

    def map(
        self, fn: Callable[[pd.DataFrame], T], workers: int = WORKERS, keep: Keep = None
    ) -> Iterator[T]:
        """`fn` of each batch, in partition order, `workers` partitions at a time (threads:
        numpy and pyarrow let go of the interpreter for the heavy part), so memory holds
        `workers` partitions; with `keep`, of the rows it picks only."""
        self._flush()
        names = {k: list(v) for k, v in self.names.items()}
        paths = [self.path / f"{k}.arrows" for k in range(self.partitions)]

        def one(path: Path) -> T:
            with pa.OSFile(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
            columns = {f.name: table.column(f.name).to_numpy() for f in _SCHEMA}
            del table
            return fn(_picked(columns, names, keep))

        paths = [p for p in paths if p.exists()]
        if workers <= 1 or len(paths) <= 1:
            yield from map(one, paths)
            return
        with ThreadPoolExecutor(workers) as pool:
            yield from pool.map(one, paths)

    def close(self) -> None:
        try:
            self._flush()
        finally:
            self._thread.shutdown()
            self._remove()

    def __enter__(self) -> SpilledSends:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _picked(
    columns: dict[str, np.ndarray], names: dict[str, list[str]], keep: Keep
) -> pd.DataFrame:
    if keep is not None:
        mask = keep(columns, names)
        columns = {k: v[mask] for k, v in columns.items()}
    return _batch(columns, names["run"], names["variant"], names["type"])


class SendFrame:
    """Sends already in memory (a frame of BATCH_COLUMNS' columns, any order) as one batch."""

    def __init__(self, sends: pd.DataFrame) -> None:
        self.sends = sends

    def map(
        self, fn: Callable[[pd.DataFrame], T], workers: int = WORKERS, keep: Keep = None
    ) -> Iterator[T]:
        yield from map(fn, self._batches(keep))

    def batches(self) -> Iterator[pd.DataFrame]:
        return self._batches(None)

    def _batches(self, keep: Keep) -> Iterator[pd.DataFrame]:
        if not len(self.sends):
            return
        names: dict[str, dict[str, int]] = {"run": {}, "variant": {}, "type": {}}
        frame = self.sends
        columns = {
            k: _codes(pa.chunked_array([pa.array(frame[k].astype(str))]), names[k]) for k in names
        }
        columns |= {
            "worker": frame["worker"].to_numpy(np.int32),
            "conn": frame["conn"].to_numpy(np.int32),
            "t": frame["t"].to_numpy(np.float64),
        }
        for k in ("audio_ms", "dbfs", "lag_ms"):
            columns[k] = (
                frame[k].to_numpy(np.float32, na_value=np.nan)
                if k in frame
                else np.full(len(frame), np.nan, np.float32)
            )
        yield _picked(columns, {k: list(v) for k, v in names.items()}, keep)
