"""Fault injection measured end to end: known hazards give known survival, seeds repeat."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from helpers import scenario_from, soak

from harness.analysis import survival_by_variant
from harness.frames import load

HAZARD = """
[run]
name = "stat"
seed = 11
duration = "{duration}"
workers = 10
time_scale = {scale}
[pacing]
chunk_ms = 100
[silence]
gap = "{gap}"
[reconnect]
initial = "{backoff}"
jitter = 0
[faults.session_age]
mean = "{mean}"
"""


@pytest.mark.parametrize(
    ("scale", "mean", "duration", "gap", "backoff"),
    [
        (1, "400ms", "4s", "50ms", "10ms"),  # real time, short run
        (60, "30s", "4m", "1s", "100ms"),  # compressed 60x
    ],
)
async def test_km_median_matches_exponential_hazard(
    tmp_path, tone_library, fake_server, scale, mean, duration, gap, backoff
) -> None:
    text = HAZARD.format(scale=scale, mean=mean, duration=duration, gap=gap, backoff=backoff)
    scenario = scenario_from(tmp_path, text)
    frames = load(await soak(tmp_path, scenario, tone_library, fake_server))
    (summary,), _ = survival_by_variant(frames.connections)
    expected = scenario.faults.describe()["session_age"]["mean"] * math.log(2)
    lo, hi = summary.median_ci_s
    assert summary.drops >= 40
    assert lo <= expected <= hi, (summary, expected)


DETERMINISM = """
[run]
name = "det"
seed = 5
duration = "3m"
workers = 4
time_scale = 120
[pacing]
chunk_ms = 100
[reconnect]
initial = "1s"
jitter = 0
[faults.session_age]
mean = "40s"
"""


def _faults(run_dir) -> pd.DataFrame:
    events = load(run_dir).events
    faults = events[(events["src"] == "server") & (events["type"] == "fault")]
    detail = faults["detail"].map(json.loads)
    return pd.DataFrame(
        {
            "key": detail.map(lambda d: d["session_key"]),
            "policy": faults["text"].astype(str),
            "due_age": detail.map(lambda d: d["due_age"]),
        }
    ).set_index("key")


async def test_same_seed_same_faults_at_the_same_ages(tmp_path, tone_library, fake_server) -> None:
    scenario = scenario_from(tmp_path, DETERMINISM)
    first = _faults(await soak(tmp_path, scenario, tone_library, fake_server))
    second = _faults(await soak(tmp_path, scenario, tone_library, fake_server))
    common = first.index.intersection(second.index)
    assert len(common) >= 0.8 * max(len(first), len(second)) and len(common) >= 5
    assert (first.loc[common, "policy"] == second.loc[common, "policy"]).all()
    # ages are drawn per session key: the scheduled age is the same to the bit
    assert (first.loc[common, "due_age"] == second.loc[common, "due_age"]).all()
