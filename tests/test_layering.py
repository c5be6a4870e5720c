"""The package's shape: no import cycles (imports inside functions included), no long modules.

Every module's imports are read with `ast` (tests/package_imports.py: module level, inside
functions and under TYPE_CHECKING alike), plus the two imports made by name at run time: the package's lazy public
names (`gradcam_fast._WHERE`) and the CLI's subcommand modules (`gradcam_fast.cli.SUBCOMMANDS`).
"""

from __future__ import annotations

from pathlib import Path

from package_imports import import_graph as source_imports
from package_imports import modules

import gradcam_fast
import gradcam_fast.cli

PACKAGE = Path(gradcam_fast.__file__).resolve().parent
MAX_LINES = 400


def import_graph() -> dict[str, set[str]]:
    graph = source_imports(PACKAGE)
    graph["gradcam_fast"] |= {f"gradcam_fast.{m}" for m in gradcam_fast._WHERE.values()}
    graph["gradcam_fast.cli"] |= {f"gradcam_fast.cli.{m}" for m in gradcam_fast.cli.SUBCOMMANDS}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of module names (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    export = "gradcam_fast.export.onnx_export"
    assert "gradcam_fast.core.graph" in graph[export]
    assert "gradcam_fast.runtime.session" in graph["gradcam_fast.export.validate"]  # in a function
    assert "gradcam_fast.cli.explain" in graph["gradcam_fast.cli"]  # a run-time import counts
    planted = {k: set(v) for k, v in graph.items()}
    planted["gradcam_fast.format.metadata"].add(export)  # export -> metadata -> export
    assert find_cycle(planted) is not None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_is_over_400_lines():
    lengths = {
        name: len(p.read_text(encoding="utf-8").splitlines())
        for name, p in modules(PACKAGE).items()
    }
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
