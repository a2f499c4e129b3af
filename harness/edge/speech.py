"""What one worker says: utterances in the scenario's order, each with its key and attempt,
replays of those a drop interrupted, the pause a scenario splices into them, the length of each
gap, and the streamed-silence frames that fill gaps.

No sockets and no clock: the worker's driver asks for the next utterance and sends it. Seeded
from (run seed, worker), so a worker says the same things in every run of a scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.config.audio import AudioLibrary, Frame, Utterance, noise, to_pcm16
from harness.config.scenario import Scenario
from harness.core.outcomes import UtteranceStatus

__all__ = ["Speech", "Turn"]

_NOISE_POOL = 50  # distinct pre-encoded noise frames, cycled


@dataclass(frozen=True, slots=True)
class Turn:
    """One utterance to send: its key (`variant/worker/n`, kept across replays), the audio as
    sent, and which attempt this is."""

    key: str
    utterance: Utterance
    attempt: int = 1


class Speech:
    def __init__(self, scenario: Scenario, library: AudioLibrary, variant: str, worker: int):
        self.sc = scenario
        self.library = library
        self.prefix = f"{variant}/{worker}"
        self.rng = np.random.default_rng([scenario.run.seed, worker])
        self.replay: Turn | None = None  # the utterance a drop interrupted, to send again
        self._said = 0
        self._next_index = 0
        self._paused: dict[str, Utterance] = {}
        self._silence = self._silence_frames(worker)
        self._silence_i = 0

    def next(self) -> Turn:
        """The next utterance: one a drop interrupted (when replaying), else a new one."""
        if self.replay is not None:
            turn, self.replay = self.replay, None
            return turn
        self._said += 1
        utterances = self.library.utterances
        if self.sc.audio.selection == "sequential":
            utt = utterances[self._next_index % len(utterances)]
            self._next_index += 1
        else:
            utt = self.library.pick(self.rng)
        return Turn(f"{self.prefix}/{self._said}", self._with_pause(utt))

    def ended(self, turn: Turn, status: UtteranceStatus) -> None:
        """Keep a lost or timed-out utterance for a replay, as the reconnect policy allows."""
        policy = self.sc.reconnect
        if (
            policy.replays
            and turn.attempt < policy.max_attempts
            and status in (UtteranceStatus.LOST, UtteranceStatus.TIMEOUT)
        ):
            self.replay = Turn(turn.key, turn.utterance, turn.attempt + 1)

    def gap_seconds(self, at_least: float = 0.0) -> float:
        silence = self.sc.silence
        gap = silence.gap
        if silence.gap_max > gap:
            gap = float(self.rng.uniform(gap, silence.gap_max))
        return max(gap, at_least)

    def silence(self, seconds: float) -> list[Frame]:
        """Streamed-silence frames for `seconds` (at least one), cycling the pre-encoded pool."""
        count = max(1, round(seconds * 1000 / self.sc.pacing.chunk_ms))
        pool = self._silence
        frames = [pool[(self._silence_i + i) % len(pool)] for i in range(count)]
        self._silence_i += count
        return frames

    def _silence_frames(self, worker: int) -> list[Frame]:
        """Pre-encoded streamed-silence frames: digital zero, or a pool of noise frames."""
        chunk_ms = self.sc.pacing.chunk_ms
        chunk_s = chunk_ms / 1000.0
        if self.sc.silence.fill != "noise":
            return list(Utterance("silence", bytes(int(chunk_s * 48000) // 2 * 2)).frames(chunk_ms))
        rng = np.random.default_rng([self.sc.run.seed, worker, 2])
        pcm = to_pcm16(noise(chunk_s * _NOISE_POOL, self.sc.silence.noise_dbfs, rng), 24000)
        return list(Utterance("noise", pcm).frames(chunk_ms))

    def _with_pause(self, utt: Utterance) -> Utterance:
        """The utterance as sent when a streamed pause splits it (idle pauses are a gap in the
        schedule instead, and leave the audio as it is)."""
        silence = self.sc.silence
        if not silence.pause or silence.fill == "idle":
            return utt
        cached = self._paused.get(utt.name)
        if cached is None:
            half = len(utt.pcm) // 4 * 2
            if silence.fill == "zeros":
                gap = bytes(int(silence.pause * 24000) * 2)
            else:
                rng = np.random.default_rng([self.sc.run.seed, 3])
                gap = to_pcm16(noise(silence.pause, silence.noise_dbfs, rng), 24000)
            cached = self._paused[utt.name] = Utterance(
                utt.name + "+pause", utt.pcm[:half] + gap + utt.pcm[half:]
            )
        return cached
