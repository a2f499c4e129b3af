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

from harness import analysis
from harness.frames import Frames, RunDirError, load, pacing_lateness, write_frames
from harness.report import charts

__all__ = ["Report", "build_report"]


@dataclass(frozen=True, slots=True)
class Report:
    index: Path
    summary: dict[str, Any]
    headline: str


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


def build_report(run_dirs: list[Path], out: Path | None = None,
                 frames: Frames | None = None) -> Report:
    """Report of run directories into `out` (default RUN/report). Pass `frames` already
    loaded from exactly these runs to skip loading them again; when it loads them itself, a
    single run's frames/*.parquet are (re)written too."""
    write = frames is None and len(run_dirs) == 1
    frames = frames if frames is not None else load(run_dirs)
    if frames.connections.empty:
        raise RunDirError(f"{', '.join(map(str, run_dirs))}: no connections recorded yet; "
                          "nothing to report")
    out = out or (run_dirs[0] / "report" if len(run_dirs) == 1
                  else run_dirs[0].parent / f"compare-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    out.mkdir(parents=True, exist_ok=True)
    if write:
        write_frames(frames, run_dirs[0] / "frames")
    summary = _summary(frames)
    images = _charts(frames, out)
    (out / "summary.json").write_text(json.dumps(_finite(summary), indent=2))
    headline = "\n".join(_headline(v) for v in summary["variants"])
    index = out / "index.html"
    index.write_text(_html(frames, summary, images, headline))
    return Report(index, summary, headline)


def _summary(frames: Frames) -> dict[str, Any]:
    survival, _ = analysis.survival_by_variant(frames.connections)
    lateness = pacing_lateness(frames.events)
    outcomes = analysis.utterance_outcomes(frames.utterances)
    codes = analysis.close_codes(frames.connections)
    manifests = frames.manifests
    return {
        "generated": datetime.now(UTC).isoformat(),
        "runs": {name: {"seed": m.get("seed"), "time_scale": m.get("time_scale"),
                        "started": m.get("started"), "ended": m.get("ended"),
                        "interrupted": m.get("interrupted"), "status": _run_status(m),
                        "saturated": m.get("saturated"), "target": m.get("target")}
                 for name, m in manifests.items()},
        "variants": [asdict(s) for s in survival],
        "close_codes": codes.astype({"close_code": str}).to_dict(orient="records"),
        "utterances": {str(v): {str(k): int(n) for k, n in row.items()}
                       for v, row in outcomes.iterrows()},
        "pacing_lateness_ms": analysis.percentiles(lateness),
        "torn_batches": frames.torn_batches,
        "events": len(frames.events),
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
    return (f"{v['variant']}: {v['connections']} connections, {v['drops']} drops "
            f"({v['drops_per_hour']:.2f}/connection-hour), median lifetime "
            f"{_minutes(v['median_s'])}{ci}")


def _charts(frames: Frames, out: Path) -> dict[str, Path]:
    _, fitters = analysis.survival_by_variant(frames.connections)
    images: dict[str, Path] = {}
    plans = [
        ("survival", (9, 5), lambda ax: charts.survival_chart(ax, fitters)),
        ("close_codes", (9, 3.5), lambda ax: charts.close_code_chart(
            ax, analysis.close_codes(frames.connections))),
        ("utterances", (9, 3), lambda ax: charts.utterance_chart(
            ax, analysis.utterance_outcomes(frames.utterances))),
        ("timeline", (10, 1.5 + 0.3 * frames.connections[["variant", "worker"]]
                      .drop_duplicates().shape[0]),
         lambda ax: charts.timeline_chart(ax, frames.connections)),
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
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .meta { color: #666; font-size: 13px; }
.headline { background: #f7f7f2; border-left: 4px solid #1f77b4; padding: .6em 1em; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(key)))}</td>" for key, _ in columns)
        + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return "–" if value is None else str(value)


def _html(frames: Frames, summary: dict[str, Any], images: dict[str, Path],
          headline: str) -> str:
    variants = [dict(v, median=_minutes(v["median_s"]),
                     median_ci=f"{_minutes(v['median_ci_s'][0])} – {_minutes(v['median_ci_s'][1])}",
                     rate_ci=v["drops_per_hour_ci"]) for v in summary["variants"]]
    runs = "; ".join(f"{html.escape(name)} (seed {r['seed']}, {r['time_scale']}x"
                     f"{'' if r['status'] == 'finished' else ', ' + r['status']})"
                     for name, r in summary["runs"].items())
    partial = [f"{html.escape(name)} {r['status']}" for name, r in summary["runs"].items()
               if r["status"] != "finished"]
    notes = (f"<p class=\"headline\">Partial report: {'; '.join(partial)}. It covers what was "
             "recorded until then; connections still open count as censored.</p>"
             if partial else "")
    saturated = [html.escape(name) for name, r in summary["runs"].items() if r["saturated"]]
    if saturated:
        notes += (f"<p class=\"headline\">Client saturated in {', '.join(saturated)}: append "
                  "frames left more than 10 ms late (p99), so timings describe this machine as "
                  "much as the service. Run fewer workers per process.</p>")
    outcome_rows = [{"variant": v, **counts} for v, counts in summary["utterances"].items()]
    statuses = sorted({k for counts in summary["utterances"].values() for k in counts})
    lateness = summary["pacing_lateness_ms"]
    torn = (f"<p>{summary['torn_batches']} torn batch(es) from a crash were skipped.</p>"
            if summary["torn_batches"] else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rtsoak report</title>
<style>{_CSS}</style></head><body>
<h1>rtsoak disconnect report</h1>
<p class="meta">{runs} · {summary['events']:,} events · generated {summary['generated']}</p>
<pre class="headline">{html.escape(headline)}</pre>
{notes}
<h2>How long connections live</h2>
{_img(images['survival'], 'Kaplan-Meier survival curves')}
{_table(variants, [("variant", "variant"), ("connections", "connections"), ("drops", "drops"),
                   ("censored", "censored"), ("connection_hours", "connection-hours"),
                   ("drops_per_hour", "drops / conn-hour"), ("rate_ci", "95 % CI"),
                   ("median", "median lifetime"), ("median_ci", "95 % CI")])}
<p>Connections closed by the harness itself (end of run, planned rotation) are censored: they
count as "survived at least this long", not as drops. Rates use exact Poisson intervals.</p>
<h2>How connections ended</h2>
{_img(images['close_codes'], 'close codes by variant')}
{_table(summary['close_codes'], [("variant", "variant"), ("close_code", "close code"),
                                 ("cause", "cause"), ("closed_by", "closed by"),
                                 ("connections", "connections")])}
<h2>Every connection</h2>
{_img(images['timeline'], 'timeline of connections per worker')}
<h2>Utterances</h2>
{_img(images['utterances'], 'utterance outcomes')}
{_table(outcome_rows, [("variant", "variant")] + [(s, s) for s in statuses])}
<p>Completed means the transcript arrived and its CRC32 matches the audio sent; lost means the
connection dropped before the transcript came.</p>
<h2>Pacing</h2>
<p>Send lateness of append frames against their deadlines (wall milliseconds):
p50 {_cell(lateness['p50'])} ms, p90 {_cell(lateness['p90'])} ms,
p99 {_cell(lateness['p99'])} ms.</p>
{torn}
<p class="meta">Data: frames/*.parquet and *.csv in the run directory;
machine-readable summary: summary.json.</p>
</body></html>
"""
