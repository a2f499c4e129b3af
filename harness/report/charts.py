"""Matplotlib charts of the frames. Each takes an Axes, draws, and returns it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter, MultipleLocator  # noqa: E402

__all__ = ["close_code_chart", "survival_chart", "timeline_chart", "utterance_chart", "save"]

_MINUTES = FuncFormatter(lambda x, _pos: f"{x / 60:g}")
_MINUTE_STEPS = (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120)


def _minute_axis(ax: Axes) -> None:
    """Label a seconds axis in minutes, with ticks on round minutes."""
    span = max(ax.get_xlim()[1], 1.0) / 60
    step = next((s for s in _MINUTE_STEPS if span / s <= 10), _MINUTE_STEPS[-1])
    ax.xaxis.set_major_locator(MultipleLocator(step * 60))
    ax.xaxis.set_major_formatter(_MINUTES)


CODE_COLOURS = {
    "1006": "#d62728",
    "1000": "#7f7f7f",
    "1001": "#ff7f0e",
    "1011": "#9467bd",
    "1012": "#8c564b",
    "1013": "#e377c2",
    "none": "#bcbd22",
}


def _palette(labels, known: dict[str, str]) -> list[str]:
    """Fixed colours where a label has one (1006 is always red), the default cycle else."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [known.get(str(label), cycle[i % len(cycle)]) for i, label in enumerate(labels)]


def _nothing(ax: Axes, message: str) -> Axes:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def survival_chart(ax: Axes, fitters: dict[str, KaplanMeierFitter]) -> Axes:
    for kmf in fitters.values():
        kmf.plot_survival_function(
            ax=ax, ci_show=True, show_censors=True, censor_styles={"marker": "|", "ms": 8}
        )
    ax.set_xlim(left=0)
    _minute_axis(ax)
    ax.set_xlabel("connection age (minutes, scenario time)")
    ax.set_ylabel("share of connections still open")
    ax.set_ylim(0, 1.02)
    ax.set_title("Connection survival (Kaplan-Meier, 95 % CI; | = censored)")
    ax.grid(alpha=0.3)
    ax.legend(title="variant")
    return ax


def close_code_chart(ax: Axes, codes: pd.DataFrame) -> Axes:
    if codes.empty:
        return _nothing(ax, "no connection")
    table = codes.assign(label=codes["close_code"].astype(str) + " " + codes["cause"].astype(str))
    pivot = table.pivot_table(
        index="variant",
        columns="label",
        values="connections",
        aggfunc="sum",
        fill_value=0,
        observed=True,
    )
    codes = [str(label).split(" ")[0] for label in pivot.columns]
    return _stacked(
        ax,
        pivot,
        _palette(codes, CODE_COLOURS),
        "connections",
        "How connections ended (close code and cause)",
        "code cause",
    )


def _stacked(
    ax: Axes, table: pd.DataFrame, colours: list[str], unit: str, title: str, legend: str
) -> Axes:
    """Horizontal stacked bars, one per variant."""
    table.plot.barh(ax=ax, stacked=True, color=colours)
    ax.set_xlabel(unit)
    ax.set_ylabel("variant")
    ax.set_title(title)
    ax.legend(title=legend, fontsize=8)
    return ax


def utterance_chart(ax: Axes, outcomes: pd.DataFrame) -> Axes:
    if outcomes.empty or outcomes.to_numpy().sum() == 0:
        return _nothing(ax, "no utterance was sent")
    colours = {
        "completed": "#2ca02c",
        "unfinished": "#c7c7c7",
        "lost": "#d62728",
        "failed": "#ff7f0e",
        "timeout": "#9467bd",
        "mismatch": "#8c564b",
        "rejected": "#e377c2",
    }
    return _stacked(
        ax,
        outcomes,
        _palette(outcomes.columns, colours),
        "utterances",
        "Utterance outcomes (unfinished = cut by the end of the run)",
        "status",
    )


