"""Every shipped scenario validates and runs against the fake server for a tiny duration."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import soak

from harness.config.scenario import load_scenario
from harness.log.frames import load

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))


def test_the_shipped_set_is_complete() -> None:
    assert {p.stem for p in SCENARIOS} >= {
        "smoke",
        "nightly",
        "repro-1006",
        "pacing-compare",
        "reconnect-compare",
        "silence-compare",
    }


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
async def test_shipped_scenario_runs(tmp_path, tone_library, fake_server, path: Path) -> None:
    scenario = load_scenario(path)
    # about one wall second of it, with ramp-up squeezed into the first half
    short = scenario.with_overrides(
        duration=scenario.run.time_scale * 1.0, ramp_up=scenario.run.time_scale * 0.4
    )
    frames = load(await soak(tmp_path, short, tone_library, fake_server))
    variants = {v.variant for v in scenario.variants}
    assert set(frames.connections["variant"].astype(str)) == variants
    assert frames.connections["cause"].notna().all()
