"""Pure functions behind the pipeline's per-patch and per-tile steps.

A *patch* is one (grid, year, patch index) of an Earth Engine export; a *tile* is one
(grid, patch row, patch column) across all years. Classification happens per patch, the temporal
filters per tile, the spatial filter per tile with a halo of neighbour pixels, and writing per
(grid, year). These functions hold the logic; the Beam transforms only move data between them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.contract import MINING, NOT_OBSERVED, PROBABILITY_MAX, crop_buffer, origin_year_lookup
from pipeline.elements import ClassifiedPatch, ExportGeometry, GridYearKey, HaloStrip, TileSeries, YearTile
from pipeline.method.filters import (
    FilterParams,
    apply_temporal_chain,
    frequency_filter,
    spatial_filter_tile,
)


def probability_cutoff(threshold: float) -> int:
    """The smallest stored probability (p × 255, uint8) that is mining at `threshold`: ceil(255 × threshold).

    Classes are computed from the stored uint8 probability, never from the model's float, so that a run that
    re-uses a raw result (`{output}/raw`, which keeps only the uint8) classifies every pixel exactly as the run
    that inferred it. At the default 0.5 this is the float rule itself: 255 × 0.5 = 127.5, and
    rint(255 p) ≥ 128 ⟺ 255 p ≥ 127.5 ⟺ p ≥ 0.5. At other thresholds the two rules can differ only for p
    within 1/510 of the threshold (tests/test_update.py shows both).
    """
    return int(np.ceil(round(255.0 * float(threshold), 9)))


def classes_at_threshold(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Classes 0 / 1 / 255 from a stored probability (uint8 p × 255, 255 not observed) at a threshold."""
    probability = np.asarray(probability)
    classes = np.where(probability >= probability_cutoff(threshold), MINING, 0).astype(np.uint8)
    classes[probability == NOT_OBSERVED] = NOT_OBSERVED
    return classes


