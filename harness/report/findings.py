"""Findings: one plain sentence per field hypothesis and variant, with numbers from the frames,
and (for fake-server runs) how well the diagnosis of each drop agrees with the fault injected.

The diagnosis is a rule over what the client did before the drop, written down so a reader can
argue with it (docs/report.md, "The diagnosis of a drop"; a test checks the two agree). First
rule that matches:
- `handshake`: the connection never opened;
- `idle`: nothing sent for `IDLE_S` or more (idle timeout theory);
- `buffer`: at least `BUFFER_MS` of uncommitted audio (buffer pressure);
- `fast`: more than `FAST_SPEED` x real time of audio scheduled in the `WINDOW_S` before the drop
  (audio-too-fast theory);
- `burst`: in that window, `BUNCH_FRAMES` appends scheduled within `BUNCH_S` (micro-bursts);
- `late`: an append sent in that window left `LATE_MS` (wall) or more after its deadline: the
  server saw another pattern than the one scheduled, and the harness was too late to tell;
- `age`: none of those: the session simply died at its age (hot sessions, random loss, ...).

Why the schedule: the sender's timing rules are about what the pacing strategy does, and at time
scale k one wall millisecond of event-loop jitter is k scenario milliseconds. An append's
scheduled scenario time, `t - lag_ms / 1000 * scale`, is the same at every scale, so the same
seeded run gets the same diagnosis at 10x and 60x. Harness lateness is judged where it lives, in
wall milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from harness.log.frames import connection_key
from harness.log.recorder import APPEND
from harness.report import analysis
from harness.report.analysis import observed_connections, poisson_rate_ci

__all__ = [
    "CATEGORIES",
    "INJECTED_TO_DIAGNOSIS",
    "MIN_DROPS",
    "agreement_table",
    "diagnose",
    "findings",
]

IDLE_S = 10.0
BUFFER_MS = 10_000.0
WINDOW_S = 2.0
FAST_SPEED = 1.25
BUNCH_FRAMES = 5
BUNCH_S = 0.02
# An append this late (wall ms) means frames went out bunched behind it whatever the schedule
# said: at 1x it is one 20 ms frame period, at 60x over a scenario second of stall.
LATE_MS = 20.0
COINCIDENCE_S = 1.0
# Below this many drops a variant's shares say nothing; the report's one minimum (analysis).
MIN_DROPS: int = getattr(analysis, "MIN_DROPS", 10)

# In rule order; `handshake` is judged first, `age` is what is left.
CATEGORIES = ("handshake", "idle", "buffer", "fast", "burst", "late", "age")
RULES = {
    "handshake": "the connection never opened",
    "idle": f"nothing sent for {IDLE_S:g} s or more",
    "buffer": f"{BUFFER_MS / 1000:g} s or more of uncommitted audio",
    "fast": f"more than {FAST_SPEED:g}x real time of audio scheduled in the {WINDOW_S:g} s "
    "before the drop",
    "burst": f"{BUNCH_FRAMES} appends scheduled within {BUNCH_S * 1000:g} ms in that window",
    "late": f"an append sent in that window left {LATE_MS:g} ms (wall) or more late: "
    "harness too late to tell",
    "age": "none of the above",
}

# what each fault policy should look like from the client, for the agreement table
INJECTED_TO_DIAGNOSIS = {
    "idle_timeout": "idle",
    "buffer_pressure": "buffer",
    "micro_burst": "burst",
    "rate": "fast",
    "session_age": "age",
    "random_loss": "age",
    "silence_hazard": "age",
    "concurrency_cap": "age",
    "max_duration": "age",
    "max_idle": "idle",
    "accept_then_close": "age",
    "handshake_faults": "handshake",
}
# policies about frame timing: the server judges them on arrival, in scenario time
_TIMING_FAULTS = ("micro_burst", "rate")


def _connection(frame: pd.DataFrame) -> pd.Series:
    """Each row's connection label (docs/frames.md), built where a hand-made frame lacks it."""
    key = frame["connection"] if "connection" in frame.columns else connection_key(frame)
    return key.astype(str)


def _worker_key(frame: pd.DataFrame) -> pd.Series:
    """A worker's identity, (run, variant, worker), as one string."""
    parts = [frame[c].astype(str) for c in ("run", "variant", "worker")]
    return parts[0].str.cat(parts[1:], sep="/")


