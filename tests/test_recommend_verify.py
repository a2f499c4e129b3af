"""`rtsoak recommend --verify` (issue 32): the run's current strategy and the recommended one,
soaked side by side on the run's fitted faults, and whether the prediction held. Unit: the
verification scenario (two variants, the fitted faults, TOML that loads back) and the
comparison's arithmetic. End to end (slow: a 60 s run, then a 65 s verification): a wear-out
run gets a rotation that the verification confirms; a constant hazard gets none."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, rtsoak

from harness.config.scenario import load_scenario, scenario_from_doc
from harness.report.rotation import Weibull
from harness.report.verify import (
    compare,
    predicted_lost_per_hour,
    scenario_toml,
    verification_doc,
    verification_hours,
)

PROFILE = {
    "faults": {"session_age": {"distribution": "weibull", "shape": 3.0, "scale": 600.0}},
    "server": {"max_session": 86400.0},
}


# unit ---------------------------------------------------------------------------------------
def test_the_verification_scenario_keeps_the_variant_and_rotates_the_recommended_one(
    tmp_path: Path,
) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "reconnect-compare.toml")
    doc = verification_doc(scenario, "rotate-25m+replay", PROFILE, 299.6)
    text = scenario_toml(doc, "rotate-25m+replay", [tmp_path / "run"])
    assert "REMOVE the [faults] section" in text.split("\n\n")[0]
    assert tomllib.loads(text) == doc
    loaded = scenario_from_doc(tomllib.loads(text), "verify.toml")
    current, recommended = loaded.variants
    assert (current.variant, recommended.variant) == ("current", "recommended")
    assert (current.reconnect.rotate_every, current.reconnect.replay) == (1500.0, True)
    assert not current.reconnect.make_before_break
    assert recommended.reconnect.rotate_every == 300.0
    assert recommended.reconnect.make_before_break and recommended.reconnect.replay
    for v in loaded.variants:
        assert v.run.workers == 8 and v.run.time_scale == 60 and v.run.duration == 3600
        assert set(v.raw_faults) == {"session_age"}  # the fitted faults only, not hot-sessions
        assert v.server.max_session == 86400.0
    assert Path(loaded.audio.dir).is_absolute()


def test_the_verification_lasts_as_long_as_telling_the_predicted_difference_takes() -> None:
    """n connection-hours a variant tell lost-utterance rates a > b apart when
    (a - b) / sqrt((a + b) / n) reaches z(0.975) + z(0.95) (= 3.605): checked against a
    direct simulation of that test's power, not the formula again."""
    assert verification_hours((3.9, 0.6)) == 8.0  # 5.4 h would do: the least is 8
    assert verification_hours((2.0, 1.0)) == 32.0  # 39 h: over the most
    n = verification_hours((2.0, 0.9))
    assert n == pytest.approx(3.605**2 * 2.9 / 1.1**2, rel=1e-3)  # 31.1 h
    rng = np.random.default_rng(0)
    a, b = rng.poisson(2.0 * n, 20000), rng.poisson(0.9 * n, 20000)
    diff = (b - a) / n
    hi = diff + 1.959964 * np.sqrt((a + b) / n**2)
    assert (hi < 0).mean() == pytest.approx(0.95, abs=0.02)  # the power it was sized for
    assert verification_hours(None) == verification_hours((1.0, 1.0)) == 8.0


def test_the_predicted_loss_is_drops_per_hour_at_each_rotation_age_times_loss_per_drop() -> None:
    dist = Weibull(3.0, 600.0)
    current, recommended = predicted_lost_per_hour(dist, 1500.0, 180.0, 0.5)
    t = np.linspace(0, 1500.0, 300001)
    s = np.exp(-((t / 600.0) ** 3))
    assert current == pytest.approx(0.5 * 3600 * (1 - s[-1]) / np.trapezoid(s, t), rel=1e-3)
    assert recommended < current / 5  # young sessions rarely drop


def test_a_longer_verification_runs_more_minutes_of_eight_workers(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "reconnect-compare.toml")
    doc = verification_doc(scenario, "rotate-25m+replay", PROFILE, 299.6, hours=21.0)
    assert doc["run"]["workers"] == 8 and doc["run"]["duration"] == "165m"  # 2.75 h, whole 15s


def _frames(rates: dict[str, float], hours: float, seed: int = 1):
    rng = np.random.default_rng(seed)
    rows, utts = [], []
    for variant, per_hour in rates.items():
        n = 400
        lives = np.full(n, hours * 3600 / n)
        dropped = rng.random(n) < per_hour * hours / n
        rows.append(
            pd.DataFrame(
                {
                    "variant": variant,
                    "established": 0.0,
                    "lifetime": lives,
                    "dropped": dropped,
                }
            )
        )
        k = int(dropped.sum())
        utts.append(pd.DataFrame({"variant": variant, "final": True, "status": ["lost"] * k}))
    return pd.concat(rows, ignore_index=True), pd.concat(utts, ignore_index=True)