def quantise_probability(probability: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Model probabilities → uint8 p × 255 rounded, capped at 254, 255 where not observed (DESIGN.md §2)."""
    scaled = np.clip(np.rint(np.asarray(probability, dtype=np.float32) * 255.0), 0, PROBABILITY_MAX).astype(np.uint8)
    scaled[~observed] = NOT_OBSERVED
    return scaled


def classify_patch(probability: np.ndarray, observed: np.ndarray, kernel: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Model probabilities (side, side) → (classes 0/1/255, probability uint8) of the unbuffered patch.

    The kernel buffer is cropped first; the probability is stored as p × 255 (capped at 254, so that 255
    keeps meaning "not observed"), and a pixel is mining where that stored value is at or above the
    threshold (`classes_at_threshold`: the same rule a re-used raw result is classified with); pixels
    that were not observed stay 255 in both outputs, whatever the model said there.
    """
    probability = crop_buffer(np.asarray(probability, dtype=np.float32).reshape(observed.shape), kernel)
    observed = crop_buffer(observed, kernel)
    scaled = quantise_probability(probability, observed)
    return classes_at_threshold(scaled, threshold), scaled


def patches_of_probability(geometry: ExportGeometry, probability: np.ndarray, threshold: float) -> list[ClassifiedPatch]:
    """The classified patches of a grid-year's stored probability raster (uint8 p × 255, 255 not observed),
    classes at `threshold`: the same elements inference emits, so a re-used raw result flows through the
    filters and the writer unchanged."""
    size = geometry.patch_size
    patches = []
    for index in range(geometry.total_patches):
        row, col = geometry.patch_position(index)
        scaled = np.array(probability[row * size:(row + 1) * size, col * size:(col + 1) * size], dtype=np.uint8)
        patches.append(ClassifiedPatch(geometry.grid, geometry.year, index, row, col, classes_at_threshold(scaled, threshold), scaled))
    return patches


def not_observed_patch(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes and probability of a patch with no observed pixel (no inference needed)."""
    empty = np.full((side, side), NOT_OBSERVED, dtype=np.uint8)
    return empty, empty.copy()


def stack_tile_years(
    grid: str, row: int, col: int, years: Sequence[int], patches: Iterable[ClassifiedPatch], patch_size: int, keep_probability: bool
) -> TileSeries:
    """Stack one tile's patches into (years, P, P), with 255 for every year that has no patch."""
    classes = np.full((len(years), patch_size, patch_size), NOT_OBSERVED, dtype=np.uint8)
    probability = np.full_like(classes, NOT_OBSERVED) if keep_probability else None
    position = {year: i for i, year in enumerate(years)}
    for patch in patches:
        if patch.year not in position:
            continue
        i = position[patch.year]
        if patch.classes.shape != (patch_size, patch_size):
            raise ValueError(f"grid {grid} year {patch.year} patch {patch.index}: {patch.classes.shape} is not {patch_size}×{patch_size}")
        classes[i] = patch.classes
        if probability is not None:
            probability[i] = patch.probability
    return TileSeries(grid, row, col, tuple(years), classes, None, probability, {})


def mining_per_row(stack: np.ndarray) -> np.ndarray:
    """Mining pixels in each row of each year: (years, rows) int32, so true row areas can weigh them."""
    return np.count_nonzero(stack == MINING, axis=2).astype(np.int32)


def temporal_filter_tile(tile: TileSeries, params: FilterParams, keep_origin: bool) -> TileSeries:
    """Gap fill and temporal filter of one tile (the per-pixel half of DESIGN.md §3)."""
    rows: dict[str, np.ndarray] = {}
    classes, origin, _ = apply_temporal_chain(tile.classes, params, on_stage=lambda stage, stack: rows.__setitem__(stage, mining_per_row(stack)))
    return dataclasses.replace(tile, classes=classes, origin=origin if keep_origin else None, mining_rows=rows)


def halo_strips(tile: TileSeries, halo: int) -> list[tuple[tuple[int, int], HaloStrip]]:
    """The parts of this tile that other tiles need as context: ((row, col) of the receiver, strip).

    A receiver's padded window reaches `halo` pixels beyond its own edges; every tile sends it the
    pixels that fall inside that window (with tiles smaller than the halo, that is more than the eight
    next-door tiles). A receiver that does not exist simply never gets its strip.
    """
    size_r, size_c = tile.classes.shape[1:]
    reach_r, reach_c = -(-halo // size_r), -(-halo // size_c)
    out = []
    for dr in range(-reach_r, reach_r + 1):
        for dc in range(-reach_c, reach_c + 1):
            if (dr, dc) == (0, 0):
                continue
            rows = _overlap(tile.row, tile.row + dr, size_r, halo)
            cols = _overlap(tile.col, tile.col + dc, size_c, halo)
            if rows is None or cols is None:
                continue
            strip = HaloStrip(tile.row, tile.col, rows, cols, tile.classes[:, rows, cols].copy())
            out.append(((tile.row + dr, tile.col + dc), strip))
    return out


def _overlap(source: int, target: int, size: int, halo: int) -> slice | None:
    """Rows (or columns) of tile `source`, in its own coordinates, inside tile `target`'s padded window."""
    start = max(source * size, target * size - halo)
    stop = min((source + 1) * size, (target + 1) * size + halo)
    if start >= stop:
        return None
    return slice(start - source * size, stop - source * size)


def pad_with_halo(tile: TileSeries, strips: Iterable[HaloStrip], halo: int) -> tuple[np.ndarray, np.ndarray]:
    """The tile's classes with `halo` pixels of context around it, and where that context exists.

    Returns (padded classes, inside): `inside` (bool, rows × cols of the padded window) is true over
    the tile and every strip received, false where no tile sent one — beyond the raster's edge, since
    every position of an export's raster has a tile. Those pixels hold 255 but must be ignored, not
    voted with: in ``c9-code`` a not-observed pixel votes in the 3×3 mode, one outside the raster does not.
    """
    years, rows, cols = tile.classes.shape
    padded = np.full((years, rows + 2 * halo, cols + 2 * halo), NOT_OBSERVED, dtype=np.uint8)
    inside = np.zeros(padded.shape[1:], dtype=bool)
    padded[:, halo: halo + rows, halo: halo + cols] = tile.classes
    inside[halo: halo + rows, halo: halo + cols] = True
    for strip in strips:
        # Global pixel position of the strip, relative to the top-left of this tile's padded window.
        top = (strip.source_row - tile.row) * rows + strip.rows.start + halo
        left = (strip.source_col - tile.col) * cols + strip.cols.start + halo
        height, width = strip.classes.shape[1:]
        padded[:, top: top + height, left: left + width] = strip.classes
        inside[top: top + height, left: left + width] = True
    return padded, inside


def spatial_frequency_tile(tile: TileSeries, strips: Iterable[HaloStrip], params: FilterParams, spatial: bool) -> TileSeries:
    """Spatial filter (exact across tile edges, from the neighbours' strips) then frequency filter of one tile."""
    rows = dict(tile.mining_rows)
    classes = tile.classes
    if spatial:
        halo = params.spatial_halo
        padded, inside = pad_with_halo(tile, strips, halo)
        classes = spatial_filter_tile(
            padded, (halo,) * 4, params.mode, params.min_component_size, params.spatial_window, inside
        )
    rows["spatial"] = mining_per_row(classes)
    classes = frequency_filter(classes, params.mode, params.frequency_cut_percent)
    rows["frequency"] = mining_per_row(classes)
    return dataclasses.replace(tile, classes=classes, mining_rows=rows)


def split_years(tile: TileSeries) -> list[tuple[GridYearKey, YearTile]]:
    """One (GridYearKey, YearTile) per year of a filtered tile."""
    out = []
    for i, year in enumerate(tile.years):
        out.append((GridYearKey(tile.grid, year), YearTile(
            grid=tile.grid,
            year=year,
            row=tile.row,
            col=tile.col,
            classes=tile.classes[i],
            origin=None if tile.origin is None else tile.origin[i],
            probability=None if tile.probability is None else tile.probability[i],
            mining_rows={stage: values[i] for stage, values in tile.mining_rows.items()},
        )))
    return out


def assemble_year(tiles: Iterable[YearTile], patch_rows: int, patches_per_row: int, patch_size: int, years: Sequence[int]) -> dict[str, np.ndarray]:
    """Place one (grid, year)'s tiles into whole rasters: classes, and origin/probability where carried.

    Tiles that never arrived stay 255. Origin indices become origin years − 1900 (255 none).
    """
    shape = (patch_rows * patch_size, patches_per_row * patch_size)
    rasters: dict[str, np.ndarray] = {"classes": np.full(shape, NOT_OBSERVED, dtype=np.uint8)}
    year_lookup = origin_year_lookup(years)
    for tile in tiles:
        r0, c0 = tile.row * patch_size, tile.col * patch_size
        window = (slice(r0, r0 + patch_size), slice(c0, c0 + patch_size))
        rasters["classes"][window] = tile.classes
        for name, values in (("origin", tile.origin), ("probability", tile.probability)):
            if values is None:
                continue
            if name not in rasters:
                rasters[name] = np.full(shape, NOT_OBSERVED, dtype=np.uint8)
            rasters[name][window] = year_lookup[values] if name == "origin" else values
    return rasters


def mining_rows_of_raster(tiles: Iterable[YearTile], patch_rows: int, patch_size: int) -> dict[str, np.ndarray]:
    """Mining pixels per raster row of a (grid, year) after each stage, summed over its tiles."""
    total: dict[str, np.ndarray] = {}
    for tile in tiles:
        for stage, values in tile.mining_rows.items():
            rows = total.setdefault(stage, np.zeros(patch_rows * patch_size, dtype=np.int64))
            rows[tile.row * patch_size: tile.row * patch_size + len(values)] += values
    return total
