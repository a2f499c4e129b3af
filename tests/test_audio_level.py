"""Every append's audio level in dBFS: one definition (core/audio_level.py) for the worker's
frames, the proxy's observer and the fake server's silence policy; recorded in both logs, read
back as the events frame's `dbfs`, and NaN from logs written before the column existed."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import rtsoak, tone, write_scenario

from harness.config.audio import RATE, Utterance, noise, to_pcm16
from harness.config.faults import parse_faults
from harness.core import policies
from harness.core.audio_level import DBFS_FLOOR, dbfs
from harness.core.client import ClientConnection
from harness.log.frames import load, load_for_report
from harness.log.recorder import APPEND, Recorder, appends_log

TONE_DBFS = 20 * math.log10(0.3 * 32767 / 32768 / math.sqrt(2))  # a 0.3 sine: -13.5 dBFS


def start(name: str, **body):
    return parse_faults({name: body}, "test.toml", seed=7).start("v/0/1", 0.0)


def _append(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


def test_dbfs_is_the_rms_level_with_digital_silence_at_the_floor() -> None:
    assert dbfs(tone(0.1).pcm) == pytest.approx(TONE_DBFS, abs=0.05)
    full = np.full(480, -32768, "<i2").tobytes()
    assert dbfs(full) == 0.0
    assert dbfs(bytes(960)) == dbfs(b"") == DBFS_FLOOR
    one_lsb = np.zeros(24_000, "<i2")
    one_lsb[0] = 1  # -134 dBFS over a second: quieter than the floor reads as the floor
    assert dbfs(one_lsb.tobytes()) == DBFS_FLOOR
    assert dbfs(full + b"\x7f") == 0.0  # a trailing odd byte is ignored, not an error


def test_frames_carry_their_level_computed_once_when_built() -> None:
    rng = np.random.default_rng(1)
    speech = tone(1.0, 250)  # five periods in 20 ms: every frame has the sine's RMS
    quiet = Utterance("noise", to_pcm16(noise(1.0, -60.0, rng), RATE))
    for utt in (speech, quiet, Utterance("zeros", bytes(RATE * 2))):
        frames = utt.frames(20)
        step = RATE * 2 * 20 // 1000
        chunks = [utt.pcm[i : i + step] for i in range(0, len(utt.pcm), step)]
        assert [f.dbfs for f in frames] == [dbfs(c) for c in chunks]
        assert utt.frames(20) is frames
    assert all(f.dbfs == pytest.approx(TONE_DBFS, abs=0.1) for f in speech.frames(20))
    assert all(f.dbfs == pytest.approx(-60.0, abs=1.0) for f in quiet.frames(20))


def test_the_silence_policy_judges_the_level_the_client_records() -> None:
    """The fake server arms its silence hazard on exactly the frames whose recorded level is
    below its threshold: the same function, not a copy."""
    assert policies.dbfs is dbfs
    rng = np.random.default_rng(2)
    for level in (-70.0, -51.0, -49.0, -30.0):
        (frame,) = Utterance("n", to_pcm16(noise(0.02, level, rng), RATE)).frames(20)
        faults = start("silence_hazard", threshold_dbfs=-50, after="10s", mean="60s")
        pcm = base64.b64decode(json.loads(frame.json)["audio"])
        faults.on_audio(1.0, pcm, 0)
        assert (faults.next_deadline() is not None) == (frame.dbfs < -50)
    zeros = start("silence_hazard", threshold_dbfs=-120, after="10s", mean="60s")
    zeros.on_audio(1.0, bytes(960), 0)  # digital silence is quiet under any threshold
    assert zeros.next_deadline() is not None


def test_the_proxy_records_the_level_of_each_append_it_relays(tmp_path: Path) -> None:
    obs = ClientConnection("proxy/1", 0.0, infer=True)
    obs.handshake(0.1, 101, "req_1")
    loud, silent = tone(0.02, 250).pcm, bytes(960)
    rows = [
        *obs.client_frame(1.0, _append(loud)),
        *obs.client_frame(1.02, _append(silent)),
        *obs.client_frame(1.04, _append(loud + b"\x01")),  # odd: recorded, not an error
        *obs.client_frame(1.06, json.dumps({"type": "input_audio_buffer.commit"})),
    ]
    appends = [r for r in rows if r.type == APPEND]
    assert [r.dbfs for r in appends] == [dbfs(loud), DBFS_FLOOR, dbfs(loud)]
    assert appends[0].dbfs == pytest.approx(TONE_DBFS, abs=0.1)
    assert [r for r in rows if r.type != APPEND and r.dir == "send"][0].dbfs is None

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    rec = Recorder(run_dir / "events-client.arrows")
    for row in rows:
        rec.record(row, 1e9 + row.t, "client", "proxy", 0, 1)
    rec.close()
    events = load(run_dir).events
    sent = events[events["type"] == APPEND]
    assert sent["dbfs"].tolist() == pytest.approx([dbfs(loud), DBFS_FLOOR, dbfs(loud)])
    assert events.loc[events["type"] != APPEND, "dbfs"].isna().all()


def test_the_proxy_records_no_pcm16_level_for_g711_audio() -> None:
    obs = ClientConnection("proxy/1", 0.0, infer=True)
    obs.handshake(0.1, 101, "req_1")
    obs.server_frame(
        0.2,
        json.dumps({"type": "session.updated", "session": {"input_audio_format": "g711_ulaw"}}),
    )
    (row,) = obs.client_frame(1.0, _append(bytes(160)))
    assert row.audio_ms == 20.0 and row.dbfs is None


OLD_EVENT_SCHEMA = pa.schema(
    [
        ("wall", pa.float64()),
        ("t", pa.float64()),
        ("src", pa.string()),
        ("variant", pa.string()),
        ("worker", pa.int32()),
        ("conn", pa.int32()),
        ("dir", pa.string()),
        ("type", pa.string()),
        ("bytes", pa.int32()),
        ("audio_ms", pa.float32()),
        ("lag_ms", pa.float32()),
        ("code", pa.int32()),
        ("item", pa.string()),
        ("text", pa.string()),
        ("detail", pa.string()),
    ]
)
OLD_APPEND_SCHEMA = pa.schema(
    [
        ("wall", pa.float64()),
        ("t", pa.float64()),
        ("variant", pa.dictionary(pa.int32(), pa.string())),
        ("worker", pa.int32()),
        ("conn", pa.int32()),
        ("bytes", pa.int32()),
        ("audio_ms", pa.float32()),
        ("lag_ms", pa.float32()),
    ]
)


def _write(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def test_logs_written_before_the_column_load_with_nan_levels(tmp_path: Path) -> None:
    """The schemas as they were before `dbfs` (the recorder's of eab3de1)."""
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    row = {f.name: [None] for f in OLD_EVENT_SCHEMA}
    row |= {"wall": [1e9], "t": [0.0], "src": ["client"], "variant": ["v"], "worker": [0]}
    row |= {"conn": [1], "dir": ["meta"], "type": ["conn_open"]}
    _write(run_dir / "events-client.arrows", pa.table(row, schema=OLD_EVENT_SCHEMA))
    variant = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array(["v"]))
    appends = [[1e9, 1e9], [0.1, 0.2], variant, [0, 0], [1, 1], [2000, 2000], [20.0] * 2, [0.5] * 2]
    _write(
        appends_log(run_dir / "events-client.arrows"),
        pa.table(appends, schema=OLD_APPEND_SCHEMA),
    )
    events = load(run_dir).events
    assert len(events) == 3 and events["dbfs"].dtype == "float32"
    assert events["dbfs"].isna().all()
    assert events.loc[events["type"] == APPEND, "lag_ms"].tolist() == [0.5, 0.5]
    assert load_for_report(run_dir).rows == 3  # streamed in chunks, the same way


