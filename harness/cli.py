"""rtsoak command line: run | serve | proxy | report | fit | recommend | import | validate | list.

Exit codes: 0 ok, 1 thresholds failed, 2 usage or configuration error, 130 interrupted.
User mistakes print one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config.audio import AudioError
from harness.config.target import TargetError
from harness.core.spec import ConfigError, parse_duration
from harness.core.timescale import check_time_scale
from harness.log.recorder import LogWriteError
from harness.log.rundir import RunDir, RunDirError

if TYPE_CHECKING:
    from harness.log.frames import ReportFrames

__all__ = ["main"]

EXIT_OK, EXIT_THRESHOLDS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake in how rtsoak was called."""


TLS_HELP = (
    "serve wss:// with a local CA kept in ~/.cache/rtsoak/tls (what the Node SDK needs); "
    "the banner prints the environment each SDK needs"
)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _verify_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not 1 <= hours <= 200:
        raise argparse.ArgumentTypeError(f"{text!r}: give connection-hours from 1 to 200, e.g. 16")
    return hours


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtsoak", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rtsoak {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario and write its report")
    run.add_argument("scenario", type=Path)
    run.add_argument("--workers", type=int, help="override run.workers (per variant)")
    run.add_argument("--duration", type=_duration, help="scenario time, e.g. 90s, 25m")
    run.add_argument(
        "--time-scale",
        type=_time_scale,
        help="override run.time_scale (fake target, or a url target on loopback)",
    )
    run.add_argument("--seed", type=int, help="override run.seed: same seed, same run")
    run.add_argument("--out", type=Path, default=Path("reports"), help="where run dirs go")
    _target_and_caps(run)
    run.add_argument(
        "--procs",
        type=int,
        help="client processes (default: 1 per 300 workers, as the cores allow)",
    )
    run.add_argument(
        "--shard",
        help="K/N: run the K-th of N deterministic slices of the "
        "workers (K from 0), for soaks spread over machines",
    )
    run.add_argument("--no-report", action="store_true", help="record only")

    serve = sub.add_parser("serve", help="run the fake Realtime transcription server")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (loopback)")
    serve.add_argument("--port", type=int, default=0, help="listen port (0: any free one)")
    serve.add_argument(
        "--faults",
        type=Path,
        help="a fault profile NAME (rtsoak list) or a TOML with [faults.*] (a scenario works)",
    )
    serve.add_argument("--time-scale", type=_time_scale, default=1.0, help="compress fault timings")
    serve.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the fault policies' draws and ids (default: a fresh seed each start, printed)",
    )
    serve.add_argument("--out", type=Path, help="log the server's view of every session here")
    serve.add_argument("--allow-remote", action="store_true", help="listen on a non-loopback host")
    serve.add_argument("--tls", action="store_true", help=TLS_HELP)
    serve.add_argument("--sync-stdin", action="store_true", help=argparse.SUPPRESS)

    proxy = sub.add_parser(
        "proxy",
        help="relay your own client to an upstream, recording every event and injecting faults",
    )
    proxy.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT on loopback (0: any)")
    proxy.add_argument(
        "--upstream",
        default="fake",
        help="fake (embedded), openai, azure, or a ws(s):// URL; keys come from the environment",
    )
    proxy.add_argument(
        "--upstream-key-env", default="OPENAI_API_KEY", help="URL upstream: env var with its key"
    )
    proxy.add_argument(
        "--upstream-header", default="Authorization", help="URL upstream: header for its key"
    )
    proxy.add_argument(
        "--faults",
        type=Path,
        help="a fault profile NAME (rtsoak list) or a TOML with [faults.*], applied at the proxy",
    )
    proxy.add_argument("--out", type=Path, default=Path("reports"), help="where run dirs go")
    proxy.add_argument("--name", default="proxy", help="run and variant name")
    proxy.add_argument(
        "--duration", type=_duration, default=24 * 3600.0, help="stop by itself after (24h)"
    )
    proxy.add_argument("--time-scale", type=_time_scale, default=1.0, help="compress fault timings")
    proxy.add_argument("--seed", type=int, default=0, help="the fault policies' draws")
    proxy.add_argument("--no-report", action="store_true", help="record only")
    proxy.add_argument("--tls", action="store_true", help=TLS_HELP)

    report = sub.add_parser("report", help="(re)build the report of run directories")
    report.add_argument("runs", type=Path, nargs="+")
    report.add_argument("--out", type=Path, help="report directory (default RUN/report)")
    report.add_argument(
        "--history", action="store_true", help="a night-over-night trend of these runs (trend.html)"
    )

    fit = sub.add_parser(
        "fit",
        help="fit a fault profile (rtsoak serve --faults) to run directories' drops",
        epilog="What each parameter comes from: docs/diagnosis.md, 'Fit a profile'",
    )
    fit.add_argument("runs", type=Path, nargs="+", help="run directories (read as one run)")
    fit.add_argument("--out", type=Path, required=True, help="the profile to write (.toml)")
    fit.add_argument("--variant", help="fit this variant only, as [faults.*] (default: each)")

    rec = sub.add_parser(
        "recommend",
        help="what to change (rotation age, keepalive, pacing) from run directories' drops",
        epilog="The rotation maths and the costs: docs/diagnosis.md, 'Recommend'",
    )
    rec.add_argument("runs", type=Path, nargs="+", help="run directories (read as one run)")
    rec.add_argument("--variant", help="this variant only (default: each)")
    rec.add_argument(
        "--cost-drop", type=_duration, help="what a drop costs, e.g. 30s (default: measured)"
    )
    rec.add_argument(
        "--cost-rotate",
        type=_duration,
        help="what a planned rotation costs, e.g. 1s (default: measured)",
    )
    rec.add_argument("--out", type=Path, help="where recommend.json goes (default RUN/report)")
    rec.add_argument(
        "--verify",
        action="store_true",
        help="soak the current and the recommended strategy on the fitted faults (1-4 min)",
    )
    rec.add_argument(
        "--verify-hours",
        type=_verify_hours,
        help="connection-hours a strategy for --verify, 1 to 200 (default: what telling the "
        "predicted difference in lost utterances takes, 8 to 32)",
    )

    imp = sub.add_parser(
        "import",
        help="turn your own connection logs (CSV, JSON lines) into a run directory",
        epilog="Columns, times and how a connection's end is classified: docs/import.md",
    )
    imp.add_argument("files", type=Path, nargs="+", help="connection rows: .csv, .jsonl, .ndjson")
    imp.add_argument(
        "--events",
        type=Path,
        action="append",
        default=[],
        help="a file of event rows (frames sent and received); repeat for more",
    )
    imp.add_argument("--out", type=Path, required=True, help="the run directory to write (new)")
    imp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=YOURS",
        help="read a column under your log's name, e.g. --map open=started_at",
    )
    imp.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad rows (counted on stderr and in the manifest) instead of failing",
    )
    imp.add_argument(
        "--time-scale",
        type=_time_scale,
        default=1.0,
        help="the logs come from a run compressed K times (an rtsoak export): the diagnosis "
        "allows K times the timing error (default 1: a real client's logs)",
    )

    validate = sub.add_parser(
        "validate", help="check scenario files as `run` would: settings, audio, target, caps"
    )
    validate.add_argument("files", type=Path, nargs="+")
    _target_and_caps(validate)

    listing = sub.add_parser("list", help="shipped scenarios and fault profiles")
    listing.add_argument(
        "--scenarios", type=Path, default=Path("scenarios"), help="where scenario files are"
    )
    return parser


