"""Compose frames, statistics and charts into report/index.html, PNGs and summary.json.

The HTML is self-contained (charts inlined as data URIs) so it opens from disk or a CI artifact
with no network; the PNGs are written beside it for people who want them alone.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from harness import analysis
from harness.frames import Frames, ReportFrames, RunDirError, load_for_report, write_small_frames
from harness.report import charts
from harness.report.findings import WINDOW_S, agreement_table, findings
from harness.report.thresholds import Verdict, console_table, judge, write_junit

__all__ = ["Report", "build_report"]


@dataclass(frozen=True, slots=True)
class Report:
    index: Path
    summary: dict[str, Any]
    headline: str
    verdicts: tuple[Verdict, ...] = ()

    @property
    def failed(self) -> bool:
        """Some threshold failed: `rtsoak` exits 1."""
        return any(not v.passed for v in self.verdicts)

    @property
    def verdict_table(self) -> str:
        return console_table(list(self.verdicts))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: say null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple | list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _minutes(seconds: float) -> str:
    return "not reached" if not math.isfinite(seconds) else f"{seconds / 60:.1f} min"


def build_report(
    run_dirs: list[Path], out: Path | None = None, frames: Frames | ReportFrames | None = None
) -> Report:
    """Report of run directories into `out` (default RUN/report). Pass `frames` already
    loaded from exactly these runs to skip loading them again; when it loads them itself (the
    lean way: never the full events frame), a single run's frames/*.parquet are (re)written
    too."""
    write = frames is None and len(run_dirs) == 1
    frames_dir = run_dirs[0] / "frames"
    if frames is None:
        frames = load_for_report(
            run_dirs,
            drop_window_s=WINDOW_S,
            events_parquet=frames_dir / "events.parquet" if write else None,
        )
    elif isinstance(frames, Frames):
        frames = ReportFrames.from_frames(frames)
    if frames.connections.empty:
        if write:  # as if never loaded: no frames of a run with nothing in it
            (frames_dir / "events.parquet").unlink(missing_ok=True)
        raise RunDirError(
            f"{', '.join(map(str, run_dirs))}: no connections recorded yet; nothing to report"
        )
    out = out or (
        run_dirs[0] / "report"
        if len(run_dirs) == 1
        else run_dirs[0].parent / f"compare-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    )
    out.mkdir(parents=True, exist_ok=True)
    if write:
        write_small_frames(frames.connections, frames.utterances, frames_dir)
    frames = _label_runs(frames)
    scenario = next(iter(frames.manifests.values())).get("scenario", {})
    verdicts = judge(
        scenario.get("thresholds", {}),
        frames.connections,
        frames.utterances,
        scenario.get("thresholds_by_variant"),
    )
    summary = _summary(frames, verdicts)
    images = _charts(frames, out)
    (out / "summary.json").write_text(json.dumps(_finite(summary), indent=2))
    write_junit(verdicts, out / "junit.xml", suite="/".join(frames.manifests))
    headline = "\n".join(_headline(v) for v in summary["variants"])
    index = out / "index.html"
    index.write_text(_html(frames, summary, images, headline))
    return Report(index, summary, headline, tuple(verdicts))


def _shards_of_one_run(manifests: dict[str, dict[str, Any]]) -> bool:
    """True when the runs are shards of one run (merge them); refuses shards that are not."""
    shards = {name: m.get("shard") or {"index": 0, "count": 1} for name, m in manifests.items()}
    if all(s["count"] == 1 for s in shards.values()):
        return False
    same = {
        (json.dumps(m.get("scenario"), sort_keys=True), m.get("seed"), shards[name]["count"])
        for name, m in manifests.items()
    }
    if len(same) > 1:
        raise RunDirError(
            f"{', '.join(manifests)}: refusing to merge shards of different "
            "scenarios, seeds or shard counts; report them apart"
        )
    indices = [s["index"] for s in shards.values()]
    if len(set(indices)) < len(indices):
        raise RunDirError(f"{', '.join(manifests)}: the same shard is given twice")
    return True


def _label_runs(frames: ReportFrames) -> ReportFrames:
    """Several runs that reuse variant names are told apart as `run:variant`; shards of one
    run merge into it."""
    if len(frames.manifests) < 2 or _shards_of_one_run(frames.manifests):
        return frames
    pairs = frames.connections[["run", "variant"]].drop_duplicates().astype(str)
    if not pairs["variant"].duplicated().any():
        return frames

    def relabel(df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        out["variant"] = (df["run"].astype(str) + ":" + df["variant"].astype(str)).astype(
            "category"
        )
        return out

    return ReportFrames(
        relabel(frames.events),
        relabel(frames.lateness),
        relabel(frames.connections),
        relabel(frames.utterances),
        frames.manifests,
        frames.torn_batches,
        frames.rows,
    )


def _summary(frames: ReportFrames, verdicts: list[Verdict]) -> dict[str, Any]:
    conns, utts = frames.connections, frames.utterances
    survival, _ = analysis.survival_by_variant(conns)
    lateness = frames.lateness["lag_ms"].to_numpy(float)
    outcomes = analysis.final_outcomes(utts)
    codes = analysis.close_codes(conns)
    manifests = frames.manifests
    drops = sum(s.drops for s in survival)
    hours = sum(s.connection_hours for s in survival)
    recovery = analysis.recovery(conns, utts)
    cox = analysis.cox_by_factors(conns)
    return {
        "generated": datetime.now(UTC).isoformat(),
        "runs": {
            name: {
                "seed": m.get("seed"),
                "time_scale": m.get("time_scale"),
                "started": m.get("started"),
                "ended": m.get("ended"),
                "interrupted": m.get("interrupted"),
                "status": _run_status(m),
                "saturated": m.get("saturated"),
                "target": m.get("target"),
            }
            for name, m in manifests.items()
        },
        "variants": [asdict(s) for s in survival],
        "close_codes": codes.astype({"close_code": str}).to_dict(orient="records"),
        "utterances": {
            str(v): {str(k): int(n) for k, n in row.items()} for v, row in outcomes.iterrows()
        },
        "pacing_lateness_ms": analysis.percentiles(lateness),
        "logrank": analysis.pairwise_logrank(conns).to_dict(orient="records"),
        "cox": None if cox is None else cox.to_dict(orient="records"),
        "power": analysis.power(drops, drops / hours if hours else 0.0),
        "hazard_by_age": analysis.hazard_by_age(conns).to_dict(orient="records"),
        "latency_s": analysis.latency_percentiles(utts).to_dict(orient="records"),
        "recovery_s": [
            {
                "variant": v,
                "drops": len(g),
                "recovered": int(g["recovery"].notna().sum()),
                **analysis.percentiles(g["recovery"].dropna().to_numpy(float)),
            }
            for v, g in recovery.groupby("variant")
        ],
        "findings": findings(conns, frames.events, frames.lateness["lag_ms"]),
        "thresholds": [asdict(v) for v in verdicts],
        "torn_batches": frames.torn_batches,
        "events": frames.rows,
    }


def _run_status(m: dict[str, Any]) -> str:
    """finished, interrupted (signal: workers closed cleanly) or crashed (no end written: the
    process died, or is still running); the last two make a partial report."""
    if m.get("ended") is None:
        return "crashed"
    return "interrupted" if m.get("interrupted") else "finished"


def _headline(v: dict[str, Any]) -> str:
    lo, hi = v["median_ci_s"]
    ci = "" if not math.isfinite(lo) else f" [{_minutes(lo)}, {_minutes(hi)}]"
    return (
        f"{v['variant']}: {v['connections']} connections, {v['drops']} drops "
        f"({v['drops_per_hour']:.2f}/connection-hour), median lifetime "
        f"{_minutes(v['median_s'])}{ci}"
    )


def _charts(frames: ReportFrames, out: Path) -> dict[str, Path]:
    _, fitters = analysis.survival_by_variant(frames.connections)
    images: dict[str, Path] = {}
    conns = frames.connections
    plans = [
        ("survival", (9, 5), lambda ax: charts.survival_chart(ax, fitters)),
        ("hazard", (9, 4), lambda ax: charts.hazard_chart(ax, analysis.hazard_by_age(conns))),
        ("state_at_drop", (9, 3), lambda ax: charts.state_at_drop_chart(ax, conns)),
        ("quiet_before_drop", (9, 2.6), lambda ax: charts.since_sent_chart(ax, conns)),
        (
            "latency",
            (9, 3),
            lambda ax: charts.latency_chart(ax, analysis.latency_percentiles(frames.utterances)),
        ),
        ("lateness", (9, 3.5), lambda ax: charts.lateness_chart(ax, frames.lateness)),
        (
            "recovery",
            (9, 3),
            lambda ax: charts.recovery_chart(ax, analysis.recovery(conns, frames.utterances)),
        ),
        (
            "close_codes",
            (9, 3.5),
            lambda ax: charts.close_code_chart(ax, analysis.close_codes(frames.connections)),
        ),
        (
            "utterances",
            (9, 3),
            lambda ax: charts.utterance_chart(ax, analysis.final_outcomes(frames.utterances)),
        ),
        (
            "timeline",
            (10, 1.5 + 0.3 * frames.connections[["variant", "worker"]].drop_duplicates().shape[0]),
            lambda ax: charts.timeline_chart(ax, frames.connections),
        ),
    ]
    for name, size, draw in plans:
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        path = out / f"{name}.png"
        charts.save(fig, path)
        images[name] = path
    return images


_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
td, th { border: 1px solid #ddd; padding: 3px 9px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child, td.text { text-align: left; }
img { max-width: 100%; } .meta { color: #666; font-size: 13px; }
.headline { background: #f7f7f2; border-left: 4px solid #1f77b4; padding: .6em 1em; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>" + "".join(_td(row.get(key)) for key, _ in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(value: Any) -> str:
    """Numbers align right, words left."""
    css = ' class="text"' if isinstance(value, str) and not value.replace(".", "").isdigit() else ""
    return f"<td{css}>{html.escape(_cell(value))}</td>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return "–" if value is None else str(value)


def _html(
    frames: ReportFrames, summary: dict[str, Any], images: dict[str, Path], headline: str
) -> str:
    variants = [
        dict(
            v,
            median=_minutes(v["median_s"]),
            median_ci=f"{_minutes(v['median_ci_s'][0])} – {_minutes(v['median_ci_s'][1])}",
            rate_ci=v["drops_per_hour_ci"],
        )
        for v in summary["variants"]
    ]
    runs = "; ".join(
        f"{html.escape(name)} (seed {r['seed']}, {r['time_scale']}x"
        f"{'' if r['status'] == 'finished' else ', ' + r['status']})"
        for name, r in summary["runs"].items()
    )
    partial = [
        f"{html.escape(name)} {r['status']}"
        for name, r in summary["runs"].items()
        if r["status"] != "finished"
    ]
    notes = (
        f'<p class="headline">Partial report: {"; ".join(partial)}. It covers what was '
        "recorded until then; connections still open count as censored.</p>"
        if partial
        else ""
    )
    saturated = [html.escape(name) for name, r in summary["runs"].items() if r["saturated"]]
    if saturated:
        notes += (
            f'<p class="headline">Client saturated in {", ".join(saturated)}: append '
            "frames left more than 10 ms late (p99), so timings describe this machine as "
            "much as the service. Run fewer workers per process.</p>"
        )
    outcome_rows = [{"variant": v, **counts} for v, counts in summary["utterances"].items()]
    statuses = sorted({k for counts in summary["utterances"].values() for k in counts})
    lateness = summary["pacing_lateness_ms"]
    torn = (
        f"<p>{summary['torn_batches']} torn batch(es) from a crash were skipped.</p>"
        if summary["torn_batches"]
        else ""
    )
    power = summary["power"]
    agreement = agreement_table(frames.connections, frames.events)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rtsoak report</title>
<style>{_CSS}</style></head><body>
<h1>rtsoak disconnect report</h1>
<p class="meta">{runs} · {summary["events"]:,} events · generated {summary["generated"]}</p>
<pre class="headline">{html.escape(headline)}</pre>
{notes}
{_thresholds_html(summary["thresholds"])}
<h2>Findings</h2>
{_table(summary["findings"], [("hypothesis", "hypothesis"), ("finding", "what the data says")])}
<h2>How long connections live</h2>
{_img(images["survival"], "Kaplan-Meier survival curves")}
{
        _table(
            variants,
            [
                ("variant", "variant"),
                ("connections", "connections"),
                ("drops", "drops"),
                ("censored", "censored"),
                ("connection_hours", "connection-hours"),
                ("drops_per_hour", "drops / conn-hour"),
                ("rate_ci", "95 % CI"),
                ("median", "median lifetime"),
                ("median_ci", "95 % CI"),
            ],
        )
    }
<p>Connections closed by the harness itself (end of run, planned rotation) are censored: they
count as "survived at least this long", not as drops. Rates use exact Poisson intervals.</p>
{_logrank_html(summary["logrank"])}
{_cox_html(summary["cox"])}
<p>Power: with {sum(v["drops"] for v in summary["variants"])} drops, a comparison of two equal
groups this size detects a hazard ratio of {_cell(power["detectable_hazard_ratio"])} or more
(80 % power, 5 % two-sided); detecting 2&times; needs about
{_cell(power["drops_for_2x"])} drops, about {_cell(power["connection_hours_for_2x"])}
connection-hours at this drop rate.</p>
<h2>Hazard by session age</h2>
{_img(images["hazard"], "hazard by session age")}
<h2>How connections ended</h2>
{_img(images["close_codes"], "close codes by variant")}
{
        _table(
            summary["close_codes"],
            [
                ("variant", "variant"),
                ("close_code", "close code"),
                ("cause", "cause"),
                ("closed_by", "closed by"),
                ("connections", "connections"),
            ],
        )
    }
{_img(images["state_at_drop"], "state at drop")}
{_img(images["quiet_before_drop"], "time since last sent and received at drop")}
{_agreement_html(agreement)}
<h2>Every connection</h2>
{_img(images["timeline"], "timeline of connections per worker")}
<h2>Utterances</h2>
{_img(images["utterances"], "utterance outcomes")}
{_table(outcome_rows, [("variant", "variant")] + [(s, s) for s in statuses])}
<p>Each utterance counts once, by its last attempt. Completed means the transcript arrived and
its CRC32 matches the audio sent; retried_ok that it completed on a replay after a drop; lost
that the connection dropped before the transcript came and it was not sent again.</p>
{_img(images["latency"], "transcription latency percentiles")}
<h2>Recovery after a drop</h2>
{_img(images["recovery"], "recovery after a drop")}
{
        _table(
            summary["recovery_s"],
            [
                ("variant", "variant"),
                ("drops", "drops"),
                ("recovered", "recovered"),
                ("p50", "p50 s"),
                ("p90", "p90 s"),
                ("p99", "p99 s"),
            ],
        )
    }
<h2>Pacing</h2>
{_img(images["lateness"], "send lateness of append frames")}
<p>Send lateness of append frames against their deadlines (wall milliseconds):
p50 {_cell(lateness["p50"])} ms, p90 {_cell(lateness["p90"])} ms,
p99 {_cell(lateness["p99"])} ms.</p>
{torn}
<p class="meta">Data: frames/*.parquet and *.csv in the run directory;
machine-readable summary: summary.json (docs/report.md); thresholds: junit.xml.</p>
</body></html>
"""


