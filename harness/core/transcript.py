"""Deterministic fake transcripts that prove what audio the server committed.

The transcript names the duration and CRC32 of exactly the committed PCM16 bytes, so a client
can check that nothing was lost, duplicated or reordered on the way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["AudioMark", "make_transcript", "parse_transcript"]

BYTES_PER_SECOND = 24_000 * 2  # 24 kHz mono PCM16
_MARK = re.compile(r"audio (\d+\.\d{3})s crc32 ([0-9a-f]{8})")


@dataclass(frozen=True, slots=True)
class AudioMark:
    seconds: float
    crc32: int


def make_transcript(nbytes: int, crc32: int) -> str:
    return f"audio {nbytes / BYTES_PER_SECOND:.3f}s crc32 {crc32:08x}"


def parse_transcript(text: str | None) -> AudioMark | None:
    """The mark inside a transcript, or None when the text carries none (e.g. a real service)."""
    if not text:
        return None
    m = _MARK.search(text)
    return AudioMark(float(m.group(1)), int(m.group(2), 16)) if m else None
