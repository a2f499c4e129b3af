"""Server VAD for the fake: finds speech start and end in appended PCM16 by energy, pure.

The service's `threshold` (0-1, a speech probability) is mapped onto an energy level:
-60 dBFS at 0 up to -20 dBFS at 1 (0.5 -> -40 dBFS), judged per 10 ms frame. Speech starts on
the first loud frame (reported `prefix_padding_ms` earlier) and stops after `silence_duration_ms`
of quiet frames. Only the audio a segment needs is kept: the prefix while quiet, the speech
while speaking, so memory stays bounded by the longest utterance. What a client's own commit
would hold (every byte since the last commit, clear or segment, whole frames or not) is kept as
a length and a CRC32 only (`pending()`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Segment", "ServerVad"]

FRAME_MS = 10
BYTES_PER_MS = 48  # 24 kHz PCM16


def threshold_dbfs(threshold: float) -> float:
    return -60.0 + 40.0 * min(max(threshold, 0.0), 1.0)


@dataclass(frozen=True, slots=True)
class Segment:
    """One utterance the VAD found: where it starts and ends in the session's audio (ms), and
    exactly the PCM it commits."""

    start_ms: int
    end_ms: int
    pcm: bytes


class ServerVad:
    def __init__(
        self, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 500
    ) -> None:
        self.level = 10 ** (threshold_dbfs(threshold) / 20) * 32768.0  # RMS in sample units
        # the same test on a frame's sum of squares: no mean or square root per 10 ms frame,
        # which cost a fifth of the server's time per append with server VAD (bench/RESULTS.md)
        self._loud_energy = self.level**2 * (FRAME_MS * BYTES_PER_MS // 2)
        self.prefix_ms = int(prefix_padding_ms)
        self.silence_ms = int(silence_duration_ms)
        self.position_ms = 0  # audio received since the session began
        self.kept = bytearray()  # audio not yet committed (trimmed while quiet)
        self.kept_from_ms = 0  # where `kept` starts in session audio
        self.speech_from_ms: int | None = None
        self.quiet_ms = 0
        self._partial = b""  # bytes short of a whole 10 ms frame
        # whole frames since the buffer last began (commit, clear, or a segment's end): what a
        # client's commit holds, as length and CRC32 (audio trimmed while quiet included)
        self._pending_bytes = 0
        self._pending_crc = 0

    @property
    def in_speech(self) -> bool:
        return self.speech_from_ms is not None

    def feed(self, pcm: bytes) -> list[tuple[str, int | Segment]]:
        """Audio in; ('started', audio_start_ms) and ('stopped', Segment) out, in order."""
        out: list[tuple[str, int | Segment]] = []
        data = self._partial + pcm
        whole = len(data) - len(data) % (FRAME_MS * BYTES_PER_MS)
        self._partial = data[whole:]
        frames = (
            np.frombuffer(data[:whole], dtype="<i2")
            .astype(np.float64)
            .reshape(-1, FRAME_MS * BYTES_PER_MS // 2)
        )
        loud = (np.einsum("ij,ij->i", frames, frames) >= self._loud_energy).tolist()
        step = FRAME_MS * BYTES_PER_MS
        counted = 0  # frames of `data` before this are in the pending CRC (or were committed)
        for i, is_loud in enumerate(loud):
            self.kept += data[i * step : (i + 1) * step]
            self.position_ms += FRAME_MS
            if not self.in_speech:
                if is_loud:
                    start = max(self.kept_from_ms, self.position_ms - FRAME_MS - self.prefix_ms)
                    self._trim_to(start)
                    self.speech_from_ms, self.quiet_ms = start, 0
                    out.append(("started", start))
                else:
                    self._trim_to(self.position_ms - self.prefix_ms)
                continue
            self.quiet_ms = 0 if is_loud else self.quiet_ms + FRAME_MS
            if self.quiet_ms >= self.silence_ms:
                end = self.position_ms - self.quiet_ms
                cut = (end - self.kept_from_ms) * BYTES_PER_MS
                segment = Segment(self.speech_from_ms, end, bytes(self.kept[:cut]))
                del self.kept[:cut]
                self.kept_from_ms = end
                self.speech_from_ms = None
                # the buffer now begins at the segment's end: the quiet frames after it
                self._pending_bytes, self._pending_crc = len(self.kept), zlib.crc32(self.kept)
                counted = (i + 1) * step
                self._trim_to(self.position_ms - self.prefix_ms)
                out.append(("stopped", segment))
        if whole > counted:  # one CRC call per append, not per frame
            self._pending_crc = zlib.crc32(memoryview(data)[counted:whole], self._pending_crc)
            self._pending_bytes += whole - counted
        return out

    def pending(self) -> tuple[int, int]:
        """(bytes, CRC32) of all audio since the buffer last began, the part short of a whole
        frame included: exactly what a client's `commit` now holds."""
        return (
            self._pending_bytes + len(self._partial),
            zlib.crc32(self._partial, self._pending_crc),
        )

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes + len(self._partial)

    @property
    def held_bytes(self) -> int:
        """Audio this VAD holds in memory (the kept segment audio and a partial frame)."""
        return len(self.kept) + len(self._partial)

    def clear(self) -> None:
        """The client cleared or committed the buffer: forget kept audio, the partial frame
        (its few ms are not counted in `position_ms`) and any speech in progress."""
        self.kept.clear()
        self.kept_from_ms = self.position_ms
        self.speech_from_ms = None
        self._partial = b""
        self._pending_bytes, self._pending_crc = 0, 0

    def _trim_to(self, from_ms: int) -> None:
        if from_ms > self.kept_from_ms:
            del self.kept[: (from_ms - self.kept_from_ms) * BYTES_PER_MS]
            self.kept_from_ms = from_ms
