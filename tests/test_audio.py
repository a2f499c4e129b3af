"""Audio loading: any WAV or FLAC becomes 24 kHz mono PCM16; frames carry it all, in order."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st

from harness.config.audio import (
    RATE,
    AudioError,
    AudioLibrary,
    Utterance,
    load_file,
    noise,
    silence,
)

ROOT = Path(__file__).resolve().parent.parent


def sine(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.mark.parametrize(
    ("rate", "channels", "suffix"),
    [(16000, 1, ".wav"), (44100, 2, ".wav"), (24000, 1, ".flac"), (48000, 1, ".flac")],
)
def test_any_wav_or_flac_becomes_24khz_mono_pcm16(
    tmp_path: Path, rate: int, channels: int, suffix: str
) -> None:
    path = tmp_path / f"a{suffix}"
    soundfile.write(path, sine(rate, 0.5, channels), rate)
    utt = load_file(path)
    assert utt.seconds == pytest.approx(0.5, abs=0.002)
    samples = np.frombuffer(utt.pcm, dtype="<i2")
    assert len(samples) == pytest.approx(RATE * 0.5, abs=48)
    # the tone survives resampling: its RMS is that of a 0.5-amplitude sine
    rms = np.sqrt(np.mean((samples[100:-100] / 32768.0) ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_24khz_pcm16_mono_is_taken_bit_exact(tmp_path: Path) -> None:
    pcm = (np.arange(2400, dtype="<i2") * 7).astype("<i2")
    path = tmp_path / "exact.wav"
    soundfile.write(path, pcm, RATE, subtype="PCM_16")
    assert load_file(path).pcm == pcm.tobytes()


def test_unreadable_audio_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF nonsense")
    with pytest.raises(AudioError, match="broken.wav: cannot be read as audio"):
        load_file(bad)
    with pytest.raises(AudioError, match="no .wav or .flac files"):
        AudioLibrary.from_dir(_empty(tmp_path))
    with pytest.raises(AudioError, match="audio directory not found"):
        AudioLibrary.from_dir(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


@given(
    st.binary(min_size=0, max_size=20_000).map(lambda b: b[: len(b) // 2 * 2]),
    st.sampled_from([10, 20, 40, 100]),
)
def test_frames_carry_exactly_the_utterance(pcm: bytes, chunk_ms: int) -> None:
    utt = Utterance("x", pcm)
    frames = utt.frames(chunk_ms)
    joined = b"".join(base64.b64decode(json.loads(f.json)["audio"]) for f in frames)
    assert joined == pcm
    assert sum(f.audio_bytes for f in frames) == len(pcm)
    assert all(f.audio_bytes == RATE * 2 * chunk_ms // 1000 for f in frames[:-1])
    assert utt.frames(chunk_ms) is frames  # built once


def test_silence_and_noise_levels() -> None:
    assert not silence(0.1).any() and len(silence(0.1)) == 2400
    level = noise(1.0, -40.0, np.random.default_rng(0))
    assert 20 * np.log10(np.sqrt(np.mean(level**2))) == pytest.approx(-40, abs=0.2)


def test_shipped_fixtures_load_as_24khz_speech() -> None:
    library = AudioLibrary.from_dir(ROOT / "fixtures" / "audio")
    assert len(library.utterances) >= 6
    for utt in library.utterances:
        assert 0.5 < utt.seconds < 15, utt.name
