"""Time-compression fidelity: the same scenario at 1x (shortened), 30x and 60x. A compressed
soak is only useful if it says what a real-time one says: Kaplan-Meier medians and drop rates
should agree within their 95 % CIs. Wall times and send lateness are reported too.

Usage: python bench/fidelity.py [--minutes 2 --workers 10 --mean 20s]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.log.frames import load  # noqa: E402
from harness.report import analysis  # noqa: E402

SCENARIO = """
[run]
name = "fidelity"
seed = 11
duration = "{minutes}m"
workers = {workers}
time_scale = {scale}
[audio]
dir = "{audio}"
[pacing]
chunk_ms = 20
[silence]
gap = "2s"
[reconnect]
initial = "200ms"
jitter = 0
[faults.session_age]
mean = "{mean}"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--mean", default="20s")
    parser.add_argument("--scales", default="1,30,60")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (float(s) for s in args.scales.split(",")):
            path = Path(tmp) / f"s{scale:g}.toml"
            path.write_text(
                SCENARIO.format(
                    minutes=args.minutes,
                    workers=args.workers,
                    scale=scale,
                    mean=args.mean,
                    audio=ROOT / "fixtures" / "audio",
                )
            )
            out = Path(tmp) / f"runs{scale:g}"
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "harness",
                    "run",
                    str(path),
                    "--out",
                    str(out),
                    "--no-report",
                ],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            wall = time.perf_counter() - t0
            (run_dir,) = out.iterdir()
            frames = load(run_dir)
            (s,), _ = analysis.survival_by_variant(frames.connections)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            rows.append(
                {
                    "scale": scale,
                    "wall_s": round(wall, 1),
                    "drops": s.drops,
                    "median_s": round(s.median_s, 1),
                    "median_ci_s": [round(x, 1) for x in s.median_ci_s],
                    "drops_per_hour": round(s.drops_per_hour, 1),
                    "drops_per_hour_ci": [round(x, 1) for x in s.drops_per_hour_ci],
                    "lateness_p99_ms": manifest.get("append_lateness_p99_ms"),
                    "saturated": manifest.get("saturated"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows[1:]:
        agree = (
            r["median_ci_s"][0] <= base["median_s"] <= r["median_ci_s"][1]
            and base["median_ci_s"][0] <= r["median_s"] <= base["median_ci_s"][1]
        )
        print(f"{r['scale']:g}x vs {base['scale']:g}x: medians agree within CIs: {agree}")


if __name__ == "__main__":
    main()
