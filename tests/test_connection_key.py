"""One connection identity: `connection` = run/variant/worker/conn in every frame, and the joins
that use it. Worker numbers restart in each variant, so (run, worker, conn) names several
connections of a run; a join on it mixes variants (issue 29)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rtsoak, write_scenario

from harness.log.frames import Frames, connection_key, load, load_for_report
from harness.log.recorder import APPEND, Recorder
from harness.report.analysis import recovery
from harness.report.fidelity import client_lateness, fault_lateness
from harness.report.findings import diagnose, findings

COMMIT = "input_audio_buffer.commit"


def write_run(run_dir: Path, conns: dict[tuple[str, int, int], dict[str, float]]) -> Path:
    """A run whose connections (variant, worker, conn) each open, carry one utterance (started,
    an append half a second before the commit, commit sent, completed) and close at `closed`:
    dropped (1006) or at the scenario's end.
    The fake server's own rows come too (worker and conn -1)."""
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"seed": 1}))
    rec = Recorder(run_dir / "events-client.arrows")
    server = Recorder(run_dir / "events-server.arrows")
    for (variant, worker, conn), at in conns.items():
        key = (variant, worker, conn)
        rec.row(at["open"], at["open"], "client", *key, "meta", "conn_open")
        rec.row(at["open"], at["open"], "client", *key, "meta", "handshake", code=101)
        server.row(at["open"], at["open"], "server", None, -1, -1, "meta", "session_open")
        utt = f"{variant}/{worker}/{conn}"
        detail = {"name": "x", "crc32": 5}
        rec.row(
            at["start"], at["start"], "client", *key, "meta", "utt_start", item=utt, detail=detail
        )
        sent = at["commit"] - 0.5
        rec.row(sent, sent, "client", *key, "send", APPEND, 2000, 20.0, 0.3)
        rec.row(at["commit"], at["commit"], "client", *key, "send", COMMIT, 37)
        rec.row(at["end"], at["end"], "client", *key, "meta", "utt_end", item=utt, text="completed")
        dropped = at.get("drop", False)
        close = {"cause": "abnormal" if dropped else "scenario_end", "uncommitted_ms": 0.0}
        code = 1006 if dropped else 1000
        rec.row(
            at["closed"],
            at["closed"],
            "client",
            *key,
            "meta",
            "conn_close",
            code=code,
            detail=close,
        )
    rec.close()
    server.close()
    return run_dir


# Variant a's worker 0 and variant b's worker 0 both have connections 1 and 2, interleaved in
# time so that a join without the variant picks the other variant's rows: b's commit on its
# connection 1 comes between a's utterance start and a's own commit, and b's connection 2
# completes a transcript after a's drop, before a's own connection 2 does.
COLLIDING = {
    ("a", 0, 1): dict(open=0.0, start=1.0, commit=3.0, end=3.5, closed=10.0, drop=True),
    ("a", 0, 2): dict(open=11.0, start=12.0, commit=14.0, end=14.5, closed=30.0),
    ("b", 0, 1): dict(open=0.0, start=1.2, commit=2.0, end=2.5, closed=5.0, drop=True),
    ("b", 0, 2): dict(open=6.0, start=10.5, commit=11.5, end=12.0, closed=30.0),
    ("b", 1, 1): dict(open=0.0, start=1.0, commit=2.2, end=2.6, closed=30.0),
}


def expected_committed(events: pd.DataFrame) -> pd.Series:
    """Plain pandas: the first commit sent on the utterance's own (run, variant, worker, conn)
    at or after its start, by utterance key."""
    own = ["run", "variant", "worker", "conn"]
    rows = events.astype({c: str for c in own})
    starts = rows[rows["type"] == "utt_start"]
    commits = rows[(rows["type"] == COMMIT) & (rows["dir"] == "send")]
    out = {}
    for start in starts.itertuples():
        same = (commits[own] == [getattr(start, c) for c in own]).all(axis=1)
        later = commits.loc[same & (commits["t"] >= start.t), "t"]
        out[start.item] = later.min() if len(later) else np.nan
    return pd.Series(out, dtype=float)


