"""Each reconnect strategy over loopback against a fault profile, judged from the recorded
frames."""

from __future__ import annotations

import pandas as pd
from helpers import scenario_from, soak

from harness.core.transcript import parse_transcript
from harness.log.frames import load

BASE = """
[run]
name = "s"
seed = 4
duration = "{duration}"
workers = 3
time_scale = 120
[pacing]
chunk_ms = 100
[silence]
gap = "500ms"
[turns]
transcript_timeout = "10s"
[keepalive]
ping_interval = "10s"
"""


async def run(tmp_path, tone_library, fake_server, extra: str, duration: str = "3m"):
    scenario = scenario_from(tmp_path, BASE.format(duration=duration) + extra)
    return load(await soak(tmp_path, scenario, tone_library, fake_server))


def last_attempts(utts: pd.DataFrame) -> pd.Series:
    """Each utterance's final status (replays are later rows with the same key)."""
    return utts.loc[utts["final"]].set_index("utterance")["status"].astype(str)


async def test_rotation_closes_proactively_and_is_censored(
    tmp_path, tone_library, fake_server
) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\nrotate_every = "30s"\nrotate_jitter = "5s"\n',
    )
    conns = frames.connections
    rotated = conns[conns["cause"] == "proactive"]
    assert len(rotated) >= 3 * 4  # 3 min / 30 s per worker, less the last
    assert rotated["censored"].all() and not conns["dropped"].any()
    assert (rotated["close_code"] == 1000).all()
    # rotation waits for a safe point: at most one utterance (1 s) plus gap past its age
    assert rotated["lifetime"].between(25, 37).all(), rotated["lifetime"].describe()


async def test_make_before_break_overlaps_old_and_new(tmp_path, tone_library, fake_server) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\nrotate_every = "30s"\nmake_before_break = true\n',
    )
    conns = frames.connections.sort_values(["worker", "conn"])
    overlaps = 0
    for _, group in conns.groupby("worker"):
        rows = group.to_dict("records")
        for old, new in zip(rows, rows[1:], strict=False):
            if old["cause"] == "proactive":
                assert new["established"] < old["closed"]  # the new one was ready first
                overlaps += 1
    assert overlaps >= 6


async def test_replay_loses_no_utterance(tmp_path, tone_library, fake_server) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\ninitial = "200ms"\nreplay = true\n[faults.session_age]\nmean = "15s"\n',
    )
    assert frames.connections["dropped"].sum() >= 10
    final = last_attempts(frames.utterances)
    assert set(final) <= {"completed", "retried_ok", "unfinished"}, final.value_counts()
    assert (final == "retried_ok").sum() >= 3
    retried = frames.utterances[frames.utterances["status"] == "retried_ok"]
    assert (retried["attempt"] >= 2).all() and retried["final"].all()
    assert frames.utterances.groupby("utterance")["final"].sum().eq(1).all()
    done = frames.utterances[frames.utterances["status"].isin(["completed", "retried_ok"])]
    for row in done.itertuples():  # exactly the audio sent, as the server's CRC says
        assert parse_transcript(row.transcript).crc32 == row.crc32


async def test_without_replay_drops_lose_utterances(tmp_path, tone_library, fake_server) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\ninitial = "200ms"\n[faults.session_age]\nmean = "15s"\n',
    )
    assert (last_attempts(frames.utterances) == "lost").sum() >= 3


async def test_sdk_default_does_not_reconfigure_after_reconnect(
    tmp_path, tone_library, fake_server
) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\nstrategy = "sdk-default"\n[faults.session_age]\nmean = "20s"\n',
    )
    events, conns = frames.events, frames.connections
    updates = events[events["type"] == "session.update"]
    assert updates.groupby("worker").size().max() == 1  # only the first connection
    assert (conns.groupby("worker")["conn"].max() > 1).any()  # yet it reconnected


async def test_no_reconnect_means_one_connection_per_worker(
    tmp_path, tone_library, fake_server
) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\nstrategy = "none"\n[faults.session_age]\nmean = "20s"\n',
    )
    conns = frames.connections
    assert (conns.groupby("worker").size() == 1).all()
    stopped = frames.events[frames.events["type"] == "worker_stopped"]
    assert len(stopped) == conns["dropped"].sum() >= 1


async def test_accept_then_close_loops_are_bounded(tmp_path, tone_library, fake_server) -> None:
    # 1008 is a stop code by default: one try each
    frames = await run(tmp_path, tone_library, fake_server, '[faults]\nprofile = "bad-key-loop"\n')
    assert (frames.connections.groupby("worker").size() == 1).all()
    # retrying everything, a loop of instant closes still ends: they are unhealthy attempts
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        '[reconnect]\nstop_on = []\ninitial = "100ms"\nmax_attempts = 4\n'
        '[faults]\nprofile = "bad-key-loop"\n',
        duration="30m",
    )
    per_worker = frames.connections.groupby("worker").size()
    assert (per_worker == 4).all(), per_worker  # max_attempts failures in a row, then stop
    assert len(frames.events[frames.events["type"] == "worker_stopped"]) == 3


async def test_variants_run_side_by_side_with_their_own_faults(
    tmp_path, tone_library, fake_server
) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        """
[[variant]]
name = "calm"
[[variant]]
name = "stormy"
faults.session_age.mean = "10s"
""",
    )
    conns = frames.connections
    assert set(conns["variant"]) == {"calm", "stormy"}
    assert conns.loc[conns["variant"] == "calm", "dropped"].sum() == 0
    assert conns.loc[conns["variant"] == "stormy", "dropped"].sum() >= 5


async def test_a_concurrency_cap_in_one_variant_spares_the_others(
    tmp_path, tone_library, fake_server
) -> None:
    frames = await run(
        tmp_path,
        tone_library,
        fake_server,
        """
[[variant]]
name = "capped"
faults.concurrency_cap.max_sessions = 2
faults.concurrency_cap.over = "drop_oldest"
[[variant]]
name = "free"
""",
    )
    conns = frames.connections
    assert conns.loc[conns["variant"] == "capped", "dropped"].sum() >= 1
    assert conns.loc[conns["variant"] == "free", "dropped"].sum() == 0
