"""Issue 35's engine comparison: the clients' sends of a run as batches of whole connections
in time order, by pyarrow (hash-partitioned Arrow IPC files, each read back and sorted: what
`harness.log.sends` does) or by DuckDB (a file-backed table, ORDER BY, read back as Arrow).
Wall time and peak RSS of one engine per fresh process. DuckDB is not an rtsoak dependency:
`.venv/bin/pip install duckdb` first. Results: bench/RESULTS.md, issue 35.

    python bench/sends_engines.py RUN arrow
    python bench/sends_engines.py RUN duckdb
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.log.frames import _LogChunks, _sends  # noqa: E402
from harness.log.rundir import RunDir  # noqa: E402
from harness.log.sends import SpilledSends  # noqa: E402

KEY = ("run", "variant", "worker", "conn")


def arrow(run: Path) -> int:
    rows = 0
    with SpilledSends(10_000_000, Path(tempfile.mkdtemp())) as spill:
        for log in RunDir(run).logs():
            for chunk in _LogChunks(log, run.name):
                spill.add(_sends(chunk))
        for batch in spill.batches():
            rows += len(batch)
    return rows


def duckdb(run: Path) -> int:
    import duckdb as db

    tmp = tempfile.mkdtemp()
    con = db.connect(f"{tmp}/sends.db")
    con.execute(f"SET memory_limit='1GB'; SET threads=2; SET temp_directory='{tmp}'")
    first = True
    for log in RunDir(run).logs():
        for chunk in _LogChunks(log, run.name):
            sends = _sends(chunk)
            columns = {
                name: pc.cast(col, pa.string()) if pa.types.is_dictionary(col.type) else col
                for name, col in zip(sends.column_names, sends.columns, strict=True)
            }
            arrow_chunk = pa.table(columns)  # noqa: F841 (DuckDB reads it by name)
            con.execute(
                ("CREATE TABLE sends AS" if first else "INSERT INTO sends")
                + " SELECT * FROM arrow_chunk"
            )
            first = False
    rows = 0
    order = ", ".join((*KEY, "t"))
    for batch in con.sql(f"SELECT * FROM sends ORDER BY {order}").to_arrow_reader(1_000_000):
        rows += len(batch.to_pandas())
    return rows


def main() -> None:
    run, engine = Path(sys.argv[1]), sys.argv[2]
    t0 = time.perf_counter()
    rows = {"arrow": arrow, "duckdb": duckdb}[engine](run)
    print(
        json.dumps(
            {
                "engine": engine,
                "rows": rows,
                "wall_s": round(time.perf_counter() - t0, 1),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