def _window(
    connections: pd.DataFrame, events: pd.DataFrame, scales: Mapping[str, float]
) -> pd.DataFrame:
    """Per drop (index: the connections' index): audio_ms scheduled in its last WINDOW_S,
    bunched (any BUNCH_FRAMES scheduled within BUNCH_S), late (any append LATE_MS late).

    An append counts for audio and bunching when it was scheduled in the window and sent before
    the close: one scheduled earlier but sent into the window late is not what the strategy
    meant to send there. It counts for lateness when it was sent in the window, whenever due:
    that is when the harness stalled."""
    drops = connections[connections["dropped"]]
    appends = events[(events["type"] == APPEND).to_numpy(bool)]
    lag = appends["lag_ms"].astype(float).fillna(0.0)  # a proxied client's: no deadline known
    scale = appends["run"].astype(str).map(dict(scales)).astype(float).fillna(1.0)
    t = appends["t"].astype(float)
    sent = pd.DataFrame(
        {
            "key": _connection(appends).to_numpy(),
            "t": t.to_numpy(),
            "due": (t - lag / 1000 * scale).to_numpy(),
            "audio_ms": appends["audio_ms"].astype(float).to_numpy(),
            "late": (lag >= LATE_MS).to_numpy(),
        }
    )
    ends = pd.DataFrame(
        {
            "key": _connection(drops).to_numpy(),
            "closed": drops["closed"].to_numpy(float),
            "drop": drops.index,
        }
    )
    recent = sent.merge(ends, on="key")
    start = recent["closed"] - WINDOW_S
    recent = recent[(recent["t"] >= start) & (recent["t"] <= recent["closed"])]
    planned = recent[recent["due"] >= recent["closed"] - WINDOW_S].sort_values(["drop", "due"])
    kth_next = planned.groupby("drop")["due"].shift(-(BUNCH_FRAMES - 1))
    pattern = (
        planned.assign(bunched=kth_next - planned["due"] <= BUNCH_S)
        .groupby("drop")
        .agg(audio_ms=("audio_ms", "sum"), bunched=("bunched", "any"))
    )
    late = recent.groupby("drop")["late"].any()
    # no appends in the window: none of these
    return pd.DataFrame(
        {
            "audio_ms": pattern["audio_ms"].reindex(drops.index, fill_value=0.0),
            "bunched": pattern["bunched"].reindex(drops.index, fill_value=False),
            "late": late.reindex(drops.index, fill_value=False),
        }
    )


def diagnose(
    connections: pd.DataFrame,
    events: pd.DataFrame,
    scales: Mapping[str, float] | None = None,
) -> pd.Series:
    """The rule of the module docstring for every connection (index aligned with
    `connections`): one of CATEGORIES for drops and failed handshakes, NA for the rest.
    `events` needs the appends of each drop's last WINDOW_S at least; `scales` maps each run
    to its time scale (manifest `time_scale`; a run not in it counts as 1x)."""
    drops = connections[connections["dropped"]]
    window = _window(connections, events, scales or {})
    audio = window["audio_ms"].to_numpy(float)
    idle = (drops["since_sent"] >= IDLE_S).fillna(False).to_numpy(bool)
    buffer = (drops["uncommitted_ms"] >= BUFFER_MS).fillna(False).to_numpy(bool)
    fast = audio > FAST_SPEED * WINDOW_S * 1000
    bunched, late = window["bunched"].to_numpy(bool), window["late"].to_numpy(bool)
    diagnosis = np.select(
        [idle, buffer, fast, bunched, late], ["idle", "buffer", "fast", "burst", "late"], "age"
    )
    out = pd.Series(pd.NA, index=connections.index, dtype="object")
    out[drops.index] = diagnosis
    out[connections["cause"].astype(str) == "handshake_failed"] = "handshake"
    return out


def _with_another_worker(closed: np.ndarray, worker: np.ndarray) -> int:
    """How many drops had a drop of another worker within ±COINCIDENCE_S: a window of sorted
    times per drop, so the cost grows with drops times their neighbours, not drops squared.
    `worker` holds one code per worker identity (run, variant, worker)."""
    order = np.argsort(closed, kind="stable")
    times, workers = closed[order], worker[order]
    lo = np.searchsorted(times, times - COINCIDENCE_S, side="left")
    hi = np.searchsorted(times, times + COINCIDENCE_S, side="right")
    return sum(bool((workers[a:b] != w).any()) for a, b, w in zip(lo, hi, workers, strict=True))


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100 * part / whole:.0f} %)" if whole else "none"


def _age_sentence(drops: pd.DataFrame, weibull: pd.Series | None) -> str:
    ages = drops["lifetime"] / 60
    n = len(drops)
    cv = float(ages.std() / ages.mean()) if n > 1 and ages.mean() > 0 else math.nan
    cluster = (
        f"drops cluster at {ages.median():.1f} min of age (spread {cv:.2f} of the mean)"
        if cv < 0.35
        else f"drop ages spread from {ages.min():.1f} to {ages.max():.1f} "
        f"min (median {ages.median():.1f})"
    )
    verdict = None if weibull is None else weibull["verdict"]
    if verdict in ("rising", "falling", "flat"):
        fit = (
            f"Weibull shape {weibull['shape']:.2f}, 95 % CI "
            f"{weibull['shape_lo']:.2f}–{weibull['shape_hi']:.2f}"
        )
        shape = {
            "rising": f"the hazard rises with session age ({fit}): sessions wear out",
            "falling": f"the hazard falls with age ({fit})",
            "flat": f"the hazard is flat in age ({fit}): consistent with random loss, "
            "not with a session-age limit",
        }[verdict]
    else:
        shape = "the hazard's shape could not be fitted"
    return f"{cluster}; {shape}."


