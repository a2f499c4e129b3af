"""Run directories -> pandas frames: events, connections, utterances (schema in docs/frames.md).

The event logs are the source of truth; frames are derived from them on every load, so a
finished, interrupted or crashed run loads alike. A batch torn by a crash is skipped and
counted, never fatal. Only the few meta rows are parsed in Python; the per-frame rows stay in
Arrow/numpy all the way, so ten million rows load in seconds.
"""

from __future__ import annotations

import io
import json
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from harness.core.outcomes import CENSORING_CAUSES, CloseCause, ClosedBy, ConnState, UtteranceStatus
from harness.core.transcript import parse_transcript
from harness.log.keys import connection_codes
from harness.log.recorder import APPEND, APPEND_SCHEMA, EVENT_SCHEMA
from harness.log.rundir import APPEND_LOG_GLOB, RunDir, RunDirError
from harness.log.sends import BATCH_COLUMNS, SendFrame, SendSource, SpilledSends, dictionary_of

__all__ = [
    "CONNECTION_COLUMNS",
    "CRASHED",
    "EVENT_COLUMNS",
    "UTTERANCE_COLUMNS",
    "Frames",
    "ReportFrames",
    "connection_key",
    "load",
    "load_for_report",
    "read_log",
    "write_frames",
]

# A connection with no close row when the log ends: its process died (crash or second signal).
CRASHED = "interrupted"
_CATEGORIES = ("src", "variant", "dir", "type")
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
# EVENT_SCHEMA as logs are loaded: the categorical columns dictionary-encoded, as the frames
# hold them (an appends log's are so already)
LOADED_SCHEMA = pa.schema(
    [pa.field(f.name, _DICTIONARY) if f.name in _CATEGORIES else f for f in EVENT_SCHEMA]
)
_PANDAS_TYPES = {pa.string(): pd.StringDtype("pyarrow"), pa.int32(): pd.Int32Dtype()}
_STRING = pd.StringDtype("pyarrow")
COMMIT = "input_audio_buffer.commit"
# Rows per chunk when a log is streamed rather than loaded whole (load_for_report): about
# 110 MB of Arrow at a time, and one Parquet row group, as pandas writes them.
_CHUNK_ROWS = 1 << 20


def _cat(values: Iterable[str]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([str(v) for v in values])


# Column -> dtype of each frame, in order. docs/frames.md documents exactly these (a test
# checks); "category" means categories found in the data, a CategoricalDtype a closed set.
EVENT_COLUMNS: dict[str, Any] = {
    "run": "category",
    "wall": "float64",
    "t": "float64",
    "src": "category",
    "variant": "category",
    "worker": "Int32",
    "conn": "Int32",
    "connection": "category",
    "dir": "category",
    "type": "category",
    "bytes": "Int32",
    "audio_ms": "float32",
    "lag_ms": "float32",
    "dbfs": "float32",
    "code": "Int32",
    "item": _STRING,
    "text": _STRING,
    "detail": _STRING,
}
CONNECTION_COLUMNS: dict[str, Any] = {
    "run": "category",
    "variant": "category",
    "worker": "Int32",
    "conn": "Int32",
    "connection": "category",
    "opened": "float64",
    "opened_wall": "float64",
    "established": "float64",
    "closed": "float64",
    "closed_wall": "float64",
    "lifetime": "float64",
    "handshake_status": "Int32",
    "handshake_latency": "float64",
    "handshake_error": _STRING,
    "request_id": _STRING,
    "session_id": _STRING,
    "close_code": "Int32",
    "close_reason": _STRING,
    "closed_by": _cat(ClosedBy),
    "cause": _cat([*CloseCause, CRASHED]),
    "censored": "bool",
    "dropped": "bool",
    "state": _cat(ConnState),
    "since_sent": "float64",
    "since_recv": "float64",
    "uncommitted_ms": "float64",
    "audio_sent_ms": "float64",
    "utterances_completed": "Int32",
    "injected_fault": "category",
}
UTTERANCE_COLUMNS: dict[str, Any] = {
    "run": "category",
    "variant": "category",
    "worker": "Int32",
    "conn": "Int32",
    "connection": "category",
    "utterance": _STRING,
    "source": _STRING,
    "audio_ms": "float64",
    "crc32": "Int64",
    "started": "float64",
    "committed": "float64",
    "ended": "float64",
    "latency": "float64",
    "status": _cat(UtteranceStatus),
    "attempt": "Int32",
    "final": "bool",
    "item_id": _STRING,
    "transcript": _STRING,
    "crc_match": "boolean",
}


@dataclass(slots=True)
class Frames:
    events: pd.DataFrame
    connections: pd.DataFrame
    utterances: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    torn_batches: int
    # load(..., appends="lazy"): the append rows, read again chunk by chunk on each call
    appends: Callable[[], Iterator[pd.DataFrame]] | None = None


def _batches(source: pa.NativeFile, nonempty: bool) -> Generator[pa.RecordBatch, None, int]:
    """The complete batches of one event log; returns how many trailing batches were torn."""
    try:
        reader = pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError):
        return 1 if nonempty else 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return 0
        except (pa.ArrowInvalid, OSError, EOFError):
            return 1
        yield batch


