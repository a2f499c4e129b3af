"""A client's own commit under server VAD holds every byte appended since the last commit,
clear or VAD turn: audio short of a whole 10 ms VAD frame, and quiet audio the VAD trimmed,
included (issue 33). The fake transcript names the committed audio's length and CRC32."""

from __future__ import annotations

import base64
import json
import random
import zlib

import aiohttp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.session import SessionLimits, TranscriptionSession
from harness.core.transcript import BYTES_PER_SECOND, parse_transcript
from harness.edge.server import ServerConfig

LOUD = np.full(240, 8000, "<i2").tobytes()  # 5 ms of a level well over the VAD's threshold
QUIET = bytes(480)  # 5 ms of silence


def append(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


def vad_session() -> TranscriptionSession:
    """A session at its default: server VAD on (300 ms prefix, 500 ms silence)."""
    return TranscriptionSession(
        "sess_test", 0.0, 1_700_000_000.0, random.Random(1), SessionLimits(latency_base=0.0)
    )


def transcribe_commit(s: TranscriptionSession, chunks: list[bytes]) -> tuple[dict, list[dict]]:
    """Append `chunks`, commit, and return the committed event and the completion."""
    for chunk in chunks:
        s.receive(append(chunk), 0.0)
    out = s.receive('{"type":"input_audio_buffer.commit"}', 0.0)
    assert out and out[0]["type"] == "input_audio_buffer.committed", out
    done = [e for e in s.poll(100.0) if e["type"].endswith("transcription.completed")]
    return out[0], done


def audio(pattern: list[bool], nbytes: int) -> bytes:
    """`nbytes` of audio (even), 5 ms blocks loud or quiet as `pattern` says, cyclically."""
    blocks = [LOUD if loud else QUIET for loud in pattern]
    whole = b"".join(blocks) * (nbytes // (len(blocks) * 480) + 1)
    return whole[:nbytes]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(4800, 120_000).map(lambda n: n - n % 2),  # 100 ms .. 1.25 s, any even length
    st.lists(st.booleans(), min_size=1, max_size=8),
    st.lists(st.integers(1, 3000).map(lambda n: n + n % 2), min_size=1, max_size=6),
)
def test_a_commit_under_server_vad_holds_every_byte_appended(nbytes, pattern, cuts) -> None:
    """Any audio, cut into appends of any even sizes: the client's commit holds every byte
    since the last turn the VAD committed by itself (all of it when there was none)."""
    pcm = audio(pattern, nbytes)
    s = vad_session()
    at, i, turn_end = 0, 0, 0
    while at < len(pcm):
        size = cuts[i % len(cuts)]
        for event in s.receive(append(pcm[at : at + size]), 0.0):
            if event["type"] == "input_audio_buffer.speech_stopped":
                turn_end = event["audio_end_ms"] * 48
        at, i = at + size, i + 1
    rest = pcm[turn_end:]
    assert s.buffer_bytes == len(rest)
    if len(rest) < BYTES_PER_SECOND // 10:
        return  # under 100 ms: the service refuses the commit (tests/test_session.py)
    _, done = transcribe_commit(s, [])
    assert parse_transcript(done[-1]["transcript"]).crc32 == zlib.crc32(rest)
    assert done[-1]["transcript"].startswith(f"audio {len(rest) / BYTES_PER_SECOND:.3f}s")
    assert s.buffer_bytes == 0


def test_the_field_report_length_commits_all_195462_bytes() -> None:
    """195,462 bytes appended in 20 ms appends (and a tail) -> an item of 195,462 bytes, not
    195,360 (the last 2.1 ms were left out before)."""
    pcm = audio([True], 195_462)
    chunks = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    _, done = transcribe_commit(vad_session(), chunks)
    mark = parse_transcript(done[0]["transcript"])
    assert mark is not None and mark.crc32 == zlib.crc32(pcm)
    assert f"{195_462 / BYTES_PER_SECOND:.3f}" in done[0]["transcript"]


def test_quiet_audio_the_vad_trimmed_is_still_committed() -> None:
    """Two seconds of silence: the VAD keeps only its 300 ms prefix in memory, but a client's
    commit holds all two seconds (plus a 1 ms tail short of a frame)."""
    pcm = bytes(2 * BYTES_PER_SECOND + 48)
    s = vad_session()
    _, done = transcribe_commit(s, [pcm[i : i + 4800] for i in range(0, len(pcm), 4800)])
    assert parse_transcript(done[0]["transcript"]).crc32 == zlib.crc32(pcm)
    assert s.vad.held_bytes == 0


def test_after_a_vad_turn_a_commit_holds_every_byte_since_the_turn_ended() -> None:
    """Speech, then a long quiet: the VAD commits the speech at its end; a client's commit
    then holds the quiet after it (whole frames and the partial one), nothing before."""
    speech, quiet = audio([True], 24_000), bytes(48_000 + 100)
    s = vad_session()
    vad_turns = []
    for out in (s.receive(append(speech), 0.0), s.receive(append(quiet), 0.0)):
        vad_turns += [e for e in out if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(vad_turns) == 1
    end_byte = vad_turns[0]["audio_end_ms"] * 48
    committed, done = transcribe_commit(s, [])
    mark = parse_transcript(done[-1]["transcript"])
    rest = (speech + quiet)[end_byte:]
    assert mark.crc32 == zlib.crc32(rest)
    assert f"{len(rest) / BYTES_PER_SECOND:.3f}" in done[-1]["transcript"]


async def test_over_a_socket_a_commit_under_server_vad_transcribes_every_byte(fake_server):
    server = await fake_server(
        ServerConfig(limits=SessionLimits(latency_base=0.01, latency_per_audio_second=0))
    )
    pcm = audio([True, True, False], 195_462)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers={"Authorization": "Bearer k"})
        assert (await ws.receive_json(timeout=5))["type"] == "session.created"
        for i in range(0, len(pcm), 4802):
            await ws.send_str(append(pcm[i : i + 4802]))
        await ws.send_json({"type": "input_audio_buffer.commit"})
        while (event := await ws.receive_json(timeout=5))["type"] != (
            "conversation.item.input_audio_transcription.completed"
        ):
            pass
        await ws.close()
    assert parse_transcript(event["transcript"]).crc32 == zlib.crc32(pcm)
    assert event["transcript"].startswith(f"audio {195_462 / BYTES_PER_SECOND:.3f}s")
