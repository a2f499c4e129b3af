"""A connection's key: "{run}/{variant}/{worker}/{conn}", the `connection` column of every
frame (docs/frames.md), made per connection, never per row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["connection_codes"]


def connection_codes(
    run: np.ndarray,
    runs: Sequence[str],
    variant: np.ndarray,
    variants: Sequence[str],
    worker: np.ndarray,
    conn: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """Each row's connection as a code (-1: none, e.g. the fake server's own rows) into labels
    "{run}/{variant}/{worker}/{conn}", in order of first appearance. `run` and `variant` are
    category codes into `runs` and `variants`, `worker` and `conn` integers; -1 is NA in all
    four. Worker numbers restart in each variant, hence the variant; each run (or shard) has its
    own name, hence the run. Vectorised for ten million rows: the four fields as one int64
    (mixed radix), factorised; a string is made per connection, never per row."""
    valid = (run >= 0) & (worker >= 0) & (conn >= 0)
    codes = np.full(len(valid), -1, np.int32)
    if not valid.any():
        return codes, []
    fields, shifts = (run, variant, worker, conn), (0, 1, 0, 0)  # NA variant: 0, ""
    sizes = [max(int(f.max()) + 1 + shift, 1) for f, shift in zip(fields, shifts, strict=True)]
    if np.prod(sizes, dtype=float) >= 2.0**63:
        raise ValueError(f"too many runs, variants, workers or connections to key: {sizes}")
    key = run.astype(np.int64)  # in place from here: one int64 array, not one a field
    for field, size, shift in zip(fields[1:], sizes[1:], shifts[1:], strict=True):
        key *= size
        key += field
        if shift:
            key += shift
    if valid.all():
        found, uniques = pd.factorize(key)
        codes[:] = found
    else:
        found, uniques = pd.factorize(key[valid])
        codes[valid] = found
    parts = []
    for size in reversed(sizes):
        uniques, part = np.divmod(uniques, size)
        parts.append(part.tolist())
    names = ["", *variants]
    labels = [f"{runs[r]}/{names[v]}/{w}/{c}" for c, w, v, r in zip(*parts, strict=True)]
    return codes, labels
