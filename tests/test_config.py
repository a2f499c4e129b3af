"""Scenario and duration parsing: good files load, bad ones name file, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.config.scenario import load_scenario
from harness.core.spec import ConfigError, parse_duration

ROOT = Path(__file__).resolve().parent.parent


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from([("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]),
)
def test_duration_units(n: int, unit: tuple[str, float]) -> None:
    assert parse_duration(f"{n}{unit[0]}") == pytest.approx(n * unit[1])


@given(st.text(max_size=20))
def test_duration_parser_never_crashes_on_hostile_text(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc)
    else:
        assert value >= 0


@pytest.mark.parametrize("bad", [-1, True, "ten minutes", "5 parsecs", [1]])
def test_duration_rejects_nonsense(bad) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_shipped_smoke_scenario_loads() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "smoke.toml")
    assert scenario.run.workers == 10
    assert scenario.run.duration == 1800
    assert scenario.run.time_scale == 60
    assert scenario.faults.describe()["session_age"]["mean"] == 480


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("[run]\nworkerz = 3\n", "run.workerz", "did you mean 'workers'"),
        ("[run]\nworkers = 'many'\n", "run.workers", "whole number"),
        ("[run]\nworkers = 0\n", "run.workers", "at least 1"),
        ("[run]\nduration = 'forever'\n", "run.duration", "duration"),
        ("[pacing]\nchunk_ms = 1\n", "pacing.chunk_ms", "at least 5"),
        ("[runn]\n", "runn", "unknown section"),
        ("[faults.gremlins]\n", "faults.gremlins", "unknown fault policy"),
        (
            "[faults.session_age]\ndistribution = 'gaussian'\n",
            "faults.session_age.distribution",
            "choose one of",
        ),
    ],
)
def test_bad_scenarios_name_field_and_fix(tmp_path: Path, text: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, text))
    message = str(info.value)
    assert str(tmp_path / "s.toml") in message
    assert field in message
    assert hint in message


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="s.toml: is not valid TOML"):
        load_scenario(_write(tmp_path, "[run\nworkers = 3"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_scenario(tmp_path / "nope.toml")


def test_command_line_overrides_win(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, "[run]\nworkers = 3\nseed = 4\n"))
    changed = scenario.with_overrides(workers=7, seed=None, duration=30.0)
    assert (changed.run.workers, changed.run.seed, changed.run.duration) == (7, 4, 30.0)


VARIANTS = """
[run]
name = "cmp"
workers = 2
[pacing]
chunk_ms = 20
[faults.session_age]
mean = "8m"

[[variant]]
name = "steady"

[[variant]]
name = "rotating"
reconnect.rotate_every = "5m"
faults.session_age.mean = "2m"

[matrix]
pacing.chunk_ms = [20, 100]
"""


def test_variants_times_matrix(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, VARIANTS))
    names = [v.variant for v in scenario.variants]
    assert names == [
        "steady,chunk_ms=20",
        "steady,chunk_ms=100",
        "rotating,chunk_ms=20",
        "rotating,chunk_ms=100",
    ]
    by_name = {v.variant: v for v in scenario.variants}
    assert by_name["rotating,chunk_ms=100"].pacing.chunk_ms == 100
    assert by_name["rotating,chunk_ms=100"].reconnect.rotate_every == 300
    assert by_name["steady,chunk_ms=100"].reconnect.rotate_every == 0
    assert by_name["rotating,chunk_ms=20"].faults.describe()["session_age"]["mean"] == 120
    assert by_name["steady,chunk_ms=20"].faults.describe()["session_age"]["mean"] == 480
    # command-line overrides reach every variant
    shorter = scenario.with_overrides(duration=30.0)
    assert {v.run.duration for v in shorter.variants} == {30.0}


def test_a_scenario_without_variants_is_its_own_variant(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, "[run]\nname = 'solo'\n"))
    assert [v.variant for v in scenario.variants] == ["solo"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[variant]]\nname = 'a'\nrun.duration = '5m'\n", "only run.workers may differ"),
        ("[[variant]]\nname = 'a'\n[[variant]]\nname = 'a'\n", "duplicate variant 'a'"),
        ("[matrix]\npacing.chunk_ms = 20\n", "must be a non-empty list"),
        (
            "[[variant]]\nname = 'a'\npacing.chunk_ms = 'fast'\n",
            "variant 'a': pacing.chunk_ms: expected a whole number",
        ),
        ("[[variant]]\nname = 'a/b'\n", "use letters, digits"),
    ],
)
def test_bad_variants_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_scenario(_write(tmp_path, text))


def test_errors_point_at_the_line(tmp_path: Path) -> None:
    text = "[run]\nname = 'x'\n\n[pacing]\nchunk_ms = 20\nmode = 'wobbly'\n"
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, text))
    assert str(info.value).startswith(
        f"{tmp_path / 's.toml'}:6: pacing.mode: 'wobbly' is not "
        "allowed; choose one of: steady, jitter, burst"
    )
    with pytest.raises(ConfigError, match=r"s.toml:3: variant 'v': pacing.chunk_ms"):
        load_scenario(_write(tmp_path, "[[variant]]\nname = 'v'\npacing.chunk_ms = 1\n"))


def test_docs_describe_every_scenario_key() -> None:
    import dataclasses

    from harness.config.scenario import _SECTIONS

    docs = (ROOT / "docs" / "scenarios.md").read_text()
    for section, cls in _SECTIONS.items():
        assert f"[{section}]" in docs, section
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in docs, f"{section}.{f.name} is not in docs/scenarios.md"
