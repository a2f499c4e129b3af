"""The time scale's one rule: at scale k one scenario second takes 1/k wall seconds, for k in
[MIN_TIME_SCALE, MAX_TIME_SCALE]. Scenario files, the command line and the clock all check it
here, so no two of them can disagree about which scales run."""

from __future__ import annotations

import math

__all__ = ["MAX_TIME_SCALE", "MIN_TIME_SCALE", "check_time_scale"]

MIN_TIME_SCALE = 0.001
MAX_TIME_SCALE = 1000.0


def check_time_scale(value: float) -> float:
    """`value` as a float, or ValueError saying the allowed range."""
    scale = float(value)
    if not math.isfinite(scale) or not MIN_TIME_SCALE <= scale <= MAX_TIME_SCALE:
        raise ValueError(
            f"time scale {value!r} is out of range: use {MIN_TIME_SCALE:g} to "
            f"{MAX_TIME_SCALE:g} (1 = real time, 60 = a minute a second)"
        )
    return scale
