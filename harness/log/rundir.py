"""The run directory's layout: the one place that knows its file names, and its manifest.

A run directory (the unit of exchange, docs in design.md) holds:

    manifest.json            what the run was; written at its start, completed at its end
    server.json              the embedded fake server's configuration (a run's, a proxy's)
    scenario.json            the scenario document, for the --procs child processes
    part-K.json              what client process K recorded (WorkersResult), K >= 1
    events-client.arrows     the client's event log (events-client-K.arrows per process K)
    events-server.arrows     the fake server's event log
    appends-*.arrows         each events log's audio appends (recorder.appends_log)
    frames/NAME.parquet      frames derived from the logs
    report/                  index.html, *.png, summary.json, junit.xml

Everything else takes a `RunDir(path)` and asks it where things are.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__

__all__ = [
    "APPEND_LOG_GLOB",
    "EVENT_LOG_GLOB",
    "ReportDir",
    "RunDir",
    "RunDirError",
    "open_run",
    "run_facts",
    "write_json",
]

MANIFEST = "manifest.json"
EVENT_LOG_GLOB = "events-*.arrows"
# an events log's appends log: harness.log.recorder.appends_log is the one rule that names it
# (events-X.arrows -> appends-X.arrows); this glob only finds what it named
APPEND_LOG_GLOB = "appends-*.arrows"


class RunDirError(Exception):
    """A path that is not a run directory, or a run with nothing to analyse yet."""


@dataclass(frozen=True, slots=True)
class ReportDir:
    """A report's directory: RUN/report by default, or wherever `rtsoak report --out` says."""

    path: Path

    @property
    def index(self) -> Path:
        return self.path / "index.html"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def junit(self) -> Path:
        return self.path / "junit.xml"


@dataclass(frozen=True, slots=True)
class RunDir:
    """Where each file of the run directory at `path` lives; nothing is created until asked."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def server_config(self) -> Path:
        return self.path / "server.json"

    @property
    def scenario(self) -> Path:
        return self.path / "scenario.json"

    def part_result(self, k: int) -> Path:
        """What client process k (of --procs, k >= 1) recorded, as it wrote it on leaving."""
        return self.path / f"part-{k}.json"

    @property
    def frames(self) -> Path:
        return self.path / "frames"

    def frame(self, name: str) -> Path:
        """frames/NAME.parquet, e.g. frame("connections")."""
        return self.frames / f"{name}.parquet"

    @property
    def report(self) -> ReportDir:
        return ReportDir(self.path / "report")

    def client_log(self, part: int | None = None) -> Path:
        """The client's event log; `part`: client process k's own log when a run has several
        (--procs), None when it has one."""
        return self.path / (
            "events-client.arrows" if part is None else f"events-client-{part}.arrows"
        )

    @property
    def server_log(self) -> Path:
        return self.path / "events-server.arrows"

    def logs(self) -> list[Path]:
        """Every process's events log, then every process's appends log, each sorted."""
        return [*sorted(self.path.glob(EVENT_LOG_GLOB)), *sorted(self.path.glob(APPEND_LOG_GLOB))]

    def is_run_dir(self) -> bool:
        return self.manifest.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest; RunDirError naming the path when there is none (not a run directory).
        An unreadable or broken one raises as reading it does (OSError, ValueError)."""
        if not self.is_run_dir():
            raise RunDirError(
                f"{self.path}: not a run directory (no {MANIFEST}); pass a "
                "directory that `rtsoak run` wrote, e.g. reports/smoke-..."
            )
        return json.loads(self.manifest.read_text())

    def write_manifest(self, doc: dict[str, Any]) -> None:
        """Replace the manifest at once: a reader (or a crash) sees the old one or the new."""
        write_json(self.manifest, doc)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write `doc` to `path` atomically (a sibling .tmp file, then a rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import pandas
    import pyarrow

    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:  # by its metadata: only the edge imports aiohttp (pyproject's import contracts)
        aiohttp = version("aiohttp")
    except PackageNotFoundError:
        aiohttp = None
    return {
        "rtsoak": __version__,
        "python": sys.version.split()[0],
        "aiohttp": aiohttp,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "uvloop": getattr(uvloop, "__version__", None),
    }


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def run_facts() -> dict[str, Any]:
    """What any run directory records about the software and the machine it ran on."""
    return {
        "versions": _versions(),
        "git_revision": _git_revision(),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "memory_bytes": _memory_bytes(),
        },
    }


def open_run(started: str) -> dict[str, Any]:
    """A manifest's status fields while the run is going: filled in when it ends."""
    return {
        "started": started,
        "ended": None,
        "interrupted": None,
        "saturated": None,
        "append_lateness_p99_ms": None,
        "rows": None,
    }
