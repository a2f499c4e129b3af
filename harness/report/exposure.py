"""How long each connection spent in each state, from what the client saw: the exposure a
blind diagnosis weighs drops against (docs/diagnosis.md).

Every theory of what kills a connection names a covariate that moves along a connection's
life: session age, seconds since the last frame sent, audio in the uncommitted buffer, the
sending speed, appends bunched together, a streak of low-energy audio, the sessions open at
once. A theory's table holds spells: within a spell the covariate goes linearly from `x0` to
`x1` (equal: it stays put) over `duration` scenario seconds of connection time, and `dropped`
marks the spell the connection's drop ended (the drop came at `x1`). Spells whose covariate
never leaves zero are left out: they add exposure only below every threshold, which the total
connection time of a variant (closed less established, summed) accounts for.

Only client-side rows are read (the connections frame and the frames sent), never the fake
server's log: the same tables come from a run against the fake, a real endpoint, a proxy or an
imported log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.log.recorder import APPEND
from harness.log.sends import SendSource

__all__ = [
    "BURST_WINDOWS_S",
    "LOUD_DBFS",
    "SPEED_WINDOWS_S",
    "Covariate",
    "exposure_tables",
    "handshake_attempts",
]

COMMIT, CLEAR = "input_audio_buffer.commit", "input_audio_buffer.clear"
# The service's windows and level are unknown. Each covariate is measured over windows like
# the ones services are said to use (more windows cost a pass over every append each, and the
# test pays for each one it looks at: docs/diagnosis.md).
SPEED_WINDOWS_S = (2.0,)  # audio seconds sent per second over the trailing window
BURST_WINDOWS_S = (0.05,)  # appends sent within the trailing window
LOUD_DBFS = -50.0  # an append below this is low-energy audio (a silence streak goes on)
# dying: the spell lies within the timing tolerance before its connection's drop, so it
# cannot count as having survived its value (its drop is a spell of its own)
SPELL_COLUMNS = ["connection", "variant", "x0", "x1", "duration", "dropped", "dying"]


@dataclass(frozen=True, slots=True)
class Covariate:
    """One theory's covariate: its spells, unit, and how it is judged.

    `linear`: the covariate grows with time inside a spell (idle, age, streak), else it is a
    step."""

    theory: str
    unit: str
    spells: pd.DataFrame
    linear: bool
    window_s: float | None = None
    missing: str | None = None  # why it could not be measured (columns the log lacks)
    # exposure counts arrivals (a spell's duration is 1), not connection-seconds
    per_arrival: bool = False
    # how tightly the theory predicts when connections die, relative to their lives (per
    # arrival: the spread of the delays from arrival to drop over the median life)
    timing_spread: float | None = None


def _spells(**columns: np.ndarray) -> pd.DataFrame:
    columns.setdefault("dying", np.zeros(len(columns["x1"]), bool))
    return pd.DataFrame({c: columns[c] for c in SPELL_COLUMNS})


def _empty() -> pd.DataFrame:
    return _spells(**{k: np.zeros(0) for k in SPELL_COLUMNS})


def _opened(connections: pd.DataFrame) -> pd.DataFrame:
    """Connections that opened and ended, with the columns the tables read."""
    ok = connections["established"].notna() & connections["closed"].notna()
    conns = connections.loc[ok, ["connection", "variant", "established", "closed", "dropped"]]
    return conns.assign(
        connection=conns["connection"].astype(str),
        variant=conns["variant"].astype(str),
        dropped=conns["dropped"].astype(bool),
    ).reset_index(drop=True)


@dataclass(slots=True)
class _Sent:
    """Frames sent during their connections' lives, in connection and time order, as arrays:
    `c` (the connection's row in `conns`), `t`, `key`: (connection, microseconds since it
    opened) as one int64, the connection's rank in the batch in the high bits, so that windows
    compare whole microseconds whatever else the batch holds; `nxt`: when what the frame set
    ends (the next frame, or the connection's close), and `ns`: the nanoseconds until then;
    `last`: its connection's last frame; `closed`, `dropped` and `variant_bits` (the variant's
    code << 43, or 0 when there is one variant): its connection's."""

    c: np.ndarray
    t: np.ndarray
    key: np.ndarray
    nxt: np.ndarray
    last: np.ndarray
    ns: np.ndarray
    closed: np.ndarray
    dropped: np.ndarray
    variant_bits: np.ndarray | int

    @classmethod
    def of(cls, c: np.ndarray, t: np.ndarray, key: np.ndarray, conns: _Conns) -> _Sent:
        last = np.ones(len(c), bool)
        np.not_equal(c[1:], c[:-1], out=last[:-1])
        closed = conns.closed[c]
        nxt = np.empty_like(t)
        nxt[:-1] = t[1:]
        nxt[last] = closed[last]
        ns = nxt - t
        ns *= 1e9
        ns = np.rint(ns, out=ns).astype(np.int64)
        code = conns.variant_code
        bits = code[c].astype(np.int64) << 43 if code.any() else 0
        return cls(c, t, key, nxt, last, ns, closed, conns.dropped[c], bits)

    def where(self, mask: np.ndarray, conns: _Conns) -> _Sent:
        return _Sent.of(self.c[mask], self.t[mask], self.key[mask], conns)


