"""Night over night: the trend of a scenario's runs, so a regression is visible and marked.

`rtsoak report --history RUN_DIR...` reads, per night, `manifest.json` and the `trend` rows of
`report/summary.json` (so a restored night needs no event log; a night without them is read
from its event log). Nights are grouped by scenario (never one baseline across scenarios), and
each night is tested against the pooled rate of the other nights of its group. Writes
trend.html, trend.png, trend.json and trend.md (a table for a CI job summary).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from harness.log.frames import load_for_report
from harness.log.rundir import RunDir, RunDirError
from harness.report import analysis, charts

__all__ = ["ALPHA", "build_history", "night_rows", "worse_than_baseline"]

# A night is marked worse when one of its two rates (drops, lost utterances per connection-hour)
# is above its baseline by a one-sided exact test at ALPHA / 2 each (Bonferroni over the two
# metrics): under no change, about one night in twenty is marked.
ALPHA = 0.05
METRICS = (("drops", "drops"), ("lost", "lost_utterances"))


def night_rows(
    connections: pd.DataFrame,
    utterances: pd.DataFrame,
    survival: list[analysis.SurvivalSummary] | None = None,
) -> list[dict[str, Any]]:
    """A night's numbers for the trend, overall ("all") and per variant: drops per
    connection-hour and lost utterances per connection-hour with exact (Garwood) 95 % CIs, the
    Kaplan-Meier median lifetime with its CI. summary.json keeps them under `trend`, so the
    trend of restored nights needs only their summary.json and manifest.json. `survival`: the
    per-variant fits when the report has them already (only "all" is fitted here then)."""
    observed = analysis.observed_connections(connections)
    if observed.empty:
        return []
    if survival is None:
        survival, _ = analysis.survival_by_variant(connections)
    lost_final = (utterances["status"].astype(str) == "lost") & utterances["final"].astype(bool)
    lost_by = utterances.loc[lost_final, "variant"].astype(str).value_counts()
    overall, _ = analysis.survival_summary(observed, "all")
    rows = []
    for s in [overall, *survival]:
        lost = int(lost_final.sum()) if s is overall else int(lost_by.get(s.variant, 0))
        hours = s.connection_hours
        lost_lo, lost_hi = analysis.poisson_rate_ci(lost, hours)
        rows.append(
            {
                "variant": s.variant,
                "connections": s.connections,
                "drops": s.drops,
                "connection_hours": hours,
                "drops_per_hour": s.drops_per_hour,
                "drops_per_hour_lo": s.drops_per_hour_ci[0],
                "drops_per_hour_hi": s.drops_per_hour_ci[1],
                "median_s": s.median_s,
                "median_lo_s": s.median_ci_s[0],
                "median_hi_s": s.median_ci_s[1],
                "lost_utterances": lost,
                "lost_per_hour": lost / hours if hours > 0 else math.nan,
                "lost_per_hour_lo": lost_lo,
                "lost_per_hour_hi": lost_hi,
            }
        )
    return rows


def worse_than_baseline(events: int, hours: float, base_events: int, base_hours: float) -> float:
    """One-sided p-value that a night's Poisson rate (events over hours) exceeds the baseline's:
    the exact conditional test (given both counts, the night's events are binomial with its
    share of the exposure under equal rates). 1.0 when there is nothing to compare."""
    n = events + base_events
    if n == 0 or not (hours > 0 and base_hours > 0):
        return 1.0
    return float(stats.binomtest(events, n, hours / (hours + base_hours), "greater").pvalue)


@dataclass(slots=True)
class Night:
    run: str
    started: str
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    source: str  # "summary.json" or "event log"
    scenario: str = ""  # the group's label, set when grouped
    notes: list[str] = field(default_factory=list)


def _scenario_doc(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two nights the same scenario: the scenario document without the seed (a
    sample, not a setting) and the file's path (where it lay, not what it says)."""
    doc = json.loads(json.dumps(manifest.get("scenario") or {}))
    doc.pop("source", None)
    (doc.get("run") or {}).pop("seed", None)
    return doc


def _flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): doc}


def _load_night(run_dir: Path) -> Night:
    layout = RunDir(run_dir)
    manifest = layout.read_manifest()
    summary_path = layout.report.summary
    rows = None
    if summary_path.is_file():
        rows = json.loads(summary_path.read_text()).get("trend")
    source = summary_path.name  # "summary.json"
    if rows is None:
        with load_for_report(run_dir) as frames:  # connections and utterances: no events
            rows, source = night_rows(frames.connections, frames.utterances), "event log"
    rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
    night = Night(run_dir.name, manifest.get("started") or "", manifest, rows, source)
    if manifest.get("ended") is None:
        night.notes.append("crashed or still running: partial")
    elif manifest.get("interrupted"):
        night.notes.append("interrupted: partial")
    return night


