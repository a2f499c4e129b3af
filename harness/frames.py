"""Run directories -> pandas frames: events, connections, utterances (schema in docs/frames.md).

The event logs are the source of truth; frames are derived from them on every load, so a
finished, interrupted or crashed run loads alike. A batch torn by a crash is skipped and
counted, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.outcomes import CENSORING_CAUSES, UtteranceStatus
from harness.recorder import EVENT_SCHEMA

__all__ = ["Frames", "RunDirError", "is_run_dir", "load", "write_frames"]

EVENT_LOG_GLOB = "events-*.arrows"
_CATEGORIES = ("src", "variant", "dir", "type")
_PANDAS_TYPES = {pa.string(): pd.StringDtype("pyarrow"), pa.int32(): pd.Int32Dtype()}


class RunDirError(Exception):
    """A path that is not a run directory, or a run with nothing to analyse yet."""


@dataclass(slots=True)
class Frames:
    events: pd.DataFrame
    connections: pd.DataFrame
    utterances: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    torn_batches: int


def is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def _read_log(path: Path) -> tuple[pa.Table, int]:
    """All complete batches of one event log, and how many trailing batches were torn."""
    batches: list[pa.RecordBatch] = []
    torn = 0
    with pa.OSFile(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError):
            return EVENT_SCHEMA.empty_table(), 1 if path.stat().st_size else 0
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError, EOFError):
                torn += 1
                break
    return pa.Table.from_batches(batches, schema=EVENT_SCHEMA), torn


def read_events(run_dir: Path) -> tuple[pd.DataFrame, int]:
    tables, torn = [], 0
    for log in sorted(run_dir.glob(EVENT_LOG_GLOB)):
        table, t = _read_log(log)
        tables.append(table)
        torn += t
    table = pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()
    events = table.to_pandas(types_mapper=_PANDAS_TYPES.get)
    for col in _CATEGORIES:
        events[col] = events[col].astype("category")
    events.insert(0, "run", pd.Categorical([run_dir.name] * len(events)))
    return events, torn


def _details(rows: pd.DataFrame) -> pd.DataFrame:
    parsed = [json.loads(d) if isinstance(d, str) else {} for d in rows["detail"]]
    return pd.DataFrame(parsed, index=rows.index)


_KEY = ["run", "variant", "worker", "conn"]


def connections_frame(events: pd.DataFrame) -> pd.DataFrame:
    client_meta = events[(events["src"] == "client") & (events["dir"] == "meta")]
    by_type = {name: rows for name, rows in client_meta.groupby("type", observed=True)}
    empty = client_meta.iloc[0:0]
    opens = by_type.get("conn_open", empty)
    conns = opens[_KEY + ["t", "wall"]].rename(columns={"t": "opened", "wall": "opened_wall"})
    hs = by_type.get("handshake", empty)
    hs_detail = _details(hs)
    hs = hs[_KEY + ["t", "code", "item", "text"]].assign(
        handshake_latency=hs_detail.get("latency", pd.Series(dtype=float)))
    hs = hs.rename(columns={"t": "established", "code": "handshake_status",
                            "item": "request_id", "text": "handshake_error"})
    closes = by_type.get("conn_close", empty)
    close_detail = _details(closes).drop(columns=["opened"], errors="ignore")
    closes = pd.concat([closes[_KEY + ["t", "wall", "code", "text"]], close_detail], axis=1)
    closes = closes.rename(columns={"t": "closed", "wall": "closed_wall", "code": "close_code",
                                    "text": "close_reason", "completed": "utterances_completed",
                                    "audio_ms": "audio_sent_ms"})
    conns = conns.merge(hs, on=_KEY, how="left").merge(closes, on=_KEY, how="left")
    conns["established"] = conns["established"].where(conns["handshake_status"] == 101)
    # A connection with no close row was cut off by a crash: censored at the last event seen.
    last_t = events.groupby("run", observed=True)["t"].max()
    unclosed = conns["closed"].isna()
    conns.loc[unclosed, "closed"] = conns.loc[unclosed, "run"].map(last_t).astype(float)
    conns.loc[unclosed, "cause"] = "interrupted"
    conns.loc[unclosed, "closed_by"] = "none"
    for col in ("cause", "closed_by", "state", "close_reason"):
        if col not in conns:
            conns[col] = pd.NA
    conns["lifetime"] = conns["closed"] - conns["established"]
    conns["censored"] = conns["cause"].isin([str(c) for c in CENSORING_CAUSES] + ["interrupted"])
    conns["dropped"] = conns["established"].notna() & ~conns["censored"]
    conns["injected_fault"] = _injected_faults(events, conns)
    for col in ("cause", "closed_by", "state", "variant"):
        conns[col] = conns[col].astype("category")
    conns["close_code"] = conns["close_code"].astype("Int32")
    conns["handshake_status"] = conns["handshake_status"].astype("Int32")
    return conns.sort_values(["run", "variant", "worker", "conn"]).reset_index(drop=True)


def _injected_faults(events: pd.DataFrame, conns: pd.DataFrame) -> pd.Series:
    """The fake server's ground truth: which policy ended the connection, by request id."""
    faults = events[(events["src"] == "server")
                    & events["type"].isin(["fault", "handshake_fault"])]
    policy = dict(zip(faults["item"].astype(object), faults["text"].astype(object), strict=True))
    return conns["request_id"].astype(object).map(policy).astype("category")


