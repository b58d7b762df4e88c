"""The package's shape (ARCHITECTURE.md): imports run one way through the layers, no module imports itself back
through others, and no module grows past 400 lines."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

import grimp
import pytest

import textdiffusion

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(textdiffusion.__file__).resolve().parent
MAX_LINES = 400
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


@pytest.fixture(scope="module")
def built_graph() -> grimp.ImportGraph:
    return grimp.build_graph("textdiffusion", cache_dir=None)  # every import, inside functions and TYPE_CHECKING too


@pytest.fixture
def graph(built_graph) -> grimp.ImportGraph:
    return copy.deepcopy(built_graph)  # a test may plant an import in its own copy


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module: each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def lint_imports() -> list[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return [exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"]


def test_the_import_contracts_hold():
    """pyproject.toml's import-linter contracts, checked by import-linter's own command."""
    proc = subprocess.run(lint_imports(), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(CONTRACTS)} kept, 0 broken" in proc.stdout


def layer_order() -> list[set[str]]:
    """The layers contract's layers, highest first, each a set of sibling names (a | b or a : b)."""
    (layers,) = [c["layers"] for c in CONTRACTS if c["type"] == "layers"]
    return [{name.strip() for name in layer.replace(":", "|").split("|")} for layer in layers]


def test_the_layers_catch_an_upward_import(graph):
    """The layer order can fail: an import from the basics up to the front door is reported."""
    layers = [grimp.Layer(*sorted(f"textdiffusion.{n}" for n in names), independent=False) for names in layer_order()]
    assert graph.find_illegal_dependencies_for_layers(layers=layers) == set()
    graph.add_import(importer="textdiffusion.core.errors", imported="textdiffusion.api.pipeline")
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert {(d.importer, d.imported) for d in illegal} == {("textdiffusion.core", "textdiffusion.api")}


def test_no_import_cycle(graph):
    cycles = strongly_connected(graph)
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_the_cycle_finder_finds_a_planted_cycle(graph):
    """The check above can fail: an import from a low module back up to a high one closes a cycle."""
    graph.add_import(importer="textdiffusion.core.errors", imported="textdiffusion.api.pipeline")
    assert any("textdiffusion.core.errors" in c for c in strongly_connected(graph))


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them by job"
