"""The vectorised kernels under the exposure tables and the report's first pass, each against a
plain loop or numpy's general routine on random input: trailing windows (both their paths: a
few rows a window, and many), the silence streaks, the spill's sort order, and the lateness
counts (dense and sparse). The tables' statistics are tested in test_diagnosis_stats.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.log import frames, sends
from harness.report import exposure
from harness.report.exposure import LOUD_DBFS, exposure_tables

APPEND = "input_audio_buffer.append"


@st.composite
def _keyed_rows(draw):
    """Rows of a few connections, each in time order: (key, value) as exposure builds them
    (the connection's rank << 42 | microseconds since it opened). Gaps mix bursts (several
    rows in one window) with spread rows."""
    keys = []
    for rank in range(draw(st.integers(1, 4))):
        gaps = draw(st.lists(st.sampled_from([0, 1, 500, 20_000, 300_000]), max_size=40))
        keys.extend(rank << 42 | int(s) for s in np.cumsum(gaps))
    values = draw(st.lists(st.floats(0, 100), min_size=len(keys), max_size=len(keys)))
    return np.asarray(keys, np.int64), np.asarray(values, float)


def _window_rows(key: np.ndarray, window: float):
    span = round(window * 1e6)
    for i in range(len(key)):
        yield i, [j for j in range(i + 1) if key[i] - key[j] < span]


@settings(max_examples=200, deadline=None)
@given(_keyed_rows(), st.sampled_from([0.0005, 0.05, 2.0]))
def test_trailing_windows_match_a_loop(rows, window) -> None:
    key, value = rows
    want_sum = np.zeros(len(key))
    want_max = np.zeros(len(key))
    for i, js in _window_rows(key, window):
        want_sum[i] = value[js].sum()
        want_max[i] = value[js].max()
    np.testing.assert_allclose(exposure._trailing(key, value, window), want_sum, atol=1e-9)
    np.testing.assert_array_equal(exposure._trailing_max(key, value, window), want_max)


def test_both_paths_of_the_trailing_windows_are_taken() -> None:
    """Rows 1 µs apart: a 0.5 µs window holds one row (shifts), a 1 s window all (general)."""
    key = np.arange(3 * exposure._SHIFTS, dtype=np.int64)
    assert exposure._few_rows(key, 1) and not exposure._few_rows(key, 1_000_000)
    value = np.arange(len(key), dtype=float)
    np.testing.assert_array_equal(exposure._trailing_max(key, value, 1.0), value)
    np.testing.assert_array_equal(exposure._trailing(key, np.ones(len(key)), 1.0), key + 1)


@st.composite
def _quiet_and_loud(draw):
    """Connections of appends (loud, quiet or without a level) and other frames."""
    conns, rows = [], []
    for k in range(draw(st.integers(1, 4))):
        name = f"r/v/{k}/1"
        t = 0.0
        for _ in range(draw(st.integers(0, 25))):
            t += draw(st.sampled_from([0.0, 0.02, 0.5, 3.0]))
            kind = draw(st.sampled_from([APPEND, APPEND, APPEND, "input_audio_buffer.commit"]))
            level = draw(st.sampled_from([-20.0, -70.0, np.nan])) if kind == APPEND else np.nan
            rows.append((name, t, kind, 20.0, level))
        closed = t + draw(st.sampled_from([0.0, 1.0, 30.0]))
        conns.append((name, "v", 0.0, 0.0, closed, draw(st.booleans())))
    connections = pd.DataFrame(
        conns, columns=["connection", "variant", "opened", "established", "closed", "dropped"]
    )
    frame = pd.DataFrame(rows, columns=["connection", "t", "type", "audio_ms", "dbfs"])
    return connections, frame


def _streaks_by_loop(connections: pd.DataFrame, frame: pd.DataFrame) -> list[tuple]:
    """Silence spells, row by row: a streak starts at a quiet append, runs through anything
    but a loud append; each row adds its time to the next frame (or the close)."""
    out = []
    for conn in connections.itertuples():
        mine = frame[frame["connection"] == conn.connection].to_numpy()
        began, spell = None, None
        for i, (_, t, kind, _, level) in enumerate(mine):
            last = i == len(mine) - 1
            nxt = conn.closed if last else mine[i + 1][1]
            if kind == APPEND and level >= LOUD_DBFS:
                began = None
                if spell:
                    out.append(tuple(spell))
                spell = None
            elif kind == APPEND and level < LOUD_DBFS and began is None:
                began = t
            if began is not None and nxt > t:
                if spell is None:
                    spell = [conn.connection, t - began, nxt - began, 0.0, False]
                spell[2], spell[3] = nxt - began, spell[3] + nxt - t
                spell[4] = bool(last and conn.dropped)
        if spell:
            out.append(tuple(spell))
    return sorted(out)


@settings(max_examples=200, deadline=None)
@given(_quiet_and_loud())
def test_silence_streaks_match_a_loop(case) -> None:
    connections, frame = case
    covariates = {c.theory: c for c in exposure_tables(connections, frame, 0.0)}
    spells = covariates["silence_hazard"].spells
    got = sorted(
        zip(
            spells["connection"],
            spells["x0"],
            spells["x1"],
            spells["duration"],
            spells["dropped"],
            strict=True,
        )
    )
    want = _streaks_by_loop(connections, frame)
    if frame["dbfs"].notna().sum() == 0:
        assert covariates["silence_hazard"].missing
        return
    assert [(c, d) for c, *_, d in got] == [(c, d) for c, *_, d in want]
    np.testing.assert_allclose(
        np.array([g[1:4] for g in got]).reshape(-1, 3),
        np.array([w[1:4] for w in want]).reshape(-1, 3),
        atol=1e-9,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-1, 6), st.sampled_from([0.0, 1.0, 1.5, 2.0, np.nan])), max_size=60
    )
)
def test_the_spills_order_is_lexsorts(rows) -> None:
    """By connection, then time, ties (and NaN) in log order; -1 (no connection) first."""
    codes = np.array([c for c, _ in rows], np.int32)
    t = np.array([x for _, x in rows], float)
    got = sends._connection_order(codes, 7, t)
    np.testing.assert_array_equal(got, np.lexsort((t, codes)))
    np.testing.assert_array_equal(sends._connection_order(codes, 1 << 16, t), got)


def test_lateness_counts_are_the_same_dense_and_sparse() -> None:
    """A few thousand ticks of lateness are counted in a dense array; one outlier a minute
    late makes them sparse (a sort). Both give pandas' value counts."""
    rng = np.random.default_rng(7)
    lag = rng.integers(0, 2000, 5000) / 1000  # 0 to 2 ms: 2,000 ticks for 5,000 rows
    rows = pd.DataFrame({"run": "r", "variant": rng.choice(["a", "b"], len(lag)), "lag_ms": lag})
    for case in (rows, pd.concat([rows, rows.head(1).assign(lag_ms=60_000.0)])):
        got = frames.lateness_counts(case).astype({"variant": str})
        want = case.groupby(["variant", "lag_ms"]).size().rename("count").reset_index()
        pd.testing.assert_frame_equal(got[["variant", "lag_ms", "count"]], want)