def test_fewer_drops_with_a_ci_below_zero_is_a_prediction_that_held() -> None:
    conns, utts = _frames({"current": 7.0, "recommended": 1.0}, hours=8)
    out = compare(conns, utts, expect_fewer=True)
    d = out["drops_difference"]
    assert d["ci"][1] < 0 and d["p_exact"] < 0.001
    assert out["held"] is True and out["lost_held"] is True
    cur = out["drops_per_hour"]["current"]
    assert cur["ci"][0] < cur["per_hour"] < cur["ci"][1]
    assert cur["hours"] == pytest.approx(8.0)


def test_equal_rates_hold_a_no_help_prediction_and_cannot_tell_a_rotation() -> None:
    conns, utts = _frames({"current": 10.0, "recommended": 10.0}, hours=8, seed=3)
    lo, hi = compare(conns, utts, expect_fewer=False)["drops_difference"]["ci"]
    assert lo < 0 < hi
    assert compare(conns, utts, expect_fewer=False)["held"] is True
    assert compare(conns, utts, expect_fewer=True)["held"] == "can't tell"


# end to end ---------------------------------------------------------------------------------
SCENARIO = """
[run]
name = "{name}"
workers = 8
duration = "60m"
time_scale = 60
[audio]
dir = "{audio}"
[pacing]
chunk_ms = 50
[server]
max_session = "24h"
[reconnect]
initial = "500ms"
max = "4s"
max_attempts = 1000
{reconnect}
{faults}
"""


def tone_dir(tmp_path: Path) -> Path:
    """One 1 s tone (as test_fit.py: with the fixtures' 2-6 s utterances a wear-out run can
    read as a buffer limit)."""
    import soundfile

    audio = tmp_path / "tone"
    audio.mkdir(exist_ok=True)
    t = np.arange(16000) / 16000
    soundfile.write(audio / "a.wav", 0.3 * np.sin(2 * np.pi * 300 * t), 16000)
    return audio


def soak_and_verify(tmp_path: Path, name: str, reconnect: str, faults: str) -> dict:
    scenario = tmp_path / f"{name}.toml"
    scenario.write_text(
        SCENARIO.format(name=name, audio=tone_dir(tmp_path), reconnect=reconnect, faults=faults)
    )
    out = tmp_path / "runs"
    ran = rtsoak(
        "run", str(scenario), "--seed", "11", "--out", str(out), "--no-report", timeout=300
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (run_dir,) = out.iterdir()
    rec = tmp_path / "rec"
    result = rtsoak("recommend", str(run_dir), "--verify", "--out", str(rec), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    (variant,) = json.loads((rec / "recommend.json").read_text())["variants"]
    verify = variant["verify"]
    assert Path(verify["scenario"]).is_file() and "Verify:" in result.stdout
    assert (rec / verify["chart"]).stat().st_size > 0  # predicted against measured survival
    load_scenario(verify["scenario"])  # what the user runs against the real endpoint
    return variant


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wear_out_rotation_is_recommended_and_the_verification_confirms_it(
    tmp_path: Path,
) -> None:
    variant = soak_and_verify(
        tmp_path,
        "wear",
        'rotate_every = "25m"',
        '[faults.session_age]\ndistribution = "weibull"\nshape = 3\nscale = "10m"\n',
    )
    assert variant["rotation"]["recommended_s"] < 25 * 60
    verify = variant["verify"]
    drops = verify["drops_per_hour"]
    assert drops["recommended"]["per_hour"] < drops["current"]["per_hour"]
    assert verify["drops_difference"]["ci"][1] < 0, verify
    assert verify["held"] is True
    # and fewer lost utterances per hour, with a CI that excludes zero
    assert verify["lost_difference"]["ci"][1] < 0, verify
    assert verify["lost_held"] is True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_constant_hazard_gets_no_rotation_and_the_verification_rotates_at_median_life(
    tmp_path: Path,
) -> None:
    variant = soak_and_verify(tmp_path, "flat", "", "[faults.random_loss]\nper_hour = 12\n")
    assert variant["rotation"]["recommended_s"] is None
    verify = variant["verify"]
    assert verify["prediction"] == "no fewer drops per hour"
    # the same hazard either way: the two rates' CIs overlap (not asserting `held`, which a
    # true null fails 1 time in 40)
    cur, rec = verify["drops_per_hour"]["current"], verify["drops_per_hour"]["recommended"]
    assert cur["ci"][0] < rec["ci"][1] and rec["ci"][0] < cur["ci"][1], verify
