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


def _sends_in_life(sends: pd.DataFrame, conns: pd.DataFrame) -> pd.DataFrame:
    """The frames each opened connection sent during its life, in connection and time order:
    `c` (its row in `conns`), `t`, `type`, `audio_ms`, `dbfs`, and `key`: (connection,
    microseconds since it opened) as one int64, the connection's rank in the batch in the
    high bits, so that windows compare whole microseconds whatever else the batch holds."""
    index = pd.Series(np.arange(len(conns)), index=conns["connection"].to_numpy())
    labels = sends["connection"].astype("category")  # map each label once, not each row
    rows = pd.Series(labels.cat.categories.astype(str)).map(index).to_numpy(float, na_value=-1)
    codes = labels.cat.codes.to_numpy()
    c = np.where(codes >= 0, rows[codes], -1).astype(np.int64)
    t = sends["t"].to_numpy(float)
    ok = c >= 0
    established = conns["established"].to_numpy(float)
    ok[ok] = (t[ok] >= established[c[ok]]) & (t[ok] <= conns["closed"].to_numpy(float)[c[ok]])
    take = np.flatnonzero(ok)
    c, t = c[take], t[take]
    block = np.r_[True, c[1:] != c[:-1]]
    if not (np.all(np.diff(t)[~block[1:]] >= 0) and block.sum() == len(np.unique(c[block]))):
        order = np.lexsort((t, c))  # batches come sorted; a frame given by hand may not
        take, c, t = take[order], c[order], t[order]
        block = np.r_[True, c[1:] != c[:-1]]
    local = np.cumsum(block) - 1
    since = np.round((t - established[c]) * 1e6).astype(np.int64)
    out = {"c": c, "t": t, "key": local.astype(np.int64) << 42 | since}
    kind = sends["type"].astype("category")
    out["type"] = pd.Categorical.from_codes(kind.cat.codes.to_numpy()[take], kind.cat.categories)
    for name in ("audio_ms", "dbfs"):
        if name in sends:
            out[name] = sends[name].to_numpy()[take]
    return pd.DataFrame(out)


