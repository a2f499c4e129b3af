"""The rtsoak command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, rtsoak, write_scenario

from harness.run.runner import OutputDirError, check_output_dir


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


def test_list_shows_every_shipped_profile_and_scenario() -> None:
    from harness.config.faults import shipped_profiles

    result = rtsoak("list")
    assert result.returncode == 0
    for name in shipped_profiles():
        assert f"  {name} " in result.stdout
    assert "  smoke " in result.stdout


def test_serve_with_a_shipped_profile_listens_on_loopback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "--faults", "bad-key-loop", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("rtsoak fake server listening on ws://127.0.0.1:")
        import asyncio

        import aiohttp

        url = first.split(" on ")[1].strip()

        async def observe() -> tuple[int | None, str]:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(url, headers={"Authorization": "Bearer k"}) as ws,
            ):
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type is aiohttp.WSMsgType.CLOSE:
                        return msg.data, msg.extra

        assert asyncio.run(observe()) == (1008, "Invalid API key")
    finally:
        proc.terminate()
        proc.wait(10)


def test_manifest_says_what_the_run_was(finished_run: Path) -> None:
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert manifest["scenario"]["run"]["workers"] == 3 and manifest["seed"] == 5
    assert set(manifest["versions"]) >= {
        "rtsoak",
        "python",
        "aiohttp",
        "numpy",
        "pandas",
        "pyarrow",
    }
    assert all(manifest["versions"][k] for k in ("rtsoak", "python", "pyarrow"))
    assert "git_revision" in manifest
    assert manifest["host"]["cpus"] >= 1 and manifest["host"]["memory_bytes"] > 0
    assert manifest["target"]["kind"] == "fake" and "Authorization" in manifest["target"]["headers"]
    assert manifest["started"] < manifest["ended"]
    assert manifest["rows"] > 0 and manifest["append_lateness_p99_ms"] >= 0
    assert manifest["saturated"] is (manifest["append_lateness_p99_ms"] > 10)
    for name in ("events", "connections", "utterances"):
        assert (finished_run / "frames" / f"{name}.parquet").is_file()


def test_output_dir_that_cannot_be_written_is_exit_2_naming_it(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = rtsoak("run", str(scenario), "--out", str(blocker / "runs"))
    assert result.returncode == 2
    assert f"{blocker / 'runs'}: cannot write a run directory here" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_exit_2(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path)
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    result = rtsoak("run", str(scenario), "--out", str(out))
    assert result.returncode == 2 and f"{out}: cannot write" in result.stderr


def test_full_output_dir_is_refused_before_the_run(tmp_path: Path) -> None:
    """A disk with less room than a run needs (here: asking for more than any disk has)."""
    with pytest.raises(OutputDirError, match=f"{tmp_path}: only .* MiB free"):
        check_output_dir(tmp_path, min_free=2**62)
    assert list(tmp_path.iterdir()) == []  # the probe is gone


def test_procs_spread_workers_over_processes_into_one_run(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, name="procs", workers=5, duration="2m")
    result = rtsoak("run", str(scenario), "--out", str(tmp_path / "runs"), "--procs", "2")
    assert result.returncode == 0, result.stderr
    assert "2 processes" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    logs = sorted(p.name for p in run_dir.glob("events-client*.arrows"))
    assert logs == ["events-client-0.arrows", "events-client-1.arrows"]
    from harness.log.frames import load

    frames = load(run_dir)
    assert set(frames.connections["worker"]) == {0, 1, 2, 3, 4}
    # one clock: scenario time is the same function of wall time in both processes (a child
    # with an origin of its own, taken when it started, would be tens of ms of wall off);
    # how soon each process got going does not matter
    conns = frames.connections
    offset = conns["opened_wall"] * 120.0 - conns["opened"]  # write_scenario's time scale
    assert offset.max() - offset.min() < 0.25  # scenario seconds: 2 ms of wall time
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["procs"] == 2 and manifest["rows"] == len(
        frames.events[frames.events["src"] == "client"]
    )


def test_two_shards_merge_into_the_same_run_as_one(tmp_path: Path) -> None:
    """One scenario as 2 shards and as 1 run, same seed: the same connections and utterances
    (up to timing) and the same faults at the same session ages. What timing shifts is checked
    only when the harness measured that it kept time (helpers.require_timing)."""
    from helpers import compare_faults, require_timing

    from harness.log.frames import load

    scenario = write_scenario(tmp_path, name="shard", workers=5, duration="2m")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert rtsoak("run", str(scenario), "--out", str(whole), "--no-report").returncode == 0
    for k in ("0/2", "1/2"):
        result = rtsoak("run", str(scenario), "--out", str(parts), "--shard", k, "--no-report")
        assert result.returncode == 0, result.stderr
    shard_dirs = sorted(parts.iterdir())
    assert [d.name.split("-")[1] for d in shard_dirs] == ["shard0of2", "shard1of2"]
    merged = rtsoak("report", *map(str, shard_dirs), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.count("shard:") == 1  # one variant, not one per shard
    one, two = load(next(whole.iterdir())), load(shard_dirs)
    assert (
        sorted(one.connections["worker"].unique())
        == sorted(two.connections["worker"].unique())
        == [0, 1, 2, 3, 4]
    )
    assert set(two.connections.groupby("worker")["run"].nunique()) == {1}  # disjoint slices

    # the same key, the same seeded draw, to the bit, however late either run was
    same = compare_faults(one, two)
    assert same.mismatched.empty, same.mismatched
    # which keys both reached depends on timing: each difference must be explained by it
    require_timing(not same.unexplained and len(same.common) >= 3, same.describe(), one, two)
    # the merged frames hold every shard's utterances
    assert len(two.utterances) == sum(len(load(d).utterances) for d in shard_dirs)
    workers = [sorted(f.utterances["worker"].unique()) for f in (one, two)]
    require_timing(
        workers == [[0, 1, 2, 3, 4]] * 2, f"workers with utterances: {workers}", one, two
    )

    def per_connected_second(frames) -> float:  # a slow start or handshake shifts raw counts
        return len(frames.utterances) / frames.connections["lifetime"].sum()

    rates = per_connected_second(one), per_connected_second(two)
    require_timing(
        abs(rates[0] - rates[1]) <= 0.2 * rates[0], f"utterances per second {rates}", one, two
    )


def test_shards_of_different_seeds_are_refused(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, name="mix", duration="30s")
    for k, seed in (("0/2", "1"), ("1/2", "2")):
        assert (
            rtsoak(
                "run",
                str(scenario),
                "--out",
                str(tmp_path / "r"),
                "--shard",
                k,
                "--seed",
                seed,
                "--no-report",
            ).returncode
            == 0
        )
    result = rtsoak("report", *map(str, sorted((tmp_path / "r").iterdir())))
    assert result.returncode == 2 and "refusing to merge shards" in result.stderr
    bad = rtsoak("run", str(scenario), "--shard", "2/2")
    assert bad.returncode == 2 and "0 <= K < N" in bad.stderr


def test_serve_out_that_cannot_be_written_is_exit_2_naming_it(tmp_path: Path) -> None:
    """A path under a regular file: unwritable for root too (chmod is not, tests run as root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = rtsoak("serve", "--out", str(blocker / "logs"), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{blocker / 'logs'}: cannot write the server's log here" in result.stderr
    assert "--out" in result.stderr and "Traceback" not in result.stderr


def _read_only(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`rtsoak ARGS` with run_dir read-only. Root writes through permissions, so as root the
    directory is bind-mounted read-only in a mount namespace of the command's own (EROFS,
    which binds root too); otherwise its permissions are taken away."""
    cmd = [sys.executable, "-m", "harness", *args]
    if os.geteuid() == 0:
        remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        probe = subprocess.run(["unshare", "-m", "sh", "-c", remount, str(run_dir), "true"])
        if probe.returncode != 0:
            pytest.skip("root without a mount namespace: cannot make a read-only directory")
        cmd = ["unshare", "-m", "sh", "-c", remount, str(run_dir), *cmd]
    else:
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_report_of_a_read_only_run_says_to_use_out_and_works_with_it(
    finished_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "archived"
    shutil.copytree(finished_run, run_dir)
    shutil.rmtree(run_dir / "frames")
    shutil.rmtree(run_dir / "report")
    result = _read_only(run_dir, "report", str(run_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{run_dir}: cannot write frames and report in this run directory" in result.stderr
    assert f"rtsoak report {run_dir} --out DIR" in result.stderr
    assert "Traceback" not in result.stderr
    out = tmp_path / "elsewhere"
    result = _read_only(run_dir, "report", str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "index.html").is_file() and (out / "summary.json").is_file()
    assert f"rtsoak: report {out / 'index.html'}" in result.stdout
    assert not (run_dir / "frames").exists() and not (run_dir / "report").exists()


def test_report_out_that_cannot_be_written_is_exit_2_naming_it(
    finished_run: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = rtsoak("report", str(finished_run), "--out", str(blocker / "report"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--out {blocker / 'report'}: cannot write here" in result.stderr
    assert "Traceback" not in result.stderr