@dataclass(slots=True)
class _Conns:
    """The opened connections' columns the tables read, as arrays (rows of `_opened`)."""

    connection: np.ndarray
    variant: np.ndarray
    variant_code: np.ndarray
    established: np.ndarray
    closed: np.ndarray
    dropped: np.ndarray

    @classmethod
    def of(cls, conns: pd.DataFrame) -> _Conns:
        return cls(
            conns["connection"].to_numpy(),
            conns["variant"].to_numpy(),
            conns["variant_code"].to_numpy(),
            conns["established"].to_numpy(float),
            conns["closed"].to_numpy(float),
            conns["dropped"].to_numpy(bool),
        )


@dataclass(slots=True)
class _Frames:
    """One batch's frames sent in life (`sent`), what each was (`append`; `reset`: a commit
    or a clear), its audio (ms, 0 when none) and level (dBFS; None: the batch has none)."""

    sent: _Sent
    append: np.ndarray
    reset: np.ndarray
    audio_ms: np.ndarray
    dbfs: np.ndarray | None


def _sends_in_life(sends: pd.DataFrame, arrays: _Conns) -> _Frames:
    """The frames each opened connection sent during its life, in connection and time order."""
    index = pd.Series(np.arange(len(arrays.connection)), index=arrays.connection)
    labels = sends["connection"].astype("category")  # map each label once, not each row
    rows = pd.Series(labels.cat.categories.astype(str)).map(index).to_numpy(float, na_value=-1)
    c = rows.astype(np.int64)[labels.cat.codes.to_numpy()]
    c[labels.cat.codes.to_numpy() < 0] = -1
    t = sends["t"].to_numpy(float)
    ok = np.zeros(len(c), bool)
    if len(
        arrays.connection
    ):  # (a row of no connection, -1, reads the last one's life, and is masked)
        ok = (c >= 0) & (t >= arrays.established[c]) & (t <= arrays.closed[c])
    take = None if ok.all() else np.flatnonzero(ok)  # None: every row (most batches)
    if take is not None:
        c, t = c[take], t[take]
    block = np.r_[True, c[1:] != c[:-1]] if len(c) else np.zeros(0, bool)
    within = ~block[1:]
    if not (np.all(t[1:][within] >= t[:-1][within]) and block.sum() == len(np.unique(c[block]))):
        order = np.lexsort((t, c))  # batches come sorted; a frame given by hand may not
        take = order if take is None else take[order]
        c, t = c[order], t[order]
        block = np.r_[True, c[1:] != c[:-1]]

    def picked(column: str) -> np.ndarray:
        """A copy of `column`'s rows in life, in order."""
        values = sends[column].to_numpy(float, na_value=np.nan, copy=take is None)
        return values if take is None else values[take]

    local = np.cumsum(block) - 1
    since = t - arrays.established[c]
    since *= 1e6
    sent = _Sent.of(c, t, local << 42 | np.rint(since, out=since).astype(np.int64), arrays)
    kind = sends["type"].astype("category")
    codes = kind.cat.codes.to_numpy()
    codes = codes if take is None else codes[take]
    names = list(kind.cat.categories)

    def of_kind(*kinds: str) -> np.ndarray:
        wanted = [names.index(k) for k in kinds if k in names]
        return np.isin(codes, wanted) if len(wanted) > 1 else codes == (wanted or [-2])[0]

    append = of_kind(APPEND)
    audio = np.zeros(len(c))
    if "audio_ms" in sends:
        audio = np.nan_to_num(picked("audio_ms"), copy=False)
        audio[~append] = 0.0
    dbfs = None
    if "dbfs" in sends:
        dbfs = picked("dbfs")
        dbfs = None if np.isnan(dbfs).all() else dbfs
    return _Frames(sent, append, of_kind(COMMIT, CLEAR), audio, dbfs)


