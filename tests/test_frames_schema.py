"""docs/frames.md and the frames agree, both ways: every column documented, every documented
column present, dtypes as written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.log.frames import CONNECTION_COLUMNS, EVENT_COLUMNS, UTTERANCE_COLUMNS, load

DOC = Path(__file__).resolve().parent.parent / "docs" / "frames.md"
FRAMES = ("events", "connections", "utterances")


def documented() -> dict[str, dict[str, str]]:
    """`## <frame>` sections of docs/frames.md -> {column: dtype} from their tables."""
    tables: dict[str, dict[str, str]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            tables[section] = {}
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section and line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= set("- "):
            if cells[0] != "column":
                assert cells[0] not in tables[section], f"{section}.{cells[0]} twice"
                tables[section][cells[0]] = cells[1]
    return tables


def dtype_name(dtype: object) -> str:
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if isinstance(dtype, pd.StringDtype):
        return "string"
    return str(dtype)


def test_doc_has_a_table_per_frame() -> None:
    tables = documented()
    for name in FRAMES:
        assert tables.get(name), f"docs/frames.md has no table under '## {name}'"


@pytest.mark.parametrize("name", FRAMES)
def test_doc_matches_frames_of_a_real_run(finished_run: Path, name: str) -> None:
    frame: pd.DataFrame = getattr(load(finished_run), name)
    assert not frame.empty
    actual = {col: dtype_name(dtype) for col, dtype in frame.dtypes.items()}
    doc = documented()[name]
    assert sorted(set(actual) - set(doc)) == [], f"undocumented {name} columns"
    assert sorted(set(doc) - set(actual)) == [], f"documented {name} columns missing"
    assert {c: doc[c] for c in actual} == actual


def test_declared_schemas_match_the_doc() -> None:
    """The schema dicts frames.py conforms to are the documented ones (also for empty runs)."""
    doc = documented()
    for name, columns in zip(
        FRAMES, (EVENT_COLUMNS, CONNECTION_COLUMNS, UTTERANCE_COLUMNS), strict=True
    ):
        declared = {c: dtype_name(pd.api.types.pandas_dtype(d)) for c, d in columns.items()}
        assert declared == doc[name]


def test_every_append_of_a_real_run_has_a_level_and_no_other_row_does(finished_run: Path) -> None:
    events = load(finished_run).events
    appends = events["type"] == "input_audio_buffer.append"
    assert appends.any() and events.loc[appends, "dbfs"].notna().all()
    assert events.loc[~appends, "dbfs"].isna().all()
