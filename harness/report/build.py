"""Compose frames, statistics and charts into report/index.html, PNGs and summary.json.

The HTML is self-contained (charts inlined as data URIs) so it opens from disk or a CI artifact
with no network; the PNGs are written beside it for people who want them alone.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from markupsafe import Markup

from harness.log.frames import Frames, ReportFrames, load_for_report, write_small_frames
from harness.log.rundir import ReportDir, RunDir, RunDirError
from harness.report import analysis, charts
from harness.report.fidelity import SATURATED_P99_MS
from harness.report.findings import WINDOW_S
from harness.report.model import ReportModel, fit
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
    first = RunDir(run_dirs[0])
    if frames is None:
        loaded = load_for_report(
            run_dirs,
            drop_window_s=WINDOW_S,
            events_parquet=first.frame("events") if write else None,
        )
        with loaded:  # its spilled sends go once the report is built
            return _build(run_dirs, out, loaded, write, first)
    if isinstance(frames, Frames):
        frames = ReportFrames.from_frames(frames)
    return _build(run_dirs, out, frames, write, first)


def _build(
    run_dirs: list[Path], out: Path | None, frames: ReportFrames, write: bool, first: RunDir
) -> Report:
    if frames.connections.empty:
        if write:  # as if never loaded: no frames of a run with nothing in it
            first.frame("events").unlink(missing_ok=True)
        raise RunDirError(
            f"{', '.join(map(str, run_dirs))}: no connections recorded yet; nothing to report"
        )
    out = out or (
        first.report.path
        if len(run_dirs) == 1
        else run_dirs[0].parent / f"compare-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    )
    out.mkdir(parents=True, exist_ok=True)
    report = ReportDir(out)
    if write:
        write_small_frames(frames.connections, frames.utterances, first.frames)
    frames = _label_runs(frames)
    model = fit(frames)
    scenario = next(iter(frames.manifests.values())).get("scenario", {})
    verdicts = judge(
        scenario.get("thresholds", {}),
        model,
        frames.utterances,
        scenario.get("thresholds_by_variant"),
    )
    summary = _summary(frames, model, verdicts)
    images = _charts(frames, model, out)
    report.summary.write_text(json.dumps(_finite(summary), indent=2))
    write_junit(verdicts, report.junit, suite="/".join(frames.manifests))
    headline = "\n".join(
        _headline(v, summary["diagnosis"].get(v["variant"], [])) for v in summary["variants"]
    )
    report.index.write_text(_html(frames, model, summary, images, headline))
    return Report(report.index, summary, headline, tuple(verdicts))


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


def _records(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    return [] if table is None else table.to_dict(orient="records")


def _summary(frames: ReportFrames, model: ReportModel, verdicts: list[Verdict]) -> dict[str, Any]:
    manifests = frames.manifests
    faults = model.fault_lateness.set_index("run") if not model.fault_lateness.empty else None
    cox = model.cox
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
                "saturated": _saturated(m, faults, name),
                "target": m.get("target"),
            }
            for name, m in manifests.items()
        },
        "variants": [asdict(s) for s in model.survival],
        "ranking": _records(model.ranking),
        "close_codes": model.close_codes.astype({"close_code": str}).to_dict(orient="records"),
        "utterances": {
            str(v): {str(k): int(n) for k, n in row.items()} for v, row in model.outcomes.iterrows()
        },
        "pacing_lateness_ms": analysis.lateness_percentiles(frames.lateness),
        "client_lateness": _records(model.client_lateness),
        "fault_lateness": _records(model.fault_lateness),
        "logrank": _records(model.logrank),
        "cox": None
        if cox is None
        else {
            "table": _records(cox.table),
            "ph_test": _records(cox.ph_test),
            "ph_violated": list(cox.ph_violated),
            "penalizer": cox.penalizer,
            "problem": cox.problem,
        },
        "power": model.power,
        "weibull": _records(model.weibull),
        "hazard_by_age": _records(model.hazard),
        "latency_s": _records(model.latency),
        "recovery_s": [
            {
                "variant": v,
                "drops": len(g),
                "recovered": int(g["recovery"].notna().sum()),
                **analysis.percentiles(g["recovery"].dropna().to_numpy(float)),
            }
            for v, g in model.recovery.groupby("variant")
        ],
        "stopped_workers": _records(model.stopped),
        "diagnosis": {
            variant: [v.as_dict() for v in verdicts] for variant, verdicts in model.verdicts.items()
        },
        "drop_categories": {
            str(v): {str(k): int(n) for k, n in counts.items()}
            for v, counts in model.diagnosis.dropna()
            .groupby(frames.connections["variant"].astype(str))
            .value_counts()
            .unstack(fill_value=0)
            .iterrows()
        },
        "findings": model.findings,
        "thresholds": [asdict(v) for v in verdicts],
        "torn_batches": frames.torn_batches,
        "events": frames.rows,
        # what `rtsoak report --history` reads, so a night kept for the trend needs no event log
        "trend": model.trend,
    }


def _saturated(manifest: dict[str, Any], faults: pd.DataFrame | None, run: str) -> bool | None:
    """The client's verdict (append lateness, written by the run) or the fake server's (faults
    fired late), whichever is worse: either way the timings describe this machine."""
    client = manifest.get("saturated")
    server = None if faults is None or run not in faults.index else faults.at[run, "saturated"]
    if client is None and server is None:
        return None
    return bool(client) or bool(server)


def _run_status(m: dict[str, Any]) -> str:
    """finished, interrupted (signal: workers closed cleanly) or crashed (no end written: the
    process died, or is still running); the last two make a partial report."""
    if m.get("ended") is None:
        return "crashed"
    return "interrupted" if m.get("interrupted") else "finished"


def _headline(v: dict[str, Any], verdicts: list[dict[str, Any]]) -> str:
    """A variant's line, and the theories its drops support (the blind diagnosis)."""
    lo, hi = v["median_ci_s"]
    ci = "" if not math.isfinite(lo) else f" [{_minutes(lo)}, {_minutes(hi)}]"
    line = (
        f"{v['variant']}: {v['connections']} connections, {v['drops']} drops "
        f"({v['drops_per_hour']:.2f}/connection-hour), median lifetime "
        f"{_minutes(v['median_s'])}{ci}"
    )
    supported = [_supported(x) for x in verdicts if x["verdict"] == "supported"]
    if v["drops"]:
        line += "\n  what kills them: " + ("; ".join(supported) or "can't tell yet")
    return line


