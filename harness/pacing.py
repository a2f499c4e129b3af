"""Pure send schedules: when each append frame of an utterance is due, in scenario seconds.

Frames are sent on absolute deadlines (start + offset), never "sleep chunk_ms after the last
send", so lateness never accumulates into drift.
"""

from __future__ import annotations

__all__ = ["steady_offsets"]


def steady_offsets(frame_count: int, chunk_ms: int, speed: float = 1.0) -> list[float]:
    """Offsets from the utterance start at which each frame is due: one every chunk_ms of audio,
    `speed` times faster than real time."""
    step = chunk_ms / 1000.0 / speed
    return [i * step for i in range(frame_count)]