@pytest.mark.parametrize(("fill", "quiet"), [("zeros", DBFS_FLOOR), ("noise", -60.0)])
def test_a_real_run_records_speech_loud_and_streamed_silence_at_its_level(
    tmp_path: Path, fill: str, quiet: float
) -> None:
    """Appends inside an utterance (its `clear` to its commit) carry the tone's level, the
    streamed silence between utterances the floor or the noise's level."""
    extra = f'[silence]\ngap = "3s"\nfill = "{fill}"\nnoise_dbfs = -60\n'
    scenario = write_scenario(tmp_path, workers=2, duration="1m", extra=extra)
    result = rtsoak("run", str(scenario), "--out", str(tmp_path / "runs"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    frames = load(run_dir)
    sent = frames.events[frames.events["type"] == APPEND]
    assert sent["dbfs"].notna().all()
    utts = frames.utterances
    # an utterance's audio goes from its start to its commit, or to a drop that lost it
    ends = utts["committed"].fillna(utts["ended"]).fillna(np.inf)
    inside = pd.Series(False, index=sent.index)
    for connection, started, end in zip(utts["connection"], utts["started"], ends, strict=True):
        mine = sent["connection"].astype(str) == str(connection)
        inside |= mine & sent["t"].between(started, end)
    speech, silence = sent.loc[inside, "dbfs"], sent.loc[~inside, "dbfs"]
    assert len(utts) >= 2 and len(speech) >= 20 and len(silence) >= 20
    assert (speech > -50).all() and speech.to_numpy() == pytest.approx(TONE_DBFS, abs=0.5)
    assert silence.to_numpy() == pytest.approx(quiet, abs=1.0)
