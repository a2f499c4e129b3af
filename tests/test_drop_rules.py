"""The per-drop rules (diagnosis, recovery, drops that come together) are computed in bulk for
speed at 10 M rows; here each is checked against its definition written as a plain loop, on
frames hypothesis makes up. Times sit on a 1/64 s grid so boundaries compare exactly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.report import analysis
from harness.report import findings as rules

GRID = 1 / 64
times = st.integers(0, 64 * 4).map(lambda k: k * GRID)  # a few seconds: windows overlap
# variant, worker, conn: worker numbers restart per variant, so (worker, conn) repeats
key = st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.integers(1, 4))


def _ints(values) -> pd.arrays.IntegerArray:
    return pd.array(list(values), "Int32")


@st.composite
def drop_frames(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    keys = sorted(draw(st.sets(key, min_size=1, max_size=8)))
    conns = pd.DataFrame(
        {
            "run": "r",
            "variant": [v for v, _, _ in keys],
            "worker": _ints(w for _, w, _ in keys),
            "conn": _ints(c for *_, c in keys),
            "closed": [draw(times) for _ in keys],
            "dropped": [draw(st.booleans()) for _ in keys],
            "since_sent": [draw(st.sampled_from([None, None, 9.5, 10.0])) for _ in keys],
            "uncommitted_ms": [draw(st.sampled_from([None, 0.0, 9_980.0, 10_000.0])) for _ in keys],
            "cause": [
                draw(st.sampled_from(["server_drop"] * 4 + ["handshake_failed"])) for _ in keys
            ],
        }
    ).astype({"since_sent": float, "uncommitted_ms": float})
    scale = draw(st.sampled_from([1.0, 10.0, 60.0]))
    # appends come in evenly scheduled runs on a connection, ending around its close; each
    # leaves `lag` wall ms after its deadline, which is lag * scale scenario ms
    runs = st.tuples(
        st.integers(0, len(keys) - 1),
        st.integers(-16, 64 * 3).map(lambda k: k * GRID),  # how long before the close
        st.integers(1, 12),
        st.sampled_from([0.0, 1 / 512, 1 / 160, 1 / 32]),  # 4 or 5 appends in 20 ms, or neither
        st.sampled_from([20.0, 200.0]),
        st.sampled_from([0.0, 0.5, 3.0, 19.5, 20.0]),
    )
    rows = [
        (keys[c], conns["closed"][c] - before - i * step + lag / 1000 * scale, audio, lag)
        for c, before, count, step, audio, lag in draw(st.lists(runs, min_size=1, max_size=8))
        for i in range(count)
    ]
    events = pd.DataFrame(
        {
            "run": "r",
            "variant": [v for (v, _, _), *_ in rows],
            "type": "input_audio_buffer.append",
            "worker": _ints(w for (_, w, _), *_ in rows),
            "conn": _ints(c for (_, _, c), *_ in rows),
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
            "variant": [v for (v, _, _), _, _ in done],
            "worker": _ints(w for (_, w, _), _, _ in done),
            "conn": _ints(c for (_, _, c), _, _ in done),
            "ended": [t for _, t, _ in done],
            "status": [s for *_, s in done],
        }
    )
    return conns, events, utts, scale


def diagnosis_by_definition(d: pd.Series, events: pd.DataFrame, scale: float) -> str:
    """docs/report.md's rule, written as plainly as it reads there."""
    if d["cause"] == "handshake_failed":
        return "handshake"
    mine = events[
        (events["variant"] == d["variant"])
        & (events["worker"] == d["worker"])
        & (events["conn"] == d["conn"])
    ]
    scheduled = mine["t"] - mine["lag_ms"] / 1000 * scale
    start = d["closed"] - rules.WINDOW_S
    sent = (mine["t"] >= start) & (mine["t"] <= d["closed"])
    recent, due = mine[sent & (scheduled >= start)], sorted(scheduled[sent & (scheduled >= start)])
    k = rules.BUNCH_FRAMES
    bunched = any(due[i + k - 1] - due[i] <= rules.BUNCH_S for i in range(len(due) - k + 1))
    if d["since_sent"] >= rules.IDLE_S:
        return "idle"
    if d["uncommitted_ms"] >= rules.BUFFER_MS:
        return "buffer"
    if recent["audio_ms"].sum() > rules.FAST_SPEED * rules.WINDOW_S * 1000:
        return "fast"
    if bunched:
        return "burst"
    if (mine.loc[sent, "lag_ms"] >= rules.LATE_MS).any():
        return "late"
    return "age"


@settings(max_examples=200, deadline=None)
@given(drop_frames())
def test_diagnosis_follows_its_rule_for_every_drop(frames) -> None:
    conns, events, _, scale = frames
    got = rules.diagnose(conns, events, {"r": scale})
    for i, d in conns.iterrows():
        if d["dropped"]:
            assert got[i] == diagnosis_by_definition(d, events, scale), (i, d.to_dict())
        elif d["cause"] == "handshake_failed":
            assert got[i] == "handshake"
        else:
            assert pd.isna(got[i])


