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
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from harness.fakeserver.transcript import parse_transcript
from harness.outcomes import CENSORING_CAUSES, CloseCause, ClosedBy, ConnState, UtteranceStatus
from harness.recorder import APPEND, APPEND_SCHEMA, EVENT_SCHEMA

__all__ = [
    "CONNECTION_COLUMNS",
    "CRASHED",
    "EVENT_COLUMNS",
    "UTTERANCE_COLUMNS",
    "Frames",
    "ReportFrames",
    "RunDirError",
    "is_run_dir",
    "load",
    "load_for_report",
    "read_log",
    "write_frames",
]

EVENT_LOG_GLOB = "events-*.arrows"
APPEND_LOG_GLOB = "appends-*.arrows"  # recorder.appends_log
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
    "dir": "category",
    "type": "category",
    "bytes": "Int32",
    "audio_ms": "float32",
    "lag_ms": "float32",
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


class RunDirError(Exception):
    """A path that is not a run directory, or a run with nothing to analyse yet."""


@dataclass(slots=True)
class Frames:
    events: pd.DataFrame
    connections: pd.DataFrame
    utterances: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    torn_batches: int


def is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file()


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


def _logs(run_dir: Path) -> list[Path]:
    """A run's logs: every process's events log, then every process's appends log."""
    return [*sorted(run_dir.glob(EVENT_LOG_GLOB)), *sorted(run_dir.glob(APPEND_LOG_GLOB))]


def _as_events(batches: list[pa.RecordBatch], path: Path) -> pa.Table:
    """The batches of one log as a table of event rows (LOADED_SCHEMA): an appends log's rows
    (APPEND_SCHEMA) are the sends they stand for, with the columns every append shares filled
    in, the categorical ones as one-word dictionaries rather than a string a row."""
    if not path.match(APPEND_LOG_GLOB):
        events = pa.Table.from_batches(batches, schema=EVENT_SCHEMA)
        return pa.Table.from_arrays(
            [
                pc.dictionary_encode(events.column(f.name)) if f.name in _CATEGORIES else column
                for f, column in zip(EVENT_SCHEMA, events.columns, strict=True)
            ],
            schema=LOADED_SCHEMA,
        )
    appends = pa.Table.from_batches(batches, schema=APPEND_SCHEMA)
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


def _read_run(run_dir: Path) -> tuple[pa.Table, int]:
    """One run's event logs as one Arrow table with a `run` column first."""
    tables, torn = [], 0
    for log in _logs(run_dir):
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


