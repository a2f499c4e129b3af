"""One simulated caller's I/O: connect, configure, then utterance after utterance (clear ->
paced appends -> commit -> await the transcript, or server-VAD turns); on a drop, reconnect as
the scenario's ReconnectPolicy says; rotate proactively; replay lost utterances.

The driver moves bytes and waits. What each frame means, how utterances end and what a close
is recorded as belong to the pure ClientConnection (harness.core.client); what to say next to
Speech; when to reconnect to the ReconnectPolicy. aiohttp errors are mapped here, once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from harness.config.audio import AudioLibrary
from harness.config.scenario import Scenario
from harness.config.target import Target
from harness.core.outcomes import CloseCause, ConnState
from harness.core.outcomes import UtteranceStatus as Status
from harness.core.pacing import schedule, steady_offsets
from harness.core.protocol import BETA_HEADER, FAKE_SERVER_HEADER, SESSION_KEY_HEADER
from harness.core.rows import Row, UttEnd, UttStart, WorkerStopped
from harness.edge.clock import Clock
from harness.edge.link import NO_REDIRECTS, SEND_ERRORS, Link
from harness.edge.speech import Speech, Turn
from harness.log.recorder import Recorder

__all__ = ["Progress", "StopError", "Worker", "WorkerSetup", "fake_server_only"]

_CLEAR = json.dumps({"type": "input_audio_buffer.clear"})  # pre-encoded: sent every utterance
_COMMIT = json.dumps({"type": "input_audio_buffer.commit"})
_STOPPED = {"closed": Status.LOST, "stopped": Status.UNFINISHED}


@dataclass(slots=True)
class Progress:
    """Counters the workers bump and the runner prints; never read by the workers."""

    open: int = 0
    drops: int = 0
    completed: int = 0
    lost: int = 0


@dataclass(slots=True)
class WorkerSetup:
    worker: int
    variant: str
    scenario: Scenario
    clock: Clock
    recorder: Recorder
    target: Target
    library: AudioLibrary
    stop: asyncio.Future  # resolved when the run ends; workers then close with 1000
    start_at: float = 0.0
    budget: Any = None  # AudioBudget against a paid endpoint: spent, it ends the run
    progress: Progress = field(default_factory=Progress)


@dataclass(frozen=True, slots=True)
class StopError:
    """What a worker resolves the run's stop with when the run must not go on: the runner
    reports `reason` as the run's error (exit 2, the manifest's `stopped.error`)."""

    reason: str


def fake_server_only(setup: WorkerSetup) -> bool:
    """Whether every handshake must answer with FAKE_SERVER_HEADER: a target that is not paid
    (`Target.paid`) runs compressed and uncapped on the assumption that it is rtsoak's fake
    server, unless the run is held as a paid one would be (1x, with an audio budget)."""
    held_as_paid = setup.budget is not None and setup.scenario.run.time_scale == 1
    return not setup.target.paid and not held_as_paid


class Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        self.s = setup
        self.fake_only = fake_server_only(setup)
        self.sc = setup.scenario
        self.clock = setup.clock
        self.speech = Speech(setup.scenario, setup.library, setup.variant, setup.worker)
        self.policy_rng = np.random.default_rng([self.sc.run.seed, setup.worker, 1])
        self.attempt = 0
        self._stopped: asyncio.Future | None = None  # this worker's view of setup.stop

    # recording ------------------------------------------------------------------------------
    def _record(self, attempt: int, row: Row) -> None:
        wall = self.clock.wall_at(row.t)
        self.s.recorder.record(row, wall, "client", self.s.variant, self.s.worker, attempt)

    def _emit(self, link: Link, rows: list[Row]) -> None:
        """Record the core's rows, count utterance fates and wake what waits on them."""
        progress = self.s.progress
        for row in rows:
            self._record(link.attempt, row)
            if isinstance(row, UttEnd):
                progress.completed += row.status in (Status.COMPLETED, Status.RETRIED_OK)
                progress.lost += row.status is Status.LOST
                if link.awaited is not None and link.awaited[0] == row.key:
                    _resolve(link.awaited[1], row)
        if link.updated is not None and link.core.configured:
            _resolve(link.updated, True)

    # waiting --------------------------------------------------------------------------------
    def stopping(self) -> bool:
        return self.s.stop.done()

    async def _wait(self, fut: asyncio.Future | None, until: float, link: Link | None) -> str:
        """Wait for `fut` until scenario time `until`: 'done', 'closed', 'stopped' or 'timeout'."""
        waits: set[asyncio.Future] = {self._stopped or self.s.stop}
        if fut is not None:
            waits.add(fut)
        if link is not None:
            waits.add(link.closed)
        timeout = self.clock.wall_seconds(max(0.0, until - self.clock.now()))
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut is not None and fut.done():
            return "done"
        if link is not None and link.closed.done():
            return "closed"
        return "stopped" if self.stopping() else "timeout"

    # the worker's life ----------------------------------------------------------------------
    async def run(self, http: aiohttp.ClientSession) -> None:
        # Every wait also waits for the run's stop; a future of our own, resolved once by the
        # shared one, keeps a wait's cost flat however many workers wait on the run.
        self._stopped = stopped = asyncio.get_running_loop().create_future()
        self.s.stop.add_done_callback(lambda _: stopped.done() or stopped.set_result(None))
        # Handshakes go through a session of our own over the caller's connection pool, traced
        # so that a redirect raises before it is followed (ws_connect has no allow_redirects).
        own = aiohttp.ClientSession(
            connector=http.connector, connector_owner=False, trace_configs=[NO_REDIRECTS]
        )
        try:
            await self._live(own)
        finally:
            await own.close()
            self._end_pending_replay()

    def _end_pending_replay(self) -> None:
        """A replay the run's end cut off is unfinished, not lost: its attempt is recorded as
        such. (When the reconnect policy gave up instead, the loss is real and stays.)"""
        turn = self.speech.replay
        if turn is None or not self.stopping():
            return
        self.speech.replay = None
        now, utt = self.clock.now(), turn.utterance
        ms = utt.seconds * 1000
        start = UttStart(now, turn.key, ms, utt.crc32, utt.name, len(utt.pcm), turn.attempt)
        self._record(self.attempt, start)
        self._record(self.attempt, UttEnd(now, turn.key, Status.UNFINISHED))

    async def _live(self, http: aiohttp.ClientSession) -> None:
        policy = self.sc.reconnect
        await self._wait(None, self.s.start_at, None)
        failures = 0
        link: Link | None = None
        while not self.stopping():
            if link is None:
                link = await self._open(http, configure=self.attempt == 0 or policy.reconfigures)
            if link.ws is not None and not link.closed.done():
                outcome = await self._talk(link)
                if outcome == "stopped":
                    await link.close(CloseCause.SCENARIO_END)
                    return
                if outcome == "rotate":
                    link = await self._rotate(http, link)
                    continue
            await link.finish()  # it failed to open, or the server or transport ended it
            if self.stopping():
                return
            established = link.core.established
            lived = (link.closed_at or 0.0) - (established or link.core.opened)
            healthy = established is not None and lived >= policy.healthy_after
            failures = 0 if healthy else failures + 1
            delay = policy.after_close(
                link.close_code,
                link.handshake_status,
                0 if healthy else failures,
                self.policy_rng,
                link.retry_after,
            )
            if delay is None:
                reason = "reconnect policy stops here"
                stop = WorkerStopped(
                    self.clock.now(), link.close_code, reason, failures, link.handshake_status
                )
                self._record(link.attempt, stop)
                return
            link = None
            await self._wait(None, self.clock.now() + delay, None)

    async def _open(self, http: aiohttp.ClientSession, configure: bool) -> Link:
        """Connect and configure; the Link returned is open, or closed with its reason."""
        self.attempt += 1
        loop, clock = asyncio.get_running_loop(), self.clock
        key = f"{self.s.variant}/{self.s.worker}/{self.attempt}"
        link = Link(self.attempt, key, self.s, self._emit)
        headers = {**self.s.target.headers, SESSION_KEY_HEADER: key}
        if self.sc.protocol.dialect == "beta":
            headers[BETA_HEADER[0]] = BETA_HEADER[1]
        ping = self.sc.keepalive.heartbeat  # aiohttp pings in wall seconds
        heartbeat = None if ping is None else clock.wall_seconds(ping)
        if not await link.connect(http, self.s.target.url, headers, heartbeat):
            return link
        if self.fake_only and not link.fake_server:  # before a byte is sent on it
            self._not_the_fake_server()
            await link.close(CloseCause.SCENARIO_END)
            return link
        rotate_age = self.sc.reconnect.rotation_age(self.policy_rng)
        if rotate_age is not None:
            link.rotate_at = link.core.established + rotate_age
        if configure:
            link.updated = loop.create_future()
            try:
                await link.send(self.sc.session_update())
            except SEND_ERRORS as exc:
                link.transport_error = type(exc).__name__
                return link
            until = clock.now() + self.sc.turns.transcript_timeout
            if await self._wait(link.updated, until, link) == "timeout":
                await link.close(CloseCause.PROTOCOL_ERROR)
                return link
        link.core.phase = ConnState.IDLE
        return link

    async def _rotate(self, http: aiohttp.ClientSession, old: Link) -> Link | None:
        """Planned rotation: the new connection first (make-before-break) or after. A new one
        that fails is retried as the reconnect policy says (max_attempts, backoff, Retry-After);
        when the policy gives up, the old one is closed first after all (break-before-make),
        once the last Retry-After has passed, so the rotation still happens and a capped
        server is not hammered."""
        policy = self.sc.reconnect
        if policy.make_before_break and old.make_first:
            new = await self._open(http, configure=True)
            if new.ws is not None and not new.closed.done():
                await old.close(CloseCause.PROACTIVE)
                return new
            await new.finish()
            old.rotation_failures += 1
            delay = policy.after_close(
                new.close_code,
                new.handshake_status,
                old.rotation_failures,
                self.policy_rng,
                new.retry_after,
            )
            if delay is None:
                old.make_first, delay = False, new.retry_after or 0.0
            old.rotate_at = self.clock.now() + delay
            return old
        await old.close(CloseCause.PROACTIVE)
        return None

    # conversation ---------------------------------------------------------------------------
    async def _talk(self, link: Link) -> str:
        """Utterances until the connection closes ('closed'), the run ends ('stopped') or a
        planned rotation is due ('rotate')."""
        try:
            while True:
                if self.stopping():
                    return "stopped"
                if link.closed.done():
                    return "closed"
                if link.rotate_at is not None and self.clock.now() >= link.rotate_at:
                    return "rotate"
                turn = self.speech.next()
                if self.sc.turns.mode == "server_vad":
                    await self._vad_turn(link, turn)
                else:
                    await self._client_turn(link, turn)
        except SEND_ERRORS as exc:
            link.transport_error = link.transport_error or type(exc).__name__
            return "closed"

    def _afford(self, ms: float) -> bool:
        """Spend audio from the run's budget; when it runs out, end the run."""
        if self.s.budget is None or self.s.budget.take(ms):
            return True
        if not self.s.stop.done():
            self.s.stop.set_result("audio budget spent")
        return False

    def _not_the_fake_server(self) -> None:
        """An uncapped run reached a server that does not say it is rtsoak's fake server
        (a proxy, say, to a paid service): end the run, saying how to run it safely."""
        if self.s.stop.done():
            return
        url = self.s.target.describe()["url"]
        self.s.stop.set_result(
            StopError(
                f"the server at {url} is not rtsoak's fake server (no {FAKE_SERVER_HEADER} "
                "header): a proxy to a paid service? run it as one, with caps "
                "(--max-minutes, --max-audio-hours) and --time-scale 1; or point --target "
                "at `rtsoak serve` itself"
            )
        )

    def _begin(self, link: Link, turn: Turn, vad: bool = False) -> asyncio.Future:
        """Start an utterance in the core; the future it returns holds its UttEnd row."""
        utt, now = turn.utterance, self.clock.now()
        ended = asyncio.get_running_loop().create_future()
        link.awaited = (turn.key, ended)
        rows = link.core.begin(
            now,
            turn.key,
            name=utt.name,
            crc32=utt.crc32,
            nbytes=len(utt.pcm),
            audio_ms=utt.seconds * 1000,
            attempt=turn.attempt,
            vad=vad,
        )
        self._emit(link, rows)
        return ended

    async def _await_end(self, link: Link, key: str, ended: asyncio.Future, until: float) -> Status:
        """The utterance's fate as the driver sees it: its end row's status, TIMEOUT (ended
        here), or LOST/UNFINISHED (the close ends it in the core)."""
        outcome = await self._wait(ended, until, link)
        if outcome == "done":
            return ended.result().status
        if outcome == "timeout":
            self._emit(link, link.core.give_up(self.clock.now(), key, Status.TIMEOUT))
            return Status.TIMEOUT
        return _STOPPED[outcome]

    async def _client_turn(self, link: Link, turn: Turn) -> None:
        """clear -> appends -> commit -> transcript."""
        sc, utt = self.sc, turn.utterance
        if not self._afford(utt.seconds * 1000):
            return
        ended = self._begin(link, turn)
        status = Status.LOST
        try:
            await link.send_text("input_audio_buffer.clear", _CLEAR)
            frames = utt.frames(sc.pacing.chunk_ms)
            pause_at = len(frames) // 2 if sc.silence.fill == "idle" and sc.silence.pause else None
            rng = self.speech.rng
            offsets = schedule(len(frames), sc.pacing, rng, pause_at, sc.silence.pause)
            if not await link.stream(frames, offsets):
                status = _STOPPED["closed" if link.closed.done() else "stopped"]
            else:
                await link.send_text("input_audio_buffer.commit", _COMMIT)
                deadline = link.core.last_sent + sc.turns.transcript_timeout
                status = await self._await_end(link, turn.key, ended, deadline)
        finally:
            if not self.stopping():
                self.speech.ended(turn, status)
        if not link.closed.done() and not self.stopping():
            await self._gap(link)

    async def _vad_turn(self, link: Link, turn: Turn) -> None:
        """Server VAD: stream the utterance and then silence (so the server hears its end);
        never clear or commit; the turn the server commits is this utterance."""
        utt = turn.utterance
        if not self._afford(utt.seconds * 1000 + max(self.sc.silence.gap, 1.0) * 1000):
            return
        ended = self._begin(link, turn, vad=True)
        frames = utt.frames(self.sc.pacing.chunk_ms)
        sent = await self._stream(
            link, frames, schedule(len(frames), self.sc.pacing, self.speech.rng)
        )
        started = self.clock.now()
        if sent:
            await self._gap(link, at_least=1.0)
        if sent and not link.closed.done() and not self.stopping():
            link.core.phase = ConnState.AWAITING
            until = started + self.sc.turns.transcript_timeout
            await self._await_end(link, turn.key, ended, until)

    async def _gap(self, link: Link, at_least: float = 0.0) -> None:
        """Between utterances: idle, or streamed silence that stays uncommitted until the next
        clear (server VAD needs streamed silence to hear an utterance end)."""
        gap = self.speech.gap_seconds(at_least)
        link.core.phase = ConnState.IDLE
        if self.sc.silence.fill == "idle" and not at_least:
            if gap > 0:
                await self._wait(None, self.clock.now() + gap, link)
            return
        if not at_least and not self._afford(gap * 1000):  # server-VAD turns paid ahead
            return
        frames = self.speech.silence(gap)
        await link.stream(frames, steady_offsets(len(frames), self.sc.pacing.chunk_ms))


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)