def _supported(verdict: dict[str, Any]) -> str:
    """A supported theory in a few words: its name and its threshold or shape, with the CI."""
    name = verdict["hypothesis"]
    for key, unit in (
        ("threshold_s", " s"),
        ("threshold_ms", " ms"),
        ("max_sessions", " sessions"),
    ):
        if verdict.get(key) is not None:
            lo, hi = verdict["threshold_ci"]
            return f"{name} at {verdict[key]:.4g}{unit} [{lo:.4g}, {hi:.4g}]"
    if verdict.get("weibull_shape") is not None and name == "session_age":
        lo, hi = verdict["weibull_shape_ci"]
        return f"{name} (Weibull shape {verdict['weibull_shape']:.2f} [{lo:.2f}, {hi:.2f}])"
    return name


def _charts(frames: ReportFrames, model: ReportModel, out: Path) -> dict[str, Path]:
    """Every chart as a PNG, each drawn from the fitted model."""
    conns = frames.connections
    variants = len(model.fitters)
    workers = conns[["variant", "worker"]].drop_duplicates().shape[0]

    def axes(draw: Callable[[Any], Any]) -> Callable[[plt.Figure], Any]:
        """A chart that draws into one Axes, as a chart that draws into a figure."""
        return lambda fig: draw(fig.add_subplot(1, 1, 1))

    plans = [
        (
            "survival",
            (10, charts.panel_height(variants, 5)),
            lambda fig: charts.survival_chart(fig, model.fitters),
        ),
        (
            "hazard",
            (10, charts.panel_height(variants, 4)),
            lambda fig: charts.hazard_chart(fig, model.hazard),
        ),
        ("state_at_drop", (9, 3), axes(lambda ax: charts.state_at_drop_chart(ax, conns))),
        ("quiet_before_drop", (9, 2.6), axes(lambda ax: charts.since_sent_chart(ax, conns))),
        ("latency", (9, 3), axes(lambda ax: charts.latency_chart(ax, model.latency))),
        ("lateness", (9, 3.5), axes(lambda ax: charts.lateness_chart(ax, frames.lateness))),
        ("recovery", (9, 3), axes(lambda ax: charts.recovery_chart(ax, model.recovery))),
        (
            "close_codes",
            (9, 3.5),
            axes(lambda ax: charts.close_code_chart(ax, model.close_codes)),
        ),
        ("utterances", (9, 3), axes(lambda ax: charts.utterance_chart(ax, model.outcomes))),
        (
            "timeline",
            (10, 1.5 + 0.3 * workers),
            axes(lambda ax: charts.timeline_chart(ax, conns)),
        ),
    ]
    if variants > 3:  # a matrix of one or three cells says less than the table
        plans.append(
            ("logrank", (7, 6), axes(lambda ax: charts.logrank_matrix_chart(ax, model.logrank)))
        )
    images: dict[str, Path] = {}
    for name, size, draw in plans:
        fig = plt.figure(figsize=size)
        draw(fig)
        path = out / f"{name}.png"
        charts.save(fig, path)
        images[name] = path
    return images


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str) -> str:
    return f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}">'


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>" + "".join(_td(row.get(key)) for key, _ in columns) + "</tr>" for row in rows
    )
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><tr>{head}</tr>{body}</table>"


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


