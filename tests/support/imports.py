"""Reading the imports of the project's source with `ast`: every import, module-level or inside a function,
relative ones resolved. Used by tests/test_layers.py (the layer rule) and tests/test_dependencies.py (setup.py)."""
from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ROOT_PACKAGES = ("pipeline", "transforms", "model")


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of a source file under `root` (a package's `__init__` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool, modules: set[str]) -> list[tuple[str, int]]:
    """Every (imported module, line) in `source`, at any depth, relative imports resolved.

    `from a.b import c` is the module `a.b.c` when that is one of `modules` (a submodule), else `a.b`
    (c is a name defined in it).
    """
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((submodule if submodule in modules else target, node.lineno))
    return found


def all_imports(root: Path = REPO_ROOT, packages: Iterable[str] = ROOT_PACKAGES) -> list[tuple[str, int, str]]:
    """(importing module, line, imported module) for every import in the source files of `packages`."""
    packages = tuple(packages)
    paths = sorted(path for package in packages for path in (root / package).rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    found = set()
    for path in paths:
        module = module_name(path, root)
        for target, line in imported_modules(path.read_text(), module, path.name == "__init__.py", modules):
            found.add((module, line, target))
    return sorted(found)


def import_edges(root: Path = REPO_ROOT, packages: Iterable[str] = ROOT_PACKAGES) -> list[tuple[str, int, str]]:
    """(importing module, line, imported name) for every import of a project module in `packages`."""
    packages = tuple(packages)
    return [edge for edge in all_imports(root, packages) if edge[2].split(".")[0] in packages]
