"""Zero lost audio: with the replay strategy, under every shipped fault profile, every utterance
ends completed or retried ok, checked by the fake transcript's CRC; as a property over seeds
(a few by default, many under `make test-slow`)."""

from __future__ import annotations

import pytest
from helpers import scenario_from, soak

from harness.fakeserver.faults import shipped_profiles
from harness.fakeserver.transcript import parse_transcript
from harness.frames import load

REPLAY = """
[run]
name = "z"
seed = {seed}
duration = "3m"
workers = 3
time_scale = 120
[pacing]
chunk_ms = 100
[silence]
gap = "1s"
[keepalive]
ping_interval = "5s"
[reconnect]
replay = true
initial = "200ms"
max_attempts = 20
[faults]
profile = "{profile}"
{extra}"""

# shortened so that the faults fire within the 3 scenario minutes of a test run
SOONER = {
    "age-hazard": '[faults.session_age]\nmean = "30s"\n',
    "hot-sessions": '[faults.session_age]\ndistribution = "exponential"\nmean = "30s"\n',
    "half-open": '[faults.session_age]\nmean = "30s"\naction = "half_open"\n',
    "server-errors": '[faults.session_age]\nmean = "30s"\naction = "close"\ncode = 1011\n',
    "random-loss": "[faults.random_loss]\nper_hour = 120\n",
    "session-expiry": '[faults.max_duration]\nafter = "40s"\n',
    "idle-timeout": '[faults.idle_timeout]\nafter = "800ms"\n',
}


async def assert_no_loss(tmp_path, tone_library, fake_server, profile: str, seed: int) -> None:
    text = REPLAY.format(seed=seed, profile=profile, extra=SOONER.get(profile, ""))
    frames = load(await soak(tmp_path, scenario_from(tmp_path, text), tone_library, fake_server))
    final = frames.utterances[frames.utterances["final"]]
    statuses = set(final["status"].astype(str))
    assert statuses <= {"completed", "retried_ok", "unfinished"}, final["status"].value_counts()
    done = final[final["status"].isin(["completed", "retried_ok"])]
    for row in done.itertuples():  # exactly the audio sent, as the server's CRC says
        assert parse_transcript(row.transcript).crc32 == row.crc32


@pytest.mark.parametrize("profile", ["age-hazard", "idle-timeout", "half-open", "server-errors"])
async def test_replay_loses_no_utterance(tmp_path, tone_library, fake_server, profile) -> None:
    await assert_no_loss(tmp_path, tone_library, fake_server, profile, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
@pytest.mark.parametrize("profile", sorted(shipped_profiles()))
async def test_replay_loses_no_utterance_under_every_profile_and_seed(
    tmp_path, tone_library, fake_server, profile, seed
) -> None:
    await assert_no_loss(tmp_path, tone_library, fake_server, profile, seed)