def expected_recovery(frames: Frames) -> dict[tuple[str, int, int], float]:
    """Plain pandas: per drop, the first transcript completed on a later connection of the same
    (run, variant, worker), less the drop time."""
    utts = frames.utterances.astype({"run": str, "variant": str, "worker": int, "conn": int})
    done = utts[utts["status"].isin(["completed", "retried_ok"])]
    out = {}
    drops = frames.connections[frames.connections["dropped"]]
    for drop in drops.astype({"run": str, "variant": str}).itertuples():
        later = done[
            (done["run"] == drop.run)
            & (done["variant"] == drop.variant)
            & (done["worker"] == drop.worker)
            & (done["conn"] > drop.conn)
            & (done["ended"] >= drop.closed)
        ]
        out[(drop.variant, drop.worker, drop.conn)] = later["ended"].min() - drop.closed
    return out


def test_every_frame_carries_a_connection_label_unique_across_variants_and_shards(
    tmp_path: Path,
) -> None:
    """Two shards (their own run names, global worker numbers) loaded together: each label is
    run/variant/worker/conn, categorical, NA on the server's rows, one per connection."""
    shard0 = write_run(tmp_path / "soak-shard0", COLLIDING)
    shard1 = write_run(tmp_path / "soak-shard1", {("a", 0, 1): COLLIDING[("a", 0, 1)]})
    frames = load([shard0, shard1])
    for name in ("events", "connections", "utterances"):
        frame = getattr(frames, name)
        assert isinstance(frame["connection"].dtype, pd.CategoricalDtype), name
        assert list(frame.columns).index("connection") == list(frame.columns).index("conn") + 1
        client = frame[frame["worker"] >= 0] if name == "events" else frame
        parts = client[["run", "variant", "worker", "conn"]].astype(str).agg("/".join, axis=1)
        assert list(client["connection"].astype(str)) == list(parts), name
    events = frames.events
    assert events.loc[events["src"] == "server", "connection"].isna().all()
    conns = frames.connections
    assert len(conns) == len(COLLIDING) + 1 == conns["connection"].nunique()
    # (run, worker, conn) collides; the label does not
    assert conns.duplicated(["run", "worker", "conn"]).any()
    # a frame built by hand gets the same labels
    pd.testing.assert_series_equal(
        connection_key(conns).astype(str), conns["connection"].astype(str), check_names=False
    )


def test_colliding_worker_numbers_keep_their_own_commit_times_and_recovery(
    tmp_path: Path,
) -> None:
    frames = load(write_run(tmp_path / "run", COLLIDING))
    utts = frames.utterances.set_index(frames.utterances["utterance"].astype(str))
    want = expected_committed(frames.events)
    pd.testing.assert_series_equal(utts["committed"], want.reindex(utts.index), check_names=False)
    assert utts.loc["a/0/1", "committed"] == 3.0  # not b's commit at 2.0 on "worker 0, conn 1"
    got = recovery(frames.connections, frames.utterances)
    got = {(r.variant, r.worker, r.conn): r.recovery for r in got.itertuples()}
    assert got == pytest.approx(expected_recovery(frames))
    assert got[("a", 0, 1)] == pytest.approx(4.5)  # not 2.0: b's connection 2 is not a's


def test_the_report_loader_keeps_the_appends_of_each_drop_by_its_own_connection(
    tmp_path: Path,
) -> None:
    """a's and b's worker 0 both drop their connection 1 (at 10 s and 5 s): each keeps the
    appends of its own last 5 s, and a's append at 2.5 s is in neither window."""
    run_dir = write_run(tmp_path / "run", COLLIDING)
    full, lean = load(run_dir), load_for_report(run_dir, drop_window_s=5.0)
    drops = full.connections.loc[full.connections["dropped"], ["connection", "closed"]]
    appends = full.events[full.events["type"] == APPEND].merge(drops, on="connection")
    want = appends[(appends["t"] >= appends["closed"] - 5.0) & (appends["t"] <= appends["closed"])]
    got = lean.events[lean.events["type"] == APPEND]
    assert sorted(got["connection"].astype(str)) == sorted(want["connection"].astype(str))
    assert sorted(got["t"]) == sorted(want["t"]) == [1.5]