def _gaps(
    conns: pd.DataFrame, c: np.ndarray, t: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per connection of `rows` (rows of `conns`: those with sends in `c`, or none), the spells
    between its life's start, the times `t` (of connection rows `c`, sorted by connection and
    time) and its end: (connection row, start, end, is the last spell)."""
    established = conns["established"].to_numpy(float)
    closed = conns["closed"].to_numpy(float)
    if not len(c):  # connections that sent nothing: one spell each, their whole life
        return rows, established[rows], closed[rows], np.ones(len(rows), bool)
    first = np.r_[True, c[1:] != c[:-1]]
    last = np.r_[c[1:] != c[:-1], True]
    # each send ends the spell before it; each connection's last spell ends at its close
    start = np.where(first, established[c], np.r_[np.nan, t[:-1]])
    row = np.concatenate([c, c[last]])
    begin = np.concatenate([start, t[last]])
    end = np.concatenate([t, closed[c[last]]])
    is_last = np.concatenate([np.zeros(len(c), bool), np.ones(int(last.sum()), bool)])
    return row, begin, end, is_last


def _frame(
    conns: pd.DataFrame, row: np.ndarray, x0, x1, duration, dropped, dying=None
) -> pd.DataFrame:
    return _spells(
        connection=conns["connection"].to_numpy()[row],
        variant=conns["variant"].to_numpy()[row],
        x0=np.asarray(x0, float),
        x1=np.asarray(x1, float),
        duration=np.asarray(duration, float),
        dropped=np.asarray(dropped, bool),
        dying=np.zeros(len(row), bool) if dying is None else np.asarray(dying, bool),
    )


def _age(conns: pd.DataFrame) -> Covariate:
    life = (conns["closed"] - conns["established"]).to_numpy(float)
    spells = _frame(
        conns, np.arange(len(conns)), np.zeros(len(conns)), life, life, conns["dropped"]
    )
    return Covariate("max_duration", "s", spells, linear=True)


def _idle(conns: pd.DataFrame, sent: pd.DataFrame, rows: np.ndarray, tol: float) -> pd.DataFrame:
    """Seconds since the last frame sent, for the connections of `rows`. Gaps no longer than
    the timing tolerance are left out (no threshold is tested below it, so they add exposure
    only where none is asked for): at 20 ms appends that is nearly every row."""
    row, start, end, last = _gaps(conns, sent["c"].to_numpy(), sent["t"].to_numpy(float), rows)
    gap = end - start
    dropped = last & conns["dropped"].to_numpy()[row]
    keep = (gap > tol) | dropped
    return _frame(conns, row[keep], 0.0 * gap[keep], gap[keep], gap[keep], dropped[keep])


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
    conns: pd.DataFrame,
    sent: pd.DataFrame,
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
    c, t = sent["c"].to_numpy(), sent["t"].to_numpy(float)
    nxt = np.r_[t[1:], np.nan]
    last = np.r_[c[1:] != c[:-1], True] if len(c) else np.zeros(0, bool)
    closed = conns["closed"].to_numpy(float)
    nxt[last] = closed[c[last]]
    # The most the covariate reached in the last `tolerance_s`, at every moment: what a drop
    # is measured at, so exposure is measured the same way (else drops look higher than the
    # time spent there, a bias of the window alone).
    value = _trailing_max(sent["key"].to_numpy(), value, tolerance_s)
    recent = t >= closed[c] - tolerance_s
    if segment is not None:  # the last segment of each connection (sorted by connection)
        last_segment = segment[last]
        recent |= segment == last_segment[np.cumsum(np.r_[False, last[:-1]])]
    dying = recent & conns["dropped"].to_numpy()[c]
    keep = value > 0
    # one spell per variant, value and dying: a step covariate's exposure past a threshold
    # needs no more, and ten million rows become thousands (one int64 key, hashed once)
    variant_code = conns["variant_code"].to_numpy()
    quantum = np.round(value[keep] * 1e4).astype(np.int64)  # values to 1e-4
    key = (variant_code[c[keep]] * 2 + dying[keep]).astype(np.int64) << 42 | quantum
    ns = np.round((nxt - t)[keep] * 1e9).astype(np.int64)
    group, first = pd.factorize(key)
    return _StepPart(
        first,
        np.bincount(group, weights=ns, minlength=len(first)).astype(np.int64),
        c[last],
        value[last],
    )


def _step_covariate(
    conns: pd.DataFrame, variants: list[str], parts: list[_StepPart], theory: str, unit: str, **kw
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
    dropped = np.flatnonzero(conns["dropped"].to_numpy())
    at = final.reindex(dropped).fillna(0.0).to_numpy()
    zero = np.zeros(len(dropped))
    markers = _frame(conns, dropped, at, at, zero, np.ones(len(dropped), bool))
    return Covariate(theory, unit, pd.concat([spells, markers], ignore_index=True), False, **kw)


def _buffer(conns: pd.DataFrame, sent: pd.DataFrame, tol: float) -> _StepPart:
    """Audio appended since the last clear or commit, in ms, after each frame sent."""
    kind = sent["type"]
    audio = np.where(kind == APPEND, sent["audio_ms"].astype(float).fillna(0.0).to_numpy(), 0.0)
    reset = ((kind == COMMIT) | (kind == CLEAR)).to_numpy()
    c = sent["c"].to_numpy()
    starts = reset | np.r_[True, c[1:] != c[:-1]]
    segment = np.cumsum(starts)
    total = np.cumsum(audio)
    before = (total - audio)[starts]  # the running total where each segment begins
    held = total - before[segment - 1]
    return _steps(conns, sent, held, tol, segment=segment)


def _trailing(key: np.ndarray, weight: np.ndarray, window: float) -> np.ndarray:
    """Per row, the sum of `weight` over the rows of its connection sent in the `window`
    seconds up to and including it (`key`: the rows' `key` column)."""
    total = np.cumsum(weight)
    first = np.searchsorted(key, key - round(window * 1e6), side="right")
    before = np.where(first > 0, total[first - 1], 0.0)
    return total - before


def _trailing_max(key: np.ndarray, value: np.ndarray, window: float) -> np.ndarray:
    """Per row, the largest `value` of its connection's rows in the `window` seconds up to
    and including it (`key`: the rows' `key` column)."""
    if window <= 0 or not len(key):
        return value
    # the key's microseconds read as nanoseconds, the window alike: no per-row parse
    series = pd.Series(value, index=pd.TimedeltaIndex(key.view("m8[ns]")))
    return series.rolling(pd.Timedelta(round(window * 1e6), "ns")).max().to_numpy()


def _appends(sent: pd.DataFrame) -> pd.DataFrame:
    return sent[(sent["type"] == APPEND).to_numpy()].reset_index(drop=True)


def _speed(conns: pd.DataFrame, appends: pd.DataFrame, window: float, tol: float) -> _StepPart:
    audio = appends["audio_ms"].astype(float).fillna(0.0).to_numpy()
    speed = _trailing(appends["key"].to_numpy(), audio, window) / (window * 1000.0)
    return _steps(conns, appends, speed, tol)


def _burst(conns: pd.DataFrame, appends: pd.DataFrame, window: float, tol: float) -> _StepPart:
    key = appends["key"].to_numpy()
    count = _trailing(key, np.ones(len(key)), window)
    return _steps(conns, appends, count, tol)


def _silence(conns: pd.DataFrame, sent: pd.DataFrame) -> pd.DataFrame | None:
    """Seconds since a low-energy streak began: it begins at an append below LOUD_DBFS, goes
    on through quiet appends and through no audio at all, and ends at a loud append. None:
    these sends carry no audio levels."""
    if "dbfs" not in sent.columns or sent["dbfs"].notna().sum() == 0:
        return None
    is_append = (sent["type"] == APPEND).to_numpy()
    level = sent["dbfs"].astype(float).to_numpy()
    loud = is_append & (level >= LOUD_DBFS)
    quiet = is_append & (level < LOUD_DBFS)
    c, t = sent["c"].to_numpy(), sent["t"].to_numpy(float)
    segment = np.cumsum(loud | np.r_[True, c[1:] != c[:-1]])
    began = pd.Series(np.where(quiet, t, np.inf)).groupby(segment).cummin().to_numpy()
    nxt = np.r_[t[1:], np.nan]
    last = np.r_[c[1:] != c[:-1], True] if len(c) else np.zeros(0, bool)
    nxt[last] = conns["closed"].to_numpy(float)[c[last]]
    streak = np.isfinite(began)
    x0, x1 = t - began, nxt - began
    dropped = last & conns["dropped"].to_numpy()[c]
    keep = streak & (nxt > t)
    # a streak is one spell: its rows follow each other, the covariate rising through them
    rows = pd.DataFrame(
        {"c": c[keep], "began": began[keep], "x0": x0[keep], "x1": x1[keep]}
    ).assign(duration=(nxt - t)[keep], dropped=dropped[keep])
    streaks = rows.groupby(["c", "began"], sort=False).agg(
        x0=("x0", "min"), x1=("x1", "max"), duration=("duration", "sum"), dropped=("dropped", "any")
    )
    row = streaks.index.get_level_values("c").to_numpy()
    return _frame(conns, row, streaks["x0"], streaks["x1"], streaks["duration"], streaks["dropped"])


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
                dying=evicted[keep],
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


def _batch_parts(conns: pd.DataFrame, batch: pd.DataFrame, tol: float) -> _BatchParts:
    sent = _sends_in_life(batch, conns)
    if not len(sent):
        return _BatchParts(len(batch))
    rows = np.unique(sent["c"].to_numpy())
    appends = _appends(sent)
    steps = {("buffer_pressure", None): _buffer(conns, sent, tol)}
    steps |= {("rate", w): _speed(conns, appends, w, tol) for w in SPEED_WINDOWS_S}
    steps |= {("micro_burst", w): _burst(conns, appends, w, tol) for w in BURST_WINDOWS_S}
    return _BatchParts(
        len(batch), rows, _idle(conns, sent, rows, tol), _silence(conns, sent), steps
    )


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
    # a cap's eviction reaches the client within a second on a near endpoint, later at k x
    out = [_age(conns), _concurrency(conns, hold_s=max(1.0, 2 * tolerance_s))]
    idle: list[pd.DataFrame] = []
    silence: list[pd.DataFrame] = []
    steps: dict[tuple[str, float | None], list[_StepPart]] = {}
    seen = np.zeros(len(conns), bool)
    rows_read = 0

    def batch_parts(batch: pd.DataFrame) -> _BatchParts:
        return _batch_parts(conns, batch, tolerance_s)

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
    quiet = np.flatnonzero(~seen)
    nothing = pd.DataFrame({"c": np.zeros(0, np.int64), "t": np.zeros(0)})
    idle.append(_idle(conns, nothing, quiet, tolerance_s))
    out.append(Covariate("idle_timeout", "s", _canonical(idle), linear=True))
    units = {"buffer_pressure": "ms", "rate": "x real time", "micro_burst": "appends"}
    names = list(variants)
    out.append(
        _step_covariate(
            conns, names, steps.get(("buffer_pressure", None), []), "buffer_pressure", "ms"
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
            out.append(_step_covariate(conns, names, got, theory, units[theory], window_s=w))
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
