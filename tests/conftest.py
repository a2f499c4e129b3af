"""Shared fixtures: synthetic audio, in-process fake servers on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from harness.audio import RATE, AudioLibrary, Utterance, to_pcm16
from harness.clock import ScaledClock
from harness.fakeserver.app import FakeServer, ServerConfig
from harness.recorder import Recorder


def tone(seconds: float, hz: float = 220.0) -> Utterance:
    t = np.arange(int(seconds * RATE)) / RATE
    return Utterance(f"tone-{hz:g}-{seconds:g}", to_pcm16(0.3 * np.sin(2 * np.pi * hz * t), RATE))


@pytest.fixture
def tone_library() -> AudioLibrary:
    return AudioLibrary([tone(0.6, 220), tone(1.0, 330), tone(0.8, 440)])


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable]:
    """Factory: start a FakeServer on 127.0.0.1:0 with a config and clock; all stop at teardown."""
    servers: list[FakeServer] = []

    async def start(config: ServerConfig | None = None, clock=None,
                    recorder: Recorder | None = None) -> FakeServer:
        server = FakeServer(clock or ScaledClock(1.0), config or ServerConfig(), recorder)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
