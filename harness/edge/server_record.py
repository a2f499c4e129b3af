"""`rtsoak serve --out DIR` as a run directory: each session's events both ways, as the proxy
records them, beside the server's ground truth, and a manifest, so `rtsoak report DIR` works.

The rows are the proxy's (harness.core.client.ClientConnection, inferring): one client-side
connection per session (variant `serve`, worker = the session's arrival number, attempt 1), its
frames both ways, its utterances with the CRC of the audio the client sent, and how it ended.
The server's own rows (`session_open`, `fault`, `handshake_fault`, `session_close`) stay as they
are: the ground truth a report grades its diagnosis by, joined on the request id.

Only a standalone server records this way: an embedded server's run has its own workers'
rows, and parsing every frame twice would slow it down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMessage, WSMsgType

from harness.core.client import ClientConnection
from harness.core.faults import Fault, FaultKind
from harness.core.outcomes import CloseCause, ClosedBy
from harness.core.rows import ConnOpen, FrameRow, Row
from harness.log.rundir import RunDir, RunDirError, open_run, run_facts

if TYPE_CHECKING:
    from harness.edge.clock import Clock
    from harness.edge.server import ServerConfig
    from harness.log.recorder import Recorder

__all__ = [
    "SERVE_VARIANT",
    "SessionLog",
    "finish_serve_manifest",
    "is_other_run",
    "serve_manifest",
    "write_serve_manifest",
]

SERVE_VARIANT = "serve"


class SessionLog:
    """One session's client-side rows, written through the server's recorder."""

    def __init__(self, clock: Clock, recorder: Recorder, worker: int) -> None:
        self.clock, self.recorder, self.worker = clock, recorder, worker
        self.obs = ClientConnection(f"{SERVE_VARIANT}/{worker}", clock.now(), infer=True)
        self.write([ConnOpen(self.obs.opened)])

    def write(self, rows: list[Row]) -> None:
        clock = self.clock
        for row in rows:
            self.recorder.record(row, clock.wall_at(row.t), "client", SERVE_VARIANT, self.worker, 1)

    def upgraded(self, request_id: str) -> None:
        self.write(self.obs.handshake(self.clock.now(), 101, request_id))

    def refused(self, status: int, request_id: str) -> None:
        now = self.clock.now()
        error = f"HTTP {status}"
        rows = self.obs.handshake(now, status, request_id, error)
        rows += self.obs.closed(now, ClosedBy.NONE, CloseCause.HANDSHAKE_FAILED, status, error)
        self.write(rows)

    def received_message(self, msg: WSMessage) -> None:
        """One message from the client's socket: frames and pings are rows."""
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            self.received(msg.data)
        elif msg.type is WSMsgType.PING:
            self.control("send", "ping", len(msg.data))

    def received(self, data: str | bytes) -> None:
        """A frame from the client (a broken one is that frame's row, as in the proxy)."""
        now = self.clock.now()
        try:
            rows = self.obs.client_frame(now, data)
        except Exception as exc:  # noqa: BLE001 (one frame misread never stops a session)
            rows = [FrameRow(now, "send", "unparseable", len(data), text=repr(exc)[:200])]
        self.write(rows)

    def sent(self, text: str) -> None:
        now = self.clock.now()
        try:
            rows = self.obs.server_frame(now, text)
        except Exception as exc:  # noqa: BLE001
            rows = [FrameRow(now, "recv", "unparseable", len(text), text=repr(exc)[:200])]
        self.write(rows)

    def control(self, dir_: str, kind: str, nbytes: int) -> None:
        self.write(self.obs.control(self.clock.now(), dir_, kind, nbytes))

    def closed(
        self, fault: Fault | None, ended_by: str | None, stopping: bool, code: int | None
    ) -> None:
        """How the session ended, as its client saw it."""
        closed_by, cause, reason = ClosedBy.CLIENT, CloseCause.CLIENT_CLOSE, "client closed"
        if fault is not None:
            reason = fault.reason or fault.policy
            if fault.kind in (FaultKind.CLOSE, FaultKind.DELAYED_CLOSE):
                closed_by, code = ClosedBy.SERVER, fault.code or 1000
                expired = self.obs.expired or fault.error_code == "session_expired"
                cause = CloseCause.EXPIRED if expired else CloseCause.SERVER_CLOSE
            else:
                closed_by, cause, code = ClosedBy.TRANSPORT, CloseCause.ABNORMAL, 1006
        elif ended_by is not None:  # the fake itself failed
            closed_by, cause, code, reason = (
                ClosedBy.SERVER,
                CloseCause.PROTOCOL_ERROR,
                1011,
                ended_by,
            )
        elif stopping:
            closed_by, cause, code, reason = (
                ClosedBy.SERVER,
                CloseCause.SCENARIO_END,
                1001,
                "server shutting down",
            )
        elif code is None or code == 1006:
            cause, code, reason = CloseCause.ABNORMAL, 1006, "client lost"
        self.write(self.obs.closed(self.clock.now(), closed_by, cause, code, reason))


def serve_manifest(
    config: ServerConfig, seed: int, time_scale: float, listen: str | None
) -> dict[str, Any]:
    """What a `serve --out` directory was, for `rtsoak report`: like a proxy run's manifest,
    kind `serve`. Write it when the server listens; complete it with finish_serve_manifest."""
    return {
        **run_facts(),
        "kind": "serve",
        "scenario": {
            "run": {
                "name": SERVE_VARIANT,
                "duration": None,
                "time_scale": time_scale,
                "seed": seed,
                "target": "fake",
            },
            "faults": config.faults.describe(),
            "thresholds": {},
        },
        "serve": {"listen": listen, "seed": seed},
        "seed": seed,
        "time_scale": time_scale,
        "target": None,
        **open_run(datetime.now(UTC).isoformat()),
    }


def is_other_run(directory: Path) -> bool:
    """`directory` is already a run of another kind (a run's or a proxy's): its own clients
    are recorded there, so the server must not record them again, nor replace its manifest."""
    try:
        doc = RunDir(directory).read_manifest()
    except RunDirError:  # no manifest: not a run yet
        return False
    except (OSError, ValueError):
        return True  # unreadable: leave it alone
    return not isinstance(doc, dict) or doc.get("kind") != "serve"


def write_serve_manifest(out: Path, doc: dict[str, Any]) -> None:
    RunDir(out).write_manifest(doc)


def finish_serve_manifest(out: Path, doc: dict[str, Any], rows: int | None) -> None:
    """The server stopped: when, and how many rows its log holds."""
    doc.update(ended=datetime.now(UTC).isoformat(), interrupted=False, rows=rows)
    write_serve_manifest(out, doc)
