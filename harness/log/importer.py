"""`rtsoak import`: a team's own connection logs (CSV or JSON lines) into a run directory.

Connection rows say when each connection opened and closed and how; event rows (optional) say
which frames it sent and received. The frames go through the same ClientConnection the proxy
uses (inferring), so utterances, the state at close, the quiet before it and the audio left
uncommitted come out as in any run; without event rows a connection is its open, handshake and
close. Every bad row is named (file, line, field): the import fails on them, or skips and
counts them. The format is docs/import.md.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from harness.core.audio_level import DBFS_FLOOR
from harness.core.client import ClientConnection
from harness.core.outcomes import CloseCause, ClosedBy
from harness.core.protocol import COMPLETED, FAILED
from harness.core.rows import ConnClose, ConnOpen, FrameRow, Row
from harness.log.recorder import APPEND, Recorder
from harness.log.rundir import RunDir, open_run, run_facts

__all__ = [
    "CONNECTION_COLUMNS",
    "EVENT_COLUMNS",
    "FORMATS",
    "ImportOptions",
    "ImportResult",
    "LogImportError",
    "Problem",
    "import_logs",
    "parse_mapping",
]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# canonical column -> required; the order is the documentation's
CONNECTION_COLUMNS = {
    "connection": True,
    "open": True,
    "close": True,
    "code": True,
    "established": False,
    "status": False,
    "reason": False,
    "closed_by": False,
    "variant": False,
    "worker": False,
    "request_id": False,
    "session_id": False,
}
EVENT_COLUMNS = {
    "time": True,
    "connection": True,
    "dir": True,
    "type": True,
    "audio_ms": False,
    "dbfs": False,
    "item": False,
    "text": False,
    "bytes": False,
}
SHOWN_PROBLEMS = 10  # problems listed in the error and the manifest; all are counted
_INT32 = 2**31 - 1
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_DIGITS = re.compile(r"[0-9]{1,10}")
_EPOCH_MS = 1e11  # an epoch second count this large is year 5138: milliseconds, surely
_SLACK = 1e-6  # seconds: rounding in a log's own times
# seconds a frame may be stamped after its connection's close: a send in flight when the close
# came is logged when it returns (rtsoak's own client, loaded, at 60x: about a second)
_LATE = 5.0
_FLUSH_ROWS = 200_000


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad row (or file): where it is, which field, what is wrong."""

    path: Path
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class LogImportError(Exception):
    """The logs cannot be imported as they are: the first problems, and how many there were."""

    def __init__(self, problems: list[Problem], total: int, hint: str = "") -> None:
        self.problems, self.total = problems, total
        lines = [str(p) for p in problems]
        if total > len(problems):
            lines.append(f"... and {total - len(problems)} more")
        head = f"{total} bad row(s), nothing imported; {hint}" if total else hint
        super().__init__("\n".join([head, *lines]))


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What to import: `connections` and `events` files, into the run directory `out`.
    `mapping`: canonical column -> the file's own name for it."""

    connections: tuple[Path, ...]
    out: Path
    events: tuple[Path, ...] = ()
    mapping: dict[str, str] = field(default_factory=dict)
    skip_bad: bool = False
    # the logs' times are those of a run compressed this many times (an export of an rtsoak
    # run at 60x): the diagnosis's timing tolerance grows with it
    time_scale: float = 1.0


@dataclass(frozen=True, slots=True)
class ImportResult:
    run_dir: Path
    connections: int
    events: int
    skipped: int
    problems: list[Problem]  # the first of those skipped


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """`--map open=started_at` flags into {canonical: theirs}; LogImportError when malformed."""
    known = {**CONNECTION_COLUMNS, **EVENT_COLUMNS}
    mapping: dict[str, str] = {}
    for item in items:
        ours, sep, theirs = item.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise LogImportError([], 0, f"--map {item!r}: write COLUMN=YOURS, e.g. open=started_at")
        if ours not in known:
            raise LogImportError(
                [], 0, f"--map {item!r}: no column {ours!r}{_did_you_mean(ours, known)}"
            )
        mapping[ours] = theirs
    return mapping