def _timing_sentence(
    diagnosis: pd.Series, n: int, lateness: pd.Series | pd.DataFrame, scale: float | None
) -> str:
    """Only what happened: a share of zero drops is not said, so a report never talks of
    bursts that were not there."""
    counts = diagnosis.value_counts()
    said = [
        f"{_share(int(counts[c]), n)} drops {what}"
        for c, what in (
            (
                "burst",
                f"followed appends scheduled bunched ({BUNCH_FRAMES} within {BUNCH_S * 1000:g} ms)",
            ),
            ("fast", f"followed audio scheduled faster than {FAST_SPEED:g}x real time"),
            (
                "late",
                f"came after an append the harness sent {LATE_MS:g} ms or more late: "
                "too late to tell what the server saw",
            ),
        )
        if counts.get(c, 0)
    ]
    head = "; ".join(said) if said else "no drop followed bunched, fast or late appends"
    p99 = analysis.lateness_percentiles(lateness, (99,))["p99"]
    # a proxied client's appends have no deadline rtsoak knows of
    pacing = "no deadlines" if np.isnan(p99) else f"p99 lateness {p99:.1f} ms"
    at = f" at {scale:g}x" if scale else ""
    return f"{head}, in the {WINDOW_S:g} s before the drop (all appends{at}: {pacing})."


def _truth_sentence(drops: pd.DataFrame, diagnosis: pd.Series) -> str | None:
    injected = drops["injected_fault"].astype(object)
    known = injected.notna()
    if not known.any():
        return None
    injected, diagnosis = injected[known], diagnosis[known[known].index]
    expected = injected.map(INJECTED_TO_DIAGNOSIS).fillna("age")
    agree = int((expected == diagnosis).sum())
    counts = ", ".join(f"{k} {v}" for k, v in injected.value_counts().items())
    sentence = (
        f"rtsoak injected {counts}; the diagnosis agrees with the injected fault for "
        f"{_share(agree, len(injected))} drops"
    )
    late = int((diagnosis == "late").sum())
    if late:
        sentence += f" ({late} the harness was too late to tell)"
    # a frame-timing fault on a schedule with neither burst nor speed-up: the harness's jitter,
    # times the scale, is what the server judged (docs/faults.md, time compression caveats)
    jitter = int((injected.isin(_TIMING_FAULTS) & ~diagnosis.isin(["burst", "fast", "late"])).sum())
    if jitter:
        sentence += (
            f"; {jitter} micro_burst or rate faults fired where the schedule had no burst or "
            "speed-up: the server judged the harness's jitter, multiplied by the time scale"
        )
    return sentence + "."


def _no_drops_sentence(mine: pd.DataFrame, events: pd.DataFrame, hours: float) -> str:
    """Why a variant has nothing to explain, as far as the run can tell: how low its rate
    can be said to be, whether the fake server fired anything at its connections, and the
    most audio its callers left in the buffer before a commit (what a buffer limit judges)."""
    _, upper = poisson_rate_ci(0, hours)
    sentence = (
        f"No connection dropped in {hours:.1f} connection-hours: the drop rate is below "
        f"{upper:.2g} per connection-hour (95 % upper bound)"
    )
    server = events["src"].astype(str) == "server"
    if server.any():
        fired = server & (events["type"] == "fault") & events["item"].isin(mine["request_id"])
        sentence += (
            "; the fake server fired no fault at its connections"
            if not fired.any()
            else f"; the fake server fired {int(fired.sum())} fault(s) that ended nothing"
        )
    started = events[
        (events["type"] == "utt_start")
        & events["variant"].astype(str).isin(mine["variant"].astype(str).unique())
    ]
    if len(started):
        sentence += (
            f"; the longest utterance held {started['audio_ms'].max() / 1000:.1f} s of audio "
            "before its commit"
        )
    return sentence + "."