def _thresholds_html(verdicts: list[dict[str, Any]]) -> str:
    if not verdicts:
        return ""
    failed = sum(not v["passed"] for v in verdicts)
    rows = [dict(v, result="pass" if v["passed"] else "FAIL") for v in verdicts]
    title = (
        f"Thresholds: {failed} of {len(verdicts)} failed"
        if failed
        else f"Thresholds: all {len(verdicts)} passed"
    )
    return f"<h2>{title}</h2>" + _table(
        rows,
        [
            ("variant", "variant"),
            ("threshold", "threshold"),
            ("limit", "limit"),
            ("observed", "observed"),
            ("result", "result"),
        ],
    )


def _logrank_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    return (
        "<h3>Do the variants differ?</h3><p>Pairwise log-rank tests of connection "
        "lifetime; p-values Holm-corrected for the number of pairs.</p>"
        + _table(
            rows,
            [
                ("a", "variant"),
                ("b", "vs variant"),
                ("statistic", "chi2"),
                ("p", "p"),
                ("p_holm", "p (Holm)"),
            ],
        )
    )


def _cox_html(rows: list[dict[str, Any]] | None) -> str:
    if not rows:
        return ""
    return (
        "<h3>Which factor matters?</h3><p>Cox proportional-hazards model over the factors "
        "the variants vary: a hazard ratio above 1 means shorter-lived connections.</p>"
        + _table(
            rows,
            [
                ("factor", "factor"),
                ("hazard_ratio", "hazard ratio"),
                ("lo", "95 % CI low"),
                ("hi", "95 % CI high"),
                ("p", "p"),
            ],
        )
    )


def _agreement_html(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    rows = [{"injected": k, **{c: int(n) for c, n in row.items()}} for k, row in table.iterrows()]
    return (
        "<h3>Diagnosis against the fake server's ground truth</h3><p>Rows: the fault the "
        "server injected; columns: what the client-side diagnosis (docs/report.md) says.</p>"
        + _table(rows, [("injected", "injected")] + [(c, c) for c in table.columns])
    )
