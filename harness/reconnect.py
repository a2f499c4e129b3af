"""Pure reconnect policy: how long to wait before the next connection attempt, or give up."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.config import spec

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with proportional jitter, bounded in attempts.

    `failures` counts consecutive attempts that failed since the last good connection (0 right
    after a drop of a good one)."""

    strategy: str = spec("on-drop", choices=("on-drop", "none"))
    initial: float = spec(0.5, kind="duration")
    max: float = spec(8.0, kind="duration")
    multiplier: float = spec(2.0, lo=1.0, hi=10.0)
    jitter: float = spec(0.25, lo=0.0, hi=1.0)
    max_attempts: int = spec(10, lo=1, hi=1000)

    def delay(self, failures: int, rng: np.random.Generator) -> float | None:
        """Seconds to wait before reconnecting, or None to stop the worker."""
        if self.strategy == "none" or failures >= self.max_attempts:
            return None
        base = min(self.initial * self.multiplier ** failures, self.max)
        return base * (1.0 - self.jitter * float(rng.random()))
