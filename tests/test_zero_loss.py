"""Zero lost audio: with the replay strategy, under every shipped fault profile, every utterance
ends completed or retried ok, checked by the fake transcript's CRC; as a property over seeds
(a few by default, many under `make test-slow`).

The property is checked only where it was put to the test: a fault must have fired and ended
connections, and utterances must have completed (on a machine too loaded for either, the
harness's own saturation measurements skip the test instead of passing it)."""

from __future__ import annotations

import pytest
from helpers import faults_fired, require_timing, scenario_from, soak

from harness.config.faults import shipped_profiles
from harness.core.transcript import parse_transcript
from harness.log.frames import load

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
gap = "{gap}"
[keepalive]
ping_interval = "5s"
[reconnect]
replay = true
initial = "200ms"
max_attempts = 20
# faults come every few seconds here: a connection that carried audio for 0.5 s is healthy, so
# 20 counts consecutive failures, not every drop of the run (which ended some runs near the
# end, by timing, with their last utterance lost)
healthy_after = "500ms"
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
    # idle between utterances for longer than the timeout, so it fires in every gap; 3 s at 120x
    # is 25 wall ms, over twice SATURATED_P99_MS: a client that kept time never stalls that
    # long mid-utterance (800 ms was 6.7 wall ms, under the saturation limit, and a loaded
    # machine tripped it on every replay of one utterance until the replays ran out)
    "idle-timeout": '[faults.idle_timeout]\nafter = "3s"\n',
    # half the handshakes refused (none that stop a worker), and drops to reconnect after
    "flaky-handshakes": "[faults.handshake_faults]\nshare = 0.5\nstatuses = [429, 500, 503]\n"
    '[faults.session_age]\nmean = "30s"\n',
    # two sessions for three workers: the third's handshakes are refused (429) until one drops
    # (evicting the oldest instead makes a churn in which replays give up: not zero loss)
    "concurrency-cap": "[faults.concurrency_cap]\nmax_sessions = 2\n[faults.session_age]\n"
    'mean = "30s"\n',
}

# the silence between utterances, when not 1 s
GAPS = {"idle-timeout": "5s"}

# shipped profiles this workload (3 workers, idle gaps, utterances of 0.6-1 s) cannot put to
# the test: the fault never fires, or no strategy of the client's could win against it
NOT_TESTED = {
    "bad-key-loop": "a 1008 stops every worker before any audio: there is nothing to replay",
    "buffer-pressure": "a 15 s ceiling is never reached by 1 s utterances, and a ceiling "
    "below an utterance refuses each replay of it too",
    "fast-audio": "workers pace at 1x: a rate fault fires only on a stall's catch-up burst, "
    "by wall-clock luck",
    "micro-bursts": "a burst fires only after a stall (wall-clock luck), and a burst limit "
    "tight enough to fire always refuses the replay too",
    "long-silence": "the hazard needs streamed silence; this workload idles between utterances",
}


async def assert_no_loss(tmp_path, tone_library, fake_server, profile: str, seed: int) -> None:
    if profile in NOT_TESTED:
        pytest.skip(f"{profile}: {NOT_TESTED[profile]}")
    extra, gap = SOONER.get(profile, ""), GAPS.get(profile, "1s")
    text = REPLAY.format(seed=seed, profile=profile, extra=extra, gap=gap)
    frames = load(await soak(tmp_path, scenario_from(tmp_path, text), tone_library, fake_server))
    # the fault was there to be survived: it fired, and it ended connections the workers replaced
    fired = faults_fired(frames)
    assert fired.sum() > 0, f"{profile}: no fault fired, so nothing was survived"
    hit = frames.connections["injected_fault"].notna()
    assert hit.any(), f"{profile}: faults fired ({dict(fired)}) but ended no connection"
    final = frames.utterances[frames.utterances["final"]]
    counts = dict(final["status"].astype(str).value_counts())
    # never lost, never the wrong audio, whatever the timing
    assert set(counts) <= {"completed", "retried_ok", "unfinished", "timeout"}, counts
    # a transcript that came too late is the machine's doing only if the harness says so
    require_timing("timeout" not in counts, f"{profile}: utterances timed out: {counts}", frames)
    done = final[final["status"].isin(["completed", "retried_ok"])]
    require_timing(len(done) > 0, f"{profile}: no utterance completed: {counts}", frames)
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
