"""The fake server's energy VAD: a 10 ms frame is speech when its RMS reaches the threshold's
level, and what it finds does not depend on how the audio was cut into appends."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from harness.core.vad import BYTES_PER_MS, FRAME_MS, ServerVad

FRAME_SAMPLES = FRAME_MS * BYTES_PER_MS // 2


@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.5, 2.0))
def test_a_frame_is_speech_when_its_rms_reaches_the_level(seed, threshold, ratio) -> None:
    vad = ServerVad(threshold=threshold)
    samples = np.random.default_rng(seed).normal(0, ratio * vad.level, FRAME_SAMPLES)
    pcm = np.clip(samples, -32768, 32767).astype("<i2")
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    if abs(rms - vad.level) < 1e-6 * vad.level:
        return  # too close to the level to call either way
    assert (vad.feed(pcm.tobytes()) == [("started", 0)]) == (rms >= vad.level)


loud, quiet = (np.full(FRAME_SAMPLES, a, "<i2").tobytes() for a in (8000, 10))


@given(st.lists(st.booleans(), max_size=120), st.lists(st.integers(1, 4000), min_size=1))
def test_the_same_audio_cut_differently_gives_the_same_segments(frames, cuts) -> None:
    audio = b"".join(loud if f else quiet for f in frames)
    whole = ServerVad(prefix_padding_ms=30, silence_duration_ms=50).feed(audio)
    vad, pieces, at = ServerVad(prefix_padding_ms=30, silence_duration_ms=50), [], 0
    for size in itertools.cycle(cuts):  # every cut at least 1 byte: ends with the audio
        if at >= len(audio):
            break
        pieces += vad.feed(audio[at : at + size])
        at += size
    assert pieces == whole
    assert [kind for kind, _ in whole].count("started") >= (1 if any(frames) else 0)