def timeline_chart(ax: Axes, connections: pd.DataFrame) -> Axes:
    """One row per worker: each connection a bar, each drop a mark coloured by close code."""
    conns = connections[connections["established"].notna()]
    rows = {
        key: i
        for i, key in enumerate(
            conns[["variant", "worker"]].drop_duplicates().itertuples(index=False, name=None)
        )
    }
    # one collection of bars and one marker line per close code: tens of thousands of
    # connections draw in a blink, where a Line2D each took seconds
    y = np.array(
        [rows[key] for key in zip(conns["variant"], conns["worker"], strict=True)], dtype=float
    )
    closed = conns["closed"].to_numpy(float)
    ax.hlines(y, conns["established"].to_numpy(float), closed, color="#1f77b4", lw=3)
    dropped = conns["dropped"].to_numpy(bool)
    codes = conns["close_code"].astype(object).where(conns["close_code"].notna(), "none")
    codes = codes.astype(str).to_numpy()[dropped]
    for code in pd.unique(codes):  # in order of first drop, as the legend lists them
        at = codes == code
        ax.plot(
            closed[dropped][at],
            y[dropped][at],
            "x",
            ls="none",
            color=CODE_COLOURS.get(code, "black"),
            ms=8,
            mew=2,
            label=f"drop {code}",
        )
    if len(codes):
        ax.legend(fontsize=8, loc="upper right")
    ax.set_yticks(list(rows.values()), [f"{v} w{w}" for v, w in rows], fontsize=7)
    _minute_axis(ax)
    ax.set_xlabel("scenario time (minutes)")
    ax.set_title("Every connection per worker (x = drop, coloured by close code)")
    ax.grid(axis="x", alpha=0.3)
    return ax