def utterances_frame(events: pd.DataFrame) -> pd.DataFrame:
    client_meta = events[(events["src"] == "client") & (events["dir"] == "meta")]
    starts = client_meta[client_meta["type"] == "utt_start"]
    start_detail = _details(starts)
    utts = starts[["run", "variant", "worker", "conn", "item", "t", "audio_ms"]].rename(
        columns={"item": "utterance", "t": "started"})
    utts["source"] = start_detail.get("name")
    utts["crc32"] = start_detail.get("crc32")
    ends = client_meta[client_meta["type"] == "utt_end"]
    end_detail = _details(ends)
    ends = pd.DataFrame({
        "run": ends["run"], "utterance": ends["item"], "ended": ends["t"], "status": ends["text"],
        "item_id": end_detail.get("item_id"), "transcript": end_detail.get("transcript"),
        "latency": end_detail.get("latency"),
    })
    utts = utts.merge(ends, on=["run", "utterance"], how="left")
    utts["status"] = utts["status"].astype(object).fillna(str(UtteranceStatus.UNFINISHED))
    utts["status"] = pd.Categorical(utts["status"], categories=[str(s) for s in UtteranceStatus])
    utts["latency"] = pd.to_numeric(utts.get("latency"), errors="coerce")
    utts["variant"] = utts["variant"].astype("category")
    return utts.reset_index(drop=True)


def load(run_dirs: Path | str | Iterable[Path | str]) -> Frames:
    """Frames of one run directory or several (rows keep their run in the `run` column)."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise RunDirError("no run directory given")
    events_list, manifests, torn = [], {}, 0
    for run_dir in dirs:
        if not is_run_dir(run_dir):
            raise RunDirError(f"{run_dir}: not a run directory (no manifest.json); pass a "
                              "directory that `rtsoak run` wrote, e.g. reports/smoke-...")
        manifests[run_dir.name] = json.loads((run_dir / "manifest.json").read_text())
        events, t = read_events(run_dir)
        events_list.append(events)
        torn += t
    events = pd.concat(events_list, ignore_index=True) if len(events_list) > 1 else events_list[0]
    for col in ("run", *_CATEGORIES):
        events[col] = events[col].astype("category")
    return Frames(events, connections_frame(events), utterances_frame(events), manifests, torn)


def write_frames(frames: Frames, out_dir: Path) -> None:
    """Parquet copies of the frames (and CSV of the small ones) for people and other tools."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames.events.to_parquet(out_dir / "events.parquet", index=False)
    for name in ("connections", "utterances"):
        frame: pd.DataFrame = getattr(frames, name)
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
        frame.to_csv(out_dir / f"{name}.csv", index=False)


def pacing_lateness(events: pd.DataFrame) -> np.ndarray:
    appends = events[events["type"] == "input_audio_buffer.append"]
    return appends["lag_ms"].dropna().to_numpy(dtype=float)