def _frame(conns: _Conns, row: np.ndarray, x0, x1, duration, dropped, dying=None) -> pd.DataFrame:
    return _spells(
        connection=conns.connection[row],
        variant=conns.variant[row],
        x0=np.asarray(x0, float),
        x1=np.asarray(x1, float),
        duration=np.asarray(duration, float),
        dropped=np.asarray(dropped, bool),
        dying=np.zeros(len(row), bool) if dying is None else np.asarray(dying, bool),
    )


def _age(conns: _Conns) -> Covariate:
    life = conns.closed - conns.established
    rows = np.arange(len(life))
    spells = _frame(conns, rows, np.zeros(len(life)), life, life, conns.dropped)
    return Covariate("max_duration", "s", spells, linear=True)


def _idle(conns: _Conns, sent: _Sent | np.ndarray, tol: float) -> pd.DataFrame:
    """Seconds since the last frame sent: the spells before each connection's first frame of
    `sent` and after each frame; or, given rows of `conns` that sent nothing, their whole
    lives. Gaps no longer than the timing tolerance are left out (no threshold is tested below
    it, so they add exposure only where none is asked for): at 20 ms appends that is nearly
    every row."""
    if isinstance(sent, np.ndarray):
        row, start, end = sent, conns.established[sent], conns.closed[sent]
        last = np.ones(len(sent), bool)
    else:
        first = np.r_[True, sent.last[:-1]]
        row = np.concatenate([sent.c[first], sent.c])
        start = np.concatenate([conns.established[sent.c[first]], sent.t])
        end = np.concatenate([sent.t[first], sent.nxt])
        last = np.concatenate([np.zeros(int(first.sum()), bool), sent.last])
    gap = end - start
    dropped = last & conns.dropped[row]
    keep = (gap > tol) | dropped
    return _frame(conns, row[keep], 0.0 * gap[keep], gap[keep], gap[keep], dropped[keep])


_NO_VALUE = 1 << 62


@dataclass(slots=True)
class _StepPart:
    """A step covariate's share of one batch: connection time (integer nanoseconds, so that
    batches add up exactly in any order) per (variant, dying, value to 1e-4), and each
    connection's last value (what its drop is measured at)."""

    key: np.ndarray  # int64: variant code * 2 + dying, << 42 | value quantum
    ns: np.ndarray  # int64 nanoseconds of connection time at that key
    last_row: np.ndarray  # connection rows
    last_value: np.ndarray


def _steps(
    conns: _Conns,
    sent: _Sent,
    value: np.ndarray,
    tolerance_s: float,
    segment: np.ndarray | None = None,
) -> _StepPart:
    """A step covariate: `value` after each frame sent holds until the next frame or the
    connection's end; zero before the first frame. Every value is the most the covariate
    reached in the `tolerance_s` before it, and a drop is a spell of no duration at its
    connection's last value: the client sees a close late, and may have sent on after the
    server had acted (audio into a buffer already over its limit, a clear and the next
    utterance). The dying stretch (the last `tolerance_s`, and for a covariate that resets
    the last `segment`) cannot count as survived."""
    # The most the covariate reached in the last `tolerance_s`, at every moment: what a drop
    # is measured at, so exposure is measured the same way (else drops look higher than the
    # time spent there, a bias of the window alone).
    value = _trailing_max(sent.key, value, tolerance_s)
    recent = sent.t >= sent.closed - tolerance_s
    if segment is not None:  # the last segment of each connection (sorted by connection)
        last_segment = segment[sent.last]
        recent |= segment == last_segment[np.cumsum(np.r_[False, sent.last[:-1]])]
    # one spell per variant, value (to 1e-4) and dying: a step covariate's exposure past a
    # threshold needs no more, and ten million rows become thousands (one int64 key, hashed
    # once); rows at no value add nothing (a key no spell has, left out)
    key = np.round(value * 1e4).astype(np.int64)
    key |= sent.variant_bits
    key[recent & sent.dropped] |= 1 << 42
    key[~(value > 0)] = _NO_VALUE
    group, first = pd.factorize(key)
    ns = np.bincount(group, weights=sent.ns, minlength=len(first)).astype(np.int64)
    kept = first != _NO_VALUE
    return _StepPart(first[kept], ns[kept], sent.c[sent.last], value[sent.last])