def save(fig: plt.Figure, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _variant_colours(variants: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(variants)}


def hazard_chart(ax: Axes, hazard: pd.DataFrame) -> Axes:
    """Drops per connection-hour by age band, per variant, with exact Poisson 95 % CIs."""
    if hazard.empty:
        return _nothing(ax, "no connection opened")
    variants = list(dict.fromkeys(hazard["variant"]))
    colours = _variant_colours(variants)
    for v in variants:
        rows = hazard[hazard["variant"] == v]
        mid = (rows["age_from"] + rows["age_to"]) / 2
        ax.step(mid, rows["per_hour"], where="mid", color=colours[v], label=v)
        ax.fill_between(
            mid, rows["per_hour_lo"], rows["per_hour_hi"], step="mid", color=colours[v], alpha=0.15
        )
    ax.set_xlim(left=0)
    _minute_axis(ax)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("connection age (minutes, scenario time)")
    ax.set_ylabel("drops per connection-hour")
    ax.set_title("Hazard by session age (95 % CI): flat = random loss, rising = wear-out")
    ax.grid(alpha=0.3)
    ax.legend(title="variant", fontsize=8)
    return ax


def state_at_drop_chart(ax: Axes, connections: pd.DataFrame) -> Axes:
    """What the client was doing when its connection dropped, per variant."""
    drops = connections[connections["dropped"]]
    table = pd.crosstab(drops["variant"].astype(str), drops["state"].astype(str))
    colours = {
        "idle": "#7f7f7f",
        "streaming": "#1f77b4",
        "awaiting_transcript": "#ff7f0e",
        "configuring": "#9467bd",
        "connecting": "#8c564b",
    }
    if table.empty:
        ax.text(0.5, 0.5, "no drops", ha="center", va="center", transform=ax.transAxes)
    else:
        table.plot.barh(ax=ax, stacked=True, color=_palette(table.columns, colours))
        ax.legend(title="state at drop", fontsize=8)
    ax.set_xlabel("drops")
    ax.set_ylabel("variant")
    ax.set_title("State at drop")
    return ax


def since_sent_chart(ax: Axes, connections: pd.DataFrame) -> Axes:
    """Time since the last frame sent and received when the connection dropped."""
    drops = connections[connections["dropped"]]
    data = [drops["since_sent"].dropna(), drops["since_recv"].dropna()]
    if all(len(d) == 0 for d in data):
        ax.text(0.5, 0.5, "no drops", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.boxplot([d.to_numpy() for d in data], orientation="horizontal", showfliers=True)
        ax.set_yticks([1, 2], ["since last sent", "since last received"])
    ax.set_xlabel("seconds (scenario time) before the drop")
    ax.set_title("Quiet before the drop (long quiet points at idle timeouts)")
    ax.grid(axis="x", alpha=0.3)
    return ax


def latency_chart(ax: Axes, latency: pd.DataFrame) -> Axes:
    """Transcription latency p50 / p90 / p99 per variant."""
    if latency.empty:
        ax.text(0.5, 0.5, "no transcripts", ha="center", va="center", transform=ax.transAxes)
    else:
        latency.set_index("variant")[["p50", "p90", "p99"]].plot.barh(ax=ax)
        ax.legend(title="percentile", fontsize=8)
    ax.set_xlabel("seconds from commit to transcript (scenario time)")
    ax.set_ylabel("variant")
    ax.set_title("Transcription latency")
    return ax


# A CDF drawn through at most about this many points per variant looks the same as one
# through every append (millions), and renders in milliseconds rather than seconds.
CDF_POINTS = 2000


def cdf_points(values: np.ndarray, points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, share at or below each) of an empirical CDF, thinned to about `points`
    points: evenly spaced ranks, plus ranks geometrically closer to the top so the tail (p99
    and beyond, what lateness is about) keeps its shape; the largest value is always kept."""
    x = np.sort(values)
    n = len(x)
    if n <= points:
        return x, np.arange(1, n + 1) / n
    even = np.linspace(0, n - 1, points // 2).astype(np.int64)
    tail = n - np.geomspace(1, n, points // 2).astype(np.int64)
    ranks = np.unique(np.concatenate([even, tail, [n - 1]]))
    return x[ranks], (ranks + 1) / n


def lateness_chart(ax: Axes, lateness: pd.DataFrame) -> Axes:
    """How late append frames left against their deadlines: a CDF per variant. `lateness`
    has `variant` and `lag_ms` of appends (an events frame works too: its appends are used)."""
    if "type" in lateness:
        lateness = lateness.loc[
            lateness["type"] == "input_audio_buffer.append", ["variant", "lag_ms"]
        ]
    # by category code rather than groupby, which would copy every column of millions of rows
    variant = lateness["variant"].astype("category")
    codes = variant.cat.codes.to_numpy()
    lags = np.asarray(lateness["lag_ms"].to_numpy(na_value=np.nan))  # float32: half the copy
    for i, v in enumerate(variant.cat.categories):
        lag = lags[codes == i]
        lag = lag[~np.isnan(lag)]
        if len(lag):
            x, share = cdf_points(lag)
            ax.plot(np.maximum(x.astype(float), 0.01), share, label=str(v))
    ax.set_xscale("log")
    ax.axvline(10, color="#d62728", ls="--", lw=1, label="10 ms: saturated above (p99)")
    ax.set_xlabel("send lateness (wall ms, log scale)")
    ax.set_ylabel("share of appends")
    ax.set_title("Pacing accuracy: how late appends left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def recovery_chart(ax: Axes, recovery: pd.DataFrame) -> Axes:
    """Seconds from each drop to the next completed transcript, per variant."""
    if recovery.empty or recovery["recovery"].notna().sum() == 0:
        ax.text(0.5, 0.5, "no recoveries to show", ha="center", va="center", transform=ax.transAxes)
    else:
        groups = [(v, g["recovery"].dropna().to_numpy()) for v, g in recovery.groupby("variant")]
        ax.boxplot([g for _, g in groups], orientation="horizontal")
        ax.set_yticks(range(1, len(groups) + 1), [v for v, _ in groups], fontsize=8)
    ax.set_xlabel("seconds (scenario time) from drop to the next completed transcript")
    ax.set_title("Recovery after a drop")
    ax.grid(axis="x", alpha=0.3)
    return ax