def _table(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """The batches of one log as a table of `schema`, the recorder's: a column the log was
    written without (`dbfs`, in logs older than it) is all nulls."""
    if not batches or batches[0].schema.equals(schema):
        return pa.Table.from_batches(batches, schema=schema)
    table = pa.Table.from_batches(batches)
    return pa.Table.from_arrays(
        [
            table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
            for f in schema
        ],
        schema=schema,
    )


def _as_events(batches: list[pa.RecordBatch], path: Path) -> pa.Table:
    """The batches of one log as a table of event rows (LOADED_SCHEMA): an appends log's rows
    (APPEND_SCHEMA) are the sends they stand for, with the columns every append shares filled
    in, the categorical ones as one-word dictionaries rather than a string a row."""
    if not path.match(APPEND_LOG_GLOB):
        events = _table(batches, EVENT_SCHEMA)
        return pa.Table.from_arrays(
            [
                pc.dictionary_encode(events.column(f.name)) if f.name in _CATEGORIES else column
                for f, column in zip(EVENT_SCHEMA, events.columns, strict=True)
            ],
            schema=LOADED_SCHEMA,
        )
    appends = _table(batches, APPEND_SCHEMA)
    rows = len(appends)
    first = pa.array(np.zeros(rows, np.int32))
    shared = {"src": "client", "dir": "send", "type": APPEND}
    columns = [
        appends.column(f.name)
        if f.name in APPEND_SCHEMA.names
        else pa.DictionaryArray.from_arrays(first, pa.array([shared[f.name]]))
        if f.name in shared
        else pa.nulls(rows, f.type)
        for f in LOADED_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=LOADED_SCHEMA)


def read_log(path: Path) -> tuple[pa.Table, int]:
    """All complete batches of one log, events or appends, as event rows (LOADED_SCHEMA), and
    how many trailing batches were torn."""
    batches: list[pa.RecordBatch] = []
    # Memory-mapped: batches point into the page cache instead of a private copy of the file.
    with pa.memory_map(str(path)) as source:
        reading = _batches(source, path.stat().st_size > 0)
        while True:
            try:
                batches.append(next(reading))
            except StopIteration as end:
                torn = end.value
                break
    return _as_events(batches, path), torn


class _LogChunks:
    """One log streamed in chunks of about `rows` rows, read from the file rather than
    memory-mapped so that only the chunk in hand is resident (touched pages of a mapping count
    in the process's RSS until it is unmapped). `torn` is known once iterated to the end."""

    def __init__(self, path: Path, run: str, rows: int | None = None) -> None:
        self.path, self.run, self.rows, self.torn = path, run, rows or _CHUNK_ROWS, 0

    def __iter__(self) -> Iterator[pa.Table]:
        pending: list[pa.RecordBatch] = []
        n = 0
        with pa.OSFile(str(self.path)) as source:
            reading = _batches(source, self.path.stat().st_size > 0)
            while True:
                try:
                    batch = next(reading)
                except StopIteration as end:
                    self.torn = end.value
                    break
                pending.append(batch)
                n += batch.num_rows
                if n >= self.rows:
                    yield _with_run(_as_events(pending, self.path), self.run)
                    pending, n = [], 0
        if pending:
            yield _with_run(_as_events(pending, self.path), self.run)


def _with_run(table: pa.Table, run: str) -> pa.Table:
    """`table` with a `run` column first: a dictionary array, so no per-row string."""
    column = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(len(table), np.int32)), pa.array([run], pa.string())
    )
    return table.add_column(0, "run", column)


def _category(table: pa.Table, name: str) -> tuple[np.ndarray, list[str]]:
    """A text column as (codes, names), one dictionary for all its chunks; null: -1."""
    column = dictionary_of(table.column(name))
    codes = pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False)
    return codes, column.dictionary.to_pylist()


