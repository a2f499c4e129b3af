"""Load time and peak memory of `harness.log.frames.load` on a synthetic run of N event rows
(default 10 million) written with the real schemas, as the recorder writes them: Arrow IPC
stream batches of a few thousand rows, a client's events log and appends log and a server log.

The synthetic run looks like a soak of 200 workers: connections of 10 utterances of 1 s audio
in 20 ms appends (50 append rows + 6 meta/protocol rows per utterance), one connection in ten
dropped by a server fault. Usage:
    python bench/load_10m.py generate DIR [--rows 10000000]
    python bench/load_10m.py load DIR        # in a fresh process: time and peak RSS
    python bench/load_10m.py load DIR --lean # the same of load_for_report (what a report reads)
    python bench/load_10m.py all DIR         # both, plus write_frames
    python bench/load_10m.py report DIR [--repeat 3]   # `rtsoak report DIR`, fresh processes:
                                             # wall time and peak RSS of each, and medians
    python bench/load_10m.py night DIR [--sizes 10e6 30e6 100e6]   # night size (issue 35):
                                             # generate and report each size, fresh processes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.log.recorder import APPEND, APPEND_SCHEMA, EVENT_SCHEMA  # noqa: E402

CHUNK_S, GAP_S = 0.02, 2.0
HEAD = [
    ("meta", "conn_open", None, None),
    ("meta", "handshake", None, None),
    ("send", "session.update", 310, None),
    ("recv", "session.created", 900, None),
    ("recv", "session.updated", 900, None),
]
# The run's shape: workers, utterances a connection, appends (20 ms) an utterance. `short`
# (the 10 M benchmarks' since issue 6): connections of 10 utterances of 1 s, about half a
# minute each. `night` (issue 35): 100 workers, connections of 100 utterances of 4 s (about
# 11 minutes), as a real night is, so that connections and utterances grow as a night's do.
SHAPES = {"short": (200, 10, 50), "night": (100, 100, 200)}


def use_shape(name: str) -> None:
    """Set the module's shape: WORKERS, UTTS, APPENDS, one utterance's rows (UTT), one
    connection's (CONN), and an utterance's seconds (UTT_S)."""
    global WORKERS, UTTS, APPENDS, UTT, CONN, UTT_S
    WORKERS, UTTS, APPENDS = SHAPES[name]
    # One utterance, row by row: (dir, type, bytes, audio_ms)
    UTT = (
        [
            ("meta", "utt_start", None, APPENDS * 20.0),
            ("send", "input_audio_buffer.clear", 36, None),
        ]
        + [("send", "input_audio_buffer.append", 2618, 20.0)] * APPENDS
        + [
            ("send", "input_audio_buffer.commit", 37, None),
            ("recv", "input_audio_buffer.committed", 180, None),
            ("recv", "conversation.item.input_audio_transcription.completed", 260, None),
            ("meta", "utt_end", None, None),
        ]
    )
    CONN = HEAD + UTT * UTTS + [("meta", "conn_close", None, None)]
    UTT_S = APPENDS * CHUNK_S + 0.5 + GAP_S


use_shape("short")


def _strings(n: int, where: np.ndarray, values: list[str]) -> pa.Array:
    """A string column that is null except at `where`, vectorised (no per-row Python)."""
    mask = np.zeros(n, dtype=bool)
    mask[where] = True
    return pc.replace_with_mask(
        pa.nulls(n, pa.string()), pa.array(mask), pa.array(values, pa.string())
    )


def client_table(
    n_conns: int, rng: np.random.Generator, first: int = 0
) -> tuple[pa.Table, np.ndarray]:
    """Connections `first` to `first + n_conns` (a whole number of rounds of WORKERS, so that
    the next block's rows come after these), in time order, and which of them dropped."""
    per = len(CONN)
    n = n_conns * per
    dirs, types, bytes_, audio = zip(*CONN, strict=True)
    kinds = sorted(set(types))
    type_codes = np.array([kinds.index(t) for t in types], dtype=np.int32)
    offsets = np.zeros(per)  # scenario seconds from the connection's open
    k = len(HEAD)
    offsets[:k] = [0.0, 0.3, 0.31, 0.35, 0.36]
    for u in range(UTTS):
        base = 0.4 + u * UTT_S
        rows = np.arange(len(UTT))
        offsets[k : k + len(UTT)] = base + np.minimum(rows, APPENDS + 2) * CHUNK_S
        tail = np.array([0.1, 0.5, 0.5])  # committed, completed, utt_end after the commit
        offsets[k + len(UTT) - 3 : k + len(UTT)] = base + APPENDS * CHUNK_S + tail
        k += len(UTT)
    offsets[-1] = offsets[-2] + 0.1
    conn_s = offsets[-1] + 0.5
    conn_ix = np.repeat(np.arange(first, first + n_conns), per)
    worker = (conn_ix % WORKERS).astype(np.int32)
    attempt = (conn_ix // WORKERS + 1).astype(np.int32)
    t = (attempt - 1) * conn_s + worker * 0.01 + np.tile(offsets, n_conns)
    order = np.argsort(t, kind="stable")  # the log is in time order across workers
    t0 = 1.79e9
    ty = np.tile(type_codes, n_conns)
    req = [f"req_{i:032x}" for i in range(first, first + n_conns)]
    dropped = rng.random(n_conns) < 0.1
    meta_rows = {
        name: np.flatnonzero(ty == kinds.index(name))
        for name in ("handshake", "conn_close", "utt_start", "utt_end")
    }
    completed = np.flatnonzero(ty == kinds.index(UTT[-2][1]))
    committed = np.flatnonzero(ty == kinds.index(UTT[-4][1]))
    utt_keys = [
        f"v/{w}/{i}"
        for w, i in zip(
            worker[meta_rows["utt_start"]], range(len(meta_rows["utt_start"])), strict=True
        )
    ]
    item_ids = [f"item_{first * UTTS + i:022x}" for i in range(len(completed))]
    transcript = "audio 1.000s crc32 e371fa09"
    closes = [
        json.dumps(
            {
                "closed_by": "transport" if d else "client",
                "cause": "abnormal" if d else "scenario_end",
                "state": "idle",
                "opened": 0.0,
                "since_sent": 0.1,
                "since_recv": 0.2,
                "uncommitted_ms": 0.0,
                "audio_ms": 10000.0,
                "completed": UTTS,
                "session_id": f"sess_{first + i}",
            }
        )
        for i, d in enumerate(dropped)
    ]
    code = np.full(n, -1, dtype=np.int32)
    code[meta_rows["handshake"]] = 101
    code[meta_rows["conn_close"]] = np.where(dropped, 1006, 1000)
    item_at = np.concatenate(
        [
            meta_rows["handshake"],
            meta_rows["conn_close"],
            meta_rows["utt_start"],
            meta_rows["utt_end"],
            committed,
            completed,
        ]
    )
    item_values = req + req + utt_keys + utt_keys + item_ids + item_ids
    item_sort = np.argsort(item_at)
    text_at = np.concatenate([meta_rows["utt_end"], completed])
    text_values = ["completed"] * len(meta_rows["utt_end"]) + [transcript] * len(completed)
    text_sort = np.argsort(text_at)
    detail_at = np.concatenate(
        [
            meta_rows["handshake"],
            meta_rows["conn_close"],
            meta_rows["utt_start"],
            meta_rows["utt_end"],
        ]
    )
    detail_values = (
        [json.dumps({"latency": 0.3})] * n_conns
        + closes
        + [json.dumps({"name": "a", "crc32": 3815897609, "bytes": 48000})] * len(utt_keys)
        + [
            json.dumps(
                {"item_id": i, "transcript": transcript, "latency": 0.5, "uncommitted_ms": 0.0}
            )
            for i in item_ids
        ]
    )
    detail_sort = np.argsort(detail_at)
    lag = np.where(
        np.tile(np.array(types) == "input_audio_buffer.append", n_conns),
        rng.exponential(0.4, n).astype(np.float32),
        np.nan,
    ).astype(np.float32)
    table = pa.table(
        {
            "wall": pa.array(t0 + t),
            "t": pa.array(t),
            "src": pa.array(np.full(n, "client")).cast(pa.string()),
            "variant": pa.array(np.full(n, "v")).cast(pa.string()),
            "worker": pa.array(worker),
            "conn": pa.array(attempt),
            "dir": pa.array(np.tile(np.array(dirs), n_conns)).cast(pa.string()),
            "type": pa.DictionaryArray.from_arrays(pa.array(ty), kinds).cast(pa.string()),
            "bytes": pa.array(
                np.tile(np.array([b or 0 for b in bytes_], np.int32), n_conns),
                mask=np.tile(np.array([b is None for b in bytes_]), n_conns),
            ),
            "audio_ms": pa.array(
                np.tile(np.array([a or 0 for a in audio], np.float32), n_conns),
                mask=np.tile(np.array([a is None for a in audio]), n_conns),
            ),
            "lag_ms": pa.array(lag, from_pandas=True),
            "dbfs": pa.array(
                np.where(np.isnan(lag), np.nan, -30.0).astype(np.float32), from_pandas=True
            ),
            "code": pa.array(code, mask=code < 0),
            "item": _strings(n, item_at[item_sort], [item_values[i] for i in item_sort]),
            "text": _strings(n, text_at[text_sort], [text_values[i] for i in text_sort]),
            "detail": _strings(n, detail_at[detail_sort], [detail_values[i] for i in detail_sort]),
        },
        schema=EVENT_SCHEMA,
    )
    return table.take(pa.array(order)), first + np.flatnonzero(dropped)


def server_table(first: int, n_conns: int, dropped: np.ndarray) -> pa.Table:
    req = [f"req_{i:032x}" for i in range(first, first + n_conns)]
    rows = (
        [("session_open", r, None, None) for r in req]
        + [("fault", f"req_{i:032x}", 1006, "session_age") for i in dropped]
        + [("session_close", r, 1006, None) for r in req]
    )
    types, items, codes, texts = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {
            "wall": pa.array(np.full(n, 1.79e9)),
            "t": pa.array(np.zeros(n)),
            "src": pa.array(["server"] * n),
            "variant": pa.nulls(n, pa.string()),
            "worker": pa.array(np.full(n, -1, np.int32)),
            "conn": pa.array(np.full(n, -1, np.int32)),
            "dir": pa.array(["meta"] * n),
            "type": pa.array(types),
            "bytes": pa.nulls(n, pa.int32()),
            "audio_ms": pa.nulls(n, pa.float32()),
            "lag_ms": pa.nulls(n, pa.float32()),
            "dbfs": pa.nulls(n, pa.float32()),
            "code": pa.array(codes, pa.int32()),
            "item": pa.array(items),
            "text": pa.array(texts),
            "detail": pa.nulls(n, pa.string()),
        },
        schema=EVENT_SCHEMA,
    )


def write_log(table: pa.Table, writer: pa.ipc.RecordBatchStreamWriter, batch_rows: int = 3000):
    for batch in table.to_batches(max_chunksize=batch_rows):
        writer.write_batch(batch)


def split_appends(client: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The client's rows as the recorder splits them: the appends sent, in APPEND_SCHEMA, and
    the rest."""
    is_append = pc.equal(client.column("type"), APPEND)
    sends = client.filter(is_append)
    columns = [
        pc.dictionary_encode(sends.column(f.name)) if f.name == "variant" else sends.column(f.name)
        for f in APPEND_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=APPEND_SCHEMA), client.filter(pc.invert(is_append))


def generate(run_dir: Path, rows: int) -> None:
    """The synthetic run, a block of rounds at a time (memory stays that of one block, so a
    night of 100 M rows is made like 10 M)."""
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_conns = max(1, rows // len(CONN))
    block = WORKERS * max(1, 1_000_000 // (len(CONN) * WORKERS))  # rounds, about 1 M rows
    names = ("events-client", "appends-client", "events-server")
    schemas = (EVENT_SCHEMA, APPEND_SCHEMA, EVENT_SCHEMA)
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(pa.ipc.new_stream(str(run_dir / f"{n}.arrows"), schema))
            for n, schema in zip(names, schemas, strict=True)
        ]
        generated = 0
        for first in range(0, n_conns, block):
            count = min(block, n_conns - first)
            client, dropped = client_table(count, rng, first)
            appends, others = split_appends(client)
            write_log(others, writers[0])
            write_log(appends, writers[1])
            write_log(server_table(first, count, dropped), writers[2])
            generated += client.num_rows
    (run_dir / "manifest.json").write_text(json.dumps({"seed": 0, "synthetic": True}))
    size = sum(p.stat().st_size for p in run_dir.glob("*.arrows"))
    print(
        json.dumps(
            {
                "generated_rows": generated,
                "connections": n_conns,
                "log_bytes": size,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def load_lean(run_dir: Path) -> None:
    from harness.log.frames import load_for_report
    from harness.report.findings import WINDOW_S

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    frames = load_for_report(run_dir, drop_window_s=WINDOW_S)
    out = {
        "events": frames.rows,
        "events_kept": len(frames.events),
        "lateness_rows": len(frames.lateness),
        "connections": len(frames.connections),
        "utterances": len(frames.utterances),
        "load_s": round(time.perf_counter() - t0, 2),
        "kept_memory_bytes": int(
            frames.events.memory_usage(deep=True).sum()
            + frames.lateness.memory_usage(deep=True).sum()
        ),
        "rss_before_mib": rss0 // 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    print(json.dumps(out))


def load(run_dir: Path, write: bool) -> None:
    from harness.log.frames import load as load_frames
    from harness.log.frames import write_frames

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    frames = load_frames(run_dir)
    t1 = time.perf_counter()
    out = {
        "events": len(frames.events),
        "connections": len(frames.connections),
        "utterances": len(frames.utterances),
        "load_s": round(t1 - t0, 2),
        "events_memory_bytes": int(frames.events.memory_usage(deep=True).sum()),
        "rss_before_mib": rss0 // 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    if write:
        write_frames(frames, run_dir / "frames")
        out["write_frames_s"] = round(time.perf_counter() - t1, 2)
        out["peak_rss_after_write_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(out))


def report(run_dir: Path, repeat: int) -> None:
    """`rtsoak report` as a user runs it, each time in a fresh process: wall seconds and peak
    RSS (ru_maxrss of that child, as `/usr/bin/time` reports it: touched pages of mapped
    files count too)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "harness", "report", str(run_dir)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: a threshold failed
            raise SystemExit(f"rtsoak report failed: {os.waitstatus_to_exitcode(status)}")
        runs.append({"wall_s": round(wall, 2), "peak_rss_mib": usage.ru_maxrss // 1024})
        print(json.dumps(runs[-1]), flush=True)
    print(
        json.dumps(
            {
                "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
        )
    )


def _timed(args: list[str]) -> dict[str, float]:
    """A command in a fresh process: its wall seconds and peak RSS."""
    t0 = time.perf_counter()
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(args, cwd=root, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # report: 1, a threshold failed
        raise SystemExit(f"{' '.join(args)} failed: {os.waitstatus_to_exitcode(status)}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mib": usage.ru_maxrss // 1024}


def night(base: Path, sizes: list[int]) -> None:
    """The night-size benchmark (issue 35): per size, the synthetic run (shape `night`)
    generated and `rtsoak report`ed, each in a fresh process, wall time and peak RSS; the run
    is removed before the next size."""
    for rows in sizes:
        run_dir = base / f"night-{rows // 1_000_000}m"
        gen = _timed(
            [
                sys.executable,
                __file__,
                "generate",
                str(run_dir),
                "--rows",
                str(rows),
                "--shape",
                "night",
            ]
        )
        rep = _timed([sys.executable, "-m", "harness", "report", str(run_dir)])
        print(json.dumps({"rows": rows, "generate": gen, "report": rep}), flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["generate", "load", "all", "report", "night"])
    parser.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=[10e6, 30e6, 100e6],
        help="night: event rows of each run",
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="short", help="generate")
    parser.add_argument("--write", action="store_true", help="also time write_frames")
    parser.add_argument("--repeat", type=int, default=3, help="report: how many times")
    parser.add_argument("--lean", action="store_true", help="load: load_for_report instead")
    args = parser.parse_args()
    if args.command == "generate":
        use_shape(args.shape)
        generate(args.dir, args.rows)
    if args.command == "load":
        load_lean(args.dir) if args.lean else load(args.dir, args.write)
    if args.command == "report":
        report(args.dir, args.repeat)
    if args.command == "night":
        night(args.dir, [int(n) for n in args.sizes])
    if args.command == "all":
        # Every step in a fresh process spawned by this small one: Linux counts the RSS a
        # child had before exec (its parent's) in the child's ru_maxrss, so a large parent
        # would inflate the peaks measured.
        step = [sys.executable, __file__]
        subprocess.run([*step, "generate", str(args.dir), "--rows", str(args.rows)], check=True)
        subprocess.run([*step, "load", str(args.dir), "--write"], check=True)
        report(args.dir, args.repeat)


if __name__ == "__main__":
    main()
