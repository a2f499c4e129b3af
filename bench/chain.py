"""The whole rotation chain, timed: a `make soak`-sized run (scenarios/smoke.toml: 10 workers,
30 min at 60x), then `rtsoak fit`, then `rtsoak recommend --verify`, each a fresh process on
this machine (issue 32's target: under 3 minutes on 2 cores). Usage:
    python bench/chain.py [--out DIR]
Prints one JSON line per step and one for the whole chain.
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


def step(name: str, *args: str) -> float:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")
    print(json.dumps({"step": name, "seconds": round(seconds, 1)}), flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        total = step("run", "run", "scenarios/smoke.toml", "--out", str(out / "runs"))
        (run_dir,) = (out / "runs").iterdir()
        total += step("fit", "fit", str(run_dir), "--out", str(out / "profile.toml"))
        total += step("recommend --verify", "recommend", str(run_dir), "--verify")
        print(json.dumps({"chain_seconds": round(total, 1), "target_seconds": 180}))


if __name__ == "__main__":
    main()
