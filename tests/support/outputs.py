"""Reading a run's outputs back, for byte-for-byte comparisons between runs."""
from __future__ import annotations

import os


def files(folder, suffix: str = "") -> dict[str, bytes]:
    """Every file under a folder whose name ends with `suffix` (all by default), by path relative to it, sorted."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(suffix):
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, folder)] = handle.read()
    return dict(sorted(found.items()))


def tifs(folder) -> dict[str, bytes]:
    """Every .tif under a folder (classification COGs and raw results), by path relative to it."""
    return files(folder, ".tif")
