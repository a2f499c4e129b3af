"""The Locust peer of bench/capacity.py: one User per WebSocket (websocket-client on gevent),
sending the same pre-encoded 20 ms append frames on absolute deadlines, as a Locust WebSocket
test would (each send reported to Locust's stats as a request event).

Runs only in the bench-only environment (bench/.venv-peer: locust, websocket-client), started
by bench/capacity.py as `locust -f bench/capacity_locust.py --headless -u N -r N ...` with its
settings in CAP_* environment variables. It writes the send lateness of every frame in the
measurement window (float64 ms, raw) to CAP_OUT + ".lag" and a JSON summary to CAP_OUT.
"""

from __future__ import annotations

import array
import json
import os
import sys
import time

import gevent
import websocket
from locust import User, events, task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capacity import PERIOD, VAD_OFF, server_seconds  # noqa: E402  (standard library only)

URL = os.environ["CAP_URL"]
FRAMES = open(os.environ["CAP_FRAMES"]).read().splitlines()
OUT = os.environ["CAP_OUT"]
# measurement window in seconds after the test starts: [WIN_START, WIN_END)
WIN_START = float(os.environ["CAP_WIN_START"])
WIN_END = float(os.environ["CAP_WIN_END"])

lateness = array.array("d")
state = {"t0": 0.0, "frames": 0, "cpu0": None, "cpu1": None, "connected": 0, "errors": 0}


@events.test_start.add_listener
def _start(environment, **_):
    state["t0"] = time.monotonic()

    def sample_cpu():
        gevent.sleep(max(0.0, state["t0"] + WIN_START - time.monotonic()))
        state["cpu0"], state["server0"] = time.process_time(), server_seconds()
        gevent.sleep(max(0.0, state["t0"] + WIN_END - time.monotonic()))
        state["cpu1"], state["server1"] = time.process_time(), server_seconds()

    gevent.spawn(sample_cpu)


@events.test_stop.add_listener
def _stop(environment, **_):
    with open(OUT + ".lag", "wb") as f:
        lateness.tofile(f)
    cpu = server = None
    if state["cpu0"] is not None and state["cpu1"] is not None:
        cpu = state["cpu1"] - state["cpu0"]
        server = state["server1"] - state["server0"]
    with open(OUT, "w") as f:
        json.dump(
            {
                "connected": state["connected"],
                "errors": state["errors"],
                "frames_in_window": state["frames"],
                "window_s": WIN_END - WIN_START,
                "cpu_s": cpu,
                "server_cpu_s": server,
            },
            f,
        )


class AppendUser(User):
    """One caller: connect, turn server VAD off, then an append every 20 ms until the window
    ends (the run ends shortly after)."""

    def on_start(self):
        self.ws = websocket.create_connection(
            URL, header=["Authorization: Bearer bench"], enable_multithread=False
        )
        self.ws.recv()  # session.created
        self.ws.send(VAD_OFF)
        self.ws.recv()  # session.updated
        state["connected"] += 1

    @task
    def stream(self):
        fire = self.environment.events.request.fire
        t0, end = state["t0"], state["t0"] + WIN_END
        win_start = t0 + WIN_START
        i = hash(id(self)) % len(FRAMES)
        due = time.monotonic()  # users spawn at N/s, so their phases are spread already
        while True:
            now = time.monotonic()
            if now < due:
                gevent.sleep(due - now)
                now = time.monotonic()
            if now >= end:
                break
            frame = FRAMES[i]
            try:
                self.ws.send(frame)
            except Exception as exc:  # noqa: BLE001 - counted, then this user stops
                state["errors"] += 1
                fire(
                    request_type="WS",
                    name="append",
                    response_time=0,
                    response_length=0,
                    exception=exc,
                )
                break
            after = time.monotonic()
            fire(
                request_type="WS",
                name="append",
                response_time=(after - now) * 1000.0,
                response_length=len(frame),
                exception=None,
            )
            if now >= win_start:
                lateness.append((now - due) * 1000.0)
                state["frames"] += 1
            i = (i + 1) % len(FRAMES)
            due += PERIOD
        self.ws.close()
        gevent.sleep(3600)  # until Locust stops the run
