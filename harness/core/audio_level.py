"""The level of PCM16 audio in dBFS: one definition for the fake server's silence policy, the
worker's pre-encoded frames and the proxy's observer, so what a client recorded and what the
server judged are the same number."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DBFS_FLOOR", "dbfs"]

# Digital silence (and empty audio) reads as this rather than -inf, as does anything quieter:
# a finite number a float32 column and its statistics can hold. The quietest audio that is not
# zero, one sample of ±1 in a 20 ms chunk, reads -117 dBFS.
DBFS_FLOOR = -120.0


def dbfs(pcm: bytes) -> float:
    """RMS level of little-endian PCM16 `pcm` in dBFS, 20·log10(rms / 32768), floored at
    DBFS_FLOOR. A trailing odd byte is ignored."""
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float32)
    if samples.size == 0:
        return DBFS_FLOOR
    rms = math.sqrt(float(np.dot(samples, samples)) / samples.size) / 32768.0
    return max(20.0 * math.log10(rms), DBFS_FLOOR) if rms > 0 else DBFS_FLOOR
