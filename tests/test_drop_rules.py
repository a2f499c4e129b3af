"""The per-drop rules (diagnosis, recovery, drops that come together) are computed in bulk for
speed at 10 M rows; here each is checked against its definition written as a plain loop, on
frames hypothesis makes up. Times sit on a 1/64 s grid so boundaries compare exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import analysis
from harness.report import findings as rules

GRID = 1 / 64
times = st.integers(0, 64 * 4).map(lambda k: k * GRID)  # a few seconds: windows overlap
key = st.tuples(st.integers(0, 2), st.integers(1, 4))  # worker, conn


@st.composite
def drop_frames(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    keys = sorted(draw(st.sets(key, min_size=1, max_size=8)))
    conns = pd.DataFrame(
        {
            "run": "r",
            "variant": "v",
            "worker": pd.array([w for w, _ in keys], "Int32"),
            "conn": pd.array([c for _, c in keys], "Int32"),
            "closed": [draw(times) for _ in keys],
            "dropped": [draw(st.booleans()) for _ in keys],
            "since_sent": [draw(st.sampled_from([None, None, 9.5, 10.0])) for _ in keys],
            "uncommitted_ms": [draw(st.sampled_from([None, 0.0, 9_980.0, 10_000.0])) for _ in keys],
            "cause": [
                draw(st.sampled_from(["server_drop"] * 4 + ["handshake_failed"])) for _ in keys
            ],
        }
    ).astype({"since_sent": float, "uncommitted_ms": float})
    # appends come in evenly spaced runs on a connection, ending around its close
    runs = st.tuples(
        st.integers(0, len(keys) - 1),
        st.integers(-16, 64 * 3).map(lambda k: k * GRID),  # how long before the close
        st.integers(1, 12),
        st.sampled_from([1 / 512, 1 / 160, 1 / 32]),  # 4 or 5 appends in 20 ms, or neither
        st.sampled_from([20.0, 200.0]),
        st.sampled_from([0.0, 19.5, 20.0]),
    )
    rows = [
        (keys[c], conns["closed"][c] - before - i * step, audio, lag)
        for c, before, count, step, audio, lag in draw(st.lists(runs, min_size=1, max_size=8))
        for i in range(count)
    ]
    events = pd.DataFrame(
        {
            "run": "r",
            "type": "input_audio_buffer.append",
            "worker": pd.array([w for (w, _), *_ in rows], "Int32"),
            "conn": pd.array([c for (_, c), *_ in rows], "Int32"),
            "t": [t for _, t, _, _ in rows],
            "audio_ms": [a for _, _, a, _ in rows],
            "lag_ms": [lag for *_, lag in rows],
        }
    )
    done = draw(
        st.lists(st.tuples(key, times, st.sampled_from(["completed", "failed"])), max_size=12)
    )
    utts = pd.DataFrame(
        {
            "run": "r",
            "worker": pd.array([w for (w, _), _, _ in done], "Int32"),
            "conn": pd.array([c for (_, c), _, _ in done], "Int32"),
            "ended": [t for _, t, _ in done],
            "status": [s for *_, s in done],
        }
    )
    return conns, events, utts


def diagnosis_by_definition(d: pd.Series, events: pd.DataFrame) -> str:
    if d["cause"] == "handshake_failed":
        return "handshake"
    mine = events[(events["worker"] == d["worker"]) & (events["conn"] == d["conn"])]
    recent = mine[(mine["t"] >= d["closed"] - rules.WINDOW_S) & (mine["t"] <= d["closed"])]
    t = sorted(recent["t"])
    k = rules.BUNCH_FRAMES
    bunched = any(t[i + k - 1] - t[i] <= rules.BUNCH_S for i in range(len(t) - k + 1))
    if d["since_sent"] >= rules.IDLE_S:
        return "idle"
    if d["uncommitted_ms"] >= rules.BUFFER_MS:
        return "buffer"
    if recent["audio_ms"].sum() > rules.FAST_SPEED * rules.WINDOW_S * 1000:
        return "fast"
    if bunched or (recent["lag_ms"] >= rules.BURST_LAG_MS).any():
        return "burst"
    return "age"


@settings(max_examples=150, deadline=None)
@given(drop_frames())
def test_diagnosis_follows_its_rule_for_every_drop(frames) -> None:
    conns, events, _ = frames
    got = rules.diagnose(conns, events)
    for i, d in conns.iterrows():
        if d["dropped"]:
            assert got[i] == diagnosis_by_definition(d, events), (i, d.to_dict())
        elif d["cause"] == "handshake_failed":
            assert got[i] == "handshake"
        else:
            assert pd.isna(got[i])


@settings(max_examples=150, deadline=None)
@given(drop_frames())
def test_recovery_is_the_first_transcript_of_a_later_connection(frames) -> None:
    conns, _, utts = frames
    got = analysis.recovery(conns, utts)
    drops = conns[conns["dropped"]].reset_index(drop=True)
    assert len(got) == len(drops)
    good = utts[utts["status"] == "completed"]
    for i, d in drops.iterrows():
        mine = good[good["worker"] == d["worker"]]
        firsts = mine.groupby("conn")["ended"].min()
        later = firsts[(firsts.index > d["conn"]) & (firsts >= d["closed"])]
        want = later.min() - d["closed"] if len(later) else np.nan
        assert got.loc[i, ["worker", "conn", "dropped_at"]].tolist() == [
            d["worker"],
            d["conn"],
            d["closed"],
        ]
        np.testing.assert_equal(got.loc[i, "recovery"], want)


@given(st.lists(st.tuples(st.integers(0, 32).map(lambda k: k / 4), st.integers(0, 3)), max_size=30))
def test_drops_together_counts_each_drop_with_another_workers_near_it(drops) -> None:
    closed = np.array([t for t, _ in drops], float)
    workers = np.array([w for _, w in drops], np.int64)
    want = sum(
        any(
            abs(t - t2) <= rules.COINCIDENCE_S and w2 != w
            for j, (t2, w2) in enumerate(drops)
            if j != i
        )
        for i, (t, w) in enumerate(drops)
    )
    assert rules._with_another_worker(closed, workers) == want


def test_an_append_at_the_very_close_time_is_in_the_drops_window() -> None:
    """The window is closed at both ends: the fifth append of a bunch, sent at the instant
    the connection closed, makes it a burst (hypothesis rarely lands on that edge)."""
    closed = 10.0
    conns = pd.DataFrame(
        {
            "run": "r",
            "worker": pd.array([0], "Int32"),
            "conn": pd.array([1], "Int32"),
            "closed": [closed],
            "dropped": [True],
            "since_sent": [0.0],
            "uncommitted_ms": [0.0],
            "cause": ["server_drop"],
        }
    )
    k = rules.BUNCH_FRAMES
    bunch = [closed - (k - 1 - i) / 256 for i in range(k)]  # 1/256 s apart, exact in binary
    assert bunch[-1] - bunch[0] <= rules.BUNCH_S

    def appends(times: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "run": "r",
                "type": "input_audio_buffer.append",
                "worker": pd.array([0] * len(times), "Int32"),
                "conn": pd.array([1] * len(times), "Int32"),
                "t": times,
                "audio_ms": 20.0,
                "lag_ms": 0.0,
            }
        )

    assert rules.diagnose(conns, appends(bunch))[0] == "burst"
    assert rules.diagnose(conns, appends(bunch[:-1] + [closed + GRID]))[0] == "age"
