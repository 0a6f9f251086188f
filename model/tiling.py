"""Exact large-tile inference: one (grid, year) mosaic, tiles of any core size, the derived halo (DESIGN §1.5).

Record-wise inference (what the pipeline's handler does) runs the model on each (P + K)² record and
keeps its P² core: 4x the core pixels for the published geometry (P = K = 256). Here the records of
one (grid, year) are assembled into one mosaic — every core, plus the outer K/2 buffer ring of the edge
records — and the model runs on tiles of a chosen core size carrying the network's derived halo
(`model.receptive_field.halo`), then the cores are stitched back. The classes and probabilities are
the record-wise ones, bit for bit in float32, because:

- the network's pooling grid is anchored at each record's origin, and record origins are P apart in
  the mosaic (P a multiple of the grid), so one grid, anchored at the mosaic origin, serves all;
  every tile window starts on it;
- a core's outputs depend only on inputs within the receptive margin of its grid-aligned cells; the
  tile window covers that margin, and so does each record whenever the export buffer (K/2) is at least
  the halo — when it is not, `tiling_unavailable` says why and the caller infers record-wise;
- inside that margin the mosaic holds the record's own pixels (Earth Engine writes the same value for
  a pixel in every record that contains it); where a record is missing, the neighbours' buffers fill
  its place, which is what those neighbours saw record-wise.

Windows reaching past the mosaic are padded with zeros (not observed), outside every core's margin.
Memory: a C9 grid-year mosaic is ~300 MB of float32 bands; `tile_memory` states the bytes of one batch.

Only numpy and the model's own call are used (no TensorFlow, no Beam at import), so the same code runs
under any Keras backend, with the compiled inference function of `model.inference`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from model import receptive_field
from pipeline.elements import ExportGeometry, ExportPatch
from pipeline.elements import ClassifiedPatch
from pipeline.errors import UserError
from pipeline.method.tiles import classify_patch

Predict = Callable[[np.ndarray], np.ndarray]
"""A batch (B, H, W, bands) float32 -> probabilities (B, H, W, 1) (or (B, H, W)) as numpy."""


@dataclass(frozen=True)
class Mosaic:
    """The observed mosaic of one (grid, year): cores plus the outer buffer ring, in mosaic pixels.

    Mosaic pixel (0, 0) is the top-left of patch 0's record (K/2 up and left of the patch grid);
    the cores cover [buffer, buffer + rows * P) x [buffer, buffer + cols * P). `present` lists the
    patch indices that were read (only those are classified, as record-wise).
    """

    geometry: ExportGeometry
    bands: np.ndarray  # (H, W, B) float32, not-observed pixels 0
    observed: np.ndarray  # (H, W) bool
    present: tuple[int, ...]

    @property
    def buffer(self) -> int:
        """K/2: the pixels of the outer ring around the cores."""
        return self.geometry.kernel // 2

    @property
    def core_shape(self) -> tuple[int, int]:
        """(rows * P, cols * P): the pixels of the patch grid."""
        return self.geometry.height, self.geometry.width


def mosaic_bytes(geometry: ExportGeometry, num_bands: int) -> int:
    """Bytes of the float32 bands and bool mask of a (grid, year) mosaic with this geometry."""
    h = geometry.height + geometry.kernel
    w = geometry.width + geometry.kernel
    return h * w * (4 * num_bands + 1)


def assemble_mosaic(geometry: ExportGeometry, patches: Iterable[ExportPatch]) -> Mosaic:
    """The (grid, year) mosaic from its export records (ExportPatch, kernel buffer kept).

    Every record is pasted whole first, then every core on top: the cores win, and the buffers fill
    the outer ring and the place of any missing record. ValueError (naming grid, year and patch) for a
    record of another export, kernel or size than `geometry` says.
    """
    kernel, size = geometry.kernel, geometry.patch_size
    side = size + kernel
    bands = observed = None
    half = kernel // 2
    present: list[ExportPatch] = []
    where = f"grid {geometry.grid} year {geometry.year}"
    for patch in patches:
        if (patch.grid, patch.year) != (geometry.grid, geometry.year):
            raise ValueError(f"{where}: patch {patch.index} belongs to grid {patch.grid} year {patch.year}")
        if patch.kernel != kernel or patch.bands.shape[:2] != (side, side):
            raise ValueError(
                f"{where}: patch {patch.index} is a {patch.bands.shape[0]}x{patch.bands.shape[1]} record with kernel "
                f"{patch.kernel}, expected {side}x{side} (patch {size} + kernel {kernel})"
            )
        if (patch.row, patch.col) != geometry.patch_position(patch.index):
            raise ValueError(f"{where}: patch {patch.index} is at ({patch.row}, {patch.col}), not {geometry.patch_position(patch.index)}")
        if bands is None:
            shape = (geometry.height + kernel, geometry.width + kernel)
            bands = np.zeros(shape + patch.bands.shape[2:], dtype=np.float32)
            observed = np.zeros(shape, dtype=bool)
        elif patch.bands.shape[2:] != bands.shape[2:]:
            raise ValueError(f"{where}: patch {patch.index} has {patch.bands.shape[2:]} bands, others {bands.shape[2:]}")
        top, left = patch.row * size, patch.col * size
        bands[top : top + side, left : left + side] = patch.bands
        observed[top : top + side, left : left + side] = patch.observed
        present.append(patch)
    if bands is None:
        raise ValueError(f"{where}: no records to assemble")
    for patch in present:
        top, left = patch.row * size + half, patch.col * size + half
        core_bands, core_observed = patch.core()
        bands[top : top + size, left : left + size] = core_bands
        observed[top : top + size, left : left + size] = core_observed
    np.nan_to_num(bands, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return Mosaic(geometry, bands, observed, tuple(sorted(p.index for p in present)))


def tiling_unavailable(geometry: ExportGeometry, model) -> str | None:
    """Why large-tile inference cannot reproduce record-wise inference on this export, or None if it can.

    Needs: the patch size on the network's pooling grid (so every record shares one grid) and an
    export buffer covering the network's receptive margin around each record's core (K/2 >= halo on
    the grid). The reason names the grid, year and sizes, for the run's log and summary.
    """
    align = receptive_field.pooling_alignment(model)
    before, after = receptive_field.receptive_margin(model)
    halo = receptive_field.halo(model)
    k, p = geometry.kernel, geometry.patch_size
    where = f"grid {geometry.grid} year {geometry.year}"
    if p % align or (p + k) % align:
        return f"{where}: patch {p} / record {p + k} px are not multiples of the network's {align}-px pooling grid"
    half = k // 2
    if (half // align) * align < before or k - (-(-half // align) * align) < after:
        return (
            f"{where}: the export buffer (kernel {k}, {half} px per side) is smaller than the network's halo "
            f"({halo} px on its {align}-px grid); inferring record-wise"
        )
    return None


@dataclass(frozen=True)
class Tile:
    """One tile: its window (top, left, fixed size) and core (top, left, height, width), mosaic pixels."""

    window_top: int
    window_left: int
    core_top: int
    core_left: int
    core_height: int
    core_width: int


@dataclass(frozen=True)
class TilePlan:
    """Tiles of one mosaic: all windows the same size (one compiled shape), cores partitioning the grid."""

    halo: int
    align: int
    window: tuple[int, int]
    tiles: tuple[Tile, ...]

    @property
    def inferred_pixels(self) -> int:
        """Pixels the model runs on for this plan (windows, halos included)."""
        return len(self.tiles) * self.window[0] * self.window[1]


def _axis_tiles(start: int, stop: int, core: int, halo: int, align: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(window size, [(window start, core start, core length)]) along one axis, windows on the grid."""
    floor = lambda v: (v // align) * align
    ceil = lambda v: -(-v // align) * align
    out = []
    size = 0
    for cs in range(start, stop, core):
        ce = min(cs + core, stop)
        ws, we = floor(cs) - halo, ceil(cs + core) + halo  # full-core window even for the last tile
        size = max(size, we - ws)
        out.append((ws, cs, ce - cs))
    return size, out


def plan_tiles(mosaic: Mosaic, model, tile: int | None) -> TilePlan:
    """Cut the mosaic's cores into tiles of core `tile` px (None: the whole grid as one tile).

    `tile` must be a multiple of the network's pooling grid; each window reaches the derived halo
    beyond its core and starts on the grid (anchored at the mosaic origin, as every record is).
    """
    align = receptive_field.pooling_alignment(model)
    halo = receptive_field.halo(model)
    rows, cols = mosaic.core_shape
    b = mosaic.buffer
    if tile is None:
        core_r, core_c = -(-rows // align) * align, -(-cols // align) * align
    else:
        if tile <= 0 or tile % align:
            raise ValueError(f"inference tile {tile} must be a positive multiple of {align} (the network's pooling grid)")
        core_r, core_c = min(tile, -(-rows // align) * align), min(tile, -(-cols // align) * align)
    height, along_rows = _axis_tiles(b, b + rows, core_r, halo, align)
    width, along_cols = _axis_tiles(b, b + cols, core_c, halo, align)
    tiles = tuple(
        Tile(wt, wl, ct, cl, ch, cw) for wt, ct, ch in along_rows for wl, cl, cw in along_cols
    )
    return TilePlan(halo, align, (height, width), tiles)


def _window(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """array[top:top+height, left:left+width], zero where it lies outside the array."""
    out = np.zeros((height, width) + array.shape[2:], dtype=array.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = array[r0:r1, c0:c1]
    return out


def infer_mosaic(predict: Predict, mosaic: Mosaic, plan: TilePlan, batch_size: int = 4) -> np.ndarray:
    """Probabilities (rows * P, cols * P) float32 of the patch grid, tile by tile, cores stitched.

    Tiles whose core holds no observed pixel are not inferred (0 there: every such pixel is 255 in
    the classes anyway). `batch_size` tiles go to `predict` at once, all of the plan's window size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    b = mosaic.buffer
    out = np.zeros(mosaic.core_shape, dtype=np.float32)
    wanted = [t for t in plan.tiles if mosaic.observed[t.core_top : t.core_top + t.core_height, t.core_left : t.core_left + t.core_width].any()]
    h, w = plan.window
    for start in range(0, len(wanted), batch_size):
        group = wanted[start : start + batch_size]
        batch = np.stack([_window(mosaic.bands, t.window_top, t.window_left, h, w) for t in group])
        probabilities = np.asarray(predict(batch), dtype=np.float32).reshape(len(group), h, w)
        for t, p in zip(group, probabilities):
            r, c = t.core_top - t.window_top, t.core_left - t.window_left
            out[t.core_top - b : t.core_top - b + t.core_height, t.core_left - b : t.core_left - b + t.core_width] = (
                p[r : r + t.core_height, c : c + t.core_width]
            )
    return out


def classify_mosaic(mosaic: Mosaic, probability: np.ndarray, threshold: float) -> list[ClassifiedPatch]:
    """One ClassifiedPatch per patch that was read, cut from the stitched probabilities (as record-wise)."""
    g = mosaic.geometry
    size, b = g.patch_size, mosaic.buffer
    out = []
    for index in mosaic.present:
        row, col = g.patch_position(index)
        window = (slice(row * size, (row + 1) * size), slice(col * size, (col + 1) * size))
        observed = mosaic.observed[b + row * size : b + (row + 1) * size, b + col * size : b + (col + 1) * size]
        classes, scaled = classify_patch(probability[window], observed, 0, threshold)
        out.append(ClassifiedPatch(g.grid, g.year, index, row, col, classes, scaled))
    return out


def classify_large_tiles(
    predict: Predict, model, geometry: ExportGeometry, patches: Iterable[ExportPatch], threshold: float,
    tile: int | None = 1024, batch_size: int = 4, *, memory_bytes: int | None = None, precision: str = "float32",
    on_plan: Callable[[TilePlan], None] | None = None,
) -> list[ClassifiedPatch]:
    """Classify one (grid, year) by large tiles: assemble, plan, infer, stitch, classify per patch.

    `model` gives the architecture (halo, grid); `predict` runs it (e.g. `model.inference.make_inference_fn`).
    With `memory_bytes` (the pipeline's --inference_memory_gb), at most `largest_batch` tiles of the plan's
    window go to `predict` at once, and a UserError says so when not even one fits. `on_plan` is given the
    plan once its tiles are inferred (the pipeline counts the pixels inferred). ValueError with
    `tiling_unavailable`'s reason when this export cannot be tiled exactly.
    """
    reason = tiling_unavailable(geometry, model)
    if reason:
        raise ValueError(reason)
    mosaic = assemble_mosaic(geometry, patches)
    plan = plan_tiles(mosaic, model, tile)
    if memory_bytes is not None:
        fits = largest_batch(model, plan.window, mosaic.bands.shape[-1], memory_bytes, precision)
        if fits < 1:
            raise UserError(f"grid {geometry.grid} year {geometry.year}: one {plan.window[0]}x{plan.window[1]} tile needs more "
                            f"than --inference_memory_gb {memory_bytes / (1 << 30):g}; choose a smaller --inference_tile")
        batch_size = max(1, min(batch_size, fits))
    probability = infer_mosaic(predict, mosaic, plan, batch_size)
    if on_plan is not None:
        on_plan(plan)
    return classify_mosaic(mosaic, probability, threshold)


def tile_memory(model, window: int | tuple[int, int], batch_size: int, num_bands: int, precision: str = "float32") -> dict[str, int]:
    """Bytes one batch of tiles needs: input, output, and an upper bound of the activations.

    The activation bound sums every layer's output (`receptive_field.activation_bytes`) in the
    precision's compute dtype (2 bytes for bfloat16/float16); a compiler keeps far fewer alive at
    once, but the bound lets the caller choose tile and batch for a card's memory without trying.
    """
    h, w = (window, window) if isinstance(window, int) else window
    element = 4 if precision == "float32" else 2
    inputs = batch_size * h * w * num_bands * 4
    outputs = batch_size * h * w * 4
    activations = batch_size * receptive_field.activation_bytes(model, h, w, element)
    return {"input": inputs, "output": outputs, "activations": activations, "total": inputs + outputs + activations}


def largest_batch(model, window: int | tuple[int, int], num_bands: int, budget_bytes: int, precision: str = "float32") -> int:
    """The largest batch whose `tile_memory` total fits `budget_bytes` (0 when not even one tile fits)."""
    one = tile_memory(model, window, 1, num_bands, precision)["total"]
    return int(budget_bytes // one)
