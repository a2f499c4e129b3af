"""Night over night: the trend of a scenario's runs, so a regression is visible.

`rtsoak report --history reports/nightly-*` charts, per run in start order, the Kaplan-Meier
median lifetime, drops per connection-hour (with CIs) and utterances lost for good, overall and
per variant, into trend.html, trend.png and trend.json.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness import analysis
from harness.frames import RunDirError, load_for_report
from harness.report import charts

__all__ = ["build_history"]


def _run_metrics(run_dir: Path) -> list[dict]:
    frames = load_for_report(run_dir)  # connections and utterances: no full events frame
    conns, utts = frames.connections, frames.utterances
    manifest = frames.manifests[run_dir.name]
    rows = []
    groups = [("all", conns, utts)] + [
        (str(v), conns[conns["variant"] == v], utts[utts["variant"] == v])
        for v in conns["variant"].astype(str).unique()
    ]
    for label, c, u in groups:
        observed = analysis.observed_connections(c)
        if observed.empty:
            continue
        kmf = analysis.kaplan_meier(observed["lifetime"], observed["dropped"], label)
        drops, hours, rate, (lo, hi) = analysis.drop_rate(observed)
        lost = int(((u["status"].astype(str) == "lost") & u["final"]).sum())
        rows.append(
            {
                "run": run_dir.name,
                "started": manifest.get("started"),
                "variant": label,
                "connections": len(observed),
                "drops": drops,
                "connection_hours": hours,
                "drops_per_hour": rate,
                "drops_per_hour_lo": lo,
                "drops_per_hour_hi": hi,
                "median_s": float(kmf.median_survival_time_),
                "lost_utterances": lost,
            }
        )
    return rows


def build_history(run_dirs: list[Path], out: Path) -> Path:
    rows = [r for d in run_dirs for r in _run_metrics(d)]
    if not rows:
        raise RunDirError("no connections in any of these runs; nothing to trend")
    table = pd.DataFrame(rows).sort_values(["started", "run"])
    out.mkdir(parents=True, exist_ok=True)
    overall = table[table["variant"] == "all"].reset_index(drop=True)
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    x = range(len(overall))
    axes[0].plot(x, overall["median_s"] / 60, marker="o")
    axes[0].set_ylabel("median lifetime (min)")
    axes[1].errorbar(
        x,
        overall["drops_per_hour"],
        yerr=[
            overall["drops_per_hour"] - overall["drops_per_hour_lo"],
            overall["drops_per_hour_hi"] - overall["drops_per_hour"],
        ],
        marker="o",
        capsize=3,
    )
    axes[1].set_ylabel("drops / connection-hour")
    axes[2].bar(x, overall["lost_utterances"], color="#d62728")
    axes[2].set_ylabel("utterances lost")
    axes[2].set_xticks(list(x), overall["run"], rotation=30, ha="right", fontsize=8)
    axes[0].set_title("Night over night (all variants; 95 % CI on the drop rate)")
    for ax in axes:
        ax.grid(alpha=0.3)
    charts.save(fig, out / "trend.png")
    (out / "trend.json").write_text(
        json.dumps(
            [
                {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in r.items()
                }
                for r in table.to_dict(orient="records")
            ],
            indent=2,
        )
    )
    pivot = table.pivot_table(
        index="variant", columns="run", values="drops_per_hour", aggfunc="first"
    ).round(2)
    index = out / "trend.html"
    index.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>rtsoak trend</title><style>body {{ font: 15px system-ui, sans-serif; margin: 2em auto;
max-width: 1100px }} table {{ border-collapse: collapse; font-size: 13px }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: right }}</style></head><body>
<h1>rtsoak: night over night</h1>
<p>{len(overall)} runs: {html.escape(", ".join(overall["run"]))}</p>
<img src="trend.png" alt="trend of median lifetime, drop rate and lost utterances">
<h2>Drops per connection-hour by variant</h2>
{pivot.to_html(na_rep="–", border=0)}
</body></html>
""")
    return index
