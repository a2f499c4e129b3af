"""`rtsoak recommend`: from the blind diagnosis to what to change, each with its reason; the
rotation age from the age-replacement policy on the fitted hazard (test_rotation.py checks the
maths against the analytic optimum)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rtsoak

from harness.report import rotation
from harness.report.recommend import recommend

EMPTY = pd.DataFrame(
    {
        "variant": pd.Series([], dtype=str),
        "handshake_latency": pd.Series([], dtype=float),
        "dropped": pd.Series([], dtype=bool),
    }
)
UTTS = pd.DataFrame({"variant": pd.Series([], dtype=str), "status": pd.Series([], dtype=str)})


def _verdict(hypothesis: str, verdict: str, **numbers) -> dict:
    return {"hypothesis": hypothesis, "verdict": verdict, "evidence": "...", **numbers}


def _advice(verdicts: list[dict], current: float | None = None):
    (advice,) = recommend({"v": verdicts}, EMPTY, UTTS, {"v": current}, 30.0, 1.0)
    return advice


def test_wear_out_gets_the_age_replacement_optimum_with_its_effect() -> None:
    shape, scale = 2.5, 660.0
    cov = [[0.04, 0.5], [0.5, 900.0]]
    advice = _advice(
        [
            _verdict(
                "session_age",
                "supported",
                weibull_shape=shape,
                weibull_shape_ci=[2.1, 2.9],
                weibull_scale_s=scale,
                weibull_cov=cov,
            )
        ],
        current=25 * 60,
    )
    expected = rotation.optimal_rotation(rotation.Weibull(shape, scale), 30.0, 1.0).rotate_at
    assert advice.rotation["recommended_s"] == pytest.approx(expected)
    saved = advice.rotation["drops_saved_per_hour"]
    assert saved[1] <= saved[0] <= saved[2] and saved[1] > 0  # rotating at T* beats 25 min
    assert advice.lines[0].startswith("Rotation: rotate every")


def test_a_flat_hazard_says_rotation_will_not_help_and_why() -> None:
    advice = _advice(
        [
            _verdict(
                "session_age",
                "not_supported",
                weibull_shape=1.05,
                weibull_shape_ci=[0.9, 1.2],
                weibull_scale_s=300.0,
                weibull_cov=[[0.01, 0.0], [0.0, 100.0]],
            ),
            _verdict("random_loss", "supported", drops_per_hour=12.0),
        ]
    )
    assert advice.rotation["recommended_s"] is None
    assert "will not help" in advice.lines[0] and "flat" in advice.lines[0]


def test_a_covariate_cause_puts_its_fix_first_and_an_idle_timeout_gets_a_keepalive() -> None:
    advice = _advice(
        [_verdict("idle_timeout", "supported", threshold_s=37.0, threshold_ci=[34.0, 40.0])]
    )
    assert advice.lines[0].startswith("Rotation: not the fix")
    assert "every 17.0 s" in advice.lines[1]


def test_the_command_writes_its_advice_and_charts(finished_run: Path, tmp_path: Path) -> None:
    result = rtsoak("recommend", str(finished_run), "--out", str(tmp_path / "rec"))
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "rec" / "recommend.json").read_text())
    assert [v["variant"] for v in doc["variants"]] and all(v["advice"] for v in doc["variants"])
    for v in doc["variants"]:
        chart = v["rotation"].get("chart")
        assert chart is None or (tmp_path / "rec" / chart).stat().st_size > 0
    bad = rtsoak("recommend", str(finished_run), "--variant", "nope", "--out", str(tmp_path))
    assert bad.returncode == 2 and "no such variant" in bad.stderr
    assert np.isfinite(doc["variants"][0]["rotation"].get("cost_drop_s", 1.0))
