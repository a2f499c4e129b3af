"""Audio fixtures: load WAV/FLAC, resample to 24 kHz mono PCM16, pre-encode append frames.

Each utterance's append frames are built as JSON text once per chunk size, with their audio's
level in dBFS, because building them per send costs more than sending them.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.core.audio_level import dbfs

__all__ = ["RATE", "AudioError", "AudioLibrary", "Utterance", "silence", "noise"]

RATE = 24_000
AUDIO_SUFFIXES = (".wav", ".flac")
_APPEND = b'{"type":"input_audio_buffer.append","audio":"%s"}'


class AudioError(Exception):
    """An audio source that cannot be used, with the file and the fix."""


@dataclass(frozen=True, slots=True)
class Frame:
    json: bytes  # the whole input_audio_buffer.append event, UTF-8: sent as it is
    audio_bytes: int  # PCM bytes it carries
    dbfs: float  # its audio's level (harness.core.audio_level), recorded per send


@dataclass(slots=True)
class Utterance:
    name: str
    pcm: bytes
    crc32: int = 0
    _frames: dict[int, tuple[Frame, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.crc32 = zlib.crc32(self.pcm)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * RATE)

    def frames(self, chunk_ms: int) -> tuple[Frame, ...]:
        """Append events of `chunk_ms` audio each (the last may be shorter), built once."""
        cached = self._frames.get(chunk_ms)
        if cached is None:
            step = RATE * 2 * chunk_ms // 1000
            chunks = [self.pcm[i : i + step] for i in range(0, len(self.pcm), step)]
            cached = tuple(Frame(_APPEND % base64.b64encode(c), len(c), dbfs(c)) for c in chunks)
            self._frames[chunk_ms] = cached
        return cached


def to_pcm16(samples: np.ndarray, rate: int) -> bytes:
    """Float or int samples (frames x channels or mono) at `rate` -> 24 kHz mono PCM16 bytes."""
    import soxr

    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if rate != RATE:
        data = soxr.resample(data, rate, RATE, quality="HQ")
    return (np.clip(np.round(data * 32767.0), -32768, 32767).astype("<i2")).tobytes()


def load_file(path: Path) -> Utterance:
    import soundfile

    try:
        info = soundfile.info(str(path))
        if info.subtype == "PCM_16" and info.samplerate == RATE and info.channels == 1:
            data, _ = soundfile.read(str(path), dtype="int16")
            return Utterance(path.stem, data.astype("<i2").tobytes())
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"{path}: cannot be read as audio ({exc}); use WAV or FLAC") from None
    return Utterance(path.stem, to_pcm16(data, rate))


class AudioLibrary:
    """The utterances a scenario replays, in file-name order (so runs are reproducible)."""

    def __init__(self, utterances: list[Utterance]) -> None:
        if not utterances:
            raise AudioError("no utterances to replay")
        self.utterances = utterances

    @classmethod
    def from_dir(cls, directory: Path) -> AudioLibrary:
        if not directory.is_dir():
            raise AudioError(
                f"{directory}: audio directory not found; set [audio] dir to a "
                "folder of .wav or .flac files"
            )
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise AudioError(
                f"{directory}: no .wav or .flac files in it; add some or point "
                "[audio] dir elsewhere"
            )
        return cls([load_file(p) for p in files])

    def pick(self, rng: np.random.Generator) -> Utterance:
        return self.utterances[int(rng.integers(len(self.utterances)))]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE))


def noise(seconds: float, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at an RMS level in dBFS, as streamed "silence" with a noise floor."""
    return rng.normal(0.0, 10 ** (dbfs / 20.0), int(seconds * RATE))