@cache
def _page() -> Template:
    """The page shell, templates/index.html.j2 (package data). Autoescaping is on, so plain
    values from the run are escaped; the section fragments below are passed as Markup."""
    env = Environment(
        loader=PackageLoader("harness.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["thousands"] = lambda n: f"{n:,}"
    return env.get_template("index.html.j2")


def _html(
    frames: ReportFrames,
    model: ReportModel,
    summary: dict[str, Any],
    images: dict[str, Path],
    headline: str,
) -> str:
    sections = {
        "notes": _notes_html(summary, model),
        "thresholds": _thresholds_html(summary["thresholds"]),
        "ranking": _ranking_html(model),
        "findings": _findings_html(summary["findings"], model),
        "verdicts": _verdicts_html(summary["diagnosis"]),
        "survival": _survival_table_html(summary["variants"]),
        "logrank": _logrank_html(model, images),
        "cox": _cox_html(model.cox),
        "power": _power_html(model),
        "weibull": _weibull_html(model.weibull),
        "close_codes": _table(
            summary["close_codes"],
            [
                ("variant", "variant"),
                ("close_code", "close code"),
                ("cause", "cause"),
                ("closed_by", "closed by"),
                ("connections", "connections"),
            ],
        ),
        "agreement": _agreement_html(model.agreement),
        "stopped": _stopped_html(model.stopped),
        "outcomes": _outcomes_html(summary["utterances"]),
        "recovery": _table(
            summary["recovery_s"],
            [
                ("variant", "variant"),
                ("drops", "drops"),
                ("recovered", "recovered"),
                ("p50", "p50 s"),
                ("p90", "p90 s"),
                ("p99", "p99 s"),
            ],
        ),
        "timing": _timing_html(summary),
    }
    return _page().render(
        runs=[dict(r, name=name) for name, r in summary["runs"].items()],
        events=summary["events"],
        generated=summary["generated"],
        headline=headline,
        sections={k: Markup(v) for k, v in sections.items()},
        images={name: _data_uri(path) for name, path in images.items()},
        torn_batches=summary["torn_batches"],
    )


def _notes_html(summary: dict[str, Any], model: ReportModel) -> str:
    """What a reader must know before trusting the rest: a partial run, a saturated harness,
    workers that gave up."""
    notes = []
    partial = [
        f"{name} {r['status']}" for name, r in summary["runs"].items() if r["status"] != "finished"
    ]
    if partial:
        notes.append(
            f"Partial report: {'; '.join(partial)}. It covers what was recorded until then; "
            "connections still open count as censored."
        )
    saturated = [name for name, r in summary["runs"].items() if r["saturated"]]
    if saturated:
        notes.append(
            f"Harness saturated in {', '.join(saturated)}: append frames left, or the fake "
            f"server's faults fired, more than {SATURATED_P99_MS:g} ms (wall, p99) late, so "
            "timings describe this machine as much as the service. Run fewer workers per "
            "process or a lower time scale (see Pacing below)."
        )
    if not model.stopped.empty:
        by_variant = model.stopped.groupby("variant").size()
        notes.append(
            f"{len(model.stopped)} worker(s) stopped before the end because their reconnect "
            "policy gave up ("
            + ", ".join(f"{v}: {n}" for v, n in by_variant.items())
            + "); they ran no connections after that (table under How connections ended)."
        )
    return "".join(f'<p class="headline">{html.escape(n)}</p>' for n in notes)


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


def _ci(lo: float, hi: float) -> str:
    return f"{_cell(lo)} – {_cell(hi)}"


def _ranking_html(model: ReportModel) -> str:
    """The comparison's answer first: variants best first, those the run could not tell apart
    in one group, and how much longer a run would need to separate them."""
    ranking = model.ranking
    if ranking is None or len(ranking) < 2:
        return ""
    records = ranking.to_dict(orient="records")
    rows = [
        {
            "group": r["group"],
            "variant": r["variant"],
            "connection_hours": r["connection_hours"],
            "drops": r["drops"],
            "rate": r["drops_per_hour"],
            "rate_ci": _ci(r["drops_per_hour_lo"], r["drops_per_hour_hi"]),
            "lost": r["lost_per_hour"],
            "lost_ci": _ci(r["lost_per_hour_lo"], r["lost_per_hour_hi"]),
            "separate": _separation(r, nxt),
        }
        for r, nxt in zip(records, records[1:] + [None], strict=True)
    ]
    groups = ranking["group"].nunique()
    verdict = (
        "The run could not tell any of the variants apart."
        if groups == 1
        else f"The run separates the variants into {groups} groups; within a group, the "
        "order is not established."
    )
    return (
        "<h2>Which variant loses least</h2><p>Variants ranked by drops per connection-hour "
        f"(95 % exact CIs). {verdict} Variants sharing a letter could not be told apart "
        "(docs/report.md gives the rule); the last column says how many connection-hours per "
        "variant a run would need to separate a variant from the next one at the difference "
        "observed.</p>"
        + _table(
            rows,
            [
                ("group", "group"),
                ("variant", "variant"),
                ("connection_hours", "connection-hours"),
                ("drops", "drops"),
                ("rate", "drops / conn-hour"),
                ("rate_ci", "95 % CI"),
                ("lost", "lost utterances / hour"),
                ("lost_ci", "95 % CI"),
                ("separate", "hours to separate from next"),
            ],
        )
    )


def _separation(row: dict[str, Any], nxt: dict[str, Any] | None) -> str:
    """How much longer a run needs to separate a variant from the next one in the ranking."""
    if nxt is None:
        return "–"
    if nxt["group"] != row["group"]:
        return "separated"
    if min(row["drops"], nxt["drops"]) < analysis.MIN_DROPS:
        return "too few drops"
    return _hours(row.get("hours_to_separate"))


def _hours(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "never (no difference)"
    return f"{value:,.0f}"


def _verdicts_html(diagnosis: dict[str, list[dict[str, Any]]]) -> str:
    """The blind diagnosis: per variant, each theory's verdict and its evidence, supported
    first; the next step of each supported theory under it."""
    order = {"supported": 0, "inconclusive": 1, "not_supported": 2}
    columns = [("hypothesis", "theory"), ("verdict", "verdict"), ("evidence", "evidence")]
    parts = []
    for variant, verdicts in diagnosis.items():
        rows = sorted(verdicts, key=lambda v: order[v["verdict"]])
        steps = [f"{v['hypothesis']}: {v['next_step']}" for v in rows if v.get("next_step")]
        supported = [v["hypothesis"] for v in rows if v["verdict"] == "supported"]
        gist = ", ".join(supported) if supported else "no theory supported yet"
        parts.append(
            f"<details{' open' if len(diagnosis) < 4 else ''}><summary><b>"
            f"{html.escape(variant)}</b>: {html.escape(gist)}</summary>"
            + _table(rows, columns, css="findings")
            + "".join(f"<p>Next: {html.escape(s)}</p>" for s in steps)
            + "</details>"
        )
    return "".join(parts)


def _findings_html(rows: list[dict[str, Any]], model: ReportModel) -> str:
    """One table of sentences; with several variants, one folded table per variant, its
    summary line naming the theories the blind diagnosis supports."""
    columns = [("hypothesis", "hypothesis"), ("finding", "what the data says")]
    variants = list(dict.fromkeys(r.get("variant") for r in rows))
    if len(variants) < 2:
        return _table(rows, columns, css="findings")
    supported = {
        variant: [v.hypothesis for v in verdicts if v.verdict == "supported"]
        for variant, verdicts in model.verdicts.items()
    }
    drops = model.connections.loc[model.connections["dropped"], "variant"].astype(str)
    parts = []
    for v in variants:
        n = int((drops == v).sum())
        gist = (
            "no drops"
            if n == 0
            else f"{n} drops; supported: {', '.join(supported.get(v, [])) or 'none yet'}"
        )
        mine = [r for r in rows if r.get("variant") == v]
        parts.append(
            f"<details><summary><b>{html.escape(str(v))}</b>: {html.escape(gist)}</summary>"
            + _table(mine, columns, css="findings")
            + "</details>"
        )
    return "".join(parts)


def _survival_table_html(variants: list[dict[str, Any]]) -> str:
    rows = [
        dict(
            v,
            median=_minutes(v["median_s"]) if v["drops"] else "no drops",
            median_ci="–"
            if not v["drops"]
            else f"{_minutes(v['median_ci_s'][0])} – {_minutes(v['median_ci_s'][1])}",
            rate_ci=_ci(*v["drops_per_hour_ci"]),
        )
        for v in variants
    ]
    quiet = [v for v in variants if v["drops"] == 0]
    note = "".join(
        f"<p>{html.escape(v['variant'])}: no drop in {v['connection_hours']:.1f} "
        f"connection-hours; its drop rate is below {v['drops_per_hour_ci'][1]:.2g} per "
        "connection-hour (95 % upper bound).</p>"
        for v in quiet
    )
    return (
        _table(
            rows,
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
        + note
    )


def _logrank_html(model: ReportModel, images: dict[str, Path]) -> str:
    table = model.logrank
    if table is None or table.empty:
        return ""
    rows = table.to_dict(orient="records")
    matrix = _img(images["logrank"], "pairwise log-rank p-values") if "logrank" in images else ""
    body = _table(
        rows,
        [
            ("a", "variant"),
            ("b", "vs variant"),
            ("drops", "drops"),
            ("statistic", "chi2"),
            ("p", "p"),
            ("p_holm", "p (Holm)"),
            ("detectable_hazard_ratio", "detectable HR"),
            ("connection_hours_for_2x", "conn-hours for 2x"),
        ],
    )
    if len(rows) > 6:
        body = f"<details><summary>All {len(rows)} pairs</summary>{body}</details>"
    return (
        "<h3>Do the variants differ?</h3><p>Pairwise log-rank tests of connection lifetime; "
        "p-values Holm-corrected for the number of pairs. Detectable HR: the smallest hazard "
        "ratio this pair's drops detect with 80 % power at the corrected 5 % level "
        "(Schoenfeld); conn-hours for 2x: what the pair would need to detect a doubled hazard. "
        f"With fewer than {analysis.MIN_DROPS} drops a pair has too few drops to tell.</p>"
        + matrix
        + body
    )


def _cox_html(cox: analysis.CoxResult | None) -> str:
    if cox is None:
        return ""
    intro = (
        "<h3>Which factor matters?</h3><p>Cox proportional-hazards model over the factors "
        "the variants vary, fitted without a penalty. A hazard ratio above 1 means "
        "shorter-lived connections; a categorical factor's ratio is against its reference "
        "level, a numeric one's per unit step.</p>"
    )
    if cox.problem:
        return intro + f"<p><b>No model:</b> {html.escape(cox.problem)}</p>"
    rows = cox.table.to_dict(orient="records")
    table = _table(
        rows,
        [
            ("factor", "factor"),
            ("level", "level"),
            ("reference", "against"),
            ("unit", "unit"),
            ("hazard_ratio", "hazard ratio"),
            ("lo", "95 % CI low"),
            ("hi", "95 % CI high"),
            ("p", "p"),
        ],
    )
    ph = _table(cox.ph_test.to_dict(orient="records"), [("factor", "factor"), ("p", "p")])
    verdict = (
        "<p><b>The proportional-hazards assumption fails for "
        + ", ".join(html.escape(f) for f in cox.ph_violated)
        + "</b> (p &lt; 0.05): that factor's effect changes with connection age, so its "
        "single hazard ratio is an average over ages; read the survival and hazard charts "
        "per variant instead.</p>"
        if cox.ph_violated
        else "<p>The proportional-hazards check finds no factor whose effect changes with "
        "age (all p ≥ 0.05).</p>"
    )
    return (
        intro + table + "<p>Proportional-hazards check (Schoenfeld residuals):</p>" + ph + verdict
    )


def _power_html(model: ReportModel) -> str:
    if len(model.survival) > 1:
        return ""  # per pair, in the log-rank table
    p = model.power
    drops = model.survival[0].drops if model.survival else 0
    if drops < analysis.MIN_DROPS:
        return (
            f"<p>Power: {drops} drop(s), too few to tell how large a difference a comparison "
            f"would detect (at least {analysis.MIN_DROPS} needed).</p>"
        )
    return (
        f"<p>Power: with {drops} drops, a comparison of two equal groups this size detects a "
        f"hazard ratio of {_cell(p['detectable_hazard_ratio'])} or more (80 % power, 5 % "
        f"two-sided); detecting 2&times; needs about {_cell(p['drops_for_2x'])} drops, about "
        f"{_cell(p['connection_hours_for_2x'])} connection-hours at this drop rate.</p>"
    )


def _weibull_html(weibull: pd.DataFrame) -> str:
    if weibull is None or weibull.empty:
        return ""
    return (
        "<p>Weibull shape of each variant's lifetimes (95 % CI): above 1 the hazard rises with "
        "age (sessions wear out), below 1 it falls, about 1 it is flat (random loss).</p>"
        + _table(
            weibull.to_dict(orient="records"),
            [
                ("variant", "variant"),
                ("drops", "drops"),
                ("shape", "shape"),
                ("shape_lo", "95 % CI low"),
                ("shape_hi", "95 % CI high"),
                ("verdict", "hazard with age"),
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


def _stopped_html(stopped: pd.DataFrame) -> str:
    if stopped.empty:
        return ""
    return (
        "<h3>Workers that stopped</h3><p>Their reconnect policy gave up: no connection of "
        "theirs after this, so the rest of the run has fewer callers.</p>"
        + _table(
            stopped.to_dict(orient="records"),
            [
                ("variant", "variant"),
                ("worker", "worker"),
                ("at", "at (s)"),
                ("reason", "why"),
                ("failures", "failures in a row"),
                ("close_code", "last close code"),
                ("status", "last handshake status"),
            ],
        )
    )


def _outcomes_html(outcomes: dict[str, dict[str, int]]) -> str:
    rows = [{"variant": v, **counts} for v, counts in outcomes.items()]
    statuses = sorted({k for counts in outcomes.values() for k in counts})
    return _table(rows, [("variant", "variant")] + [(s, s) for s in statuses])


def _timing_html(summary: dict[str, Any]) -> str:
    lateness = summary["pacing_lateness_ms"]
    client = (
        f"<p>Send lateness of append frames against their deadlines (wall milliseconds): "
        f"p50 {_cell(lateness['p50'])} ms, p90 {_cell(lateness['p90'])} ms, p99 "
        f"{_cell(lateness['p99'])} ms.</p>"
    )
    faults = summary["fault_lateness"]
    if not faults:
        return client
    return (
        client
        + "<p>Faults the fake server scheduled for a given age, and how late they fired: at a "
        "compressed time scale a late fault is a scenario-time error the size of its wall "
        "lateness times the scale.</p>"
        + _table(
            faults,
            [
                ("run", "run"),
                ("faults", "faults"),
                ("p50_s", "p50 (scenario s)"),
                ("p99_s", "p99 (scenario s)"),
                ("max_s", "max (scenario s)"),
                ("p99_ms", "p99 (wall ms)"),
                ("saturated", "saturated"),
            ],
        )
    )
