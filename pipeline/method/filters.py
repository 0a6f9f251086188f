"""The post-classification filter engine of DESIGN.md §3, as pure numpy over annual class stacks.

A stack is a (years, rows, cols) uint8 array of 0 (not mining), 1 (mining) and 255 (not observed).
Every filter exists in two modes:

- ``appendix``: what the MapBiomas Collection 9 appendix describes, made precise;
- ``c9-code``: what the published Collection 9 scripts do, quirks included, to reproduce their maps.

The functions loop over years (at most a few dozen) and never over pixels, so their cost is a handful
of whole-image numpy operations per year. They are the single implementation used by the
`mining-mapper filter` command and by the Beam transforms.

``c9-code`` is literal (DESIGN.md §3, last paragraph): in the published chain "not observed" is a
class value like the others (50), so in this mode 255 *is* a value. Two not-observed years agree in
both temporal passes (``y[t-1] = y[t+1] = 255`` writes 255), not-observed pixels vote in the 3×3 mode
(ties to the smaller of 0 < 1 < 255, as 0 < 30 < 50), and the first gap-fill step neither reads nor
writes the last year (its back-fill from index 32 on stops before the last year too, as the script's
loop does); the last year is filled only by the temporal pass 2. tests/c9_published_scripts.py
transcribes the published scripts line by line and the tests compare this engine with it.

Decisions where DESIGN.md is silent (documented here once):
- The ``c9-code`` frequency rule divides by n − 1; with a single year (where the script would divide
  by zero) it removes nothing.
- Pixels outside the raster never vote in the mode. A tile's spatial filter can be told which pixels
  of its padded window lie inside the raster (``inside``); the Beam tiles treat a neighbour tile that
  does not exist as outside the raster, so tiled equals whole-raster in both modes.
- The published frequency script writes 0 wherever the result is not mining, not-observed pixels
  included (``unmask(0)``); this engine keeps 255 there, as DESIGN.md §2's outputs carry "never observed"
  as nodata. Mining pixels are the same.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy import ndimage

from pipeline.contract import MINING, NO_ORIGIN, NOT_MINING, NOT_OBSERVED

Mode = Literal["appendix", "c9-code"]
MODES: tuple[str, ...] = ("appendix", "c9-code")
STAGES: tuple[str, ...] = ("input", "gap_fill", "temporal", "spatial", "frequency")

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass(frozen=True)
class FilterParams:
    """Parameters of the filter chain (DESIGN.md §3), with the published defaults."""

    mode: Mode = "appendix"
    min_component_size: int = 10
    spatial_window: int = 3
    backfill_limit: int = 3
    frequency_cut_percent: float = 10.0
    c9_backfill_from_index: int = 32

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"filter mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.min_component_size < 1:
            raise ValueError(f"min_component_size must be at least 1, not {self.min_component_size}")
        if self.spatial_window < 1 or self.spatial_window % 2 == 0:
            raise ValueError(f"spatial_window must be a positive odd number, not {self.spatial_window}")
        if self.backfill_limit < 0:
            raise ValueError(f"backfill_limit must be 0 or more, not {self.backfill_limit}")
        if not 0 <= self.frequency_cut_percent <= 100:
            raise ValueError(f"frequency_cut_percent must be within 0–100, not {self.frequency_cut_percent}")
        if self.c9_backfill_from_index < 0:
            raise ValueError(f"c9_backfill_from_index must be 0 or more, not {self.c9_backfill_from_index}")

    @classmethod
    def from_arguments(cls, arguments, mode: str) -> FilterParams:
        """Parameters from parsed arguments named like the fields (the filter command's and the
        pipeline options' share these names; only the mode's option differs). ValueError when invalid."""
        return cls(
            mode=mode,
            min_component_size=arguments.min_component_size,
            spatial_window=arguments.spatial_window,
            backfill_limit=arguments.backfill_limit,
            frequency_cut_percent=arguments.frequency_cut,
            c9_backfill_from_index=arguments.c9_backfill_from_index,
        )

    @property
    def spatial_halo(self) -> int:
        """Pixels of context a tile needs on each side for the spatial filter to be exact."""
        return spatial_halo(self.min_component_size, self.spatial_window)

    def as_tags(self) -> dict[str, str]:
        """The parameters as GeoTIFF tags (strings)."""
        return {f"filter_{k}": str(v) for k, v in dataclasses.asdict(self).items()}

    def as_dict(self) -> dict[str, object]:
        """The parameters with their types (numbers as numbers), for the run summary."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ChainResult:
    """What the chain produced: the filtered stack, the gap-fill origin and mining pixels per stage."""

    classes: np.ndarray
    origin: np.ndarray | None
    mining_pixels: dict[str, np.ndarray]


