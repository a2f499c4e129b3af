"""The command line as a new user meets it: signals on the long-running commands, help texts,
--version, validate catching what run would refuse, and the README's commands against the real
--help."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, rtsoak, write_scenario
from websockets.sync.client import connect

from harness.cli import _parser
from harness.core.outcomes import UtteranceStatus
from harness.log.frames import read_log


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert " listening on " in first, proc.stderr.read() if proc.stderr else first
    return proc, first.split(" listening on ", 1)[1].strip()


def test_serve_stops_on_sigterm_with_its_log_complete(tmp_path) -> None:
    """SIGTERM (what systemd, docker and CI send) closes the open session and the log: the
    closing row of a session still open is in the log, and the exit is a clean 0."""
    proc, url = _serve("--out", str(tmp_path / "log"))
    try:
        with connect(url, additional_headers={"Authorization": "Bearer k"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    table, torn = read_log(tmp_path / "log" / "events-server.arrows")
    types = table.column("type").to_pylist()
    assert torn == 0
    assert types.count("session_open") == 1 and types.count("session_close") == 1, types
    close = table.filter(table.column("type").to_numpy(zero_copy_only=False) == "session_close")
    assert close.column("text").to_pylist() == ["shutdown"]  # closed 1001 by the server


def test_proxy_stops_on_sigterm_with_0_and_its_report(tmp_path) -> None:
    """Ctrl-C (or SIGTERM) is how a proxy session ends: exit 0, the report written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "proxy", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" listening on ", 1)[1].strip()
        with connect(url, additional_headers={"Authorization": "Bearer k"}) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "rtsoak: report" in out


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_top_level_help_hides_run_part_and_there_is_a_version() -> None:
    help_text = rtsoak("--help").stdout
    assert "run-part" not in help_text and "SUPPRESS" not in help_text
    assert "{run,serve,proxy,report,fit,recommend,import,validate,list}" in help_text
    version = rtsoak("--version")
    assert version.returncode == 0 and re.fullmatch(r"rtsoak \d+\.\d+\S*\n", version.stdout)


def test_every_option_of_every_command_has_help() -> None:
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"rtsoak {name} {action.option_strings[0]} has no help"


def test_faults_help_says_profile_names_work() -> None:
    for command in ("serve", "proxy"):
        assert "profile NAME" in " ".join(rtsoak(command, "--help").stdout.split())


@pytest.mark.parametrize(
    "breakage, words",
    [
        ("no-audio", "audio directory not found"),
        ("corrupt-wav", "cannot be read as audio"),
        ("real-target-uncapped", "a real target needs caps"),
    ],
)
def test_validate_refuses_what_run_would_refuse(tmp_path, breakage, words) -> None:
    scenario = write_scenario(tmp_path)
    audio = tmp_path / "audio"
    if breakage == "no-audio":
        for wav in audio.iterdir():
            wav.unlink()
        audio.rmdir()
    elif breakage == "corrupt-wav":
        (audio / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    flags = ["--target", "openai"] if breakage == "real-target-uncapped" else []
    env = {"OPENAI_API_KEY": "sk-test-only"}
    for command in (["validate"], ["run", "--out", str(tmp_path / "out")]):
        done = subprocess.run(
            [sys.executable, "-m", "harness", *command, str(scenario), *flags],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**__import__("os").environ, **env},
            timeout=60,
        )
        assert done.returncode == 2 and words in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # run refused it before writing anything


def test_walkthrough_output_is_ignored_and_cleaned() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/serve/x"], cwd=ROOT)
    assert ignored.returncode == 0
    clean = re.search(r"^clean:\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert clean and "runs/" in clean.group(1).split()


def test_the_readme_names_every_utterance_status_and_where_summary_json_is() -> None:
    readme = (ROOT / "README.md").read_text()
    for status in UtteranceStatus:
        assert f"`{status.value}`" in readme, status
    assert "RUN/report/summary.json" in readme


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(subcommand, its --flags) for every `rtsoak ...` in the README: each line of its sh
    blocks (indented lines continue the one above) and each inline `rtsoak ...`."""
    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"`rtsoak ([^`]+)`", readme)
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line[:1].isspace() and lines:
                lines[-1] += line
            elif (found := re.search(r"(?:^|/)rtsoak (.*)", line)) is not None:
                lines.append(found.group(1))
    return [
        (line.split()[0], re.findall(r"(?<![\w-])--[a-z][\w-]*", line.split("#", 1)[0]))
        for line in lines
    ]


def test_the_readmes_commands_use_only_flags_the_real_help_has() -> None:
    commands = _readme_commands()
    parsers = _subparsers()
    assert len(commands) >= 15  # the walkthrough and the synopsis are all there
    helps = {name: rtsoak(name, "--help").stdout for name in parsers}
    helps["--version"] = helps[""] = rtsoak("--help").stdout
    for command, flags in commands:
        assert command in helps, command
        for flag in flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command]), (
                f"README: rtsoak {command} {flag} is not in `rtsoak {command} --help`"
            )