def test_lateness_counted_chunk_by_chunk_is_the_whole_runs_count() -> None:
    """The report's pass counts each chunk's lateness and merges the counts: the same frame
    as counting every append at once (NaN lateness left out)."""
    import pyarrow as pa

    rng = np.random.default_rng(11)
    n = 3000
    lag = rng.integers(0, 300, n) / 1000
    lag[rng.random(n) < 0.05] = np.nan
    rows = pd.DataFrame(
        {"run": rng.choice(["r1", "r2"], n), "variant": rng.choice(["a", "b"], n), "lag_ms": lag}
    )
    chunks = [rows.iloc[i : i + 450] for i in range(0, n, 450)]
    parts = [frames._lateness(pa.Table.from_pandas(chunk)) for chunk in chunks]
    pd.testing.assert_frame_equal(frames._merge_lateness(parts), frames.lateness_counts(rows))


def test_the_tables_leave_the_callers_sends_as_they_were() -> None:
    """A frame given by hand (float64 audio with gaps, frames other than appends) is read,
    never written: the kernels work in place only on copies."""
    connections = pd.DataFrame(
        [("r/v/0/1", "v", 0.0, 0.0, 5.0, True)],
        columns=["connection", "variant", "opened", "established", "closed", "dropped"],
    )
    frame = pd.DataFrame(
        {
            "connection": "r/v/0/1",
            "t": [0.5, 1.0, 1.5, 2.0],
            "type": [APPEND, "input_audio_buffer.commit", APPEND, APPEND],
            "audio_ms": [20.0, 7.0, np.nan, 20.0],
            "dbfs": [-20.0, np.nan, -70.0, -20.0],
        }
    )
    before = frame.copy()
    exposure_tables(connections, frame, 0.0)
    pd.testing.assert_frame_equal(frame, before)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), max_size=60),
    st.dictionaries(st.integers(0, 40), st.floats(0, 1e4), min_size=1, max_size=8),
)
def test_drop_times_by_table_and_by_search_agree(rows, dropped) -> None:
    """Each row's connection's drop time (NaN: it did not drop), looked up in a table over a
    small key space, or by binary search over a large one, as a dict lookup says."""
    rows_ = np.asarray(rows, np.int64)
    wanted = np.asarray(list(dropped), np.int64)
    closed = np.asarray(list(dropped.values()), float)
    want = np.array([dropped.get(r, np.nan) for r in rows], float)
    for domain in (41, 1 << 40):  # the table; the search
        np.testing.assert_array_equal(frames._drop_times(rows_, wanted, closed, domain), want)


