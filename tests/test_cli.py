"""The rtsoak command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import rtsoak


def test_missing_scenario_is_exit_2_without_traceback(tmp_path: Path) -> None:
    result = rtsoak("run", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_toml_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nworkers = 2\n")
    result = rtsoak("validate", str(bad))
    assert result.returncode == 2
    assert "bad.toml: is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_of_a_non_run_directory_is_exit_2(tmp_path: Path) -> None:
    result = rtsoak("report", str(tmp_path))
    assert result.returncode == 2
    assert "not a run directory" in result.stderr


def test_serve_refuses_a_non_loopback_host() -> None:
    result = rtsoak("serve", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr


def test_run_end_to_end_with_embedded_server(finished_run: Path) -> None:
    """`rtsoak run` starts the fake server in its own process, soaks it, writes the report."""
    run_dir = finished_run
    assert (run_dir / "report" / "index.html").is_file()
    assert (run_dir / "events-server.arrows").stat().st_size > 0
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["variants"][0]["drops"] >= 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["interrupted"] is False
    assert "rtsoak-fake-key" not in (run_dir / "manifest.json").read_text()