def test_the_report_loader_labels_connections_as_load_does(
    tmp_path: Path, finished_run: Path
) -> None:
    for run_dir in (write_run(tmp_path / "run", COLLIDING), finished_run):
        full, lean = load(run_dir), load_for_report(run_dir, drop_window_s=5.0)
        for name in ("connections", "utterances"):
            assert list(getattr(lean, name)["connection"].astype(str)) == list(
                getattr(full, name)["connection"].astype(str)
            )
        # the events the lean loader keeps (meta rows first, in log order) carry the same labels
        meta = full.events[full.events["dir"] == "meta"]
        kept = lean.events[lean.events["dir"] == "meta"]
        assert list(kept["connection"].astype(str)) == list(meta["connection"].astype(str))
        assert set(lean.events["connection"].dropna().astype(str)) <= set(
            full.connections["connection"].astype(str)
        )


# Identical variants, in one run and each alone. A real run's times carry the machine's jitter
# (a millisecond of wall time is 20 ms of scenario time at 20x), so the same seeded run is the
# same in its events but only close in its times: connections are compared by what happened and
# their lifetimes, recovery per drop, commit times per utterance as the delay after its start,
# each within JITTER_S but for at most STALLS values or STALL_SHARE of them (a stall of a busy
# machine delays a few rows at once). Short sessions and gaps make the variants' connections
# overlap, so a join that mixes them is off by seconds (recovery) or by up to an utterance's
# length (commit times) in about ten values per variant; the right key measured at most 0.18 s
# off on a quiet machine.
JITTER_S = 0.25
STALLS = 2
STALL_SHARE = 0.15
SCALE = 20
VARIANTS = ("a", "b")
END_S = 120  # the scenario's duration


def soak_run(tmp_path: Path, name: str, variants: tuple[str, ...]) -> Frames:
    blocks = "".join(
        f'[[variant]]\nname = "{v}"\nfaults.session_age.mean = "15s"\n' for v in variants
    )
    extra = f'[reconnect]\ninitial = "200ms"\n[silence]\ngap = "300ms"\n{blocks}'
    scenario = write_scenario(
        tmp_path, name, workers=3, duration="2m", time_scale=SCALE, extra=extra
    )
    out = tmp_path / name
    result = rtsoak("run", str(scenario), "--out", str(out), "--seed", "7", "--no-report")
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    return load(run_dir)


def of(frame: pd.DataFrame, variant: str) -> pd.DataFrame:
    rows = frame[frame["variant"] == variant]
    return rows.astype({"worker": int, "conn": int}).reset_index(drop=True)


def measured_jitter(*runs: Frames) -> float:
    """JITTER_S plus the p99 lateness (scenario s) the runs measured of their own appends and
    of the fake server's faults: a loaded machine widens the margin by what it shows, not by
    luck."""
    late_ms = 0.0
    for frames in runs:
        events = frames.events
        appends = events.loc[events["type"] == APPEND, ["run", "variant", "lag_ms"]]
        late_ms = max(
            late_ms,
            client_lateness(appends)["p99_ms"].max(),
            fault_lateness(events, {})["p99_ms"].fillna(0).max(),
        )
    return JITTER_S + late_ms / 1000 * SCALE


def assert_close(got: pd.Series, want: pd.Series, what: str, jitter: float = JITTER_S) -> None:
    """Within `jitter` but for a few values a stall moved further: at most STALLS, or
    STALL_SHARE of them (a wrong join is off by seconds in a third or more)."""
    off = (got - want).abs() > jitter
    allowed = max(STALLS, int(STALL_SHARE * len(off)))
    assert off.sum() <= allowed, f"{what}: {off.sum()} of {len(off)} off by > {jitter:.2f} s"


def settled_pairs(alone: pd.DataFrame, both: pd.DataFrame, jitter: float) -> pd.DataFrame:
    """The connections of the two runs side by side by (worker, conn) (`*_both` columns: the
    run with both variants), but for those that ended within `jitter` of the scenario's end in
    either: a fault due then races the client's closing, and a drop then races the reconnect
    (see helpers.compare_faults). Those are each worker's last attempt, and the one before it
    when that dropped at the end; any other attempt missing from one run is a failure."""
    columns = ["worker", "conn", "cause", "dropped", "lifetime", "closed"]
    pairs = alone[columns].merge(
        both[columns], on=["worker", "conn"], how="outer", suffixes=("", "_both")
    )
    ended = pairs[["closed", "closed_both"]].fillna(END_S)
    at_end = (ended >= END_S - jitter).any(axis=1)
    assert at_end.groupby(pairs["worker"]).sum().max() <= 2, pairs[at_end]
    return pairs[~at_end].reset_index(drop=True)


