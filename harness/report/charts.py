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

from harness.report.analysis import MIN_DROPS, lag_counts  # noqa: E402

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


# Up to this many variants overlay in one chart; more get one small chart each (with the
# others in grey behind for context), because nine curves with bands are unreadable.
OVERLAY_MAX = 4


def panels(fig: plt.Figure, variants: list[str], ncols: int = 3, share: bool = True) -> list[Axes]:
    """One axes for all variants when they are few, else a grid of one axes per variant,
    sharing their scales when `share`: what `survival_chart` and `hazard_chart` draw into."""
    if len(variants) <= OVERLAY_MAX:
        return [fig.add_subplot(1, 1, 1)]
    rows = -(-len(variants) // ncols)
    grid = fig.subplots(rows, ncols, sharex=share, sharey=share, squeeze=False).ravel()
    for ax in grid[len(variants) :]:
        ax.set_visible(False)
    return list(grid[: len(variants)])


def panel_height(variants: int, overlay: float, per_row: float = 2.6, ncols: int = 3) -> float:
    """Figure height (inches) for `panels`."""
    return overlay if variants <= OVERLAY_MAX else 0.8 + per_row * -(-variants // ncols)


def _legend_outside(ax: Axes, title: str) -> None:
    """A legend to the right of the plot, where it cannot hide a curve."""
    ax.legend(title=title, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def survival_chart(fig: plt.Figure, fitters: dict[str, KaplanMeierFitter]) -> plt.Figure:
    """Kaplan-Meier curves with 95 % bands and censoring marks: overlaid when few, else one
    panel per variant with every other variant's curve in grey behind it."""
    names = list(fitters)
    axes = panels(fig, names)
    colours = _variant_colours(names)
    for i, ax in enumerate(axes):
        shown = names if len(axes) == 1 else [names[i]]
        if len(axes) > 1:
            for other in names:
                if other != names[i]:
                    fitters[other].plot_survival_function(
                        ax=ax, ci_show=False, color="#cccccc", lw=0.8, legend=False
                    )
            ax.set_title(names[i], fontsize=9)
        for name in shown:
            fitters[name].plot_survival_function(
                ax=ax,
                ci_show=True,
                show_censors=True,
                censor_styles={"marker": "|", "ms": 6},
                color=colours[name],
                legend=len(axes) == 1,
            )
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1.02)
        _minute_axis(ax)
        ax.grid(alpha=0.3)
        ax.set_xlabel("connection age (min, scenario time)")
        ax.set_ylabel("share still open")
    if len(axes) == 1:
        axes[0].set_title("Connection survival (Kaplan-Meier, 95 % CI; | = censored)")
        _legend_outside(axes[0], "variant")
    else:
        fig.suptitle("Connection survival per variant (Kaplan-Meier, 95 % CI; grey: the others)")
    return fig


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
    _legend_outside(ax, legend)
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
    # one collection of bars and one marker line per close code, never an artist per
    # connection, so tens of thousands of connections draw in a blink
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
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends sit outside the axes
    plt.close(fig)


def _variant_colours(variants: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(variants)}


def hazard_chart(fig: plt.Figure, hazard: pd.DataFrame) -> plt.Figure:
    """Drops per connection-hour by age band, per variant over its own lifetimes, with exact
    Poisson 95 % CIs; each band drawn over its whole width."""
    if hazard.empty:
        _nothing(fig.add_subplot(1, 1, 1), "no connection opened")
        return fig
    variants = list(dict.fromkeys(hazard["variant"]))
    colours = _variant_colours(variants)
    # each variant's bands span its own lifetimes, and rates differ a hundredfold between
    # variants: panels keep their own scales
    axes = panels(fig, variants, share=False)
    # the top of the axis: the highest band estimate of a variant with enough drops, with
    # room for its CI, so that one band of one drop in a minute cannot stretch it to 7,000/h
    enough = hazard[~hazard["too_few"]]
    top = float(enough["per_hour"].max()) * 2.0 if len(enough) else 0.0
    for i, ax in enumerate(axes):
        for v in variants if len(axes) == 1 else [variants[i]]:
            rows = hazard[hazard["variant"] == v]
            if rows["too_few"].all():
                if len(axes) > 1:
                    ax.text(
                        0.5,
                        0.5,
                        f"too few drops to tell ({rows['drops'].sum()})",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        fontsize=8,
                    )
                continue
            edges = np.append(rows["age_from"].to_numpy(float), rows["age_to"].iloc[-1])
            ax.stairs(rows["per_hour"].to_numpy(float), edges, color=colours[v], label=v, lw=1.6)
            ax.stairs(
                rows["per_hour_hi"].to_numpy(float),
                edges,
                baseline=rows["per_hour_lo"].to_numpy(float),
                fill=True,
                color=colours[v],
                alpha=0.15,
            )
        if len(axes) > 1:
            ax.set_title(variants[i], fontsize=9)
        ax.set_xlim(left=0)
        own = hazard.loc[hazard["variant"] == variants[i], "per_hour"].max()
        ax.set_ylim(0, (top if len(axes) == 1 else 2.0 * own) or None)
        _minute_axis(ax)
        ax.set_xlabel("connection age (min, scenario time)")
        ax.set_ylabel("drops / connection-hour")
        ax.grid(alpha=0.3)
    title = "Hazard by session age (95 % CI): flat = random loss, rising = wear-out"
    if len(axes) == 1:
        if not len(enough):
            _nothing(axes[0], f"too few drops to tell (fewer than {MIN_DROPS} per variant)")
        axes[0].set_title(title)
        if axes[0].get_legend_handles_labels()[0]:
            _legend_outside(axes[0], "variant")
    else:
        fig.suptitle(title)
    return fig


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
        _legend_outside(ax, "state at drop")
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
        _legend_outside(ax, "percentile")
    ax.set_xlabel("seconds from commit to transcript (scenario time)")
    ax.set_ylabel("variant")
    ax.set_title("Transcription latency")
    return ax


# A CDF drawn through at most about this many points per variant looks the same as one
# through every append (millions), and renders in milliseconds rather than seconds.
CDF_POINTS = 2000


def cdf_points(
    values: np.ndarray, points: int = CDF_POINTS, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, share at or below each) of an empirical CDF of `values` (each repeated
    `counts` times, if given), thinned to about `points` points: evenly spaced ranks, plus
    ranks geometrically closer to the top so the tail (p99 and beyond, what lateness is
    about) keeps its shape; the largest value is always kept."""
    order = np.argsort(values, kind="stable")
    x = np.asarray(values)[order]
    weight = np.ones(len(x), np.int64) if counts is None else np.asarray(counts)[order]
    ends = np.cumsum(weight)  # the rank (from 1) of each value's last copy
    n = int(ends[-1]) if len(ends) else 0
    if len(x) <= points:
        return x, ends / max(n, 1)
    even = np.linspace(0, n - 1, points // 2).astype(np.int64)
    tail = n - np.geomspace(1, n, points // 2).astype(np.int64)
    ranks = np.unique(np.concatenate([even, tail, [n - 1]]))
    at = np.unique(np.searchsorted(ends, ranks + 1, side="left"))
    return x[at], ends[at] / n


def lateness_chart(ax: Axes, lateness: pd.DataFrame) -> Axes:
    """How late append frames left against their deadlines: a CDF per variant. `lateness`
    has `variant` and `lag_ms` of appends, counted (`count`: ReportFrames.lateness) or one
    row each (an events frame works too: its appends are used)."""
    if "type" in lateness:
        lateness = lateness.loc[
            lateness["type"] == "input_audio_buffer.append", ["variant", "lag_ms"]
        ]
    variant = lateness["variant"].astype("category")
    codes = variant.cat.codes.to_numpy()
    lags, counts = lag_counts(lateness)
    kept = codes[~np.isnan(lateness["lag_ms"].to_numpy(float, na_value=np.nan))]
    for i, v in enumerate(variant.cat.categories):
        mine = kept == i
        if mine.any():
            x, share = cdf_points(lags[mine], counts=counts[mine])
            ax.plot(np.maximum(x.astype(float), 0.01), share, label=str(v))
    ax.set_xscale("log")
    ax.axvline(10, color="#d62728", ls="--", lw=1, label="10 ms: saturated above (p99)")
    ax.set_xlabel("send lateness (wall ms, log scale)")
    ax.set_ylabel("share of appends")
    ax.set_title("Pacing accuracy: how late appends left")
    ax.grid(alpha=0.3)
    _legend_outside(ax, "variant")
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


def logrank_matrix_chart(ax: Axes, logrank: pd.DataFrame) -> Axes:
    """Holm-corrected log-rank p-values of every pair of variants as a matrix: the pairs the
    run tells apart (p < 0.05) stand out, where a table of dozens of rows hides them."""
    if logrank is None or logrank.empty:
        return _nothing(ax, "one variant: nothing to compare")
    names = sorted(set(logrank["a"]) | set(logrank["b"]))
    index = {n: i for i, n in enumerate(names)}
    matrix = np.full((len(names), len(names)), np.nan)
    for row in logrank.itertuples(index=False):
        i, j = index[row.a], index[row.b]
        matrix[i, j] = matrix[j, i] = row.p_holm
    shown = np.log10(np.clip(matrix, 1e-4, 1.0))
    image = ax.imshow(shown, cmap="RdYlGn", vmin=-4, vmax=0)
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j:
                p = matrix[i, j]
                ax.text(
                    j,
                    i,
                    "<.001" if p < 0.001 else f"{p:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    fontweight="bold" if p < 0.05 else "normal",
                    color="white" if p < 0.01 else "black",
                )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="log10 p (Holm)", shrink=0.8)
    ax.set_title("Do lifetimes differ? Log-rank p (Holm); bold: p < 0.05")
    return ax
