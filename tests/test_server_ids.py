"""Ids the fake server hands out (request, session, item, event) are deterministic for a given
seed and fresh per start without one, so logs of two starts can be joined (issue 33)."""

from __future__ import annotations

import base64

import aiohttp

from harness.core.session import SessionLimits
from harness.edge.server import ServerConfig

FAST = SessionLimits(latency_base=0.01, latency_per_audio_second=0)


async def first_session_ids(fake_server, seed: int | None) -> list[str]:
    """A fresh server's first session, as a client sees it: its request id, session id, and
    the item and event ids of one utterance."""
    server = await fake_server(ServerConfig(seed=seed, limits=FAST))
    ids = []
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url, headers={"Authorization": "Bearer k"})
        ids.append(ws._response.headers["x-request-id"])
        created = await ws.receive_json(timeout=5)
        ids += [created["session"]["id"], created["event_id"]]
        await ws.send_json(
            {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
        )
        ids.append((await ws.receive_json(timeout=5))["event_id"])
        pcm = base64.b64encode(bytes(9600)).decode()
        await ws.send_json({"type": "input_audio_buffer.append", "audio": pcm})
        await ws.send_json({"type": "input_audio_buffer.commit"})
        committed = await ws.receive_json(timeout=5)
        ids.append(committed["item_id"])
        await ws.close()
    await server.stop()
    return ids


async def test_two_starts_with_the_same_seed_hand_out_the_same_ids(fake_server) -> None:
    first = await first_session_ids(fake_server, seed=1234)
    again = await first_session_ids(fake_server, seed=1234)
    assert first == again
    assert first != await first_session_ids(fake_server, seed=1235)


async def test_two_starts_without_a_seed_share_no_id(fake_server) -> None:
    first = await first_session_ids(fake_server, seed=None)
    again = await first_session_ids(fake_server, seed=None)
    assert len(set(first)) == len(first) == 5
    assert not set(first) & set(again)


async def test_the_server_says_which_seed_it_drew(fake_server) -> None:
    """A start without a seed can be reproduced: the seed it drew is its `seed`."""
    a = await fake_server(ServerConfig())
    b = await fake_server(ServerConfig(seed=a.seed))
    assert isinstance(a.seed, int) and b.seed == a.seed


def _banner_seed(*args: str) -> str:
    """The seed line `rtsoak serve` prints before it serves, read off its stdout."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("Session and item ids from seed"):
                return line.split()[6]
        raise AssertionError("serve printed no seed line")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_draws_a_fresh_seed_per_start_unless_given_one() -> None:
    assert _banner_seed() != _banner_seed()
    assert _banner_seed("--seed", "7") == _banner_seed("--seed", "7") == "7"