def validate_stack(stack: np.ndarray, name: str = "stack") -> None:
    """Raise ValueError unless `stack` is a (years, rows, cols) uint8 array of 0 / 1 / 255."""
    if not isinstance(stack, np.ndarray) or stack.ndim != 3:
        raise ValueError(f"{name} must be a 3-d (years, rows, cols) array, got {getattr(stack, 'shape', type(stack))}")
    if stack.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {stack.dtype}")
    if stack.shape[0] == 0:
        raise ValueError(f"{name} has no years")
    bad = (stack != NOT_MINING) & (stack != MINING) & (stack != NOT_OBSERVED)
    if bad.any():
        values = np.unique(stack[bad])[:5].tolist()
        raise ValueError(f"{name} holds values other than 0, 1, 255: {values}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"filter mode must be one of {', '.join(MODES)}, not {mode!r}")


# --------------------------------------------------------------------------------------------------
# Gap fill
# --------------------------------------------------------------------------------------------------
def gap_fill(
    stack: np.ndarray,
    mode: Mode = "appendix",
    backfill_limit: int = 3,
    c9_backfill_from_index: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill not-observed years from neighbouring years; return (filled stack, origin index stack).

    The origin stack (uint8) holds, per pixel and year, the index of the year whose observation the
    value came from (its own index where observed), or 255 where the pixel stays not observed.
    `appendix` takes the nearest later observed year, else the nearest earlier one at most
    `backfill_limit` years back; `c9-code` reproduces the published script (see DESIGN.md §3).
    """
    _check_mode(mode)
    n = stack.shape[0]
    if n > 255:
        raise ValueError(f"at most 255 years fit the origin band, got {n}")
    filled = stack.copy()
    origin = np.full(stack.shape, NO_ORIGIN, dtype=np.uint8)
    if mode == "appendix":
        _gap_fill_appendix(stack, filled, origin, backfill_limit)
    else:
        _gap_fill_c9(stack, filled, origin, backfill_limit, c9_backfill_from_index)
    return filled, origin


def _fill_from_later(stack, filled, origin, last_source: int) -> None:
    """Give each not-observed year the nearest later observation among indices ≤ last_source."""
    rows_cols = stack.shape[1:]
    next_value = np.full(rows_cols, NOT_OBSERVED, dtype=np.uint8)
    next_index = np.full(rows_cols, NO_ORIGIN, dtype=np.uint8)
    observed = np.empty(rows_cols, dtype=bool)
    gap = np.empty(rows_cols, dtype=bool)
    for t in range(last_source, -1, -1):
        year = stack[t]
        np.not_equal(year, NOT_OBSERVED, out=observed)
        np.logical_not(observed, out=gap)
        # Observed pixels keep their value and are their own origin; the others take the carried one.
        np.copyto(filled[t], next_value, where=gap)
        np.copyto(origin[t], next_index, where=gap)
        np.copyto(origin[t], np.uint8(t), where=observed)
        np.copyto(next_value, year, where=observed)
        np.copyto(next_index, np.uint8(t), where=observed)


def _gap_fill_appendix(stack, filled, origin, backfill_limit: int) -> None:
    n = stack.shape[0]
    _fill_from_later(stack, filled, origin, last_source=n - 1)
    if backfill_limit == 0:
        return
    # Still-empty years have no later observation, so they form each pixel's trailing run:
    # take the last observation if it lies within reach.
    last_value = filled[n - 1]
    if not (last_value == NOT_OBSERVED).any():
        return
    rows_cols = stack.shape[1:]
    prev_value = np.full(rows_cols, NOT_OBSERVED, dtype=np.uint8)
    prev_index = np.zeros(rows_cols, dtype=np.uint8)
    observed = np.empty(rows_cols, dtype=bool)
    reach = np.empty(rows_cols, dtype=bool)
    for t in range(n):
        year = stack[t]
        if t > 0:
            # Empty here, an earlier observation exists, and it lies at most backfill_limit years back.
            np.equal(filled[t], NOT_OBSERVED, out=reach)
            reach &= prev_value != NOT_OBSERVED
            reach &= prev_index >= max(t - backfill_limit, 0)
            np.copyto(filled[t], prev_value, where=reach)
            np.copyto(origin[t], prev_index, where=reach)
        np.not_equal(year, NOT_OBSERVED, out=observed)
        np.copyto(prev_value, year, where=observed)
        np.copyto(prev_index, np.uint8(t), where=observed)


def _gap_fill_c9(stack, filled, origin, backfill_limit: int, backfill_from: int) -> None:
    n = stack.shape[0]
    if n >= 2:
        # The last year is never a source and is not filled by this step.
        _fill_from_later(stack, filled, origin, last_source=n - 2)
    last = stack[n - 1]
    origin[n - 1][last != NOT_OBSERVED] = n - 1
    # As published: the back-fill runs inside the same loop over i < n − 1, so the last year is not filled here.
    for i in range(max(backfill_from, 1), n - 1):
        for back in range(1, backfill_limit + 1):
            if i - back < 0:
                break
            take = (filled[i] == NOT_OBSERVED) & (filled[i - back] != NOT_OBSERVED)
            filled[i][take] = filled[i - back][take]
            origin[i][take] = origin[i - back][take]


# --------------------------------------------------------------------------------------------------
# Temporal
# --------------------------------------------------------------------------------------------------
def temporal_filter(stack: np.ndarray, mode: Mode = "appendix") -> np.ndarray:
    """Remove one-year flips between two agreeing years (DESIGN.md §3); returns a new stack."""
    _check_mode(mode)
    out = stack.copy()
    _temporal_inplace(out, mode)
    return out


def _temporal_inplace(y: np.ndarray, mode: str) -> None:
    n = y.shape[0]
    if n < 3:
        return
    if mode == "appendix":
        for t in range(1, n - 1):
            before, here, after = y[t - 1], y[t], y[t + 1]
            flip = (before == after) & (before != NOT_OBSERVED) & (here != NOT_OBSERVED) & (here != before)
            here[flip] = before[flip]
        return
    # c9-code: two passes, each reading a frozen copy of the series from before the pass.
    frozen = y.copy()
    for t in range(1, n - 1):
        _c9_temporal_step(frozen[t - 1], frozen[t], frozen[t + 1], target=y[t], target_frozen=frozen[t], first=True)
    np.copyto(frozen, y)
    for t in range(1, n - 1):
        _c9_temporal_step(frozen[t - 1], frozen[t], frozen[t + 1], target=y[t + 1], target_frozen=frozen[t + 1], first=False)


def _c9_temporal_step(prev, mid, nxt, target, target_frozen, first: bool) -> None:
    """One step of a c9 pass. Pass 1 writes y[t] from (y[t-1], y[t+1]); pass 2 writes y[t+1] from (y[t-1], y[t])."""
    if first:
        primary, secondary, agree_a, agree_b = prev, nxt, prev, nxt
    else:
        primary, secondary, agree_a, agree_b = mid, prev, prev, mid
    gap = target_frozen == NOT_OBSERVED
    from_primary = gap & (primary != NOT_OBSERVED)
    target[from_primary] = primary[from_primary]
    from_secondary = gap & (primary == NOT_OBSERVED)
    target[from_secondary] = secondary[from_secondary]
    # Literal: 255 is a value, so two not-observed years agree too and write 255.
    agree = agree_a == agree_b
    target[agree] = agree_a[agree]


# --------------------------------------------------------------------------------------------------
# Spatial
# --------------------------------------------------------------------------------------------------
def spatial_halo(min_component_size: int, spatial_window: int = 3) -> int:
    """Context (pixels per side) that makes the spatial filter of a tile equal to the whole-raster one.

    A component under `min_component_size` pixels lies within min_component_size − 1 pixels of each
    of its members, and any larger component has that many members within that distance of each
    member, so a window with this halo decides "small or not" exactly; the mode needs window // 2.
    """
    return max(min_component_size - 1, spatial_window // 2)


def small_mining_components(year: np.ndarray, min_component_size: int, inside: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of mining pixels whose 8-connected mining component has fewer than `min_component_size` pixels.

    `inside` (optional, bool like `year`) marks the pixels that belong to the raster; the others never
    join a component.
    """
    mining = year == MINING
    if inside is not None:
        mining &= inside
    if min_component_size <= 1:
        return np.zeros_like(mining)
    labels, count = ndimage.label(mining, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros_like(mining)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_component_size
    small[0] = False
    return small[labels]


def _box_count(mask: np.ndarray, window: int) -> np.ndarray:
    """How many true pixels each window × window neighbourhood holds; pixels beyond the edge count none.

    A separable box sum of shifted views (uint8 up to a 15 × 15 window, uint16 above): exact, and
    cheaper than a general correlation.
    """
    dtype = np.uint8 if window <= 15 else np.uint16
    half = window // 2
    rows, cols = mask.shape
    padded = np.zeros((rows + 2 * half, cols), dtype=dtype)
    padded[half: half + rows] = mask
    column_sums = padded[0:rows].copy()
    for shift in range(1, window):
        column_sums += padded[shift: shift + rows]
    padded = np.zeros((rows, cols + 2 * half), dtype=dtype)
    padded[:, half: half + cols] = column_sums
    box = padded[:, 0:cols].copy()
    for shift in range(1, window):
        box += padded[:, shift: shift + cols]
    return box


def window_mode(year: np.ndarray, window: int = 3, inside: np.ndarray | None = None) -> np.ndarray:
    """The most frequent of 0 / 1 / 255 in every pixel's window × window neighbourhood (itself included).

    This is the ``c9-code`` majority of DESIGN.md §3: not-observed pixels vote like any class (the
    published script's 50), ties go to the smaller value (0 < 1 < 255), and pixels outside the raster
    (beyond the array, or where `inside` is false) do not vote.
    """
    counts = []
    for value in (NOT_MINING, MINING, NOT_OBSERVED):
        member = year == value
        if inside is not None:
            member &= inside
        counts.append(_box_count(member, window))
    zeros, ones, gaps = counts
    mode = np.where(ones > zeros, np.uint8(MINING), np.uint8(NOT_MINING))
    mode[(gaps > zeros) & (gaps > ones)] = NOT_OBSERVED
    return mode


def spatial_filter_year(
    year: np.ndarray, mode: Mode = "appendix", min_component_size: int = 10, spatial_window: int = 3, inside: np.ndarray | None = None
) -> np.ndarray:
    """Apply the spatial filter of DESIGN.md §3 to one year (rows, cols); returns a new array.

    `inside` (optional, bool (rows, cols)) marks the pixels that belong to the raster: the others are
    treated as beyond its edge (no component, no vote) and come back unchanged.
    """
    _check_mode(mode)
    out = year.copy()
    _spatial_year_inplace(out, mode, min_component_size, spatial_window, inside)
    return out


def _spatial_year_inplace(year: np.ndarray, mode: str, min_component_size: int, window: int, inside: np.ndarray | None = None) -> None:
    small = small_mining_components(year, min_component_size, inside)
    if not small.any():
        return
    if mode == "appendix":
        year[small] = NOT_MINING
        return
    year[small] = window_mode(year, window, inside)[small]


def spatial_filter(
    stack: np.ndarray, mode: Mode = "appendix", min_component_size: int = 10, spatial_window: int = 3, inside: np.ndarray | None = None
) -> np.ndarray:
    """Apply the spatial filter to every year of a stack; returns a new stack (`inside` as in `spatial_filter_year`)."""
    _check_mode(mode)
    out = stack.copy()
    for t in range(out.shape[0]):
        _spatial_year_inplace(out[t], mode, min_component_size, spatial_window, inside)
    return out


def spatial_filter_tile(
    padded: np.ndarray,
    halo: tuple[int, int, int, int],
    mode: Mode = "appendix",
    min_component_size: int = 10,
    spatial_window: int = 3,
    inside: np.ndarray | None = None,
) -> np.ndarray:
    """Spatially filter the core of a tile given with context around it; returns the core only.

    `padded` is (years, rows, cols) or (rows, cols); `halo` = (top, bottom, left, right) context
    pixels around the core. Context must reach `spatial_halo` pixels or the raster's own edge: either
    the window stops there, or `inside` (bool (rows, cols)) is false beyond it, so that pixels outside
    the raster neither join components nor vote. With that context the result equals the whole-raster
    filter over the core, so tiles can be processed independently (for example per Beam element) and
    a component crossing a tile edge stays one.
    """
    top, bottom, left, right = halo
    rows, cols = padded.shape[-2:]
    filtered = spatial_filter(padded if padded.ndim == 3 else padded[None], mode, min_component_size, spatial_window, inside)
    core = filtered[:, top: rows - bottom, left: cols - right]
    return core if padded.ndim == 3 else core[0]


def spatial_filter_tiled(
    stack: np.ndarray,
    tile_size: int,
    mode: Mode = "appendix",
    min_component_size: int = 10,
    spatial_window: int = 3,
) -> np.ndarray:
    """The spatial filter computed tile by tile with a halo: equal to `spatial_filter`, bounded memory per tile."""
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, not {tile_size}")
    halo = spatial_halo(min_component_size, spatial_window)
    out = np.empty_like(stack)
    rows, cols = stack.shape[-2:]
    for r0 in range(0, rows, tile_size):
        r1 = min(r0 + tile_size, rows)
        for c0 in range(0, cols, tile_size):
            c1 = min(c0 + tile_size, cols)
            pr0, pr1 = max(r0 - halo, 0), min(r1 + halo, rows)
            pc0, pc1 = max(c0 - halo, 0), min(c1 + halo, cols)
            out[..., r0:r1, c0:c1] = spatial_filter_tile(
                stack[..., pr0:pr1, pc0:pc1],
                (r0 - pr0, pr1 - r1, c0 - pc0, pc1 - c1),
                mode,
                min_component_size,
                spatial_window,
            )
    return out


# --------------------------------------------------------------------------------------------------
# Frequency
# --------------------------------------------------------------------------------------------------
def rare_mining_pixels(stack: np.ndarray, mode: Mode = "appendix", frequency_cut_percent: float = 10.0) -> np.ndarray:
    """Boolean (rows, cols) mask of pixels whose share of mining years is under the frequency cut."""
    _check_mode(mode)
    n = stack.shape[0]
    count = np.zeros(stack.shape[1:], dtype=np.int32)
    for t in range(n):
        count += stack[t] == MINING
    percent_times_n = count.astype(np.float64) * 100.0
    if mode == "appendix":
        return (count > 0) & (percent_times_n < frequency_cut_percent * n)
    if n < 2:
        return np.zeros(stack.shape[1:], dtype=bool)
    return (count > 0) & (percent_times_n <= frequency_cut_percent * (n - 1))


def frequency_filter(stack: np.ndarray, mode: Mode = "appendix", frequency_cut_percent: float = 10.0) -> np.ndarray:
    """Turn mining into not mining in every year at pixels mined too rarely (DESIGN.md §3); returns a new stack."""
    out = stack.copy()
    _frequency_inplace(out, mode, frequency_cut_percent)
    return out


def _frequency_inplace(y: np.ndarray, mode: str, cut: float) -> None:
    rare = rare_mining_pixels(y, mode, cut)
    if not rare.any():
        return
    for t in range(y.shape[0]):
        year = y[t]
        year[rare & (year == MINING)] = NOT_MINING


# --------------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------------
def mining_pixels_per_year(stack: np.ndarray) -> np.ndarray:
    """Number of mining pixels in each year of a stack (int64, one per year)."""
    return np.array([np.count_nonzero(stack[t] == MINING) for t in range(stack.shape[0])], dtype=np.int64)


StageHook = Callable[[str, np.ndarray], None]


def apply_temporal_chain(
    stack: np.ndarray, params: FilterParams, on_stage: StageHook | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Gap fill then temporal filter: the per-pixel half of the chain that runs before the spatial filter.

    Returns (classes, origin, mining pixels per year after each stage); `on_stage(name, stack)`, when
    given, sees the stack after each stage (and the input), for statistics such as true areas.
    """
    validate_stack(stack)
    counts: dict[str, np.ndarray] = {}
    _record("input", stack, counts, on_stage)
    classes, origin = gap_fill(stack, params.mode, params.backfill_limit, params.c9_backfill_from_index)
    _record("gap_fill", classes, counts, on_stage)
    _temporal_inplace(classes, params.mode)
    _record("temporal", classes, counts, on_stage)
    return classes, origin, counts


def apply_spatial_frequency(
    classes: np.ndarray, params: FilterParams, counts: dict[str, np.ndarray], on_stage: StageHook | None = None
) -> np.ndarray:
    """Spatial then frequency filter, in place on a whole stack (the second half of the chain)."""
    for t in range(classes.shape[0]):
        _spatial_year_inplace(classes[t], params.mode, params.min_component_size, params.spatial_window)
    _record("spatial", classes, counts, on_stage)
    _frequency_inplace(classes, params.mode, params.frequency_cut_percent)
    _record("frequency", classes, counts, on_stage)
    return classes


def _record(stage: str, stack: np.ndarray, counts: dict[str, np.ndarray], on_stage: StageHook | None) -> None:
    counts[stage] = mining_pixels_per_year(stack)
    if on_stage is not None:
        on_stage(stage, stack)


def apply_chain(
    stack: np.ndarray,
    params: FilterParams = FilterParams(),
    with_origin: bool = True,
    on_stage: StageHook | None = None,
) -> ChainResult:
    """Run gap fill → temporal → spatial → frequency over a whole stack (DESIGN.md §3).

    Returns the filtered stack, the gap-fill origin (indices into the stack's years, 255 = none;
    None when `with_origin` is false) and mining pixels per year after each stage. The input is
    not modified; extra memory stays under three times the stack.
    """
    classes, origin, counts = apply_temporal_chain(stack, params, on_stage)
    if not with_origin:
        origin = None
    apply_spatial_frequency(classes, params, counts, on_stage)
    return ChainResult(classes=classes, origin=origin, mining_pixels=counts)
