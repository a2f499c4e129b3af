"""Pure send schedules: when each append frame of an utterance is due, in scenario seconds
from the utterance's start.

Frames are sent on absolute deadlines (start + offset), never "sleep chunk_ms after the last
send", so lateness never accumulates into drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["SATURATED_P99_MS", "schedule", "steady_offsets"]

# A run whose append frames left this late (p99, wall ms), or whose fake server fired its
# faults this late, measured its own machine, not the service: the manifest and the report
# say so. One limit for both sides (runner, report.fidelity).
SATURATED_P99_MS = 10.0


@lru_cache(maxsize=1024)
def steady_offsets(frame_count: int, chunk_ms: int, speed: float = 1.0) -> tuple[float, ...]:
    """One frame every chunk_ms of audio, `speed` times faster than real time. Cached: every
    utterance of a fixture has the same schedule, and hundreds of workers ask for it."""
    step = chunk_ms / 1000.0 / speed
    return tuple(i * step for i in range(frame_count))


def schedule(
    frame_count: int,
    pacing: Any,
    rng: np.random.Generator,
    pause_at: int | None = None,
    pause: float = 0.0,
) -> Sequence[float]:
    """Offsets for `frame_count` frames under a [pacing] section: steady; jitter (each deadline
    moved by up to +-jitter_ms, kept in order); burst (burst_frames at once every
    burst_every_ms, by default as often as keeps the average at real time). A pause of
    `pause` seconds is inserted before frame `pause_at`."""
    if pacing.mode == "burst":
        every_ms = pacing.burst_every_ms or pacing.burst_frames * pacing.chunk_ms
        every = every_ms / 1000.0 / pacing.speed
        offsets = [(i // pacing.burst_frames) * every for i in range(frame_count)]
    else:
        offsets = steady_offsets(frame_count, pacing.chunk_ms, pacing.speed)
        if pacing.mode == "jitter" and frame_count:
            j = pacing.jitter_ms / 1000.0
            moved = np.asarray(offsets) + rng.uniform(-j, j, frame_count)
            # keep order and never before the utterance starts: each at least its predecessor
            offsets = np.maximum.accumulate(np.maximum(moved, 0.0)).tolist()
    if pause_at is not None and pause > 0:
        offsets = [o + pause if i >= pause_at else o for i, o in enumerate(offsets)]
    return offsets