def findings(
    connections: pd.DataFrame,
    events: pd.DataFrame,
    lateness: pd.Series | pd.DataFrame | None = None,
    scales: Mapping[str, float] | None = None,
    diagnosis: pd.Series | None = None,
    weibull: pd.DataFrame | None = None,
) -> list[dict[str, str | None]]:
    """[{hypothesis, finding, variant}] in a fixed order, each sentence carrying its numbers,
    one block per variant (drops of different variants come from different strategies and
    fault profiles: pooled shares would describe none of them); `variant` is None when the
    runs have one variant. A variant with fewer than MIN_DROPS drops gets one row saying so.

    `events` needs the appends of each drop's last WINDOW_S at least; `lateness` is the send
    lateness of all appends (`ReportFrames.lateness`, or its `lag_ms` alone, which then counts
    for every variant; by default the appends in `events`); `scales` as for `diagnose`.
    `diagnosis` and `weibull` (`analysis.weibull_by_variant`), when a report has fitted them
    already, are read instead of computed again."""
    scales = dict(scales or {})
    conns = observed_connections(connections)
    if diagnosis is None:
        diagnosis = diagnose(connections, events, scales)
    if lateness is None:
        lateness = events.loc[events["type"] == APPEND, ["variant", "lag_ms"]]
    variants = [str(v) for v in conns["variant"].astype(str).unique()]
    several = len(variants) > 1
    if weibull is None:
        weibull = analysis.weibull_by_variant(conns)
    weibull = weibull.set_index("variant") if len(weibull) else pd.DataFrame()
    run_scales = {scales.get(str(r), 1.0) for r in conns["run"].astype(str).unique()}
    scale = next(iter(run_scales)) if len(run_scales) == 1 else None
    out: list[dict[str, str | None]] = []
    for variant in variants or [None]:
        mine = conns if variant is None else conns[conns["variant"].astype(str) == variant]
        label = variant if several else None

        def say(hypothesis: str, sentence: str, label: str | None = label) -> None:
            out.append({"hypothesis": hypothesis, "finding": sentence, "variant": label})

        drops = mine[mine["dropped"]]
        n = len(drops)
        hours = mine["lifetime"].sum() / 3600
        if n == 0:
            say("drops", _no_drops_sentence(mine, events, hours))
            continue
        if n < MIN_DROPS:
            say(
                "drops",
                f"{n} drop{'s' * (n > 1)} in {hours:.1f} connection-hours: too few drops to "
                f"tell (findings need {MIN_DROPS}).",
            )
            continue
        own = str(drops["variant"].iloc[0])
        say("session age", _age_sentence(drops, weibull.loc[own] if own in weibull.index else None))
        idle = int((drops["state"].astype(str) == "idle").sum())
        since = drops["since_sent"].dropna()
        say(
            "idle gaps",
            f"{_share(idle, n)} drops came while idle; {_share(int((since >= IDLE_S).sum()), n)} "
            f"after {IDLE_S:g} s or more without a frame sent (median {since.median():.1f} s).",
        )
        buffered = drops["uncommitted_ms"].fillna(0)
        say(
            "buffer",
            f"{_share(int((buffered >= BUFFER_MS).sum()), n)} drops had "
            f"{BUFFER_MS / 1000:g} s or more of uncommitted audio in the buffer (median "
            f"{buffered.median() / 1000:.1f} s, max {buffered.max() / 1000:.1f} s).",
        )
        lag = lateness
        if isinstance(lateness, pd.DataFrame) and variant is not None:
            lag = lateness[lateness["variant"].astype(str) == variant]
        say("bursts", _timing_sentence(diagnosis[drops.index], n, lag, scale))
        # concurrency: drops of different workers close together, against chance
        together = _with_another_worker(
            drops["closed"].to_numpy(float), pd.factorize(_worker_key(drops))[0]
        )
        span = float(mine["closed"].max() - mine["established"].min()) or 1.0
        chance = 1 - math.exp(-2 * COINCIDENCE_S * (n - 1) / span)
        say(
            "concurrency",
            f"{_share(together, n)} drops had another worker's drop within "
            f"±{COINCIDENCE_S:g} s; by chance about {100 * chance:.0f} % would"
            + (
                "; drops come together: look for a shared cause (concurrency, the host)."
                if together / n > 2 * chance + 0.1
                else "."
            ),
        )
        truth = _truth_sentence(drops, diagnosis[drops.index])
        if truth is not None:
            say("ground truth", truth)
    return out


def agreement_table(
    connections: pd.DataFrame,
    events: pd.DataFrame,
    scales: Mapping[str, float] | None = None,
    diagnosis: pd.Series | None = None,
) -> pd.DataFrame:
    """Drops by injected fault (rows) and diagnosis (columns); `diagnosis` as `diagnose`
    gives it, when already made."""
    drops = connections[connections["dropped"] & connections["injected_fault"].notna()]
    if drops.empty:
        return pd.DataFrame()
    if diagnosis is None:
        diagnosis = diagnose(connections, events, scales)
    diagnosis = diagnosis[drops.index]
    return pd.crosstab(drops["injected_fault"].astype(str), diagnosis.rename("diagnosis"))