def _step_covariate(
    conns: _Conns, variants: list[str], parts: list[_StepPart], theory: str, unit: str, **kw
) -> Covariate:
    """A step covariate's spells from its batches' parts: one spell per variant, value and
    dying, and one spell of no duration at each drop (its connection's last value; 0 for a
    connection that sent nothing)."""
    key = np.concatenate([np.zeros(0, np.int64), *(p.key for p in parts)])
    ns = np.concatenate([np.zeros(0, np.int64), *(p.ns for p in parts)])
    group, first = pd.factorize(key, sort=True)
    total = np.zeros(len(first), np.int64)
    np.add.at(total, group, ns)
    held_x = (first & ((1 << 42) - 1)) / 1e4
    spells = _spells(
        connection=np.full(len(first), "", object),
        variant=np.asarray(variants, object)[(first >> 43)] if len(first) else np.zeros(0, object),
        x0=held_x,
        x1=held_x,
        duration=total / 1e9,
        dropped=np.zeros(len(first), bool),
        dying=((first >> 42) & 1).astype(bool),
    )
    final = pd.Series(
        np.concatenate([np.zeros(0), *(p.last_value for p in parts)]),
        index=np.concatenate([np.zeros(0, np.int64), *(p.last_row for p in parts)]),
    )
    dropped = np.flatnonzero(conns.dropped)
    at = final.reindex(dropped).fillna(0.0).to_numpy()
    zero = np.zeros(len(dropped))
    markers = _frame(conns, dropped, at, at, zero, np.ones(len(dropped), bool))
    return Covariate(theory, unit, pd.concat([spells, markers], ignore_index=True), False, **kw)


def _buffer(conns: _Conns, frames: _Frames, tol: float) -> _StepPart:
    """Audio appended since the last clear or commit, in ms, after each frame sent."""
    audio = frames.audio_ms
    starts = frames.reset | np.r_[True, frames.sent.last[:-1]]
    segment = np.cumsum(starts)
    total = np.cumsum(audio)
    before = (total - audio)[starts]  # the running total where each segment begins
    held = total - before[segment - 1]
    return _steps(conns, frames.sent, held, tol, segment=segment)


# A window holding fewer rows than this is worked on with shifted arrays (a pass per row it
# holds); a longer one by a general method. At 20 ms appends the tolerance and burst windows
# hold a few rows; the speed window a hundred.
_SHIFTS = 8


def _few_rows(key: np.ndarray, span: int) -> bool:
    """No row has `_SHIFTS` earlier rows of its connection within `span` microseconds."""
    return len(key) <= _SHIFTS or not (key[_SHIFTS:] - key[:-_SHIFTS] < span).any()


def _trailing(key: np.ndarray, weight: np.ndarray, window: float) -> np.ndarray:
    """Per row, the sum of `weight` over the rows of its connection sent in the `window`
    seconds up to and including it (`key`: the rows' `key` column)."""
    span = round(window * 1e6)
    if _few_rows(key, span):
        out = np.array(weight, float)
        for k in range(1, min(_SHIFTS, len(key))):
            near = key[k:] - key[:-k] < span
            if not near.any():
                break
            out[k:] += np.where(near, weight[:-k], 0.0)
        return out
    total = np.cumsum(weight)
    first = np.searchsorted(key, key - span, side="right")
    before = np.where(first > 0, total[first - 1], 0.0)
    return total - before


