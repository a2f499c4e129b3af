"""Every shipped fault profile, end to end: workers against the fake server survive it."""

from __future__ import annotations

import pytest
from helpers import scenario_from, soak

from harness.config.faults import shipped_profiles
from harness.log.frames import load

PROFILE_RUN = """
[run]
name = "p"
seed = 2
duration = "3m"
workers = 3
time_scale = 120
[pacing]
chunk_ms = 100
[keepalive]
ping_interval = "5s"
[reconnect]
initial = "500ms"
max = "2s"
max_attempts = 4
[faults]
profile = "{profile}"
"""

# Profiles tuned to fire within a few minutes for this short run.
OVERRIDES = {
    "age-hazard": '[faults.session_age]\nmean = "40s"\n',
    "half-open": '[faults.session_age]\nmean = "30s"\naction = "half_open"\nhold = "2m"\n',
    "idle-timeout": '[faults.idle_timeout]\nafter = "1500ms"\n[silence]\ngap = "3s"\n',
    "session-expiry": '[faults.max_duration]\nafter = "40s"\n',
}
EXPECTED_CAUSE = {
    "age-hazard": "abnormal",
    "half-open": "abnormal",
    "idle-timeout": "abnormal",
    "session-expiry": "expired",
    "bad-key-loop": "server_close",
}


@pytest.mark.parametrize("profile", sorted(shipped_profiles()))
async def test_workers_survive_every_shipped_profile(
    tmp_path, tone_library, fake_server, profile: str
) -> None:
    text = PROFILE_RUN.format(profile=profile) + OVERRIDES.get(profile, "")
    scenario = scenario_from(tmp_path, text)
    run_dir = await soak(tmp_path, scenario, tone_library, fake_server)
    frames = load(run_dir)
    conns = frames.connections
    assert len(conns) >= 3
    assert conns["cause"].notna().all()
    if profile in EXPECTED_CAUSE:
        assert EXPECTED_CAUSE[profile] in set(conns["cause"].astype(str)), conns["cause"]
        assert conns["injected_fault"].notna().any()
