"""repro-1006, a fake run whose ground truth is known: the blind diagnosis (which never reads
it) supports each variant's injected theory and no other, and says nothing confident about a
variant with no drops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import rtsoak

ROOT = Path(__file__).resolve().parent.parent
# variant -> the theory its fault profile injects (harness/profiles/*.toml)
INJECTED = {
    "hot-sessions": "session_age",
    "idle-timeout": "idle_timeout",
    "long-silence": "silence_hazard",
    "concurrency": "concurrency_cap",
    "random-loss": "random_loss",
}


@pytest.mark.slow
def test_each_repro_variant_supports_its_injected_theory(tmp_path: Path) -> None:
    result = rtsoak("run", str(ROOT / "scenarios/repro-1006.toml"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    drops = {v["variant"]: v["drops"] for v in summary["variants"]}
    for variant, verdicts in summary["diagnosis"].items():
        supported = {v["hypothesis"] for v in verdicts if v["verdict"] == "supported"}
        if variant in INJECTED and drops[variant] >= 10:
            assert supported == {INJECTED[variant]}, (variant, verdicts)
        elif drops[variant] == 0:
            assert not supported, (variant, verdicts)
    # the shipped profiles' thresholds: idle timeout 20 s, silence streak 10 s, cap 5
    for variant, theory, truth in (
        ("idle-timeout", "idle_timeout", 20.0),
        ("long-silence", "silence_hazard", 10.0),
        ("concurrency", "concurrency_cap", 5),
    ):
        (verdict,) = [v for v in summary["diagnosis"][variant] if v["hypothesis"] == theory]
        lo, hi = verdict["threshold_ci"]
        assert lo <= truth <= hi, (variant, verdict)