def _trailing_max(key: np.ndarray, value: np.ndarray, window: float) -> np.ndarray:
    """Per row, the largest `value` of its connection's rows in the `window` seconds up to
    and including it (`key`: the rows' `key` column)."""
    if window <= 0 or not len(key):
        return value
    span = round(window * 1e6)
    if _few_rows(key, span):
        out = value.copy()
        for k in range(1, min(_SHIFTS, len(key))):
            near = key[k:] - key[:-k] < span
            if not near.any():
                break
            np.maximum(out[k:], np.where(near, value[:-k], -np.inf), out=out[k:])
        return out
    # the key's microseconds read as nanoseconds, the window alike: no per-row parse
    series = pd.Series(value, index=pd.TimedeltaIndex(key.view("m8[ns]")))
    return series.rolling(pd.Timedelta(span, "ns")).max().to_numpy()


def _speed(conns: _Conns, appends: _Sent, audio: np.ndarray, window: float, tol: float):
    speed = _trailing(appends.key, audio, window) / (window * 1000.0)
    return _steps(conns, appends, speed, tol)


def _burst(conns: _Conns, appends: _Sent, window: float, tol: float) -> _StepPart:
    count = _trailing(appends.key, np.ones(len(appends.key)), window)
    return _steps(conns, appends, count, tol)


def _silence(conns: _Conns, frames: _Frames) -> pd.DataFrame | None:
    """Seconds since a low-energy streak began: it begins at an append below LOUD_DBFS, goes
    on through quiet appends and through no audio at all, and ends at a loud append. None:
    these sends carry no audio levels."""
    if frames.dbfs is None:
        return None
    sent, n = frames.sent, len(frames.sent.t)
    loud = frames.append & (frames.dbfs >= LOUD_DBFS)
    quiet = frames.append & (frames.dbfs < LOUD_DBFS)
    # a segment runs from a loud append (or a connection's first frame) to the next; its
    # streak from its first quiet append to its end
    starts = loud | np.r_[True, sent.last[:-1]]
    segment = np.cumsum(starts) - 1
    first_quiet = np.minimum.reduceat(np.where(quiet, np.arange(n), n), np.flatnonzero(starts))
    began_at = first_quiet[segment]
    rows = np.flatnonzero((np.arange(n) >= began_at) & (sent.nxt > sent.t))
    if not len(rows):
        return _empty()
    # a streak is one spell: its rows follow each other, the covariate rising through them
    seg = segment[rows]
    head = rows[np.r_[True, seg[1:] != seg[:-1]]]
    tail = rows[np.r_[seg[1:] != seg[:-1], True]]
    began = sent.t[began_at[head]]
    x0, x1 = sent.t[head] - began, sent.nxt[tail] - began
    dropped = sent.last[tail] & sent.dropped[tail]
    return _frame(conns, sent.c[head], x0, x1, sent.nxt[tail] - sent.t[head], dropped)


