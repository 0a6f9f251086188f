"""The import layers: every import in pipeline/, transforms/ and model/ points down (or within its layer),
and no two packages import each other, directly or round a longer loop.

The layers are data here, bottom → top. A module belongs to the unit (package or module) of LAYERS with the
longest matching dotted prefix: `pipeline.io.cog` belongs to `pipeline.io`, `pipeline.errors` to itself and
`pipeline` (the package `__init__` with `__version__`) only to itself. Imports are read with `ast`, both the
module-level ones and those inside functions (the lazy imports count just the same).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.support.imports import REPO_ROOT, import_edges

LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: shared vocabulary, no dependencies beyond the standard library and numpy
    ("pipeline.errors", "pipeline.contract", "pipeline.ranges", "pipeline.elements", "pipeline.lazy", "pipeline"),
    # 1: the method (pure functions), formats and storage, the run's configuration
    ("pipeline.method", "pipeline.io", "pipeline.config"),
    # 2: the U-Net, Earth Engine, the products and the sample generator, each over layers 0-1
    ("model", "pipeline.earthengine", "pipeline.products", "pipeline.demo"),
    # 3: Beam PTransforms, the whole job as one composite
    ("transforms",),
    # 4: the launcher and what it shares with the CLI: options, flags, console output, the model check,
    #    the cloud preflight and the one-line descriptions of people's mistakes
    ("pipeline.options", "pipeline.run", "pipeline.flags", "pipeline.console", "pipeline.modelcheck",
     "pipeline.preflight", "pipeline.failures"),
    # 5: the command line
    ("pipeline.cli", "pipeline.commands"),
)


def unit_of(module: str, layers: Iterable[Iterable[str]] = LAYERS) -> tuple[str, int] | None:
    """The (unit, layer index) a dotted module name belongs to: the longest prefix unit; None when outside."""
    layers = [tuple(units) for units in layers]
    every_unit = [unit for units in layers for unit in units]
    best: tuple[str, int] | None = None
    for index, units in enumerate(layers):
        for unit in units:
            # a unit that is the parent of other units (`pipeline`) holds only itself, not its other modules
            parent = any(other.startswith(unit + ".") for other in every_unit)
            inside = module == unit or (not parent and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[0])):
                best = (unit, index)
    return best


def upward_imports(edges: Iterable[tuple[str, int, str]], layers=LAYERS) -> list[str]:
    """One line per import from a higher layer than the importer's, and per module outside every layer."""
    problems = []
    for module, line, target in edges:
        source_unit, target_unit = unit_of(module, layers), unit_of(target, layers)
        if source_unit is None:
            problems.append(f"{module} is in no layer: add its unit to LAYERS")
        elif target_unit is None:
            problems.append(f"{module}:{line} imports {target}, which is in no layer")
        elif target_unit[1] > source_unit[1]:
            problems.append(
                f"{module}:{line} (layer {source_unit[1]}, {source_unit[0]}) imports {target} "
                f"(layer {target_unit[1]}, {target_unit[0]})"
            )
    return sorted(set(problems))


def unit_graph(edges: Iterable[tuple[str, int, str]], layers=LAYERS) -> dict[str, set[str]]:
    """Unit → the other units it imports (imports within one unit are not edges)."""
    graph: dict[str, set[str]] = {}
    for module, _line, target in edges:
        source_unit, target_unit = unit_of(module, layers), unit_of(target, layers)
        if source_unit and target_unit and source_unit[0] != target_unit[0]:
            graph.setdefault(source_unit[0], set()).add(target_unit[0])
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted: the package cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(graph) | {successor for successors in graph.values() for successor in successors}
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return sorted(found)


@pytest.fixture(scope="module")
def edges() -> list[tuple[str, int, str]]:
    """The project's import edges (read once for the module)."""
    return import_edges()


def test_every_layer_unit_exists():
    for units in LAYERS:
        for unit in units:
            path = REPO_ROOT.joinpath(*unit.split("."))
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), unit


def test_the_walk_sees_the_known_imports(edges):
    # a lazy (function-level) import and a module-level one, so that an empty walk cannot pass
    assert any(module == "pipeline.io.cog" and target.startswith("pipeline.io.tables") for module, _, target in edges)
    assert any(module == "pipeline.run" and target.startswith("transforms") for module, _, target in edges)
    assert len(edges) > 200


def test_no_import_from_a_higher_layer(edges):
    assert upward_imports(edges) == []


def test_no_cycle_between_packages(edges):
    assert cycles(unit_graph(edges)) == []


# The checker itself, on a small fake project written to tmp_path.
FAKE_LAYERS = (("pipeline.errors", "pipeline"), ("pipeline.io",), ("transforms",), ("pipeline.cli",))


def write_fake(tmp_path: Path, files: Mapping[str, str]) -> list[tuple[str, int, str]]:
    """Write `files` (relative path → source) under tmp_path and return their import edges."""
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return import_edges(tmp_path, ("pipeline", "transforms"))


FAKE = {
    "pipeline/__init__.py": "__version__ = '0'\n",
    "pipeline/errors.py": "class UserError(Exception):\n    pass\n",
    "pipeline/io/__init__.py": "",
    "pipeline/io/cog.py": "from pipeline.errors import UserError\n\ndef f():\n    from . import tables\n",
    "pipeline/io/tables.py": "from ..errors import UserError\n",
    "transforms/__init__.py": "",
    "transforms/write.py": "from pipeline.io import cog\nimport pipeline.io.tables\n",
    "pipeline/cli.py": "import transforms.write\n",
}


def test_checker_passes_a_clean_fake_project(tmp_path):
    edges = write_fake(tmp_path, FAKE)
    assert ("pipeline.io.cog", 4, "pipeline.io.tables") in edges  # relative, inside a function
    assert ("pipeline.io.tables", 1, "pipeline.errors") in edges  # two dots: the parent package
    assert upward_imports(edges, FAKE_LAYERS) == []
    assert cycles(unit_graph(edges, FAKE_LAYERS)) == []


def test_checker_fails_on_an_injected_upward_import(tmp_path):
    lazy_upward = "from pipeline.errors import UserError\n\ndef f():\n    from transforms.write import cog\n"
    edges = write_fake(tmp_path, {**FAKE, "pipeline/io/cog.py": lazy_upward})
    assert upward_imports(edges, FAKE_LAYERS) == [
        "pipeline.io.cog:4 (layer 1, pipeline.io) imports transforms.write (layer 2, transforms)",
    ]
    assert cycles(unit_graph(edges, FAKE_LAYERS)) == [["pipeline.io", "transforms"]]


def test_checker_finds_a_cycle_within_one_layer(tmp_path):
    edges = write_fake(tmp_path, {**FAKE, "pipeline/__init__.py": "from pipeline import errors\n",
                                  "pipeline/errors.py": "import pipeline\n"})
    assert upward_imports(edges, FAKE_LAYERS) == []
    assert cycles(unit_graph(edges, FAKE_LAYERS)) == [["pipeline", "pipeline.errors"]]


def test_checker_names_a_module_in_no_layer(tmp_path):
    edges = write_fake(tmp_path, {**FAKE, "pipeline/stray.py": "import pipeline.errors\n"})
    assert upward_imports(edges, FAKE_LAYERS) == ["pipeline.stray is in no layer: add its unit to LAYERS"]


def test_cycles_reference():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
