"""Random class stacks that stress the filters where tiling and the c9-code quirks matter.

Small mining blobs touching the raster's edge and the edge of never-observed areas (255 in every
year), on a sparse background with scattered not-observed years: the places where "not observed"
(which votes in ``c9-code``) and "outside the raster" (which does not) must be told apart.
"""
from __future__ import annotations

import numpy as np


def edge_blob_stack(rng: np.random.Generator, years: int, rows: int, cols: int, blobs: int = 8,
                    density: float = 0.1, gaps: float = 0.1) -> np.ndarray:
    """A (years, rows, cols) uint8 stack of 0 / 1 / 255 with blobs at raster and never-observed edges."""
    stack = np.where(rng.random((years, rows, cols)) < density, 1, 0).astype(np.uint8)
    stack[rng.random(stack.shape) < gaps] = 255
    # A never-observed rectangle, often touching a raster edge.
    r0, c0 = rng.integers(0, rows), rng.integers(0, cols)
    r1, c1 = min(rows, r0 + rng.integers(2, rows + 1)), min(cols, c0 + rng.integers(2, cols + 1))
    stack[:, r0:r1, c0:c1] = 255
    anchors = [(0, rng.integers(0, cols)), (rows - 1, rng.integers(0, cols)), (rng.integers(0, rows), 0),
               (rng.integers(0, rows), cols - 1), (r0 - 1, c0), (r1, c1 - 1), (r0, c0 - 1), (r1 - 1, c1)]
    for k in range(blobs):
        r, c = anchors[k % len(anchors)]
        height, width = rng.integers(1, 4), rng.integers(1, 4)
        r, c = int(np.clip(r - rng.integers(0, height), 0, rows - 1)), int(np.clip(c - rng.integers(0, width), 0, cols - 1))
        t = rng.integers(0, years) if rng.random() < 0.5 else slice(None)
        block = stack[t, r: r + height, c: c + width]
        block[block != 255] = 1
        if rng.random() < 0.5:
            block[...] = 1
    return stack


def series(text: str) -> np.ndarray:
    """'01..1' → a (years, 1, 1) stack."""
    return np.array([255 if ch == "." else int(ch) for ch in text], dtype=np.uint8)[:, None, None]


def text(stack: np.ndarray) -> str:
    """(years, 1, 1) stack → '01..1' (the inverse of `series`)."""
    return "".join("." if v == 255 else str(v) for v in stack[:, 0, 0])


# DESIGN.md §3, "Worked examples": input, appendix after gap fill + temporal, c9-code after the same.
WORKED = [
    ("0000011111", "0000011111", "0000001111"),
    ("001000", "000000", "000000"),
    ("110111", "111111", "111111"),
    ("0101010", "0000000", "0000100"),
    ("01..10", "011110", "011111"),
    ("0011.", "00111", "00011"),
    ("..111", "11111", "11111"),
]