def _concurrency(conns: pd.DataFrame, hold_s: float) -> Covariate:
    """Sessions already open when another one opens. A cap decides at the handshake, so this
    covariate is judged per arrival, not per connection-second: each arrival is a spell of one
    (`per_arrival`) at the variant's sessions open just before it (the fake server caps per
    variant; a real service per key, which a run's variants share: docs/diagnosis.md), and it
    evicted a session when a drop is matched to it.

    An eviction follows the handshake that caused it, and the client sees the new session
    before the old one's close. So each drop is matched to the latest arrival at most `hold_s`
    before it that has no drop yet: one arrival evicts one session. The client may see a close
    late and still count, at the next arrival, a session the server has let go, so counts
    overstate. The cap is read where the share of arrivals that evict steps up, which counts
    overstated past the cap do not move (diagnosis._count_threshold). Taking, for each drop,
    the most any arrival in the window had open read 8 workers under a cap of 5 as 7. A drop no
    arrival claims is at 0."""
    parts, delays, lives = [], [], []
    for variant, mine in conns.groupby("variant", sort=False):
        began = np.sort(mine["established"].to_numpy(float))
        drops = mine[mine["dropped"]].sort_values("closed")
        closed = drops["closed"].to_numpy(float)
        match = np.full(len(drops), -1)
        evicted = np.zeros(len(began), bool)
        for k, t in enumerate(closed):
            i = int(np.searchsorted(began, t, "left")) - 1
            while i >= 0 and began[i] >= t - hold_s and evicted[i]:
                i -= 1
            if i >= 0 and began[i] >= t - hold_s:
                match[k], evicted[i] = i, True
        matched = match >= 0
        # A client that stalls sees an eviction later than `hold_s`: a drop no arrival claims,
        # and an arrival that seems to have evicted nothing. Each such drop is paired with the
        # latest arrival without a drop in the 4 * hold_s before it, which then cannot count as
        # having survived (one stall must not make a cap look like a hazard).
        late = np.zeros(len(began), bool)
        for t in closed[~matched]:
            i = int(np.searchsorted(began, t, "left")) - 1
            while i >= 0 and began[i] >= t - 4 * hold_s and (evicted[i] or late[i]):
                i -= 1
            if i >= 0 and began[i] >= t - 4 * hold_s:
                late[i] = True
        delays.append(closed[matched] - began[match[matched]])
        lives.append((drops["closed"] - drops["established"]).to_numpy(float)[matched])
        ended = np.sort(mine["closed"].to_numpy(float))
        before = np.searchsorted(began, began, "left") - np.searchsorted(ended, began, "right")
        keep = before > 0
        parts.append(
            _spells(
                connection=np.full(keep.sum(), "", object),
                variant=np.full(keep.sum(), variant, object),
                x0=before[keep].astype(float),
                x1=before[keep].astype(float),
                duration=np.ones(keep.sum()),
                dropped=np.zeros(keep.sum(), bool),
                dying=(evicted | late)[keep],
            )
        )
        at = np.where(matched, before[np.maximum(match, 0)], 0).astype(float)
        parts.append(
            _spells(
                connection=drops["connection"].to_numpy(object),
                variant=np.full(len(drops), variant, object),
                x0=at,
                x1=at,
                duration=np.zeros(len(drops)),
                dropped=np.ones(len(drops), bool),
            )
        )
    spells = pd.concat(parts, ignore_index=True) if parts else _empty()
    delay, life = np.concatenate([[], *delays]), np.concatenate([[], *lives])
    spread = None
    if len(delay) and np.median(life) > 0:
        q10, q90 = np.quantile(delay, [0.1, 0.9])
        spread = float((q90 - q10) / np.median(life))
    return Covariate(
        "concurrency_cap", "sessions", spells, linear=False, per_arrival=True, timing_spread=spread
    )