def _group(nights: list[Night]) -> dict[str, list[Night]]:
    """Nights by scenario, in order of first appearance; labels are the scenario's name, with
    what differs from the first group of that name when names repeat."""
    keyed: dict[str, list[Night]] = {}
    docs: dict[str, dict[str, Any]] = {}
    for n in nights:
        doc = _scenario_doc(n.manifest)
        key = json.dumps(doc, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(n)
        docs[key] = doc
    groups: dict[str, list[Night]] = {}
    first_of_name: dict[str, dict[str, Any]] = {}
    for key, members in keyed.items():
        doc = docs[key]
        name = str((doc.get("run") or {}).get("name") or "unnamed")
        label = name
        if name in first_of_name:
            a, b = _flat(first_of_name[name]), _flat(doc)
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            shown = ", ".join(f"{k}={b.get(k)!r}" for k in diff[:3])
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            label = f"{name} [{hashlib.sha1(key.encode()).hexdigest()[:6]}: {shown}{more}]"
        else:
            first_of_name[name] = doc
        for n in members:
            n.scenario = label
        groups[label] = members
    return groups


def _version_notes(members: list[Night]) -> None:
    """Say, on the night it happens, that the software changed from the night before."""
    for before, night in zip(members, members[1:], strict=False):
        va, vb = before.manifest.get("versions") or {}, night.manifest.get("versions") or {}
        changed = [f"{k} {va.get(k)} → {vb.get(k)}" for k in sorted(va.keys() | vb.keys())
                   if va.get(k) != vb.get(k)]  # fmt: skip
        ga, gb = before.manifest.get("git_revision"), night.manifest.get("git_revision")
        if ga != gb:
            changed.append(f"git {str(ga)[:7]} → {str(gb)[:7]}")
        if changed:
            night.notes.append("version changed: " + "; ".join(changed))


def _trend_table(groups: dict[str, list[Night]]) -> pd.DataFrame:
    rows = []
    for label, members in groups.items():
        overall = {n.run: next((r for r in n.rows if r["variant"] == "all"), None) for n in members}
        for n in members:
            for r in n.rows:
                row = {"run": n.run, "started": n.started, "scenario": label, **r}
                row.update(source=n.source, notes="; ".join(n.notes))
                if r["variant"] == "all":
                    row.update(_baseline(r, [o for run, o in overall.items() if run != n.run]))
                rows.append(row)
    return pd.DataFrame(rows)


def _baseline(night: dict[str, Any], others: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The night against the pooled other nights of its scenario in the window."""
    others = [o for o in others if o is not None]
    out: dict[str, Any] = {"baseline_nights": len(others), "worse": False, "worse_in": ""}
    hours, base_hours = night["connection_hours"], sum(o["connection_hours"] for o in others)
    worse = []
    for name, count in METRICS:
        base = int(sum(o[count] for o in others))
        lo, hi = analysis.poisson_rate_ci(base, base_hours) if others else (math.nan, math.nan)
        p = worse_than_baseline(int(night[count]), hours, base, base_hours) if others else math.nan
        out.update(
            {
                f"baseline_{name}_per_hour": base / base_hours if base_hours > 0 else math.nan,
                f"baseline_{name}_per_hour_lo": lo,
                f"baseline_{name}_per_hour_hi": hi,
                f"p_{name}_worse": p,
            }
        )
        if p < ALPHA / len(METRICS):
            worse.append(name)
    out.update(worse=bool(worse), worse_in=", ".join(worse))
    return out


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _chart(overall: pd.DataFrame, groups: list[str], path: Path) -> None:
    fig, axes = plt.subplots(
        3, len(groups), figsize=(max(10, 5 * len(groups)), 8), sharex="col", squeeze=False
    )
    for col, label in enumerate(groups):
        g = overall[overall["scenario"] == label].reset_index(drop=True)
        x = list(range(len(g)))
        panels = [
            ("median_s", "median_lo_s", "median_hi_s", 1 / 60, "KM median lifetime (min)", ""),
            ("drops_per_hour", "drops_per_hour_lo", "drops_per_hour_hi", 1, "drops / conn-hour",
             "drops"),
            ("lost_per_hour", "lost_per_hour_lo", "lost_per_hour_hi", 1, "lost utt. / conn-hour",
             "lost"),
        ]  # fmt: skip
        for ax, (y, lo, hi, scale, ylabel, metric) in zip(axes[:, col], panels, strict=True):
            v, vlo, vhi = (g[c].to_numpy(float) * scale for c in (y, lo, hi))
            yerr = np.nan_to_num(np.clip([v - vlo, vhi - v], 0, None))  # a missing bound: none
            ax.errorbar(x, v, yerr=yerr, marker="o", capsize=3, linestyle="-", label="night")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if not metric:
                continue  # the median is shown, not tested (docs/report.md)
            ax.plot(x, g[f"baseline_{metric}_per_hour"].to_numpy(float), "_", color="grey",
                    markersize=16, label="other nights pooled")  # fmt: skip
            worse = g["worse_in"].str.split(", ").map(lambda w, m=metric: m in w).to_numpy(bool)
            if worse.any():
                ax.plot(np.flatnonzero(worse), v[worse], "o", color="#d62728",
                        markersize=10, fillstyle="none", label="worse than baseline")  # fmt: skip
        axes[0, col].set_title(f"{label} (95 % CIs)", fontsize=9)
        axes[1, col].legend(fontsize=7)
        axes[-1, col].set_xticks(x, g["run"], rotation=30, ha="right", fontsize=7)
    charts.save(fig, path)


def _fmt(v: Any, digits: int = 2) -> str:
    return (
        "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
    )


def _ci(r: pd.Series, y: str, lo: str = "", hi: str = "", scale: float = 1.0, nd: int = 2) -> str:
    """`y [lo, hi]`; lo and hi default to y's `_lo` and `_hi` columns."""
    v, a, b = (r[c] * scale for c in (y, lo or f"{y}_lo", hi or f"{y}_hi"))
    return f"{_fmt(v, nd)} [{_fmt(a, nd)}, {_fmt(b, nd)}]"


def _night_cells(r: pd.Series) -> list[str]:
    return [
        r["run"],
        str(r["connections"]),
        f"{r['connection_hours']:.2f}",
        _ci(r, "drops_per_hour"),
        _ci(r, "median_s", "median_lo_s", "median_hi_s", 1 / 60, 1),
        f"{r['lost_utterances']} ({_ci(r, 'lost_per_hour')})",
        _ci(r, "baseline_drops_per_hour"),
        f"WORSE ({r['worse_in']})" if r["worse"] else "",
        r["notes"],
    ]


HEADER = [
    "night",
    "connections",
    "conn-hours",
    "drops/conn-hour [95 % CI]",
    "KM median min [CI]",
    "lost utterances (per conn-hour [CI])",
    "baseline drops/conn-hour [CI]",
    "flag",
    "notes",
]


def _markdown(overall: pd.DataFrame, groups: dict[str, list[Night]], notes: list[str]) -> str:
    lines = ["## rtsoak: night over night", ""]
    lines += [f"- {n}" for n in notes]
    for label in groups:
        g = overall[overall["scenario"] == label]
        lines += ["", f"### {label}", "", "| " + " | ".join(HEADER) + " |"]
        lines.append("|" + "---|" * len(HEADER))
        lines += ["| " + " | ".join(_night_cells(r)) + " |" for _, r in g.iterrows()]
    return "\n".join(lines) + "\n"


def build_history(run_dirs: list[Path], out: Path) -> Path:
    nights, notes = [], []
    for d in run_dirs:
        try:
            night = _load_night(d)
        except (RunDirError, OSError, ValueError) as exc:
            notes.append(f"{d.name} left out: {exc}")
            continue
        if not night.rows:
            notes.append(f"{d.name} left out: no established connection")
            continue
        nights.append(night)
    if not nights:
        raise RunDirError("no connections in any of these runs; nothing to trend")
    nights.sort(key=lambda n: (n.started, n.run))
    groups = _group(nights)
    for members in groups.values():
        _version_notes(members)
    if len(groups) > 1:
        notes.append(
            f"{len(groups)} scenarios: each is trended apart, against a baseline of its own nights"
        )
    table = _trend_table(groups)
    overall = table[table["variant"] == "all"].reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    _chart(overall, list(groups), out / "trend.png")
    records = [{k: _finite(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    (out / "trend.json").write_text(json.dumps(records, indent=2, default=str))
    (out / "trend.md").write_text(_markdown(overall, groups, notes))
    sections = []
    for label in groups:
        g = overall[overall["scenario"] == label]
        rows = "".join(
            "<tr" + (' class="worse"' if r["worse"] else "") + ">"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in _night_cells(r)) + "</tr>"
            for _, r in g.iterrows()
        )  # fmt: skip
        pivot = (
            table[(table["scenario"] == label) & (table["variant"] != "all")]
            .pivot_table(index="variant", columns="run", values="drops_per_hour", aggfunc="first")
            .round(2)
        )
        sections.append(
            f"<h2>{html.escape(label)}</h2><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
            + f"</tr>{rows}</table><h3>Drops per connection-hour by variant</h3>"
            + pivot.to_html(na_rep="–", border=0)
        )
    index = out / "trend.html"
    index.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>rtsoak trend</title><style>body {{ font: 15px system-ui, sans-serif; margin: 2em auto;
max-width: 1200px }} table {{ border-collapse: collapse; font-size: 13px }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: right }}
tr.worse td {{ background: #fde0dd }}</style></head><body>
<h1>rtsoak: night over night</h1>
<p>{len(nights)} nights: {html.escape(", ".join(n.run for n in nights))}</p>
{"".join(f"<p>{html.escape(n)}</p>" for n in notes)}
<p>A night is marked WORSE when its drops or lost utterances per connection-hour exceed the
pooled rate of the other nights of the same scenario by a one-sided exact test of two Poisson
rates at {ALPHA / len(METRICS):g} each (docs/report.md, "Night over night").</p>
<img src="trend.png" alt="trend of median lifetime, drop rate and lost utterances">
{"".join(sections)}
</body></html>
""")
    return index