def _table_connections(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """`connection_codes` of an events table (LOADED_SCHEMA with `run`)."""

    def ints(name: str) -> np.ndarray:
        return pc.fill_null(table.column(name), -1).to_numpy()

    run, variant = _category(table, "run"), _category(table, "variant")
    return connection_codes(*run, *variant, ints("worker"), ints("conn"))


def _with_connection(table: pa.Table) -> pa.Table:
    """`table` (LOADED_SCHEMA with `run`) with its `connection` column, after `conn`."""
    codes, labels = _table_connections(table)
    column = pa.DictionaryArray.from_arrays(
        pa.array(codes, mask=codes < 0), pa.array(labels, pa.string())
    )
    return table.add_column(table.schema.get_field_index("conn") + 1, "connection", column)


def connection_key(frame: pd.DataFrame) -> pd.Series:
    """The `connection` column (docs/frames.md) of a frame with run, variant, worker and conn
    columns, e.g. one built by hand; the frames `load` returns carry it already."""

    def category(name: str) -> tuple[np.ndarray, list[str]]:
        column = frame[name].astype("category")
        return column.cat.codes.to_numpy(), [str(c) for c in column.cat.categories]

    def ints(name: str) -> np.ndarray:
        return frame[name].astype("Int64").to_numpy("int64", na_value=-1)

    codes, labels = connection_codes(
        *category("run"), *category("variant"), ints("worker"), ints("conn")
    )
    return pd.Series(pd.Categorical.from_codes(codes, labels), index=frame.index)


def _read_run(run_dir: Path) -> tuple[pa.Table, int]:
    """One run's event logs as one Arrow table with a `run` column first."""
    tables, torn = [], 0
    for log in RunDir(run_dir).logs():
        table, t = read_log(log)
        tables.append(table)
        torn += t
    table = pa.concat_tables(tables) if tables else LOADED_SCHEMA.empty_table()
    return _with_run(table, run_dir.name), torn


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Events table (LOADED_SCHEMA) -> DataFrame; categoricals are dictionary-encoded in
    Arrow (no per-row Python objects), so the conversion costs about a copy."""
    table = table.unify_dictionaries()
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get, self_destruct=True)


def _details(rows: pd.DataFrame) -> pd.DataFrame:
    """The JSON `detail` of meta rows as columns. Parsed by Arrow's JSON reader in one block
    (hundreds of thousands of rows in a long soak); json.loads row by row if the rows
    disagree on a field's type."""
    present = rows["detail"].notna().to_numpy()
    texts = rows["detail"].to_numpy(dtype=object, na_value=None)[present]
    if not len(texts):
        return pd.DataFrame(index=rows.index)
    try:
        data = "\n".join(texts).encode()
        table = pa_json.read_json(
            io.BytesIO(data), read_options=pa_json.ReadOptions(block_size=len(data) + 1)
        )
        parsed = table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        parsed = pd.DataFrame([json.loads(t) for t in texts])
    parsed.index = rows.index[present]
    return parsed.reindex(rows.index)


def _conform(frame: pd.DataFrame, columns: dict[str, Any]) -> pd.DataFrame:
    """Exactly the documented columns, in order, with their dtypes (missing ones as NA), so
    an empty run, a crashed run and a full one all load to the same schema."""
    out = {}
    for name, dtype in columns.items():
        values = frame[name] if name in frame else pd.Series(pd.NA, index=frame.index, dtype=object)
        if dtype in ("float64", "float32"):
            values = pd.to_numeric(values, errors="coerce")
        elif dtype in ("Int32", "Int64") and values.dtype == object:
            values = pd.to_numeric(values, errors="coerce")
        out[name] = values.astype(dtype)
    return pd.DataFrame(out, index=frame.index)


_KEY = ["run", "variant", "worker", "conn"]


def _connections(rows: pd.DataFrame) -> pd.Series:
    """The rows' `connection` column, made if `rows` were built without one (by hand)."""
    return rows["connection"] if "connection" in rows else connection_key(rows)


def _client_meta(events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    meta = events[(events["src"] == "client") & (events["dir"] == "meta")]
    meta = meta.assign(connection=_connections(meta))
    by_type = {str(name): rows for name, rows in meta.groupby("type", observed=True)}
    empty = meta.iloc[0:0]
    return {
        name: by_type.get(name, empty)
        for name in ("conn_open", "handshake", "conn_close", "utt_start", "utt_end")
    }


def connections_frame(events: pd.DataFrame, last: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per connection attempt. `last` (index run, columns t and wall) is when each
    run's log ends, for connections a crash cut off; by default the latest row of `events`,
    so pass it when `events` holds only some of the rows."""
    meta = _client_meta(events)
    conns = meta["conn_open"][["connection", *_KEY, "t", "wall"]].rename(
        columns={"t": "opened", "wall": "opened_wall"}
    )
    hs = meta["handshake"]
    hs_detail = _details(hs)
    hs = hs[["connection", "t", "code", "item", "text"]].assign(
        handshake_latency=hs_detail.get("latency", pd.Series(dtype=float))
    )
    hs = hs.rename(
        columns={
            "t": "established",
            "code": "handshake_status",
            "item": "request_id",
            "text": "handshake_error",
        }
    )
    closes = meta["conn_close"]
    close_detail = _details(closes).drop(columns=["opened"], errors="ignore")
    closes = pd.concat([closes[["connection", "t", "wall", "code", "text"]], close_detail], axis=1)
    closes = closes.rename(
        columns={
            "t": "closed",
            "wall": "closed_wall",
            "code": "close_code",
            "text": "close_reason",
            "completed": "utterances_completed",
            "audio_ms": "audio_sent_ms",
        }
    )
    conns = conns.merge(hs, on="connection", how="left").merge(closes, on="connection", how="left")
    conns["established"] = conns["established"].where(conns["handshake_status"] == 101)
    for col in ("cause", "closed_by", "state"):
        conns[col] = conns[col].astype(object) if col in conns else pd.NA
    # A connection with no close row was cut off by a crash: censored at the last event seen.
    if last is None:
        last = events.groupby("run", observed=True)[["t", "wall"]].max()
    unclosed = conns["closed"].isna()
    conns.loc[unclosed, "closed"] = conns.loc[unclosed, "run"].map(last["t"]).astype(float)
    conns.loc[unclosed, "closed_wall"] = conns.loc[unclosed, "run"].map(last["wall"]).astype(float)
    conns.loc[unclosed, "cause"] = CRASHED
    conns.loc[unclosed, "closed_by"] = str(ClosedBy.NONE)
    conns["lifetime"] = conns["closed"] - conns["established"]
    conns["censored"] = conns["cause"].isin([str(c) for c in CENSORING_CAUSES] + [CRASHED])
    conns["dropped"] = conns["established"].notna() & ~conns["censored"]
    conns["injected_fault"] = _injected_faults(events, conns)
    conns = _conform(conns, CONNECTION_COLUMNS)
    conns = conns.sort_values(_KEY).reset_index(drop=True)
    conns["connection"] = connection_key(conns)  # its own categories, in the frame's order
    return conns


def _injected_faults(events: pd.DataFrame, conns: pd.DataFrame) -> pd.Series:
    """Ground truth of the fake server (or the proxy): which policy ended the connection, by
    request id."""
    injected = events["src"].isin(["server", "proxy"])
    faults = events[injected & events["type"].isin(["fault", "handshake_fault"])]
    policy = dict(zip(faults["item"].astype(object), faults["text"].astype(object), strict=True))
    return conns["request_id"].astype(object).map(policy).astype("category")


def _commit_times(events: pd.DataFrame, utts: pd.DataFrame) -> pd.Series:
    """When each utterance's commit was sent: the first commit on its connection after it
    started, if that came before its end (a lost utterance has none)."""
    sent = events[(events["type"] == COMMIT) & (events["dir"] == "send")]
    commits = pd.DataFrame(
        {"connection": _connections(sent).astype(object), "committed": sent["t"].to_numpy()}
    )
    left = pd.DataFrame(
        {
            "connection": utts["connection"].astype(object),
            "started": utts["started"].to_numpy(),
            "_row": np.arange(len(utts)),
        }
    )
    if commits.empty or left.empty:
        return pd.Series(np.nan, index=utts.index)
    merged = pd.merge_asof(
        left.sort_values("started"),
        commits.sort_values("committed"),
        left_on="started",
        right_on="committed",
        by="connection",
        direction="forward",
    ).sort_values("_row")
    committed = pd.Series(merged["committed"].to_numpy(), index=utts.index)
    return committed.where(committed <= utts["ended"].fillna(np.inf))


def utterances_frame(events: pd.DataFrame) -> pd.DataFrame:
    meta = _client_meta(events)
    starts = meta["utt_start"]
    start_detail = _details(starts)
    utts = starts[["run", "variant", "worker", "conn", "item", "t", "audio_ms"]].rename(
        columns={"item": "utterance", "t": "started"}
    )
    utts["source"] = start_detail.get("name")
    utts["crc32"] = start_detail.get("crc32")
    ends = meta["utt_end"]
    end_detail = _details(ends)
    ends = pd.DataFrame(
        {
            "run": ends["run"],
            "utterance": ends["item"],
            "ended": ends["t"],
            "status": ends["text"],
            "item_id": end_detail.get("item_id"),
            "transcript": end_detail.get("transcript"),
            "latency": end_detail.get("latency"),
        }
    )
    # a replayed utterance starts and ends once per attempt, in order: pair them by number
    utts = utts.sort_values("started", kind="stable")
    utts["attempt"] = utts.groupby(["run", "utterance"], observed=True).cumcount() + 1
    ends["attempt"] = ends.groupby(["run", "utterance"], observed=True).cumcount() + 1
    utts = utts.merge(ends, on=["run", "utterance", "attempt"], how="left")
    utts = utts.sort_values(["run", "started"], kind="stable").reset_index(drop=True)
    utts["final"] = ~utts.duplicated(["run", "utterance"], keep="last")
    utts["status"] = utts["status"].astype(object).fillna(str(UtteranceStatus.UNFINISHED))
    utts["connection"] = connection_key(utts)
    utts["committed"] = _commit_times(events, utts)
    utts["crc_match"] = _crc_match(utts)
    return _conform(utts, UTTERANCE_COLUMNS)


def _crc_match(utts: pd.DataFrame) -> pd.Series:
    """Whether the fake transcript names the audio sent; NA without a fake mark. Transcripts
    repeat (same fixtures), so each distinct text is parsed once."""
    if "transcript" not in utts or "crc32" not in utts:
        return pd.Series(pd.NA, index=utts.index, dtype="boolean")
    texts = utts["transcript"].astype(object).where(utts["transcript"].notna(), None)
    marks = {t: parse_transcript(t) for t in texts.dropna().unique()}
    named = texts.map(
        pd.Series({t: m.crc32 for t, m in marks.items() if m is not None}, dtype="float64")
    )
    sent = pd.to_numeric(utts["crc32"], errors="coerce")
    return (named == sent).astype("boolean").mask(named.isna() | sent.isna())


def _run_dirs(run_dirs: Path | str | Iterable[Path | str]) -> dict[str, tuple[Path, dict]]:
    """{run name: (directory, manifest)}, refusing what is not a run or is given twice."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise RunDirError("no run directory given")
    runs: dict[str, tuple[Path, dict]] = {}
    for run_dir in dirs:
        if run_dir.name in runs:
            raise RunDirError(
                f"{run_dir}: a run named {run_dir.name!r} is already loaded; "
                "rows are keyed by run name, so pass each run once"
            )
        runs[run_dir.name] = (run_dir, RunDir(run_dir).read_manifest())
    return runs


def load(
    run_dirs: Path | str | Iterable[Path | str],
    *,
    columns: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    between: tuple[float, float] | None = None,
    appends: str = "eager",
) -> Frames:
    """Frames of one run directory or several (rows keep their run in the `run` column).

    For a run too big for its whole events frame (docs/frames.md, "Big runs"), any of:
    `columns`, the events columns to keep (`run`, `connection` and the key's parts always
    stay); `variants`, only these variants' rows, connections and utterances; `between`,
    (from, to) scenario seconds: only the events rows in that window (connections and
    utterances stay whole); `appends="lazy"`: no append rows in `events`, and
    `frames.appends()` yields them chunk by chunk, filtered alike. The logs are then streamed
    in chunks and only what is kept is held."""
    if appends not in ("eager", "lazy"):
        raise ValueError(f"appends={appends!r}: 'eager' or 'lazy'")
    if columns is not None or variants is not None or between is not None or appends == "lazy":
        return _load_chosen(run_dirs, columns, variants, between, appends == "lazy")
    runs = _run_dirs(run_dirs)
    tables, torn = [], 0
    for run_dir, _ in runs.values():
        table, t = _read_run(run_dir)
        tables.append(table)
        torn += t
    events = _to_pandas(_with_connection(pa.concat_tables(tables)))
    manifests = {name: manifest for name, (_, manifest) in runs.items()}
    return Frames(events, connections_frame(events), utterances_frame(events), manifests, torn)


_KEY_COLUMNS = ("run", "variant", "worker", "conn", "connection")


def _load_chosen(
    run_dirs: Path | str | Iterable[Path | str],
    columns: Sequence[str] | None,
    variants: Sequence[str] | None,
    between: tuple[float, float] | None,
    lazy: bool,
) -> Frames:
    """`load` with its big-run options: one streamed pass keeps the meta rows (for the
    connections and utterances frames) and the chosen events rows and columns."""
    runs = _run_dirs(run_dirs)
    known = set(LOADED_SCHEMA.names) | {"run", "connection"}
    if columns is not None and (unknown := sorted(set(columns) - known)):
        raise ValueError(f"columns: no such events column {unknown}; see docs/frames.md")
    wanted = (
        None if columns is None else [*_KEY_COLUMNS, *(c for c in columns if c not in _KEY_COLUMNS)]
    )

    def of_variants(chunk: pa.Table) -> pa.ChunkedArray:
        """Rows of the chosen variants (no variant: False)."""
        column = chunk.column("variant").cast(pa.string())
        return pc.fill_null(pc.is_in(column, pa.array(list(variants or ()))), False)

    def chosen(chunk: pa.Table, appends_only: bool | None) -> pa.Table:
        mask = pa.array(np.ones(len(chunk), bool))
        if variants is not None:
            mask = pc.and_(mask, of_variants(chunk))
        if between is not None:
            t = chunk.column("t")
            inside = pc.and_(pc.greater_equal(t, between[0]), pc.less_equal(t, between[1]))
            mask = pc.and_(mask, pc.fill_null(inside, False))
        if appends_only is not None:
            is_append = _equal(chunk.column("type"), APPEND)
            mask = pc.and_(mask, is_append if appends_only else pc.invert(is_append))
        out = _with_connection(chunk.filter(mask))
        return out if wanted is None else out.select(wanted)

    meta: list[pa.Table] = []
    rows: list[pa.Table] = []
    last: dict[str, tuple[float, float]] = {}
    torn = 0
    for name, (run_dir, _) in runs.items():
        t_max = wall_max = -np.inf
        for log in RunDir(run_dir).logs():
            chunks = _LogChunks(log, name)
            for chunk in chunks:
                t_max = max(t_max, _max(chunk.column("t")))
                wall_max = max(wall_max, _max(chunk.column("wall")))
                if variants is not None:  # and the server's rows, which have no variant
                    chunk = chunk.filter(
                        pc.or_(of_variants(chunk), pc.is_null(chunk.column("variant")))
                    )
                meta.append(_scan(chunk)[0])
                rows.append(chosen(chunk, False if lazy else None))
            torn += chunks.torn
        if np.isfinite(t_max):
            last[name] = (t_max, wall_max)
    base = _to_pandas(_with_connection(pa.concat_tables(meta)))
    ends = pd.DataFrame.from_dict(last, orient="index", columns=["t", "wall"])
    events = _to_pandas(pa.concat_tables(rows, promote_options="permissive"))
    manifests = {name: manifest for name, (_, manifest) in runs.items()}

    def read_appends() -> Iterator[pd.DataFrame]:
        for name, (run_dir, _) in runs.items():
            for log in RunDir(run_dir).logs():
                if log.match(APPEND_LOG_GLOB):
                    for chunk in _LogChunks(log, name):
                        yield _to_pandas(chosen(chunk, True))

    return Frames(
        events,
        connections_frame(base, last=ends),
        utterances_frame(base),
        manifests,
        torn,
        read_appends if lazy else None,
    )


@dataclass(slots=True)
class ReportFrames:
    """What a report reads, with memory bounded by connections and utterances rather than by
    appends (at a hundred million rows the full events frame would take tens of gigabytes):
    - `events` has the events columns but only the meta rows, the commits sent and, with a
      drop window, the appends of each dropped connection's last seconds (what the
      connections and utterances frames and the drop diagnosis read), not in log order;
    - `lateness` counts the appends that have a send lateness by `run`, `variant` and
      `lag_ms` (to the microsecond: LATENESS_RESOLUTION_MS), in `count`;
    - `rows` counts all event rows;
    - `sends` is every frame a client sent (harness.log.sends), read batch by batch: what the
      blind diagnosis measures exposure on (time idle, audio in the buffer, sending speed)."""

    events: pd.DataFrame
    lateness: pd.DataFrame
    connections: pd.DataFrame
    utterances: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    torn_batches: int
    rows: int
    sends: SendSource | None = None

    def close(self) -> None:
        """Remove the spilled sends (`load_for_report`'s), if any: what reads them is done."""
        close = getattr(self.sends, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ReportFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_frames(cls, frames: Frames) -> ReportFrames:
        """The same view of frames already loaded whole (their events stay as they are)."""
        events = frames.events
        appends = (events["type"] == APPEND).to_numpy(bool) & events["lag_ms"].notna().to_numpy()
        sent = ((events["dir"] == "send") & (events["src"] == "client")).to_numpy(bool)
        columns = [c for c in BATCH_COLUMNS if c in events.columns and c != "connection"]
        return cls(
            events,
            lateness_counts(events.loc[appends, ["run", "variant", "lag_ms"]]),
            frames.connections,
            frames.utterances,
            frames.manifests,
            frames.torn_batches,
            len(events),
            SendFrame(events.loc[sent, columns]),
        )


# send lateness is counted to this resolution (wall ms): a microsecond
LATENESS_RESOLUTION_MS = 0.001


def lateness_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """(run, variant, lag_ms) rows, one per append, as counts by run, variant and lag_ms to
    LATENESS_RESOLUTION_MS: what a hundred million appends' lateness takes as a few thousand
    rows. analysis.weighted_percentiles reads it."""
    run, variant = (rows[c].astype("category") for c in ("run", "variant"))
    counts = _count_lateness(
        (run.cat.codes.to_numpy(), run.cat.categories),
        (variant.cat.codes.to_numpy(), variant.cat.categories),
        rows["lag_ms"].to_numpy(np.float64, na_value=np.nan),
    )
    return _lateness_frame(counts)


def _count_lateness(
    run: tuple[np.ndarray, Sequence[str]],
    variant: tuple[np.ndarray, Sequence[str]],
    lag: np.ndarray,
) -> pd.Series:
    """Counts of columns by (run, variant, ticks of LATENESS_RESOLUTION_MS): `run` and
    `variant` as (codes, names), -1 none; `lag`, wall ms."""
    (run_codes, runs), (variant_codes, variants) = run, variant
    ok = ~np.isnan(lag) & (run_codes >= 0) & (variant_codes >= 0)
    if not ok.all():
        lag, run_codes, variant_codes = lag[ok], run_codes[ok], variant_codes[ok]
    ticks = np.divide(lag, LATENESS_RESOLUTION_MS)
    ticks = np.round(ticks, out=ticks).astype(np.int64)
    # one int64 a row (run, variant, ticks), counted by a bincount when the keys span no
    # more than twice the rows (lateness spans a few thousand ticks), else by a sort; built
    # in place (a hundred million rows come through here)
    keys = run_codes.astype(np.int64)
    keys *= len(variants) + 1
    keys += variant_codes
    groups = int(keys.max()) + 1 if len(keys) else 1
    low = int(ticks.min()) if len(ticks) else 0
    span = int(ticks.max()) - low + 1 if len(ticks) else 1
    keys *= span
    keys += ticks
    keys -= low
    if len(keys) and groups * span <= 2 * len(keys):
        counts = np.bincount(keys)
        key = np.flatnonzero(counts)
        counts = counts[key]
    else:
        key, counts = np.unique(keys, return_counts=True)
    group, ticks = np.divmod(key, span)
    run_code, variant_code = np.divmod(group, len(variants) + 1)
    index = pd.MultiIndex.from_arrays(
        [
            np.asarray(runs, object)[run_code],
            np.asarray(variants, object)[variant_code],
            ticks + low,
        ],
        names=["run", "variant", "ticks"],
    )
    return pd.Series(counts, index=index)


def _lateness_frame(counts: pd.Series) -> pd.DataFrame:
    """Counts by (run, variant, ticks) as the frame, in one order whatever the input's."""
    frame = counts.rename("count").reset_index()
    frame["lag_ms"] = frame.pop("ticks") * LATENESS_RESOLUTION_MS
    frame = frame.astype({"run": str, "variant": str, "count": np.int64})
    frame = frame.sort_values(["run", "variant", "lag_ms"], ignore_index=True)
    return frame.astype({"run": "category", "variant": "category"})[
        ["run", "variant", "lag_ms", "count"]
    ]


def _merge_lateness(parts: list[pd.Series]) -> pd.DataFrame:
    """Counts of several chunks (`_count_lateness`) as the frame of lateness_counts."""
    if not parts:
        return lateness_counts(pd.DataFrame({"run": [], "variant": [], "lag_ms": []}))
    return _lateness_frame(pd.concat(parts).groupby(level=["run", "variant", "ticks"]).sum())


def _max(column: pa.ChunkedArray) -> float:
    """The largest value, NaN and nulls aside (-inf: none), by numpy: Arrow's `max` takes
    several times as long over a float column."""
    largest = -np.inf
    for chunk in column.chunks:
        if len(chunk):
            largest = np.fmax(largest, np.fmax.reduce(chunk.to_numpy(zero_copy_only=False)))
    return float(largest)


def _equal(column: pa.ChunkedArray, value: str) -> pa.ChunkedArray:
    """column == value, null: False. A dictionary column is compared by its dictionary (a few
    words) and a gather, not word by word."""
    if not pa.types.is_dictionary(column.type):
        return pc.fill_null(pc.equal(column, value), False)
    chunks = []
    for chunk in column.chunks:
        words = pc.fill_null(pc.equal(chunk.dictionary, value), False).to_numpy(
            zero_copy_only=False
        )
        codes = chunk.indices.fill_null(len(words)).to_numpy(zero_copy_only=False)
        chunks.append(pa.array(np.append(words, False)[codes]))
    return pa.chunked_array(chunks, pa.bool_())


# How events.parquet is written: dictionaries for the text columns only (the others never
# repeat enough to gain), statistics for the times only (what a reader filters by), and lz4.
# Half the CPU of the defaults, a smaller file (bench/RESULTS.md, issue 35).
_TEXT = ("run", "src", "variant", "connection", "dir", "type", "item", "text", "detail")
EVENTS_PARQUET = {
    "compression": "lz4",
    "use_dictionary": list(_TEXT),
    "write_statistics": ["t", "wall"],
}


class _EventsParquet:
    """events.parquet written chunk by chunk, with the schema (and pandas metadata) that
    `frames.events.to_parquet` gives, so `pandas.read_parquet` returns the same frame."""

    def __init__(self, path: Path) -> None:
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        empty = _with_connection(_with_run(LOADED_SCHEMA.empty_table(), ""))
        fields = []
        for field in empty.schema:
            if field.type == pa.string():
                fields.append(pa.field(field.name, pa.large_string()))
            else:
                fields.append(field)
        metadata = pa.Schema.from_pandas(_to_pandas(empty), preserve_index=False).metadata
        self.schema = pa.schema(fields, metadata=metadata)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(str(self.partial), self.schema, **EVENTS_PARQUET)
        # written on a thread of its own, which Parquet's encoder lets run beside the report's
        # pass (at most two chunks wait, so memory stays a few chunks)
        self._thread = ThreadPoolExecutor(1)
        self._pending: deque[Future] = deque()

    def write(self, chunk: pa.Table) -> None:
        self._pending.append(self._thread.submit(self._write, chunk))
        if len(self._pending) > 2:
            self._pending.popleft().result()

    def _write(self, chunk: pa.Table) -> None:
        chunk = _with_connection(chunk)
        columns = [chunk.column(f.name).cast(f.type) for f in self.schema]
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        """Complete: the file appears under its name only now."""
        while self._pending:
            self._pending.popleft().result()
        self._thread.shutdown()
        self.writer.close()
        os.replace(self.partial, self.path)


def _sends(chunk: pa.Table) -> pa.Table:
    """Of one chunk: the frames a client sent, with what the sends batches keep."""
    sent = pc.and_(_equal(chunk.column("dir"), "send"), _equal(chunk.column("src"), "client"))
    names = [c for c in BATCH_COLUMNS if c in chunk.column_names]
    return chunk.select(names).filter(sent)


def _scan(chunk: pa.Table) -> tuple[pa.Table, pd.Series]:
    """Of one chunk: the rows the connections and utterances frames read (meta rows, commits
    sent), and the lateness counts of its appends (`_count_lateness`)."""
    kind, direction = chunk.column("type"), chunk.column("dir")
    keep = pc.or_(
        _equal(direction, "meta"), pc.and_(_equal(kind, COMMIT), _equal(direction, "send"))
    )
    late = chunk.select(["run", "variant", "lag_ms"]).filter(_equal(kind, APPEND))
    return chunk.filter(keep), _lateness(late)


def _lateness(appends: pa.Table) -> pd.Series:
    """`_count_lateness` of a table of appends (its run, variant and lag_ms)."""
    lag = appends.column("lag_ms").to_numpy().astype(np.float64)  # null: NaN
    return _count_lateness(_category(appends, "run"), _category(appends, "variant"), lag)


_DENSE_KEYS = 1 << 20  # key spaces up to this size are looked up in a table


def _drop_times(rows: np.ndarray, wanted: np.ndarray, closed: np.ndarray, domain: int):
    """Each row's connection's drop time, NaN where it did not drop: `rows` and `wanted` (one
    key each, `closed` their times) are integer keys below `domain`. A table over the keys
    when they are few enough (one gather a row), else a binary search a row."""
    if domain <= max(_DENSE_KEYS, 2 * len(rows)) and rows.min(initial=0) >= 0:
        table = np.full(domain, np.nan)
        table[wanted] = closed
        return table[rows]
    order = np.argsort(wanted)
    wanted, closed = wanted[order], closed[order]
    at = np.minimum(np.searchsorted(wanted, rows), len(wanted) - 1)
    return np.where(wanted[at] == rows, closed[at], np.nan)


def _drop_windows(sends: SendSource, drops: pd.DataFrame, window_s: float) -> pa.Table | None:
    """The appends of each dropped connection (`drops`: connection, closed) from `window_s`
    before its close to the close, from the sends, as event rows (LOADED_SCHEMA with `run`)."""
    ends = drops.groupby(["run", "variant", "worker", "conn"], observed=True)["closed"].max()

    def near(columns: dict[str, np.ndarray], names: dict[str, list[str]]) -> np.ndarray:
        """Appends of a dropped connection in its last `window_s`, by integer keys: no
        labels, no sort (most rows are not near a drop)."""
        if APPEND not in names["type"]:
            return np.zeros(len(columns["t"]), bool)
        runs, variants = ({n: i for i, n in enumerate(names[k])} for k in ("run", "variant"))
        mine = ends.reset_index()
        run = mine["run"].astype(str).map(runs)
        variant = mine["variant"].astype(str).map(variants)
        known = run.notna() & variant.notna()
        span = [
            1 + max(int(columns[k].max(initial=0)), int(mine[k].max())) for k in ("worker", "conn")
        ]

        def key(r, v, w, c):
            return ((np.asarray(r, np.int64) * (len(variants) + 1) + v) * span[0] + w) * span[1] + c

        wanted = key(
            *(c[known].to_numpy(np.int64) for c in (run, variant, mine["worker"], mine["conn"]))
        )
        if not len(wanted):
            return np.zeros(len(columns["t"]), bool)
        rows = key(columns["run"], columns["variant"], columns["worker"], columns["conn"])
        domain = len(runs) * (len(variants) + 1) * span[0] * span[1]
        end = _drop_times(rows, wanted, mine["closed"][known].to_numpy(float), domain)
        t = columns["t"]
        return (columns["type"] == names["type"].index(APPEND)) & (t >= end - window_s) & (t <= end)

    parts = [part for part in sends.map(lambda batch: batch, keep=near) if len(part)]
    if not parts:
        return None
    rows = pd.concat(parts, ignore_index=True)
    columns = {}
    for f in _with_run(LOADED_SCHEMA.empty_table(), "").schema:
        if f.name in rows.columns:
            values = rows[f.name]
            columns[f.name] = (
                pa.array(values.astype(str), pa.string()).dictionary_encode()
                if pa.types.is_dictionary(f.type)
                else pa.array(values.to_numpy(), f.type, from_pandas=True)
            )
        elif f.name in ("src", "dir"):
            word = {"src": "client", "dir": "send"}[f.name]
            columns[f.name] = pa.array([word] * len(rows), pa.string()).dictionary_encode()
        else:
            columns[f.name] = pa.nulls(len(rows), f.type)
    return pa.table(columns)


def _expected_rows(runs: dict[str, tuple[Path, dict]]) -> int:
    """Rows the runs' logs hold, about: an append row takes some 40 bytes on disk."""
    return (
        sum(p.stat().st_size for run_dir, _ in runs.values() for p in RunDir(run_dir).logs()) // 40
    )


def _spill_dir(runs: dict[str, tuple[Path, dict]]) -> Path | None:
    """Where sends spill: beside the first run (a disk, not a RAM-backed /tmp), else the
    system's temporary directory."""
    first = next(iter(runs.values()))[0]
    return first if os.access(first, os.W_OK) else None


def load_for_report(
    run_dirs: Path | str | Iterable[Path | str],
    drop_window_s: float | None = None,
    events_parquet: Path | None = None,
) -> ReportFrames:
    """What a report of these runs reads (`ReportFrames`), in one pass over the logs, chunk by
    chunk: memory is bounded by the connections and utterances, not by the appends. The
    clients' sends are spilled beside the run (harness.log.sends; the files go when the
    frames do). With `drop_window_s`, the appends of each drop's last seconds are kept for the
    drop diagnosis (read back from the spilled sends); with `events_parquet`, the full events
    frame is written there on the way, as `write_frames` writes it, without ever being in
    memory."""
    runs = _run_dirs(run_dirs)
    writer = _EventsParquet(events_parquet) if events_parquet is not None else None
    sends = SpilledSends(_expected_rows(runs), _spill_dir(runs))
    kept: list[pa.Table] = []
    lateness: list[pd.Series] = []
    last: dict[str, tuple[float, float]] = {}
    rows = torn = 0
    for name, (run_dir, _) in runs.items():
        t_max = wall_max = -np.inf
        for log in RunDir(run_dir).logs():
            chunks = _LogChunks(log, name)
            for chunk in chunks:
                rows += len(chunk)
                t_max = max(t_max, _max(chunk.column("t")))
                wall_max = max(wall_max, _max(chunk.column("wall")))
                if writer is not None:
                    writer.write(chunk)
                if log.match(APPEND_LOG_GLOB):  # appends sent, nothing else: no filtering
                    lateness.append(_lateness(chunk))
                    sends.add(chunk.select([c for c in BATCH_COLUMNS if c in chunk.column_names]))
                    continue
                keep, late = _scan(chunk)
                kept.append(keep)
                lateness.append(late)
                sends.add(_sends(chunk))
            torn += chunks.torn
        if np.isfinite(t_max):
            last[name] = (t_max, wall_max)
    if writer is not None:
        writer.close()
    schema = LOADED_SCHEMA.insert(0, pa.field("run", _DICTIONARY))
    base = pa.concat_tables(kept) if kept else schema.empty_table()
    events = _to_pandas(_with_connection(base))
    ends = pd.DataFrame.from_dict(last, orient="index", columns=["t", "wall"])
    conns = connections_frame(events, last=ends)
    utts = utterances_frame(events)
    dropped = conns[conns["dropped"]]
    if drop_window_s is not None and not dropped.empty:
        near = _drop_windows(sends, dropped, drop_window_s)
        if near is not None:
            events = _to_pandas(
                _with_connection(pa.concat_tables([base, near], promote_options="permissive"))
            )
    manifests = {name: manifest for name, (_, manifest) in runs.items()}
    late = _merge_lateness(lateness)
    return ReportFrames(events, late, conns, utts, manifests, torn, rows, sends)


def write_frames(frames: Frames, out_dir: Path) -> None:
    """Parquet copies of the frames (and CSV of the small ones) for people and other tools."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames.events.to_parquet(out_dir / "events.parquet", index=False, **EVENTS_PARQUET)
    write_small_frames(frames.connections, frames.utterances, out_dir)


def write_small_frames(connections: pd.DataFrame, utterances: pd.DataFrame, out_dir: Path) -> None:
    """connections and utterances as Parquet and CSV (Arrow's writer: a night's utterances
    in a fraction of pandas' time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("connections", connections), ("utterances", utterances)):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, out_dir / f"{name}.parquet")
        csv.write_csv(table, out_dir / f"{name}.csv", csv.WriteOptions(quoting_style="needed"))


def pacing_lateness(events: pd.DataFrame) -> np.ndarray:
    appends = events[events["type"] == APPEND]
    return appends["lag_ms"].dropna().to_numpy(dtype=float)