def test_spilled_sends_are_the_frames_sends_whatever_the_chunk(monkeypatch) -> None:
    """Chunks with one word in a column (held as one code, not one a row) and chunks with
    several, nulls among the floats, spilled to many partitions: the batches hold the rows a
    frame of the same sends gives, connection by connection."""
    import pyarrow as pa

    rng = np.random.default_rng(3)
    chunks = []
    for variants in (["a"], ["a", "b"], ["b"]):
        n = 400
        lag = rng.random(n).astype(np.float32)
        chunks.append(
            pa.table(
                {
                    "run": pa.array(["r"] * n).dictionary_encode(),
                    "variant": pa.array(rng.choice(variants, n)).dictionary_encode(),
                    "type": pa.array(rng.choice([APPEND, APPEND, "x.commit"], n)),
                    "worker": pa.array(rng.integers(0, 5, n), pa.int32()),
                    "conn": pa.array(rng.integers(0, 3, n), pa.int32()),
                    "t": pa.array(rng.random(n) * 100),
                    "audio_ms": pa.array(np.full(n, 20.0, np.float32)),
                    "lag_ms": pa.array(lag, mask=lag < 0.2),
                }
            )
        )

    def rows(batches) -> pd.DataFrame:
        frame = pd.concat(list(batches), ignore_index=True)
        frame = frame.astype({c: str for c in ("connection", "type", "run", "variant")})
        return frame.sort_values(["connection", "t"], ignore_index=True)

    monkeypatch.setattr(sends, "PARTITION_ROWS", 100)
    with sends.SpilledSends(expected_rows=1200) as spill:
        for chunk in chunks:
            spill.add(chunk)
        assert spill.partitions == 12
        got = rows(spill.batches())
    whole = pa.concat_tables(chunks, promote_options="permissive").to_pandas()
    want = rows(sends.SendFrame(whole).batches())
    assert len(got) == 1200 and got["dbfs"].isna().all()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-1, 2), st.integers(-1, 2), st.integers(-1, 300), st.integers(-1, 9)),
        max_size=50,
    )
)
def test_connection_codes_match_a_loop(rows) -> None:
    """Each row's "{run}/{variant}/{worker}/{conn}" as a code into labels in order of first
    appearance; -1 where run, worker or conn is missing; a missing variant reads ""."""
    from harness.log.keys import connection_codes

    runs, variants = ["r0", "r1", "r2"], ["a", "b", "c"]
    labels: list[str] = []
    want = []
    for run, variant, worker, conn in rows:
        if min(run, worker, conn) < 0:
            want.append(-1)
            continue
        label = f"{runs[run]}/{variants[variant] if variant >= 0 else ''}/{worker}/{conn}"
        if label not in labels:
            labels.append(label)
        want.append(labels.index(label))
    columns = [np.array([row[i] for row in rows], np.int32) for i in range(4)]
    codes, got = connection_codes(columns[0], runs, columns[1], variants, *columns[2:])
    assert codes.tolist() == want and got == labels
