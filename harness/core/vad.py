"""Server VAD for the fake: finds speech start and end in appended PCM16 by energy, pure.

The service's `threshold` (0-1, a speech probability) is mapped onto an energy level:
-60 dBFS at 0 up to -20 dBFS at 1 (0.5 -> -40 dBFS), judged per 10 ms frame. Speech starts on
the first loud frame (reported `prefix_padding_ms` earlier) and stops after `silence_duration_ms`
of quiet frames. Only the audio a segment needs is kept: the prefix while quiet, the speech
while speaking (and, while quiet, up to TRIM_SLACK_MS more, trimmed in one go), so memory
stays bounded by the longest utterance. A client's own commit holds every byte since the last
commit, clear or segment (`pending()`): the audio trimmed away is kept as a length and CRC32.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Segment", "ServerVad"]

FRAME_MS = 10
BYTES_PER_MS = 48  # 24 kHz PCM16
# quiet audio beyond the prefix is trimmed once this much has piled up, not every frame: one
# `del` and one CRC32 call per half second of quiet instead of a method call per 10 ms frame
TRIM_SLACK_MS = 500


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
        # the server's largest per-append cost under server VAD
        self._loud_energy = self.level**2 * (FRAME_MS * BYTES_PER_MS // 2)
        self.prefix_ms = int(prefix_padding_ms)
        self.silence_ms = int(silence_duration_ms)
        self.position_ms = 0  # audio received since the session began
        self.kept = bytearray()  # audio not yet committed (trimmed while quiet)
        self.kept_from_ms = 0  # where `kept` starts in session audio
        self.speech_from_ms: int | None = None
        self.quiet_ms = 0
        self._partial = b""  # bytes short of a whole 10 ms frame
        # audio trimmed from the front of `kept` since the buffer last began (commit, clear,
        # or a segment's end): a client's commit holds it, then `kept`, then `_partial`
        self._trimmed_bytes = 0
        self._trimmed_crc = 0

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
        slack = self.prefix_ms + TRIM_SLACK_MS
        for i, is_loud in enumerate(loud):
            self.kept += data[i * step : (i + 1) * step]
            self.position_ms += FRAME_MS
            if not self.in_speech:
                if is_loud:
                    start = max(self.kept_from_ms, self.position_ms - FRAME_MS - self.prefix_ms)
                    self._trim_to(start)
                    self.speech_from_ms, self.quiet_ms = start, 0
                    out.append(("started", start))
                elif self.position_ms - self.kept_from_ms >= slack:
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
                self._trimmed_bytes, self._trimmed_crc = 0, 0
                self._trim_to(self.position_ms - self.prefix_ms)
                out.append(("stopped", segment))
        return out

    def pending(self) -> tuple[int, int]:
        """(bytes, CRC32) of all audio since the buffer last began, the part short of a whole
        frame included: exactly what a client's `commit` now holds."""
        crc = zlib.crc32(self._partial, zlib.crc32(self.kept, self._trimmed_crc))
        return self.pending_bytes, crc

    @property
    def pending_bytes(self) -> int:
        return self._trimmed_bytes + len(self.kept) + len(self._partial)

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
        self._trimmed_bytes, self._trimmed_crc = 0, 0

    def _trim_to(self, from_ms: int) -> None:
        if from_ms > self.kept_from_ms:
            n = (from_ms - self.kept_from_ms) * BYTES_PER_MS
            with memoryview(self.kept) as head:
                self._trimmed_crc = zlib.crc32(head[:n], self._trimmed_crc)
            self._trimmed_bytes += n
            del self.kept[:n]
            self.kept_from_ms = from_ms
