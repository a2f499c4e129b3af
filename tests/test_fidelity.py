"""Fault and client lateness (harness/report/fidelity.py) against plain pandas."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from harness.report import fidelity
from harness.run.runner import SATURATED_P99_MS


def fault_rows(run: str, ages: list[tuple[float, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": run,
            "src": "server",
            "type": "fault",
            "text": "session_age",
            "detail": [json.dumps({"kind": "abort", "age": a, "due_age": d}) for a, d in ages],
        }
    )


def test_fault_lateness_is_fired_minus_scheduled_age_in_scenario_s_and_wall_ms() -> None:
    rng = np.random.default_rng(3)
    due = rng.uniform(10, 600, 200)
    slow = [(d + late, d) for d, late in zip(due, rng.exponential(0.4, 200), strict=True)]
    quick = [(d + 0.005, d) for d in due[:50]] + [(7.0, None)]  # a rate fault has no due age
    noise = pd.DataFrame(  # rows fault_lateness must leave alone
        {"run": "a", "src": ["client", "server"], "type": ["fault", "handshake_fault"]}
    )
    events = pd.concat(
        [fault_rows("a", slow), fault_rows("b", quick), noise, fault_rows("c", [(3.0, None)])],
        ignore_index=True,
    ).astype({"run": "category", "src": "category", "type": "category"})
    scales = {"a": 60.0, "b": 10.0}
    got = fidelity.fault_lateness(events, scales).set_index("run")

    faults = events[(events["src"] == "server") & (events["type"] == "fault")]
    detail = pd.DataFrame([json.loads(d) for d in faults["detail"]], index=faults.index)
    late = (detail["age"] - detail["due_age"]).rename("s").to_frame()
    late["run"] = faults["run"].astype(str)
    late["ms"] = late["s"] / late["run"].map(scales) * 1000
    for run in ("a", "b"):
        mine = late[late["run"] == run].dropna()
        row = got.loc[run]
        assert row["faults"] == (late["run"] == run).sum()
        assert row["timed"] == len(mine)
        for unit in ("s", "ms"):
            want = [mine[unit].quantile(0.5), mine[unit].quantile(0.99), mine[unit].max()]
            have = [row[f"p50_{unit}"], row[f"p99_{unit}"], row[f"max_{unit}"]]
            np.testing.assert_allclose(have, want, rtol=1e-9)
        assert row["saturated"] == (mine["ms"].quantile(0.99) > SATURATED_P99_MS)
    assert got.loc["a", "saturated"] and not got.loc["b", "saturated"]
    # a run whose faults all fired on arrival: counted, not judged
    assert got.loc["c", "faults"] == 1 and got.loc["c", "timed"] == 0
    assert got.loc["c", "saturated"] is None
    assert json.dumps(fidelity.fault_lateness(events.iloc[:0]).to_dict(orient="records")) == "[]"


def test_client_lateness_per_run_and_variant() -> None:
    rng = np.random.default_rng(4)
    lateness = pd.DataFrame(
        {
            "run": ["r"] * 300,
            "variant": ["steady"] * 200 + ["burst"] * 100,
            "lag_ms": np.r_[rng.exponential(1.0, 200), rng.exponential(9.0, 100)],
        }
    ).astype({"run": "category", "variant": "category", "lag_ms": "float32"})
    got = fidelity.client_lateness(lateness).set_index("variant")
    for variant, group in lateness.groupby("variant", observed=True):
        lag = group["lag_ms"].astype(float)
        row = got.loc[variant]
        assert row["appends"] == len(lag)
        np.testing.assert_allclose(
            row[["p50_ms", "p90_ms", "p99_ms", "max_ms"]].astype(float),
            [lag.quantile(0.5), lag.quantile(0.9), lag.quantile(0.99), lag.max()],
        )
        assert row["saturated"] == (lag.quantile(0.99) > SATURATED_P99_MS)


@pytest.mark.parametrize("scale", [10.0, 60.0])
def test_a_real_runs_faults_have_scheduled_ages_and_fire_after_them(finished_run, scale) -> None:
    """The fake server's own log: every session_age fault names the age it was due at, and
    fires at or after it (the finished run is at 120x; the scale only converts units)."""
    from harness.log.frames import load

    frames = load(finished_run)
    (run,) = frames.manifests
    got = fidelity.fault_lateness(frames.events, {run: scale})
    assert got["timed"].iloc[0] == got["faults"].iloc[0] > 0
    assert got["p50_s"].iloc[0] >= 0
    assert got["p99_ms"].iloc[0] == pytest.approx(got["p99_s"].iloc[0] / scale * 1000)
