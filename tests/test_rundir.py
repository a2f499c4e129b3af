"""RunDir: the run directory's one layout, its manifest, and the facts every run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.log.recorder import appends_log
from harness.log.rundir import (
    ReportDir,
    RunDir,
    RunDirError,
    open_run,
    run_facts,
    write_json,
)


def test_layout_names_are_the_ones_on_disk(tmp_path):
    run = RunDir(tmp_path)
    assert run.manifest == tmp_path / "manifest.json"
    assert run.server_config == tmp_path / "server.json"
    assert run.scenario == tmp_path / "scenario.json"
    assert run.part_result(2) == tmp_path / "part-2.json"
    assert run.frames == tmp_path / "frames"
    assert run.frame("connections") == tmp_path / "frames" / "connections.parquet"
    assert run.report == ReportDir(tmp_path / "report")
    assert run.report.summary == tmp_path / "report" / "summary.json"
    assert run.report.junit == tmp_path / "report" / "junit.xml"
    assert run.report.index == tmp_path / "report" / "index.html"
    assert run.client_log() == tmp_path / "events-client.arrows"
    assert run.client_log(3) == tmp_path / "events-client-3.arrows"
    assert run.server_log == tmp_path / "events-server.arrows"
    assert run.name == tmp_path.name


def test_a_string_path_is_taken_as_a_path(tmp_path):
    assert RunDir(str(tmp_path)).manifest == tmp_path / "manifest.json"


def test_logs_are_every_events_log_then_every_appends_log_the_recorder_names(tmp_path):
    run = RunDir(tmp_path)
    events = [run.server_log, run.client_log(1), run.client_log(0)]
    for path in [*events, appends_log(run.client_log(0)), tmp_path / "stray.arrows"]:
        path.touch()
    assert run.logs() == [
        tmp_path / "events-client-0.arrows",
        tmp_path / "events-client-1.arrows",
        tmp_path / "events-server.arrows",
        tmp_path / "appends-client-0.arrows",
    ]


def test_is_run_dir_only_with_a_manifest_file(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_run_dir()
    run.manifest.mkdir()  # a directory of that name is no manifest
    assert not run.is_run_dir()
    run.manifest.rmdir()
    run.manifest.write_text("{}")
    assert run.is_run_dir()
    assert not RunDir(tmp_path / "missing").is_run_dir()


def test_manifest_round_trip_leaves_no_temporary_file(tmp_path):
    run = RunDir(tmp_path)
    doc = {"seed": 7, "started": "now", "nested": {"a": [1, 2]}, "path": Path("x/y")}
    run.write_manifest(doc)
    assert run.read_manifest() == {**doc, "path": "x/y"}  # paths are written as strings
    run.write_manifest({"seed": 8})
    assert run.read_manifest() == {"seed": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_missing_manifest_is_an_error_naming_the_path(tmp_path):
    where = tmp_path / "smoke-1"
    where.mkdir()
    with pytest.raises(RunDirError) as caught:
        RunDir(where).read_manifest()
    message = str(caught.value)
    assert message.startswith(f"{where}: not a run directory (no manifest.json)")
    assert "rtsoak run" in message


def test_a_broken_manifest_raises_as_reading_it_does(tmp_path):
    RunDir(tmp_path).manifest.write_text("{not json")
    with pytest.raises(ValueError):
        RunDir(tmp_path).read_manifest()


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "server.json"
    path.write_text('{"old": true}')
    write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"new": True}
    assert not path.with_suffix(".tmp").exists()


def test_run_facts_and_open_run_are_what_a_manifest_starts_with():
    facts = run_facts()
    assert set(facts) == {"versions", "git_revision", "host"}
    assert facts["versions"]["aiohttp"]  # read from its metadata: the log layer never imports it
    assert facts["host"]["cpus"]
    status = open_run("2024-01-01T00:00:00+00:00")
    assert status["started"] == "2024-01-01T00:00:00+00:00"
    assert all(status[k] is None for k in status if k != "started")
