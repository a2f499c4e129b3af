"""Findings: one plain sentence per field hypothesis, with numbers from the frames, and (for
fake-server runs) how well the diagnosis of each drop agrees with the fault actually injected.

The diagnosis is a rule over what the client saw at the drop, written down so a reader can
argue with it:
- `idle`: nothing sent for `IDLE_S` or more (idle timeout theory);
- `buffer`: at least `BUFFER_MS` of uncommitted audio (buffer pressure);
- `fast`: more than `FAST_SPEED` x real time of audio sent in the `WINDOW_S` before the drop
  (audio-too-fast theory);
- `burst`: in that window, `BUNCH_FRAMES` appends within `BUNCH_S`, or an append `BURST_LAG_MS`
  or more late (frames arriving bunched: micro-burst theory);
- `handshake`: the connection never opened;
- `age`: none of those: the session simply died at its age (hot sessions, random loss).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from lifelines import WeibullFitter

from harness.analysis import observed_connections

__all__ = ["diagnose", "findings", "INJECTED_TO_DIAGNOSIS"]

IDLE_S = 10.0
BUFFER_MS = 10_000.0
WINDOW_S = 2.0
FAST_SPEED = 1.25
BUNCH_FRAMES = 5
BUNCH_S = 0.02
BURST_LAG_MS = 20.0
COINCIDENCE_S = 1.0

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
    "accept_then_close": "age",
    "handshake_faults": "handshake",
}


def diagnose(connections: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """The rule above, for every dropped connection (index aligned with `connections`)."""
    drops = connections[connections["dropped"]]
    key = ["run", "worker", "conn"]
    appends = events.loc[
        events["type"] == "input_audio_buffer.append", [*key, "t", "audio_ms", "lag_ms"]
    ]
    # each drop's appends in its last WINDOW_S, all drops in one merge
    recent = appends.merge(drops[[*key, "closed"]].reset_index(names="drop"), on=key)
    recent = recent[
        (recent["t"] >= recent["closed"] - WINDOW_S) & (recent["t"] <= recent["closed"])
    ]
    recent = recent.sort_values(["drop", "t"])
    # BUNCH_FRAMES appends within BUNCH_S: the (k-1)-th next append of the same drop is close
    kth_next = recent.groupby("drop")["t"].shift(-(BUNCH_FRAMES - 1))
    per_drop = (
        recent.assign(
            bunched=kth_next - recent["t"] <= BUNCH_S, late=recent["lag_ms"] >= BURST_LAG_MS
        )
        .groupby("drop")
        .agg(audio_ms=("audio_ms", "sum"), bunched=("bunched", "any"), late=("late", "any"))
        .reindex(drops.index, fill_value=0)  # no appends in the window: none of these
    )
    audio = per_drop["audio_ms"].to_numpy(float)
    bursty = (per_drop["bunched"] | per_drop["late"]).to_numpy(bool)
    idle = (drops["since_sent"] >= IDLE_S).fillna(False).to_numpy(bool)
    buffer = (drops["uncommitted_ms"] >= BUFFER_MS).fillna(False).to_numpy(bool)
    fast = audio > FAST_SPEED * WINDOW_S * 1000
    diagnosis = np.select(
        [idle, buffer, fast, bursty], ["idle", "buffer", "fast", "burst"], default="age"
    )
    out = pd.Series(pd.NA, index=connections.index, dtype="object")
    out[drops.index] = diagnosis
    failed = connections["cause"].astype(str) == "handshake_failed"
    out[failed] = "handshake"
    return out


def _with_another_worker(closed: np.ndarray, worker: np.ndarray) -> int:
    """How many drops had a drop of another worker within ±COINCIDENCE_S: a window of sorted
    times per drop, so the cost grows with drops times their neighbours, not drops squared."""
    order = np.argsort(closed, kind="stable")
    times, workers = closed[order], worker[order]
    lo = np.searchsorted(times, times - COINCIDENCE_S, side="left")
    hi = np.searchsorted(times, times + COINCIDENCE_S, side="right")
    return sum(bool((workers[a:b] != w).any()) for a, b, w in zip(lo, hi, workers, strict=True))


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100 * part / whole:.0f} %)" if whole else "none"


def findings(
    connections: pd.DataFrame, events: pd.DataFrame, lateness: pd.Series | None = None
) -> list[dict[str, str]]:
    """[{hypothesis, finding}] in a fixed order, each sentence carrying its numbers. `events`
    needs the appends of each drop's last `WINDOW_S` at least; `lateness` is the send
    lateness of all appends (by default, of the appends in `events`)."""
    conns = observed_connections(connections)
    drops = conns[conns["dropped"]]
    n = len(drops)
    out: list[dict[str, str]] = []

    def say(hypothesis: str, sentence: str) -> None:
        out.append({"hypothesis": hypothesis, "finding": sentence})

    if n == 0:
        say(
            "drops",
            f"No connection dropped in {conns['lifetime'].sum() / 3600:.1f} "
            "connection-hours: nothing to explain.",
        )
        return out
    # session age: a Weibull shape above 1 means the hazard rises with age
    ages = drops["lifetime"] / 60
    try:
        wf = WeibullFitter().fit(conns["lifetime"].clip(lower=1e-3), conns["dropped"])
        rho = float(wf.rho_)
        lo, hi = (float(wf.summary.loc["rho_", c]) for c in ("coef lower 95%", "coef upper 95%"))
        shape = (
            f"the hazard rises with session age (Weibull shape {rho:.2f}, 95 % CI "
            f"{lo:.2f}–{hi:.2f}): sessions wear out"
            if lo > 1.1
            else f"the hazard falls with age (Weibull shape {rho:.2f}, CI {lo:.2f}–{hi:.2f})"
            if hi < 0.9
            else f"the hazard is flat in age (Weibull shape {rho:.2f}, CI {lo:.2f}–{hi:.2f}): "
            "consistent with random loss, not with a session-age limit"
        )
    except Exception:  # too few drops for a fit
        shape = "too few drops to fit the hazard's shape"
    cv = float(ages.std() / ages.mean()) if n > 1 and ages.mean() > 0 else math.nan
    cluster = (
        f"drops cluster at {ages.median():.1f} min of age (spread {cv:.2f} of the mean)"
        if cv < 0.35
        else f"drop ages spread from {ages.min():.1f} to {ages.max():.1f} "
        f"min (median {ages.median():.1f})"
    )
    say("session age", f"{cluster}; {shape}.")
    # idle gaps
    idle = drops[drops["state"].astype(str) == "idle"]
    since = drops["since_sent"].dropna()
    long_quiet = int((since >= IDLE_S).sum())
    say(
        "idle gaps",
        f"{_share(len(idle), n)} drops came while idle; {_share(long_quiet, n)} "
        f"after {IDLE_S:g} s or more without a frame sent (median {since.median():.1f} s).",
    )
    # buffer
    buffered = drops["uncommitted_ms"].fillna(0)
    say(
        "buffer",
        f"{_share(int((buffered >= BUFFER_MS).sum()), n)} drops had "
        f"{BUFFER_MS / 1000:g} s or more of uncommitted audio in the buffer (median "
        f"{buffered.median() / 1000:.1f} s, max {buffered.max() / 1000:.1f} s).",
    )
    # bursts
    diagnosis = diagnose(connections, events)
    bursty = int((diagnosis == "burst").sum())
    if lateness is None:
        lateness = events.loc[events["type"] == "input_audio_buffer.append", "lag_ms"]
    appends = lateness.dropna()
    # a proxied client's appends have no deadline rtsoak knows of
    pacing = f"p99 lateness {np.percentile(appends, 99):.1f} ms" if len(appends) else "no deadlines"
    fast = int((diagnosis == "fast").sum())
    say(
        "bursts",
        f"{_share(bursty, n)} drops followed bunched appends ({BUNCH_FRAMES} within "
        f"{BUNCH_S * 1000:g} ms, or one {BURST_LAG_MS:g} ms late) and {_share(fast, n)} audio "
        f"faster than {FAST_SPEED:g}x real time, in the {WINDOW_S:g} s before the drop (all "
        f"appends: {pacing}).",
    )
    # concurrency: drops of different workers close together, against chance
    together = _with_another_worker(
        drops["closed"].to_numpy(float), drops["worker"].to_numpy("int64", na_value=-1)
    )
    span = float(conns["closed"].max() - conns["established"].min()) or 1.0
    chance = 1 - math.exp(-2 * COINCIDENCE_S * (n - 1) / span)
    say(
        "concurrency",
        f"{_share(together, n)} drops had another worker's drop within "
        f"±{COINCIDENCE_S:g} s; by chance about {100 * chance:.0f} % would"
        + (
            "; drops come together: look for a shared cause (concurrency, the host)."
            if n >= 5 and together / n > 2 * chance + 0.1
            else "."
        ),
    )
    # ground truth from the fake server
    injected = drops["injected_fault"].astype(object)
    known = injected.notna()
    if known.any():
        expected = injected[known].map(INJECTED_TO_DIAGNOSIS).fillna("age")
        agree = int((expected == diagnosis[known.index[known]]).sum())
        counts = ", ".join(f"{k} {v}" for k, v in injected[known].value_counts().items())
        say(
            "ground truth",
            f"rtsoak injected {counts}; the diagnosis above agrees "
            f"with the injected fault for {_share(agree, int(known.sum()))} drops.",
        )
    return out


def agreement_table(connections: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Drops by injected fault (rows) and diagnosis (columns)."""
    drops = connections[connections["dropped"] & connections["injected_fault"].notna()]
    if drops.empty:
        return pd.DataFrame()
    diagnosis = diagnose(connections, events)[drops.index]
    return pd.crosstab(drops["injected_fault"].astype(str), diagnosis.rename("diagnosis"))
