"""A downsampled false-colour composite (SWIR1 / NIR / Red) of one grid-year's input mosaic, for quicklooks.

The report draws the classes over the imagery the model saw. The run's summary records the exports root,
so the composite is read from the same Earth Engine export the pipeline read, with the project's reader
(`pipeline.io.export_reader.read_export`), patch by patch: each patch core is reduced by block means over its
observed pixels as it arrives, so a whole grid (thousands of pixels a side) never sits in memory at full
resolution. Mining shows bright in SWIR1 (red on screen), vegetation in NIR (green), water dark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.contract import DEFAULT_NODATA
from pipeline.elements import ExportGeometry, ExportPatch
from pipeline.io.export_layout import export_dir_of
from pipeline.io.export_reader import read_export

COMPOSITE_BANDS = ("swir1", "nir", "red")  # display red, green, blue


@dataclass
class Composite:
    """A reduced composite: `rgb` (rows, cols, 3) floats 0–1 stretched, `observed` (rows, cols) bool."""

    rgb: np.ndarray
    observed: np.ndarray
    factor: int


def block_factor(shape: tuple[int, int], max_side: int, patch_size: int | None = None) -> int:
    """Smallest reduction factor that brings `shape` to at most `max_side` pixels a side.

    With `patch_size`, the smallest factor at least that large that divides the patch size, so that every
    patch reduces on its own into whole output pixels.
    """
    factor = max(1, -(-max(shape) // max(1, max_side)))
    if patch_size:
        divisors = [d for d in range(factor, patch_size + 1) if patch_size % d == 0]
        factor = divisors[0] if divisors else patch_size
    return factor


def block_mean(values: np.ndarray, observed: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows/f, cols/f, bands) means of the observed pixels of each block, and where a block had any.

    `values` is (rows, cols, bands) with rows and cols multiples of `factor`.
    """
    rows, cols, bands = values.shape
    r, c = rows // factor, cols // factor
    weight = observed.reshape(r, factor, c, factor).sum(axis=(1, 3)).astype(np.float64)
    masked = np.where(observed[..., None], values, 0.0).astype(np.float64)
    sums = masked.reshape(r, factor, c, factor, bands).sum(axis=(1, 3))
    seen = weight > 0
    means = np.zeros((r, c, bands))
    means[seen] = sums[seen] / weight[seen][:, None]
    return means, seen


def stretch(values: np.ndarray, seen: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Each band linearly stretched between its `low` and `high` percentiles of the seen pixels, to 0–1."""
    out = np.zeros(values.shape)
    if not seen.any():
        return out
    for band in range(values.shape[2]):
        lo, hi = np.percentile(values[..., band][seen], [low, high])
        span = hi - lo if hi > lo else 1.0
        out[..., band] = np.clip((values[..., band] - lo) / span, 0.0, 1.0)
    return out


def read_composite(
    exports_root: str,
    grid: str,
    year: int,
    shape: tuple[int, int],
    max_side: int = 500,
    nodata_values=DEFAULT_NODATA,
) -> Composite | None:
    """The composite of `{exports_root}/{grid}/{year}` cropped to `shape` (the COG's rows, cols), or None.

    None when the export is missing or holds no readable patch (the quicklook then shows the classes
    alone); bad records are simply left out (shown as not observed), the run's dead-letter file lists them.
    """
    canvas = observed_canvas = None
    factor = geometry = None
    for event in read_export(export_dir_of(exports_root, grid, year), grid, year, COMPOSITE_BANDS, nodata_values):
        if isinstance(event, ExportPatch):
            bands, observed = event.core()
            size = bands.shape[0]
            if canvas is None:
                factor = block_factor(shape, max_side, size)
                rows = -(-shape[0] // size) * size // factor
                cols = -(-shape[1] // size) * size // factor
                canvas = np.zeros((rows + size // factor, cols + size // factor, 3))
                observed_canvas = np.zeros(canvas.shape[:2], bool)
            means, seen = block_mean(bands, observed, factor)
            top, left = event.row * size // factor, event.col * size // factor
            if top + means.shape[0] <= canvas.shape[0] and left + means.shape[1] <= canvas.shape[1]:
                canvas[top:top + means.shape[0], left:left + means.shape[1]] = means
                observed_canvas[top:top + means.shape[0], left:left + means.shape[1]] = seen
        elif isinstance(event, ExportGeometry):
            geometry = event
    if canvas is None or geometry is None:
        return None
    rows, cols = -(-shape[0] // factor), -(-shape[1] // factor)
    canvas, observed_canvas = canvas[:rows, :cols], observed_canvas[:rows, :cols]
    return Composite(stretch(canvas, observed_canvas), observed_canvas, factor)