@settings(max_examples=150, deadline=None)
@given(drop_frames())
def test_recovery_is_the_first_transcript_of_a_later_connection(frames) -> None:
    conns, _, utts, _ = frames
    got = analysis.recovery(conns, utts)
    drops = conns[conns["dropped"]].reset_index(drop=True)
    assert len(got) == len(drops)
    good = utts[utts["status"] == "completed"]
    for i, d in drops.iterrows():
        mine = good[(good["variant"] == d["variant"]) & (good["worker"] == d["worker"])]
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
            "variant": "v",
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
                "variant": "v",
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


def _one_drop(due: list[float], lag_ms: list[float], scale: float, closed: float = 10.0):
    """A dropped connection and its appends, scheduled at `due` (scenario s) and sent `lag_ms`
    wall ms late at time scale `scale`, as the worker logs them: t is the send time."""
    conns = pd.DataFrame(
        {
            "run": "r",
            "variant": "v",
            "worker": _ints([0]),
            "conn": _ints([1]),
            "closed": [closed],
            "dropped": [True],
            "since_sent": [0.0],
            "uncommitted_ms": [0.0],
            "cause": ["server_drop"],
        }
    )
    events = pd.DataFrame(
        {
            "run": "r",
            "variant": "v",
            "type": "input_audio_buffer.append",
            "worker": _ints([0] * len(due)),
            "conn": _ints([1] * len(due)),
            "t": [d + lag / 1000 * scale for d, lag in zip(due, lag_ms, strict=True)],
            "audio_ms": 20.0,
            "lag_ms": lag_ms,
        }
    )
    return conns, events


STEADY = [10.0 - 1.9 + i * 0.02 for i in range(90)]  # 20 ms frames, real time
BUNCHED = [10.0 - 1.9 + (i // 5) * 0.1 for i in range(90)]  # 5 at once every 100 ms
FAST = [10.0 - 1.9 + i * 0.01 for i in range(180)]  # 2x real time


@pytest.mark.parametrize(
    ("due", "want"), [(STEADY, "age"), (BUNCHED, "burst"), (FAST, "fast")], ids=str
)
def test_the_diagnosis_judges_the_schedule_so_it_is_the_same_at_1x_and_60x(due, want) -> None:
    """An event loop that wakes every 2 wall ms sends what fell due meanwhile together:
    harmless at 1x, but at 60x that is 120 scenario ms, and a steady sender's sends arrive
    bunched (the rule once read 19 % agreement at 60x from that). Judged on the schedule,
    both scales read the same."""
    tick = 2.0  # wall ms

    def lag_at(scale: float) -> list[float]:
        due_ms = np.asarray(due) / scale * 1000
        return (np.ceil(due_ms / tick) * tick - due_ms).tolist()

    got = {s: rules.diagnose(*_one_drop(due, lag_at(s), s), {"r": s})[0] for s in (1, 60)}
    assert got == {1: want, 60: want}
    # what the server saw at 60x was bunched even for the steady schedule
    sent = np.sort(_one_drop(due, lag_at(60), 60)[1]["t"].to_numpy())
    k = rules.BUNCH_FRAMES
    assert (sent[k - 1 :] - sent[: 1 - k] <= rules.BUNCH_S).any()


@pytest.mark.parametrize("scale", [1, 60])
def test_a_drop_after_an_append_30_ms_late_is_too_late_to_tell(scale) -> None:
    lag = [0.0] * len(STEADY)
    lag[0] = 30.0  # 1.8 scenario s at 60x: sent 0.1 s before the close
    conns, events = _one_drop(STEADY, lag, scale)
    assert rules.diagnose(conns, events, {"r": scale})[0] == "late"
    # a scheduled burst stays a burst: the server saw it whatever the harness's lateness
    conns, events = _one_drop(BUNCHED, lag, scale)
    assert rules.diagnose(conns, events, {"r": scale})[0] == "burst"


def test_a_late_drop_is_said_in_the_findings() -> None:
    lag = [0.0] * len(STEADY)
    lag[0] = 30.0
    conns, events = _one_drop(STEADY, lag, 60)
    conns = pd.concat([conns] * rules.MIN_DROPS, ignore_index=True).assign(
        lifetime=60.0, established=0.0, state="streaming", injected_fault="micro_burst"
    )
    found = {f["hypothesis"]: f["finding"] for f in rules.findings(conns, events, None, {"r": 60})}
    assert "too late to tell" in found["bursts"]
    assert "bunched (" not in found["bursts"]
    assert f"({rules.MIN_DROPS} the harness was too late to tell)" in found["ground truth"]


def _documented_diagnosis() -> tuple[dict[str, str], dict[str, str]]:
    """docs/report.md's diagnosis table (category -> rule) and ground-truth table
    (policy -> category)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
    section = text.split("## The diagnosis of a drop", 1)[1].split("\n## ", 1)[0]
    tables: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", section):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            cells = [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in lines[2:]]
            tables.append({row[0]: row[1] for row in cells})
    diagnosis, truth = tables
    return diagnosis, truth


def test_the_documented_categories_and_ground_truth_are_the_codes() -> None:
    diagnosis, truth = _documented_diagnosis()
    assert list(diagnosis) == list(rules.CATEGORIES)
    assert truth == rules.INJECTED_TO_DIAGNOSIS
    assert set(rules.INJECTED_TO_DIAGNOSIS.values()) <= set(rules.CATEGORIES)
    # every constant of the rules is quoted with its value
    for category, rule in rules.RULES.items():
        assert diagnosis[category].startswith(rule), category