# reading files ----------------------------------------------------------------------------
class _Bad(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise LogImportError(
            [], 0, f"{path}: unknown format {path.suffix or '(no extension)'!r}; give {known}"
        )
    return fmt


def _lines(path: Path, problems: list[Problem]) -> Iterator[str]:
    """The file's lines, decoded one by one: a line that is not UTF-8 is a problem, and
    blank in its place (so line numbers stay true)."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise LogImportError([], 0, f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(Problem(path, n, None, f"not UTF-8 text (byte {exc.start + 1})"))
                yield "\n"


def _records(
    path: Path, cols: _Columns, problems: list[Problem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of a CSV or JSON lines file; unreadable lines become problems. A CSV
    header without a required column fails the import (it is no row to skip)."""
    if _format(path) == "jsonl":
        for n, line in enumerate(_lines(path, problems), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:
                problems.append(Problem(path, n, None, f"not JSON ({_short(exc)})"))
                continue
            if not isinstance(record, dict):
                problems.append(Problem(path, n, None, "not a JSON object ({...})"))
                continue
            yield n, record
        return
    lines = _lines(path, problems)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        problems.append(Problem(path, 1, None, "empty file: a CSV file starts with its header"))
        return
    except csv.Error as exc:
        problems.append(Problem(path, 1, None, f"unreadable header ({exc})"))
        return
    header = [h.strip() for h in header]
    missing = [
        c for c, required in cols.columns.items() if required and cols.names[c] not in header
    ]
    if missing:
        named = ", ".join(repr(cols.names[c]) for c in missing)
        raise LogImportError(
            [],
            0,
            f"{path}:1: no column {named} in the header ({', '.join(header)[:200]}); "
            f"map yours with --map {missing[0]}=NAME ... (docs/import.md)",
        )
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(Problem(path, start, None, f"not CSV ({exc})"))
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            problems.append(
                Problem(
                    path, start, None, f"{len(values)} fields, but the header has {len(header)}"
                )
            )
            continue
        yield start, dict(zip(header, values, strict=False))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Columns:
    """Canonical column names to a file's own, and which of them carried any value."""

    def __init__(self, columns: dict[str, bool], mapping: dict[str, str]) -> None:
        self.columns = columns
        self.names = {c: mapping.get(c, c) for c in columns}
        self.present: set[str] = set()

    def get(self, record: dict[str, Any], column: str, may_be_empty: bool = False) -> Any:
        """The value, None when empty; a required column must be there, and have a value
        unless `may_be_empty`."""
        value = record.get(self.names[column])
        if value is None or (isinstance(value, str) and not value.strip()):
            if self.columns[column] and not (may_be_empty and self.names[column] in record):
                raise _Bad(column, self._missing(record, column))
            return None
        self.present.add(column)
        return value.strip() if isinstance(value, str) else value

    def _missing(self, record: dict[str, Any], column: str) -> str:
        name = self.names[column]
        if name in record:
            return "empty; it is required"
        hint = _did_you_mean(name, [k for k in record if isinstance(k, str)])
        return f"no {name!r} field{hint}; map yours with --map {column}=NAME"


# values ------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A JSON number or a numeric string as a float (inf when too large), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            return math.inf
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return None


def _time(value: Any, column: str) -> float:
    seconds = _number(value)
    if seconds is None and isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            seconds = stamp.timestamp()
        except (ValueError, OverflowError):
            raise _Bad(
                column,
                f"not a time: {value[:40]!r} (write ISO 8601, e.g. 2025-01-31T12:00:00.250Z, "
                "or epoch seconds)",
            ) from None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise _Bad(column, f"not a time: {_show(value)}")
    if seconds >= _EPOCH_MS:
        raise _Bad(column, f"{_show(value)} looks like epoch milliseconds; give seconds (÷ 1000)")
    return seconds


def _int(value: Any, column: str, lo: int, hi: int) -> int:
    number = _number(value)
    if number is None or not math.isfinite(number) or number != int(number):
        raise _Bad(column, f"not a whole number: {_show(value)}")
    if not lo <= number <= hi:
        raise _Bad(column, f"{int(number)} is out of range ({lo}..{hi})")
    return int(number)


def _float(value: Any, column: str) -> float:
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise _Bad(column, f"not a non-negative number: {_show(value)}")
    return number


def _level(value: Any) -> float:
    """An append's level in dBFS (core/audio_level.dbfs): at most 0, floored at DBFS_FLOOR as
    the definition floors it (so a log's own floor for digital silence reads as ours)."""
    number = _number(value)
    if number is None or math.isnan(number):
        raise _Bad("dbfs", f"not a level in dBFS: {_show(value)}")
    if number > 0:
        raise _Bad("dbfs", f"{number:g} dBFS: no PCM16 audio is louder than 0 dBFS (RMS)")
    return max(number, DBFS_FLOOR)


def _text(value: Any, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Bad(column, f"expected text, got {_kind(value)}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false"}.get(type(value), "a value")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)[:40]
    return _kind(value)


# rows ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Conn:
    id: str
    where: tuple[Path, int]
    seq: int
    open: float
    close: float
    established: float | None  # None: the handshake failed
    status: int | None
    code: int | None
    reason: str
    closed_by: ClosedBy | None
    variant: str | None
    worker: str | None
    request_id: str | None
    session_id: str | None
    events: list[_Event] = field(default_factory=list)


@dataclass(slots=True)
class _Event:
    time: float
    seq: int
    dir: str
    type: str
    audio_ms: float | None
    dbfs: float | None
    item: str | None
    text: str | None
    bytes: int | None


def _connection(cols: _Columns, record: dict[str, Any], where: tuple[Path, int], seq: int) -> _Conn:
    conn_id = _text(cols.get(record, "connection"), "connection")
    assert conn_id is not None
    opened = _time(cols.get(record, "open"), "open")
    closed = _time(cols.get(record, "close"), "close")
    if closed < opened - _SLACK:
        raise _Bad("close", "before the connection opened")
    raw_status = cols.get(record, "status")
    if raw_status is None:
        status: int | None = 101
    elif isinstance(raw_status, str) and raw_status.lower() == "none":
        status = None
    else:
        status = _int(raw_status, "status", 100, 599)
    raw_code = cols.get(record, "code", may_be_empty=True)  # a refused handshake has none
    code = None if raw_code is None else _int(raw_code, "code", 0, 65535)
    established = None
    if status == 101:
        if code is None:
            raise _Bad("code", "empty: write 1006 when the connection dropped with no close frame")
        if not 1000 <= code <= 4999:
            raise _Bad("code", f"{code} is no WebSocket close code (1000..4999)")
        raw = cols.get(record, "established")
        established = opened if raw is None else _time(raw, "established")
        if not opened - _SLACK <= established <= closed + _SLACK:
            raise _Bad("established", "not between the connection's open and close")
    who = cols.get(record, "closed_by")
    closed_by = None
    if who is not None:
        try:
            closed_by = ClosedBy(str(who).lower())
        except ValueError:
            raise _Bad("closed_by", f"{_show(who)}: write client, server or transport") from None
        if closed_by is ClosedBy.NONE and status == 101:
            raise _Bad("closed_by", "none means it never opened, but its handshake succeeded")
    return _Conn(
        conn_id,
        where,
        seq,
        opened,
        closed,
        established,
        status,
        code,
        _text(cols.get(record, "reason"), "reason") or "",
        closed_by,
        _text(cols.get(record, "variant"), "variant"),
        _text(cols.get(record, "worker"), "worker"),
        _text(cols.get(record, "request_id"), "request_id"),
        _text(cols.get(record, "session_id"), "session_id"),
    )


def _event(cols: _Columns, record: dict[str, Any], seq: int) -> tuple[str, _Event]:
    conn_id = _text(cols.get(record, "connection"), "connection")
    assert conn_id is not None
    time = _time(cols.get(record, "time"), "time")
    dir_ = str(_text(cols.get(record, "dir"), "dir")).lower()
    if dir_ not in ("send", "recv"):
        raise _Bad("dir", f"{dir_[:40]!r}: write send (client to service) or recv")
    type_ = _text(cols.get(record, "type"), "type")
    assert type_ is not None
    raw_ms = cols.get(record, "audio_ms")
    audio_ms = None if raw_ms is None else _float(raw_ms, "audio_ms")
    if audio_ms is None and dir_ == "send" and type_ == APPEND:
        raise _Bad("audio_ms", f"required on {APPEND}: the audio it carried, in ms")
    raw_level = cols.get(record, "dbfs")
    level = None if raw_level is None else _level(raw_level)
    raw_bytes = cols.get(record, "bytes")
    nbytes = None if raw_bytes is None else _int(raw_bytes, "bytes", 0, _INT32)
    item = _text(cols.get(record, "item"), "item")
    text = _text(cols.get(record, "text"), "text")
    return conn_id, _Event(time, seq, dir_, type_, audio_ms, level, item, text, nbytes)


class _Problems:
    """Every problem counted; the first few kept."""

    def __init__(self) -> None:
        self.first: list[Problem] = []
        self.total = 0

    def add(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.total += 1
            if len(self.first) < SHOWN_PROBLEMS:
                self.first.append(p)


def _read(
    options: ImportOptions,
) -> tuple[list[_Conn], int, _Problems, dict[str, list[str] | None], list[dict[str, Any]]]:
    problems = _Problems()
    sources: list[dict[str, Any]] = []
    conns: dict[str, _Conn] = {}
    bad_conns: dict[str, tuple[Path, int]] = {}
    conn_cols = _Columns(CONNECTION_COLUMNS, options.mapping)
    for path in options.connections:
        before, rows = problems.total, 0
        found: list[Problem] = []
        for line, record in _records(path, conn_cols, found):
            problems.add(found)
            found.clear()
            try:
                conn = _connection(conn_cols, record, (path, line), len(conns))
                if conn.id in conns:
                    p, n = conns[conn.id].where
                    raise _Bad("connection", f"{conn.id[:40]!r} is also at {p}:{n}")
            except _Bad as bad:
                problems.add([Problem(path, line, bad.field, bad.message)])
                conn_id = record.get(conn_cols.names["connection"])
                if isinstance(conn_id, str | int) and str(conn_id) not in conns:
                    bad_conns.setdefault(str(conn_id).strip(), (path, line))
                continue
            conns[conn.id] = conn
            rows += 1
        problems.add(found)
        sources.append(_source(path, "connections", rows, problems.total - before))
    event_cols = _Columns(EVENT_COLUMNS, options.mapping)
    events = 0
    for path in options.events:
        before, rows = problems.total, 0
        found = []
        for line, record in _records(path, event_cols, found):
            problems.add(found)
            found.clear()
            try:
                conn_id, event = _event(event_cols, record, events)
                conn = conns.get(conn_id)
                if conn is None:
                    if conn_id in bad_conns:
                        p, n = bad_conns[conn_id]
                        raise _Bad("connection", f"{conn_id[:40]!r}: its row ({p}:{n}) was bad")
                    raise _Bad("connection", f"{conn_id[:40]!r}: no connection row names it")
                if conn.established is None:
                    raise _Bad("connection", "its handshake failed: it carried no frames")
                if not conn.open - _SLACK <= event.time <= conn.close + _LATE:
                    raise _Bad("time", "not between its connection's open and close")
                # a frame stamped after the close it preceded (the log's own lag) counts at it
                event.time = min(event.time, conn.close)
            except _Bad as bad:
                problems.add([Problem(path, line, bad.field, bad.message)])
                continue
            conn.events.append(event)
            events += 1
            rows += 1
        problems.add(found)
        sources.append(_source(path, "events", rows, problems.total - before))
    columns: dict[str, list[str] | None] = {
        "connections": sorted(c for c in conn_cols.present if not CONNECTION_COLUMNS[c]),
        "events": sorted(event_cols.present) if options.events else None,
    }
    return list(conns.values()), events, problems, columns, sources


def _source(path: Path, kind: str, rows: int, bad: int) -> dict[str, Any]:
    fmt = FORMATS[path.suffix.lower()]
    return {"path": str(path), "kind": kind, "format": fmt, "rows": rows, "bad": bad}


# writing ------------------------------------------------------------------------------------
def _server_frame(event: _Event) -> str:
    """The smallest frame of the event's type that says what the log says."""
    frame: dict[str, Any] = {"type": event.type}
    if event.item is not None:
        frame["item_id"] = event.item
    if event.type == COMPLETED:
        frame["transcript"] = event.text
    elif event.type in (FAILED, "error") and event.text is not None:
        frame["error"] = {"code": event.text}
    return json.dumps(frame)


def _frames(conn: ClientConnection, event: _Event, now: float) -> list[Row]:
    if event.dir == "send" and event.type == APPEND:
        rows = conn.appended(now, event.audio_ms or 0.0, event.dbfs)
    elif event.dir == "send":
        rows = conn.client_frame(now, json.dumps({"type": event.type}))
    else:
        rows = conn.server_frame(now, _server_frame(event))
    frame = rows[0]
    assert isinstance(frame, FrameRow)
    # the log's own size, item and text, not those of the frame made up to carry them
    rows[0] = replace(
        frame,
        bytes=event.bytes,  # type: ignore[arg-type]  # NA: the log did not say
        item=event.item if event.item is not None else frame.item,
        text=event.text if event.text is not None else frame.text,
    )
    return rows


def _cause(conn: _Conn, core: ClientConnection) -> tuple[ClosedBy, CloseCause]:
    """How it ended, by who closed it and the close code (docs/import.md's table)."""
    code, who = conn.code, conn.closed_by
    if who is None:
        who = {1000: ClosedBy.CLIENT, 1001: ClosedBy.CLIENT, 1006: ClosedBy.TRANSPORT}.get(
            code or 0, ClosedBy.SERVER
        )
    if who is ClosedBy.TRANSPORT or code == 1006:
        return who, CloseCause.ABNORMAL
    if who is ClosedBy.CLIENT:
        return who, CloseCause.CLIENT_CLOSE if code in (1000, 1001) else CloseCause.PROTOCOL_ERROR
    return who, CloseCause.EXPIRED if core.expired else CloseCause.SERVER_CLOSE


def _numbering(conns: list[_Conn]) -> tuple[dict[str, int], bool]:
    """Worker numbers: the log's own when all are whole numbers, else one per caller id in
    the order they first connected (a connection naming none is a worker of its own)."""
    ids = [c.worker for c in conns]
    if all(w is not None and _DIGITS.fullmatch(w) and int(w) <= _INT32 for w in ids):
        return {w: int(w) for w in ids if w is not None}, False
    numbers: dict[str, int] = {}
    for c in conns:
        if c.worker is not None and c.worker not in numbers:
            numbers[c.worker] = len(numbers)
    return numbers, True


def import_logs(options: ImportOptions) -> ImportResult:
    """Read, check, then write the run directory `options.out` (which must not exist or be
    empty). LogImportError, writing nothing, on a bad row unless `skip_bad`."""
    for path in (*options.connections, *options.events):
        _format(path)
        if not path.is_file():
            raise LogImportError([], 0, f"{path}: no such file")
    out = options.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LogImportError([], 0, f"--out {out}: exists and is not empty; name a new directory")
    conns, events, problems, columns, sources = _read(options)
    if problems.total and not options.skip_bad:
        raise LogImportError(problems.first, problems.total, "fix them, or pass --skip-bad")
    if not conns:
        raise LogImportError(problems.first, problems.total, "no connection rows to import")
    name = out.name
    conns.sort(key=lambda c: (c.open, c.seq))
    numbers, renumbered = _numbering(conns)
    origin = conns[0].open
    out.mkdir(parents=True, exist_ok=True)
    layout = RunDir(out)
    started = datetime.fromtimestamp(origin, UTC).isoformat()
    doc = _manifest(options, name, started, columns, sources, problems)
    if renumbered:
        doc["import"]["workers"] = numbers
    layout.write_manifest(doc)
    recorder = Recorder(layout.client_log())
    attempts: Counter[tuple[str, int]] = Counter()
    fresh = max(numbers.values(), default=-1) + 1
    for c in conns:
        variant = c.variant or name
        if c.worker is None:
            worker, fresh = fresh, fresh + 1
        else:
            worker = numbers[c.worker]
        attempts[variant, worker] += 1
        conn = attempts[variant, worker]
        rows = _connection_rows(c, f"{variant}/{worker}/{conn}", origin)
        for row in rows:
            wall = origin + row.t
            if isinstance(row, ConnClose) and not options.events:
                _record_close_unseen(recorder, row, wall, variant, worker, conn)
            else:
                recorder.record(row, wall, "client", variant, worker, conn)
        if recorder.recorded - recorder.count > _FLUSH_ROWS:  # bounded memory
            recorder.flush()
    recorder.close()
    ended = datetime.fromtimestamp(max(c.close for c in conns), UTC).isoformat()
    doc.update(ended=ended, interrupted=False, rows=recorder.count)
    layout.write_manifest(doc)
    return ImportResult(out, len(conns), events, problems.total, problems.first)


# What a connection's end says that only its frames could tell: null without event rows,
# rather than the "configuring, nothing sent" of a ClientConnection that saw no frames.
_UNSEEN = ("state", "since_sent", "since_recv", "uncommitted_ms", "audio_ms", "completed")


def _record_close_unseen(
    recorder: Recorder, row: ConnClose, wall: float, variant: str, worker: int, conn: int
) -> None:
    fields = row.fields
    if row.cause is not CloseCause.HANDSHAKE_FAILED:  # a refused one was connecting: known
        fields["detail"] = {**fields["detail"], **dict.fromkeys(_UNSEEN)}
    recorder.row(wall, row.t, "client", variant, worker, conn, row.dir, row.type, **fields)


def _connection_rows(c: _Conn, prefix: str, origin: float) -> list[Row]:
    core = ClientConnection(prefix, c.open - origin, infer=True)
    rows: list[Row] = [ConnOpen(c.open - origin)]
    if c.established is None:  # the handshake failed: when it closed is when it was refused
        now = c.close - origin
        error = c.reason or (f"HTTP {c.status}" if c.status is not None else "no HTTP answer")
        rows += core.handshake(now, c.status, c.request_id, error)
        code = c.code if c.code is not None else c.status
        rows += core.closed(now, ClosedBy.NONE, CloseCause.HANDSHAKE_FAILED, code, error)
        return rows
    rows += core.handshake(c.established - origin, 101, c.request_id)
    c.events.sort(key=lambda e: (e.time, e.seq))
    for event in c.events:
        rows += _frames(core, event, max(event.time, c.established) - origin)
    if c.session_id is not None:
        core.session_id = c.session_id
    who, cause = _cause(c, core)
    rows += core.closed(c.close - origin, who, cause, c.code, c.reason)
    return rows


def _manifest(
    options: ImportOptions,
    name: str,
    started: str,
    columns: dict[str, list[str] | None],
    sources: list[dict[str, Any]],
    problems: _Problems,
) -> dict[str, Any]:
    return {
        **run_facts(),
        "kind": "import",
        "scenario": {
            "run": {"name": name, "time_scale": options.time_scale, "target": "import"},
            "faults": {},
            "thresholds": {},
        },
        "seed": None,
        "time_scale": options.time_scale,
        "target": None,
        "ground_truth": False,
        "import": {
            "sources": sources,
            "columns": columns,
            "mapping": dict(options.mapping),
            "skipped": problems.total,
            "skipped_first": [str(p) for p in problems.first],
            "imported_at": datetime.now(UTC).isoformat(),
        },
        **open_run(started),
    }
