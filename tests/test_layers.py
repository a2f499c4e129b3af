"""The layers hold (docs/architecture.md): import-linter's contracts in pyproject.toml (arrows
point down; the core imports no event loop, socket or file system; only the edge speaks
aiohttp), and no module imports itself through others at run time (an import for type
checking only is not a cycle). Each check is shown to fail on a planted violation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_the_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("harness", exclude_type_checking_imports=True)
    assert _cycles(graph) == []
    graph.add_import(importer="harness.core.pacing", imported="harness.core.client")
    graph.add_import(importer="harness.core.client", imported="harness.core.pacing")
    assert _cycles(graph) == [["harness.core.client", "harness.core.pacing"]]


def test_the_contracts_fail_on_an_upward_import_and_on_io_in_the_core(tmp_path) -> None:
    tree = tmp_path / "tree"
    for path in [ROOT / "pyproject.toml", *sorted((ROOT / "harness").rglob("*.py"))]:
        target = tree / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    pacing = tree / "harness/core/pacing.py"
    pacing.write_text(pacing.read_text() + "\nimport asyncio  # planted\n")
    scenario = tree / "harness/config/scenario.py"
    scenario.write_text(scenario.read_text() + "\nimport harness.run.runner  # planted\n")
    result = _lint_imports(tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "harness.core.pacing -> asyncio" in result.stdout
    assert "harness.config.scenario -> harness.run.runner" in result.stdout