def handshake_attempts(connections: pd.DataFrame) -> pd.DataFrame:
    """Every handshake (variant, opened, failed) with the variant's connections open at that
    moment (`open_now`): what a refusing concurrency cap shows as."""
    conns = connections[connections["opened"].notna()]
    rows = []
    for variant, mine in conns.groupby(conns["variant"].astype(str), sort=False):
        live = mine[mine["established"].notna() & mine["closed"].notna()]
        opened = mine["opened"].to_numpy(float)
        began = np.sort(live["established"].to_numpy(float))
        ended = np.sort(live["closed"].to_numpy(float))
        open_now = np.searchsorted(began, opened, "right") - np.searchsorted(ended, opened, "right")
        rows.append(
            pd.DataFrame(
                {
                    "variant": variant,
                    "opened": opened,
                    "failed": (mine["cause"].astype(str) == "handshake_failed").to_numpy(),
                    "status": mine["handshake_status"].to_numpy(),
                    "open_now": open_now,
                }
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


@dataclass(slots=True)
class _BatchParts:
    """What one batch of sends adds to each covariate."""

    rows: int
    connections: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    idle: pd.DataFrame | None = None
    silence: pd.DataFrame | None = None
    steps: dict[tuple[str, float | None], _StepPart] = field(default_factory=dict)


def _batch_parts(arrays: _Conns, batch: pd.DataFrame, tol: float) -> _BatchParts:
    frames = _sends_in_life(batch, arrays)
    sent = frames.sent
    if not len(sent.c):
        return _BatchParts(len(batch))
    appends = sent.where(frames.append, arrays)
    audio = frames.audio_ms[frames.append]
    steps = {("buffer_pressure", None): _buffer(arrays, frames, tol)}
    steps |= {("rate", w): _speed(arrays, appends, audio, w, tol) for w in SPEED_WINDOWS_S}
    steps |= {("micro_burst", w): _burst(arrays, appends, w, tol) for w in BURST_WINDOWS_S}
    rows = sent.c[sent.last]
    return _BatchParts(len(batch), rows, _idle(arrays, sent, tol), _silence(arrays, frames), steps)


def exposure_tables(
    connections: pd.DataFrame, sends: SendSource | pd.DataFrame | None, tolerance_s: float = 0.0
) -> list[Covariate]:
    """Every theory's covariate for these connections. `sends`: the frames the clients sent
    (`ReportFrames.sends`: batches of whole connections, read once; or a frame of them); None
    or empty when the log has none (an imported log of connections only), and the covariates
    that need them say so. `tolerance_s`: scenario seconds the run's timing may be off by (its
    send jitter times its scale). The tables are the same however the sends are batched."""
    conns = _opened(connections)
    variant_code, variants = pd.factorize(conns["variant"].to_numpy())
    conns = conns.assign(variant_code=variant_code)
    arrays = _Conns.of(conns)
    # a cap's eviction reaches the client within a second on a near endpoint, later at k x
    out = [_age(arrays), _concurrency(conns, hold_s=max(1.0, 2 * tolerance_s))]
    idle: list[pd.DataFrame] = []
    silence: list[pd.DataFrame] = []
    steps: dict[tuple[str, float | None], list[_StepPart]] = {}
    seen = np.zeros(len(conns), bool)
    rows_read = 0

    def batch_parts(batch: pd.DataFrame) -> _BatchParts:
        return _batch_parts(arrays, batch, tolerance_s)

    if isinstance(sends, pd.DataFrame):
        parts: Iterable[_BatchParts] = [batch_parts(sends)]
    else:
        parts = sends.map(batch_parts) if sends is not None else []
    for part in parts:
        rows_read += part.rows
        if part.idle is None:
            continue
        seen[part.connections] = True
        idle.append(part.idle)
        if part.silence is not None:
            silence.append(part.silence)
        for key, step in part.steps.items():
            steps.setdefault(key, []).append(step)
    if not rows_read:
        missing = "the log has no per-frame rows (frames sent)"
        for theory, unit in (
            ("idle_timeout", "s"),
            ("buffer_pressure", "ms"),
            ("rate", "x real time"),
            ("micro_burst", "appends"),
            ("silence_hazard", "s"),
        ):
            out.append(Covariate(theory, unit, _empty(), linear=False, missing=missing))
        return out
    # a connection that sent nothing in its life was idle all of it
    idle.append(_idle(arrays, np.flatnonzero(~seen), tolerance_s))
    out.append(Covariate("idle_timeout", "s", _canonical(idle), linear=True))
    units = {"buffer_pressure": "ms", "rate": "x real time", "micro_burst": "appends"}
    names = list(variants)
    out.append(
        _step_covariate(
            arrays, names, steps.get(("buffer_pressure", None), []), "buffer_pressure", "ms"
        )
    )
    if silence:
        out.append(Covariate("silence_hazard", "s", _canonical(silence), linear=True))
    else:
        why = "the log has no audio levels (dbfs) of the appends sent"
        out.append(Covariate("silence_hazard", "s", _empty(), linear=True, missing=why))
    for theory, windows in (("rate", SPEED_WINDOWS_S), ("micro_burst", BURST_WINDOWS_S)):
        for w in windows:
            got = steps.get((theory, w), [])
            out.append(_step_covariate(arrays, names, got, theory, units[theory], window_s=w))
    return out


def _canonical(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Spells of several batches in one order whatever the batching (so sums over them are
    the same to the last bit)."""
    spells = pd.concat(parts, ignore_index=True)
    order = np.lexsort(
        [spells[c].to_numpy() for c in ("duration", "x1", "x0")]
        + [spells["connection"].astype(str).to_numpy(), spells["variant"].astype(str).to_numpy()]
    )
    return spells.iloc[order].reset_index(drop=True)