def test_identical_variants_in_one_run_match_each_run_alone(tmp_path: Path) -> None:
    """The fake server draws each session's faults from its key variant/worker/attempt, so a
    variant is compared with a run of the same name alone, not with its twin."""
    both = soak_run(tmp_path, "both", VARIANTS)
    for variant in VARIANTS:
        alone = soak_run(tmp_path, f"alone-{variant}", (variant,))
        jitter = measured_jitter(both, alone)
        # connections: the same attempts, ended the same way, living as long
        attempts = settled_pairs(
            of(alone.connections, variant), of(both.connections, variant), jitter
        )
        for column in ("cause", "dropped"):
            ended = [attempts[c].astype(str) for c in (column, f"{column}_both")]
            assert ended[0].equals(ended[1]), f"{variant}: {column}"
        assert attempts["dropped"].sum() >= 10, "the scenario should drop connections"
        assert_close(
            attempts["lifetime_both"], attempts["lifetime"], f"{variant} lifetimes", jitter
        )
        # recovery of each drop, but of those too near the end to tell whether one came
        settled = attempts[["worker", "conn"]]
        r2 = settled.merge(of(recovery(both.connections, both.utterances), variant))
        r1 = settled.merge(of(recovery(alone.connections, alone.utterances), variant))
        assert r2[["worker", "conn"]].equals(r1[["worker", "conn"]])
        early = r1["dropped_at"] < END_S - 5
        assert early.sum() >= 10
        assert r2["recovery"].notna()[early].equals(r1["recovery"].notna()[early])
        assert_close(r2["recovery"][early], r1["recovery"][early], f"{variant} recovery", jitter)
        # commit times: each utterance against the one that started on the same connection
        # at the same time in the run alone
        cols = ["worker", "conn", "started", "committed"]
        u2 = of(both.utterances, variant)[cols].sort_values("started")
        u1 = of(alone.utterances, variant)[cols].sort_values("started")
        pairs = pd.merge_asof(
            u2,
            u1.assign(started_alone=u1["started"]),
            on="started",
            by=["worker", "conn"],
            direction="nearest",
            tolerance=1.0,
            suffixes=("", "_alone"),
        ).dropna(subset=["started_alone", "committed", "committed_alone"])
        assert len(pairs) >= 0.8 * len(u1)
        assert_close(
            pairs["committed"] - pairs["started"],
            pairs["committed_alone"] - pairs["started_alone"],
            f"{variant} commit delays",
            jitter,
        )
        # diagnosis of each drop, and the drops another worker's drop came within 1 s of
        d2, d1 = (
            settled.merge(
                of(f.connections.assign(diagnosis=diagnose(f.connections, f.events, {})), variant)
            )
            for f in (both, alone)
        )
        differ = d2["diagnosis"].astype(str) != d1["diagnosis"].astype(str)
        assert differ.sum() <= STALLS, f"{variant}: {differ.sum()} diagnoses differ"
        # the variant's own drops, counted by plain pairs in the same run: its twin's drops
        # must not count (the run alone is no yardstick here: a drop's time drifts by more than
        # the jitter over a worker's attempts, and a pair near 1 s crosses the edge)
        assert concurrency(both, variant) == together(both, variant, 1.0), variant


def concurrency(frames: Frames, variant: str) -> int:
    """The variant's 'another worker's drop within 1 s' count, as its finding says it."""
    said = findings(frames.connections, frames.events)
    (sentence,) = [
        f["finding"]
        for f in said
        if f["hypothesis"] == "concurrency" and f["variant"] in (variant, None)
    ]
    return int(sentence.split(" of ")[0])


def together(frames: Frames, variant: str, within: float) -> int:
    """Drops of the variant with another worker's drop within `within` s, by plain pairs."""
    drops = of(frames.connections, variant)
    drops = drops[drops["dropped"]]
    t, w = drops["closed"].to_numpy(float), drops["worker"].to_numpy()
    near = (np.abs(t[:, None] - t[None, :]) <= within) & (w[:, None] != w[None, :])
    return int(near.any(axis=1).sum())
