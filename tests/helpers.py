"""In-process soaks for tests: what `rtsoak run` does, with the fake server in this process;
and how a test tells a code failure from a machine too loaded to keep time."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from harness.config.scenario import Scenario, load_scenario
from harness.config.target import Target
from harness.edge.clock import ScaledClock
from harness.log.recorder import Recorder
from harness.log.rundir import write_json
from harness.run.runner import (
    SATURATED_P99_MS,
    complete_manifest,
    manifest,
    run_workers,
    server_config_doc,
)
from harness.run.server import server_config_from_doc


def vad_off(dialect: str = "ga") -> str:
    """The update a client with its own VAD sends: turn_detection null, in either dialect."""
    if dialect == "beta":
        return json.dumps(
            {"type": "transcription_session.update", "session": {"turn_detection": None}}
        )
    return json.dumps(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
    )


def scenario_from(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return load_scenario(path)


async def soak(tmp_path: Path, scenario: Scenario, library, fake_server) -> Path:
    """What `rtsoak run` does, with the fake server in this process."""
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    run_dir.mkdir()
    doc = manifest(scenario, None, datetime.now(UTC).isoformat())
    write_json(run_dir / "manifest.json", doc)
    clock = ScaledClock(scenario.run.time_scale)
    server_log = Recorder(run_dir / "events-server.arrows")
    config = server_config_from_doc(server_config_doc(scenario), scenario.source, scenario.run.seed)
    server = await fake_server(config, clock, server_log)
    # At 120x a transcript wait is ~100 wall ms; a full collection of the whole pytest process
    # (frames and charts of earlier tests) measured up to 117 ms. Freeze what exists, as
    # design.md advises for real runs, so collections see only the soak's own objects.
    gc.collect()
    gc.freeze()
    try:
        result = await run_workers(
            scenario,
            clock,
            Target.fake(server.url),
            library,
            run_dir,
            log=lambda *_: None,
            handle_signals=False,
        )
    finally:
        gc.unfreeze()
    server_log.close()
    complete_manifest(doc, result)  # as the runner does, so `saturation()` reads its verdict
    write_json(run_dir / "manifest.json", doc)
    return run_dir


# --- timing the harness measured itself -------------------------------------------------------
# A loaded machine (a 2-core laptop running `make soak` beside `make test`) shifts every
# scenario timing at 120x: one wall millisecond is 0.12 scenario seconds. Tests split their
# checks in two: what holds whatever the timing (seeded draws, CRCs, classification) is always
# asserted; what needs the harness to have kept time goes through `require_timing`, which
# skips, naming the harness's own measurements, when the harness says it did not.


class ManualClock:
    """A run clock that moves only when a test calls `advance`: the fake server's deadlines
    (idle timeouts, session ages) then fire at scenario times the test chose, however slow
    the machine. `scale` only sets how often the server re-reads `now` while it waits (every
    remaining/scale wall seconds): correctness does not depend on it."""

    def __init__(self, scale: float = 1000.0) -> None:
        self.scale = float(scale)
        self.origin = time.monotonic()
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return time.time()

    def wall_seconds(self, seconds: float) -> float:
        return seconds / self.scale

    def wall_at(self, t: float) -> float:
        return time.time() - (self.t - t) / self.scale

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def settle(self, horizon: float) -> None:
        """Return once every server timer waiting on this loop has seen the clock as it is now.
        A timer waits at most `horizon`/scale wall seconds before it re-reads `now` (`horizon`:
        the furthest deadline ahead, in scenario s); one timer due earlier runs earlier, loaded
        machine or not, so sleeping past that bound orders this caller after all of them."""
        await asyncio.sleep(horizon / self.scale + 0.001)

    async def sleep_until(self, t: float) -> None:
        while self.t < t:
            await asyncio.sleep(0.001)


def server_sessions(frames) -> pd.DataFrame:
    """The fake server's sessions, one row per session key (`variant/worker/attempt`, unique
    in a run and across the shards of one): `run`, `opened`, `closed` (scenario s; NA while
    open when the log ended), `ended_by` (the fault policy, or `client`), and the fault that
    fired on it, if one did: `policy`, `due_age` (the seeded draw) and `age` (when it fired)."""
    ev = frames.events
    server = ev[(ev["src"].astype(str) == "server").to_numpy(bool)]
    kind = server["type"].astype(str)

    def keyed(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(run=rows["run"].astype(str), item=rows["item"].astype(str))

    opens = keyed(server[kind == "session_open"])
    opens = opens.assign(key=[json.loads(d)["session_key"] for d in opens["detail"]])
    closes = keyed(server[kind == "session_close"])
    faults = keyed(server[kind == "fault"])
    details = [json.loads(d) for d in faults["detail"]]
    faults = faults.assign(
        policy=faults["text"].astype(str),
        due_age=[d.get("due_age") for d in details],
        age=[d.get("age") for d in details],
    )
    out = (
        opens[["run", "item", "key", "t"]]
        .rename(columns={"t": "opened"})
        .merge(
            closes[["run", "item", "t", "text"]].rename(
                columns={"t": "closed", "text": "ended_by"}
            ),
            on=["run", "item"],
            how="left",
        )
        .merge(faults[["run", "item", "policy", "due_age", "age"]], on=["run", "item"], how="left")
    )
    assert out["key"].is_unique, "a session key opened twice: keys must name one session"
    return out.set_index("key")


@dataclass(frozen=True)
class FaultComparison:
    """Two runs of one seeded scenario, fault by fault (see `compare_faults`)."""

    common: list[str]  # keys with a fault in both runs
    mismatched: pd.DataFrame  # of those, where the policy or the drawn age differ: a bug
    unexplained: list[str]  # a fault in one run only, and timing does not explain it
    slack_s: float  # lateness allowed before a session that outlived its due age is suspect

    def describe(self) -> str:
        return (
            f"{len(self.common)} faults at the same keys, {len(self.unexplained)} in one run "
            f"only that timing does not explain ({self.unexplained[:5]}; slack "
            f"{self.slack_s:.3f} scenario s)"
        )


def compare_faults(a, b) -> FaultComparison:
    """Whether two runs of one scenario and seed drew the same faults, whatever their timing.

    A fault's due age is drawn from (seed, session key, policy), so the same key must show the
    same policy and due age in both runs, to the bit. How many keys fired in both depends on
    timing: a slow start or a slow handshake leaves a worker fewer attempts. So a fault seen in
    one run only is *explained* when, in the other run, that key never opened (its worker ran
    out of time first) or its session ended, without a fault, before the due age plus the
    fault lateness that run measured (plus one wall millisecond: asyncio's timer rounding).
    A session the client closed at the scenario's end ended, for this purpose, at that end:
    the server logs its close only after the closing handshake, and a fault due in between
    races the client's close frame."""
    sa, sb = server_sessions(a), server_sessions(b)
    fa, fb = sa[sa["policy"].notna()], sb[sb["policy"].notna()]
    common = sorted(set(fa.index) & set(fb.index))
    both = fa.loc[common, ["policy", "due_age"]].join(
        fb.loc[common, ["policy", "due_age"]], rsuffix="_b"
    )
    mismatched = both[(both["policy"] != both["policy_b"]) | (both["due_age"] != both["due_age_b"])]
    slack = {id(a): _timer_slack_s(a), id(b): _timer_slack_s(b)}
    unexplained = []
    for faulted, other, frames in ((fa, sb, b), (fb, sa, a)):
        ends = {run: float(m["scenario"]["run"]["duration"]) for run, m in frames.manifests.items()}
        for key in sorted(set(faulted.index) - set(common)):
            if key not in other.index:
                continue  # never opened there: that worker ran out of time first
            session = other.loc[key]
            due = faulted.at[key, "due_age"]
            if due is None or pd.isna(due):
                unexplained.append(key)  # a fault without a deadline, seen in one run only
                continue
            closed = session["closed"]
            if session["ended_by"] == "client":
                closed = min(closed, ends[session["run"]])
            lived = closed - session["opened"]
            if pd.isna(lived) or lived > due + slack[id(frames)]:
                unexplained.append(key)
    return FaultComparison(common, mismatched, unexplained, max(slack.values()))


def _timer_slack_s(frames) -> float:
    """How late this run's fake server fired deadlines, scenario s: the latest fault it fired
    (age - due age), and the event loop's worst wake-up lag the client recorded (the same
    loop as the server's in an in-process soak), plus a wall millisecond, at its time scale."""
    sessions = server_sessions(frames)
    late = (sessions["age"] - sessions["due_age"]).astype(float).dropna()
    scale = max(float(m.get("time_scale") or 1.0) for m in frames.manifests.values())
    ev = frames.events
    lag = ev.loc[(ev["type"].astype(str) == "loop_lag").to_numpy(bool), "lag_ms"].astype(float)
    lag_s = (float(lag.max()) if len(lag.dropna()) else 0.0) / 1000.0 * scale
    return max(float(late.max()) if len(late) else 0.0, lag_s) + scale / 1000.0


def saturation(*runs) -> list[str]:
    """Why the harness itself says a run's timings describe the machine, not the service, one
    reason per finding (empty when it kept time): the manifest's `saturated` (append send
    lateness p99), the fake server's fault lateness p99, and the event loop's worst wake-up
    lag, each against SATURATED_P99_MS wall."""
    from harness.report.fidelity import fault_lateness

    reasons = []
    for frames in runs:
        scales = {run: float(m.get("time_scale") or 1.0) for run, m in frames.manifests.items()}
        for run, m in frames.manifests.items():
            if m.get("saturated"):
                reasons.append(f"{run}: append lateness p99 {m['append_lateness_p99_ms']} ms")
        for row in fault_lateness(frames.events, scales).itertuples():
            if row.saturated:
                reasons.append(f"{row.run}: fault lateness p99 {row.p99_ms:.1f} ms")
        ev = frames.events
        lags = ev[(ev["type"].astype(str) == "loop_lag").to_numpy(bool)]
        for run, lag in lags.groupby(lags["run"].astype(str))["lag_ms"]:
            if float(lag.max()) > SATURATED_P99_MS:
                reasons.append(f"{run}: event-loop wake-up lag up to {float(lag.max()):.1f} ms")
    return reasons


def require_timing(ok: bool, what: str, *runs) -> None:
    """Assert `ok`, a check that holds only when the harness kept time. When it fails and the
    harness measured itself saturated in one of `runs`, skip with both reasons instead: the
    machine, not the code, is what the check would have measured."""
    if ok:
        return
    reasons = saturation(*runs)
    if reasons:
        pytest.skip(f"harness saturated ({'; '.join(reasons)}), so not checked: {what}")
    raise AssertionError(f"{what} (the harness measured no saturation)")


def faults_fired(frames) -> pd.Series:
    """Faults the fake server injected (at handshakes too), counted by policy."""
    ev = frames.events
    rows = ev[
        (ev["src"].astype(str) == "server").to_numpy(bool)
        & ev["type"].astype(str).isin(["fault", "handshake_fault"]).to_numpy(bool)
    ]
    return rows["text"].astype(str).value_counts()


ROOT = Path(__file__).resolve().parent.parent


def start_listener(banner: Path, args: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    """`rtsoak serve` or `rtsoak proxy` with `args` (an ephemeral loopback port); its URL, read
    from its banner in the file `banner` (a file: nobody has to drain a pipe)."""
    with banner.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = banner.read_text()
        if "ws://" in text:
            return proc, "ws://" + text.split("ws://", 1)[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_listener(proc)
    raise AssertionError(f"rtsoak {args[0]} did not start: {banner.read_text()}")


def stop_listener(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