def _client_meta(events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    meta = events[(events["src"] == "client") & (events["dir"] == "meta")]
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
    conns = meta["conn_open"][_KEY + ["t", "wall"]].rename(
        columns={"t": "opened", "wall": "opened_wall"}
    )
    hs = meta["handshake"]
    hs_detail = _details(hs)
    hs = hs[_KEY + ["t", "code", "item", "text"]].assign(
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
    closes = pd.concat([closes[_KEY + ["t", "wall", "code", "text"]], close_detail], axis=1)
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
    conns = conns.merge(hs, on=_KEY, how="left").merge(closes, on=_KEY, how="left")
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
    return conns.sort_values(["run", "variant", "worker", "conn"]).reset_index(drop=True)


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
    key = ["run", "worker", "conn"]
    commits = pd.DataFrame({k: sent[k].astype(object) for k in key}).assign(
        committed=sent["t"].to_numpy()
    )
    left = pd.DataFrame({k: utts[k].astype(object) for k in key}).assign(
        started=utts["started"].to_numpy(), _row=np.arange(len(utts))
    )
    if commits.empty or left.empty:
        return pd.Series(np.nan, index=utts.index)
    merged = pd.merge_asof(
        left.sort_values("started"),
        commits.sort_values("committed"),
        left_on="started",
        right_on="committed",
        by=key,
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
        if not is_run_dir(run_dir):
            raise RunDirError(
                f"{run_dir}: not a run directory (no manifest.json); pass a "
                "directory that `rtsoak run` wrote, e.g. reports/smoke-..."
            )
        runs[run_dir.name] = (run_dir, json.loads((run_dir / "manifest.json").read_text()))
    return runs


def load(run_dirs: Path | str | Iterable[Path | str]) -> Frames:
    """Frames of one run directory or several (rows keep their run in the `run` column)."""
    runs = _run_dirs(run_dirs)
    tables, torn = [], 0
    for run_dir, _ in runs.values():
        table, t = _read_run(run_dir)
        tables.append(table)
        torn += t
    events = _to_pandas(pa.concat_tables(tables))
    manifests = {name: manifest for name, (_, manifest) in runs.items()}
    return Frames(events, connections_frame(events), utterances_frame(events), manifests, torn)


@dataclass(slots=True)
class ReportFrames:
    """What a report reads, without the full events frame (at ten million rows that frame and
    its making take gigabytes): `events` has the events columns but only the meta rows, the
    commits sent and, with a drop window, the appends of each dropped connection's last
    seconds (what the connections and utterances frames and the drop diagnosis read), not in
    log order; `lateness` has `run`, `variant` and `lag_ms` of every append that has a send
    lateness; `rows` counts all event rows."""

    events: pd.DataFrame
    lateness: pd.DataFrame
    connections: pd.DataFrame
    utterances: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    torn_batches: int
    rows: int

    @classmethod
    def from_frames(cls, frames: Frames) -> ReportFrames:
        """The same view of frames already loaded whole (their events stay as they are)."""
        events = frames.events
        appends = (events["type"] == APPEND).to_numpy(bool) & events["lag_ms"].notna().to_numpy()
        return cls(
            events,
            events.loc[appends, ["run", "variant", "lag_ms"]].reset_index(drop=True),
            frames.connections,
            frames.utterances,
            frames.manifests,
            frames.torn_batches,
            len(events),
        )


def _max(column: pa.ChunkedArray) -> float:
    value = pc.max(column).as_py()
    return -np.inf if value is None else value


def _equal(column: pa.ChunkedArray, value: str) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(column, value), False)


class _EventsParquet:
    """events.parquet written chunk by chunk, with the schema (and pandas metadata) that
    `frames.events.to_parquet` gives, so `pandas.read_parquet` returns the same frame."""

    def __init__(self, path: Path) -> None:
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        empty = _to_pandas(_with_run(LOADED_SCHEMA.empty_table(), ""))
        fields = [pa.field("run", _DICTIONARY)]
        for field in LOADED_SCHEMA:
            if field.type == pa.string():
                fields.append(pa.field(field.name, pa.large_string()))
            else:
                fields.append(field)
        metadata = pa.Schema.from_pandas(empty, preserve_index=False).metadata
        self.schema = pa.schema(fields, metadata=metadata)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(str(self.partial), self.schema)

    def write(self, chunk: pa.Table) -> None:
        columns = [chunk.column(f.name).cast(f.type) for f in self.schema]
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        """Complete: the file appears under its name only now."""
        self.writer.close()
        os.replace(self.partial, self.path)


def _scan(chunk: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Of one chunk: the rows the connections and utterances frames read (meta rows, commits
    sent), and (run, variant, lag_ms) of the appends that carry a lateness."""
    kind, direction = chunk.column("type"), chunk.column("dir")
    keep = pc.or_(
        _equal(direction, "meta"), pc.and_(_equal(kind, COMMIT), _equal(direction, "send"))
    )
    late = pc.and_(_equal(kind, APPEND), pc.is_valid(chunk.column("lag_ms")))
    lateness = pa.table(
        {
            "run": pc.filter(chunk.column("run"), late),
            "variant": pc.filter(chunk.column("variant"), late),
            "lag_ms": pc.filter(chunk.column("lag_ms"), late),
        }
    )
    return chunk.filter(keep), lateness


def _drop_windows(run_dir: Path, drops: pd.DataFrame, window_s: float) -> list[pa.Table]:
    """The appends of each dropped connection (`drops`: worker, conn, closed) from
    `window_s` before its close to the close, read from the run's logs again."""
    if drops.empty:
        return []
    worker = drops["worker"].to_numpy("int64")
    conn = drops["conn"].to_numpy("int64")
    key = pd.Series((worker << 32) | (conn & 0xFFFFFFFF))
    closed = drops["closed"].to_numpy(float)
    bounds = pd.DataFrame({"lo": closed - window_s, "hi": closed}).groupby(key.to_numpy())
    lo, hi = bounds["lo"].min(), bounds["hi"].max()  # sorted by key
    keys, lo, hi = lo.index.to_numpy("int64"), lo.to_numpy(), hi.to_numpy()
    parts = []
    for log in _logs(run_dir):
        for chunk in _LogChunks(log, run_dir.name):
            w = pc.fill_null(chunk.column("worker"), -1).to_numpy().astype(np.int64)
            c = pc.fill_null(chunk.column("conn"), -1).to_numpy().astype(np.int64)
            t = pc.fill_null(chunk.column("t"), np.nan).to_numpy()
            k = (w << 32) | (c & 0xFFFFFFFF)
            i = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
            near = (keys[i] == k) & (t >= lo[i]) & (t <= hi[i])
            near &= _equal(chunk.column("type"), APPEND).to_numpy()
            if near.any():
                parts.append(chunk.filter(pa.array(near)))
    return parts


def load_for_report(
    run_dirs: Path | str | Iterable[Path | str],
    drop_window_s: float | None = None,
    events_parquet: Path | None = None,
) -> ReportFrames:
    """What a report of these runs reads (`ReportFrames`), streaming each log in chunks: peak
    memory stays far below that of the full events frame (`load`). With `drop_window_s`, a
    second pass keeps the appends of each drop's last seconds for the drop diagnosis; with
    `events_parquet`, the full events frame is written there on the way, as `write_frames`
    writes it, without ever being in memory."""
    runs = _run_dirs(run_dirs)
    writer = _EventsParquet(events_parquet) if events_parquet is not None else None
    kept: list[pa.Table] = []
    lateness: list[pa.Table] = []
    last: dict[str, tuple[float, float]] = {}
    rows = torn = 0
    for name, (run_dir, _) in runs.items():
        t_max = wall_max = -np.inf
        for log in _logs(run_dir):
            chunks = _LogChunks(log, name)
            for chunk in chunks:
                rows += len(chunk)
                t_max = max(t_max, _max(chunk.column("t")))
                wall_max = max(wall_max, _max(chunk.column("wall")))
                if writer is not None:
                    writer.write(chunk)
                keep, late = _scan(chunk)
                kept.append(keep)
                lateness.append(late)
            torn += chunks.torn
        if np.isfinite(t_max):
            last[name] = (t_max, wall_max)
    if writer is not None:
        writer.close()
    schema = LOADED_SCHEMA.insert(0, pa.field("run", _DICTIONARY))
    base = pa.concat_tables(kept) if kept else schema.empty_table()
    events = _to_pandas(base)
    ends = pd.DataFrame.from_dict(last, orient="index", columns=["t", "wall"])
    conns = connections_frame(events, last=ends)
    utts = utterances_frame(events)
    dropped = conns[conns["dropped"]]
    if drop_window_s is not None and not dropped.empty:
        near = [
            part
            for name, (run_dir, _) in runs.items()
            for part in _drop_windows(run_dir, dropped[dropped["run"] == name], drop_window_s)
        ]
        if near:
            events = _to_pandas(pa.concat_tables([base, *near]))
    late = (
        pa.concat_tables(lateness).unify_dictionaries().to_pandas()
        if lateness
        else pd.DataFrame({"run": [], "variant": [], "lag_ms": []})
    )
    late = late.astype({"run": "category", "variant": "category", "lag_ms": "float32"})
    manifests = {name: manifest for name, (_, manifest) in runs.items()}
    return ReportFrames(events, late, conns, utts, manifests, torn, rows)


def write_frames(frames: Frames, out_dir: Path) -> None:
    """Parquet copies of the frames (and CSV of the small ones) for people and other tools."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames.events.to_parquet(out_dir / "events.parquet", index=False)
    write_small_frames(frames.connections, frames.utterances, out_dir)


def write_small_frames(connections: pd.DataFrame, utterances: pd.DataFrame, out_dir: Path) -> None:
    """connections and utterances as Parquet and CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("connections", connections), ("utterances", utterances)):
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
        frame.to_csv(out_dir / f"{name}.csv", index=False)


def pacing_lateness(events: pd.DataFrame) -> np.ndarray:
    appends = events[events["type"] == APPEND]
    return appends["lag_ms"].dropna().to_numpy(dtype=float)