def _target_and_caps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        type=_target,
        metavar="{fake,openai,azure,url,ws://...}",
        help="override run.target; a ws(s):// URL is target url with that URL (on loopback: "
        "any time scale, no caps); real targets read keys from the environment",
    )
    parser.add_argument("--max-minutes", type=float, help="cap (real targets): wall minutes")
    parser.add_argument(
        "--max-audio-hours", type=float, help="cap (real targets): audio hours sent"
    )


def _target(text: str) -> str:
    """A target kind, or a URL (target url with [target] url set to it)."""
    if text in ("fake", "openai", "azure", "url") or text.startswith(("ws://", "wss://")):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: choose fake, openai, azure or url, or give a ws:// or wss:// URL"
    )


def _run_part_parser() -> argparse.ArgumentParser:
    """A --procs child's command line: internal, so not in `rtsoak --help`."""
    part = argparse.ArgumentParser(prog="rtsoak run-part")
    part.add_argument("run_dir", type=Path)
    part.add_argument("--part", required=True)
    part.add_argument("--url", default="")
    part.add_argument("--audio-hours", type=float)
    return part


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rtsoak")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress reaches CI logs as it happens
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run-part"]:
        args = _run_part_parser().parse_args(argv[1:])
        args.command = "run-part"
    else:
        args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, AudioError, UsageError, RunDirError, TargetError, LogWriteError) as exc:
        print(f"rtsoak: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.config.scenario import load_scenario
    from harness.run.runner import Caps, OutputDirError, run_scenario

    scenario = load_scenario(args.scenario).with_overrides(
        workers=args.workers,
        duration=args.duration,
        time_scale=args.time_scale,
        seed=args.seed,
        target=args.target,
    )
    caps = Caps(max_minutes=args.max_minutes, max_audio_hours=args.max_audio_hours)
    # Until the workers' loop takes over the signals (and again once it gives them back), a
    # SIGTERM is a KeyboardInterrupt like SIGINT: the embedded server is stopped, no traceback.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.procs is not None and args.procs < 1:
            raise UsageError("--procs must be at least 1")
        result = run_scenario(
            scenario, args.out, caps=caps, procs=args.procs, shard=_shard(args.shard)
        )
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        # before the workers took over the signals, or while the embedded server stopped
        print("rtsoak: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    done = "interrupted" if result.interrupted else "finished"
    if result.error is not None:
        done = "stopped"
        print(f"rtsoak: the run stopped early: {result.error}", file=sys.stderr)
    print(f"rtsoak: run {done} after {result.wall_seconds:.1f} s wall: {result.run_dir}")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        failed = _frames_and_report(result.run_dir, report=not args.no_report)
    except OSError as exc:
        # the run directory's disk is (still) full: the log is intact up to where it stopped
        print(
            f"rtsoak: cannot write frames and report in {result.run_dir} "
            f"({_reason(exc)}); free space and run `rtsoak report {result.run_dir}`, "
            "or write the report elsewhere with `--out DIR`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"rtsoak: interrupted again; the event log in {result.run_dir} is complete, "
            "`rtsoak report` rebuilds frames and report from it",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except RunDirError as exc:
        if not result.interrupted:
            raise
        print(f"rtsoak: {exc}", file=sys.stderr)  # stopped before anything happened
    if result.error is not None:
        return EXIT_USAGE
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_THRESHOLDS if failed else EXIT_OK


def _reason(exc: OSError) -> str:
    """What went wrong, and with which file: '[path: ]No space left on device'."""
    text = exc.strerror or str(exc)
    return f"{exc.filename}: {text}" if exc.filename else text


def _frames_and_report(run_dir: Path, report: bool) -> bool:
    """frames/*.parquet always (they are the run's data); the report unless --no-report (it
    says when the run was interrupted: a partial report). The report streams the log, so a
    long run never holds its full events frame in memory."""
    if report:
        from harness.report import build_report

        built = build_report([run_dir])
        print(f"rtsoak: frames {RunDir(run_dir).frames}")
        print(f"rtsoak: report {built.index}")
        print(built.headline)
        if built.verdict_table:
            print(built.verdict_table)
        return built.failed
    from harness.log.frames import load, write_frames

    frames_dir = RunDir(run_dir).frames
    write_frames(load(run_dir), frames_dir)
    print(f"rtsoak: frames {frames_dir}")
    return False


def _time_scale(value: str) -> float:
    try:
        return check_time_scale(float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from harness.run.server import LOOPBACK, load_server_config, serve

    if args.host not in LOOPBACK and not args.allow_remote:
        raise UsageError(
            f"--host {args.host} is not a loopback address; the fake server is "
            "for this machine. Add --allow-remote if you really mean it."
        )
    from harness.run.runner import OutputDirError, check_output_dir, run_event_loop

    config = dataclasses.replace(load_server_config(args.faults, args.seed or 0), seed=args.seed)
    if args.out is not None:
        try:
            check_output_dir(args.out)
        except OutputDirError as exc:
            raise UsageError(str(exc).replace("a run directory", "the server's log")) from None
    tls = _tls_files() if args.tls else None
    try:
        run_event_loop(
            serve(args.host, args.port, config, args.time_scale, args.out, args.sync_stdin, tls)
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _cmd_proxy(args: argparse.Namespace) -> int:
    from harness.run.proxy import ProxyOptions, run_proxy
    from harness.run.runner import OutputDirError, check_output_dir
    from harness.run.server import LOOPBACK, load_server_config

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen {args.listen!r}: write HOST:PORT, e.g. 127.0.0.1:8765")
    if host not in LOOPBACK:
        raise UsageError(f"--listen {args.listen}: the proxy listens on loopback only (127.0.0.1)")
    faults = None if args.faults is None else load_server_config(args.faults, args.seed).faults
    try:
        check_output_dir(args.out)
    except OutputDirError as exc:
        raise UsageError(str(exc)) from None
    options = ProxyOptions(
        host=host,
        port=int(port),
        upstream=args.upstream,
        upstream_key_env=args.upstream_key_env,
        upstream_header=args.upstream_header,
        faults=faults,
        faults_source=None if args.faults is None else str(args.faults),
        out=args.out,
        name=args.name,
        duration=args.duration,
        time_scale=args.time_scale,
        seed=args.seed,
        tls=_tls_files() if args.tls else None,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_proxy(options)
    except KeyboardInterrupt:
        print("rtsoak: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"rtsoak: proxy run finished: {result.run_dir} ({result.rows} events)")
    try:
        _frames_and_report(result.run_dir, report=not args.no_report)
    except RunDirError as exc:
        print(f"rtsoak: {exc}", file=sys.stderr)  # no client connected: nothing to report
    return EXIT_OK


def _tls_files():
    """The local CA and certificate (made on first use), or one line saying why not."""
    from harness.edge.tls import cache_dir, tls_files

    try:
        return tls_files()
    except OSError as exc:
        raise UsageError(
            f"--tls: cannot keep the certificates in {cache_dir()} ({_reason(exc)}); "
            "point XDG_CACHE_HOME at a writable directory"
        ) from None


def _cannot_write(directory: Path) -> OSError | None:
    """Why files cannot be written in `directory` (made if missing), or None if they can."""
    probe = directory / f".rtsoak-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc
    return None


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build_report

    if args.out is not None and (exc := _cannot_write(args.out)) is not None:
        raise UsageError(f"--out {args.out}: cannot write here ({_reason(exc)}); pass another")
    if args.history:
        from harness.report.history import build_history

        out = args.out or args.runs[0].parent / "trend"
        try:
            print(f"rtsoak: trend {build_history(args.runs, out)}")
        except OSError as exc:
            raise UsageError(
                f"cannot write the trend ({_reason(exc)}); pass a writable --out DIR"
            ) from None
        return EXIT_OK
    frames = None
    (run_dir, *others) = args.runs
    if not others and RunDir(run_dir).is_run_dir():
        # a run directory is written to (frames/, report/) unless --out says where the report
        # goes: then a read-only one (an archive, another user's) is only read
        exc = _cannot_write(RunDir(run_dir).frames)
        if exc is not None and args.out is None:
            raise UsageError(
                f"{run_dir}: cannot write frames and report in this run directory "
                f"({_reason(exc)}); to report it as it is, write the report elsewhere: "
                f"rtsoak report {run_dir} --out DIR"
            )
        if exc is not None:
            from harness.log.frames import load_for_report
            from harness.report.findings import WINDOW_S

            print(f"rtsoak: {run_dir} is read-only ({_reason(exc)}): frames not written")
            frames = load_for_report([run_dir], drop_window_s=WINDOW_S)
    try:
        report = build_report(args.runs, out=args.out, frames=frames)
    except OSError as exc:
        raise UsageError(
            f"cannot write the report ({_reason(exc)}); pass a writable --out DIR"
        ) from None
    print(f"rtsoak: report {report.index}")
    print(report.headline)
    if report.verdict_table:
        print(report.verdict_table)
    return EXIT_THRESHOLDS if report.failed else EXIT_OK


def _cmd_recommend(args: argparse.Namespace) -> int:
    from harness.report.recommend import recommend_runs

    out = args.out or RunDir(args.runs[0]).report.path
    if (exc := _cannot_write(out)) is not None:
        raise UsageError(f"--out {out}: cannot write here ({_reason(exc)}); pass another")
    try:
        advice = recommend_runs(
            args.runs,
            out,
            args.variant,
            args.cost_drop,
            args.cost_rotate,
            _verify_runner() if args.verify else None,
            args.verify_hours,
        )
    except KeyError:
        raise UsageError(f"--variant {args.variant}: no such variant in these runs") from None
    for a in advice:
        print(f"{a.variant} ({a.model}):")
        for line in a.lines:
            print(f"  {line}")
        if a.verify is not None:
            from harness.report.verify import describe

            for line in describe(a.verify):
                print(f"  {line}")
    print(f"rtsoak: recommendation {out / 'recommend.json'}")
    return EXIT_OK


def _verify_runner():
    """`recommend --verify`'s runner: a scenario file through `rtsoak run`'s code path on the
    embedded fake server, no report; its run directory."""
    from harness.config.scenario import load_scenario
    from harness.run.runner import run_scenario

    def run(path: Path, out_base: Path) -> Path:
        result = run_scenario(load_scenario(path), out_base)
        if result.interrupted:
            raise KeyboardInterrupt
        if result.error is not None:
            raise UsageError(f"the verification run {result.run_dir} stopped: {result.error}")
        return result.run_dir

    return run


def _cmd_fit(args: argparse.Namespace) -> int:
    """The blind diagnosis of the runs, turned into a fault profile (harness/report/profile.py)."""
    from harness.log.frames import load_for_report

    with load_for_report(args.runs) as frames:
        return _fit(args, frames)


def _fit(args: argparse.Namespace, frames: ReportFrames) -> int:
    from datetime import UTC, datetime

    from harness.report.diagnosis import diagnose_variants
    from harness.report.model import scales, timing_tolerance
    from harness.report.profile import FitSource, explained_drops, fit_profile, profile_toml

    tolerance = timing_tolerance(frames, scales(frames))
    verdicts = diagnose_variants(frames.connections, frames.sends, tolerance)
    if args.variant is not None and args.variant not in verdicts:
        raise UsageError(
            f"--variant {args.variant!r}: the runs have " + ", ".join(sorted(verdicts))
        )
    if not verdicts:
        raise UsageError("the runs hold no connections: nothing to fit")
    explained = explained_drops(frames.connections, frames.sends, tolerance, verdicts)
    fits = fit_profile(
        frames.connections, verdicts, explained, list(frames.manifests), args.variant
    )
    source = FitSource(
        tuple(f"{name} ({path})" for name, path in zip(frames.manifests, args.runs, strict=False)),
        datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        _version(),
    )
    text = profile_toml(fits, source)
    tmp = args.out.with_name(args.out.name + ".tmp")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write ({_reason(exc)}); pass another") from None
    for fit in fits:
        found = ", ".join(
            p.policy + " " + " ".join(f"{q.key}={q.value}" for q in p.params) for p in fit.policies
        )
        print(f"{fit.variant}: {found or 'nothing fitted'}")
    print(f"rtsoak: profile {args.out}; next: rtsoak serve --faults {args.out}")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    from harness.log.importer import ImportOptions, LogImportError, import_logs, parse_mapping

    try:
        options = ImportOptions(
            tuple(args.files),
            args.out,
            tuple(args.events),
            parse_mapping(args.map),
            args.skip_bad,
            args.time_scale,
        )
        result = import_logs(options)
    except LogImportError as exc:
        raise UsageError(str(exc)) from None
    except LogWriteError:
        raise
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write ({_reason(exc)}); pass another") from None
    if result.skipped:
        print(f"rtsoak: skipped {result.skipped} bad row(s), first:", file=sys.stderr)
        for problem in result.problems:
            print(f"  {problem}", file=sys.stderr)
    print(
        f"rtsoak: imported {result.connections} connections and {result.events} events "
        f"into {result.run_dir}; next: rtsoak report {result.run_dir}"
    )
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    """Each file through `run`'s own checks (runner.preflight), stopping at the first
    refusal: what validate passes, run starts with the same flags."""
    from harness.config.scenario import load_scenario
    from harness.run.runner import Caps, preflight

    caps = Caps(max_minutes=args.max_minutes, max_audio_hours=args.max_audio_hours)
    for path in args.files:
        scenario = load_scenario(path).with_overrides(target=args.target)
        preflight(scenario, caps, log=lambda line: None)
        workers = sum(v.run.workers for v in scenario.variants)
        print(
            f"{path}: ok ({len(scenario.variants)} variant(s), {workers} workers, "
            f"{scenario.run.duration:g} s at {scenario.run.time_scale:g}x)"
        )
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from harness.config.faults import shipped_profiles

    scenarios = sorted(args.scenarios.glob("*.toml")) if args.scenarios.is_dir() else []
    if scenarios:
        print("scenarios:")
        for path in scenarios:
            print(f"  {path.stem:<20} {_first_comment(path)}")
    print('fault profiles (use with [faults] profile = "NAME" or rtsoak serve --faults NAME):')
    for name, (description, _) in shipped_profiles().items():
        print(f"  {name:<20} {description}")
    return EXIT_OK


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise UsageError(f"--shard {text!r}: write K/N with 0 <= K < N, e.g. --shard 0/4")
    return int(k), int(n)


def _cmd_run_part(args: argparse.Namespace) -> int:
    from harness.run.runner import run_part

    k, n = (int(x) for x in args.part.split("/"))
    result = run_part(args.run_dir, (k, n), args.url, args.audio_hours)
    if result.error is not None:  # said on stderr already; the parent stops the run on it
        return EXIT_USAGE
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


_COMMANDS = {
    "run": _cmd_run,
    "run-part": _cmd_run_part,
    "serve": _cmd_serve,
    "proxy": _cmd_proxy,
    "report": _cmd_report,
    "fit": _cmd_fit,
    "recommend": _cmd_recommend,
    "import": _cmd_import,
    "validate": _cmd_validate,
    "list": _cmd_list,
}
