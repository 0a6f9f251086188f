"""setup.py declares what the runtime code imports, and nothing it does not: every third-party module that
pipeline/, transforms/ or model/ imports (lazily or not) comes from a distribution in INSTALL_REQUIRES, and
every distribution there is imported directly. The Dataflow workers install exactly INSTALL_REQUIRES."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from functools import cache

from tests.support.imports import REPO_ROOT, ROOT_PACKAGES, all_imports

# Imported only on an optional path: jax under KERAS_BACKEND=jax (model/inference.py), not a dependency.
OPTIONAL = {"jax"}
# Namespace packages shared by many distributions: the distribution is found from the next name down.
NAMESPACES = {"google"}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def install_requires() -> set[str]:
    """The distribution names of setup.py's INSTALL_REQUIRES (extras and versions dropped), normalised."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "INSTALL_REQUIRES" for t in node.targets):
            return {normalise(re.split(r"[\[<>=!~ ;]", item, maxsplit=1)[0]) for item in ast.literal_eval(node.value)}
    raise AssertionError("setup.py has no INSTALL_REQUIRES")


@cache
def distributions_of(module: str) -> frozenset[str]:
    """The installed distributions that provide `module` (for a namespace package, its subpackage)."""
    top, _, rest = module.partition(".")
    candidates = importlib.metadata.packages_distributions().get(top, [])
    if top not in NAMESPACES or not rest:
        return frozenset(normalise(d) for d in candidates)
    prefix = f"{top}/{rest.split('.')[0]}/"
    return frozenset(
        normalise(d) for d in candidates
        if any(str(f).startswith(prefix) for f in importlib.metadata.distribution(d).files or ())
    )


def third_party_imports() -> dict[str, str]:
    """Imported module (the top name, or two names under a namespace package) → one place importing it."""
    found: dict[str, str] = {}
    for module, line, target in all_imports():
        parts = target.split(".")
        if parts[0] in ROOT_PACKAGES or parts[0] in sys.stdlib_module_names or parts[0] in OPTIONAL:
            continue
        name = ".".join(parts[:2]) if parts[0] in NAMESPACES else parts[0]
        found.setdefault(name, f"{module}:{line}")
    return found


def test_every_runtime_import_is_declared():
    declared = install_requires()
    undeclared = {
        name: (place, sorted(distributions_of(name)))
        for name, place in third_party_imports().items()
        if not distributions_of(name) & declared
    }
    assert undeclared == {}, "imported by runtime code but not in setup.py's INSTALL_REQUIRES"


def test_every_declared_distribution_is_imported():
    provided = set().union(*(distributions_of(name) for name in third_party_imports()))
    assert sorted(install_requires() - provided) == []


def test_the_checks_see_what_they_should():
    imports = third_party_imports()
    assert {"apache_beam", "numpy", "google.api_core", "google_crc32c", "affine"} <= set(imports)
    assert distributions_of("google.api_core") == {"google-api-core"}
    assert distributions_of("google.protobuf") == {"protobuf"}
    assert "rio_cogeo" not in imports and "rio-cogeo" not in install_requires()  # the tests' COG validator
