"""Mining area statistics from true pixel areas (DESIGN.md §4), read window by window.

Inputs are annual rasters: the classification COGs (30 mining / 0 not mining / 255 nodata, from the
pipeline or the `filter` command), any categorical map whose mining value is given (e.g. MapBiomas,
class 30), or the class_id COGs of `classify-type` (tag ``product=class_id``: 0 not mining, a Table 3
code where mining). Results: hectares per year in total, per grid and per class_id, and the change from
the first to the last year.

Overlapping grids. The Collection 9 cells overlap their neighbours by 10 %, so summing grids would
count the overlaps twice. Each grid's own figure is its whole raster; the total counts a pixel only in
the grid whose footprint centre is nearest to the pixel centre among the grids (of that year) whose
footprints contain it. On a regular lattice of equal cells this is exactly the lattice's stride box,
so every place is counted once, whatever the pixel lattices of the grids.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from pyproj import CRS, Transformer
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from pipeline.method.areas import SQUARE_METRES_PER_HECTARE, PixelAreas
from pipeline.errors import UserError
from pipeline.io import rasters as annual_rasters
from pipeline.io.cog import CLASS_ID_NODATA, row_windows

KIND_CLASSIFICATION = "classification"
KIND_CLASS_ID = "class_id"
TYPE_BY_HUNDREDS = {1: "industrial", 2: "garimpo", 3: "unidentified"}


def mining_type_of(class_id: int) -> str:
    """'industrial' (1xx), 'garimpo' (2xx) or 'unidentified' (3xx) from a Table 3 code."""
    return TYPE_BY_HUNDREDS.get(int(class_id) // 100, "unidentified")


@dataclasses.dataclass(frozen=True)
class Footprint:
    """A grid's extent in longitude/latitude (degrees) and its centre, for the overlap rule."""

    grid: str
    west: float
    south: float
    east: float
    north: float

    @property
    def centre(self) -> tuple[float, float]:
        """(lon, lat) of the footprint's centre."""
        return (self.west + self.east) / 2.0, (self.south + self.north) / 2.0

    def intersects(self, other: Footprint) -> bool:
        """Whether two footprints share area (touching edges do not count)."""
        return self.west < other.east and other.west < self.east and self.south < other.north and other.south < self.north


@dataclasses.dataclass
class RasterArea:
    """The areas measured on one grid-year raster."""

    path: str
    grid: str | None
    year: int
    kind: str
    mining_pixels: int = 0
    mining_ha: float = 0.0
    observed_ha: float = 0.0
    counted_mining_ha: float = 0.0
    class_ha: dict[int, float] = dataclasses.field(default_factory=dict)
    counted_class_ha: dict[int, float] = dataclasses.field(default_factory=dict)


def raster_kind(tags: dict, dtype: str, description: str | None) -> str:
    """'class_id' for the class_id COGs of classify-type (tag or band description), else 'classification'."""
    if str(tags.get("product", "")).lower() == KIND_CLASS_ID or (description or "").lower() == KIND_CLASS_ID:
        return KIND_CLASS_ID
    return KIND_CLASSIFICATION


def footprint_of(ref: annual_rasters.RasterRef) -> Footprint:
    """The lon/lat footprint of a raster (its bounds transformed with densified edges)."""
    with annual_rasters.open_raster(ref.path) as src:
        if src.crs is None:
            raise UserError(f"{ref.path}: raster has no CRS; its pixel areas are unknown")
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    return Footprint(ref.grid or ref.path, west, south, east, north)


def owned_mask(lon: np.ndarray, lat: np.ndarray, own: Footprint, others: Sequence[Footprint]) -> np.ndarray:
    """True where a pixel centre belongs to `own`: the nearest footprint centre among those containing it.

    Ties (equal distance) go to the smaller grid name, so a pixel is never counted twice or dropped.
    """
    def _distance2(fp: Footprint) -> np.ndarray:
        cx, cy = fp.centre
        return (lon - cx) ** 2 + (lat - cy) ** 2

    mine = _distance2(own)
    owned = np.ones(lon.shape, dtype=bool)
    for other in others:
        inside = (lon >= other.west) & (lon < other.east) & (lat > other.south) & (lat <= other.north)
        theirs = _distance2(other)
        beats = (theirs < mine) | ((theirs == mine) & (other.grid < own.grid))
        owned &= ~(inside & beats)
    return owned


class AreaCache:
    """Pixel areas of one grid (`pipeline.method.areas.PixelAreas`), prepared once and reused across its years.

    A series of 36 years of one grid pays the area computation once: per row in a geographic CRS, on a
    64-pixel lattice interpolated per window in a projected one. Only the last grid is kept (a new grid
    replaces it); what is kept is one value per row, or one per lattice node, so memory stays bounded by
    the window, whatever the raster's size.
    """

    def __init__(self) -> None:
        self._grid_key: tuple | None = None
        self._areas: PixelAreas | None = None

    def grid(self, crs, transform, shape: tuple[int, int]) -> PixelAreas:
        """The `PixelAreas` of a grid, from the cache when the same grid was measured before."""
        grid_key = (crs.to_wkt(), tuple(transform)[:6], tuple(shape))
        if grid_key != self._grid_key or self._areas is None:
            self._grid_key, self._areas = grid_key, PixelAreas(crs, transform, shape)
        return self._areas

    def areas(self, crs, transform, shape: tuple[int, int], window: Window) -> np.ndarray:
        """Pixel areas (m²) of a window, broadcastable to its shape: (rows, 1) when geographic."""
        return self.grid(crs, transform, shape).window(window)


def nodata_mask(values: np.ndarray, nodata_values: Iterable[float]) -> np.ndarray:
    """True where a value is one of the nodata values (None ignored; NaN matches NaN, and always for floats)."""
    missing = np.zeros(values.shape, dtype=bool)
    for nodata in nodata_values:
        if nodata is None:
            continue
        if isinstance(nodata, float) and math.isnan(nodata):
            missing |= np.isnan(values)
        else:
            missing |= values == nodata
    if np.issubdtype(values.dtype, np.floating):
        missing |= np.isnan(values)
    return missing


def measure_raster(
    ref: annual_rasters.RasterRef,
    class_value: int = 30,
    extra_nodata: Sequence[float] = (),
    others: Sequence[Footprint] = (),
    own: Footprint | None = None,
    chunk_rows: int = 512,
    cache: AreaCache | None = None,
) -> RasterArea:
    """Hectares of mining (and per class_id) in one raster, reading `chunk_rows` rows at a time.

    `others` are the footprints of overlapping grids of the same year; `counted_*` figures leave out
    the pixels those grids own (see the module docstring). Memory stays O(chunk_rows × width).
    """
    with annual_rasters.open_raster(ref.path) as src:
        if src.crs is None:
            raise UserError(f"{ref.path}: raster has no CRS; its pixel areas are unknown")
        kind = raster_kind(ref.tags, src.dtypes[0], src.descriptions[0] if src.descriptions else None)
        result = RasterArea(path=ref.path, grid=ref.grid, year=ref.year, kind=kind)
        nodata_values = [src.nodata, *extra_nodata]
        if kind == KIND_CLASS_ID and src.nodata is None:
            nodata_values.append(CLASS_ID_NODATA)
        to_lonlat = Transformer.from_crs(CRS.from_wkt(src.crs.to_wkt()), "EPSG:4326", always_xy=True) if others else None
        class_sums: dict[int, float] = defaultdict(float)
        counted_sums: dict[int, float] = defaultdict(float)
        grid = (cache or AreaCache()).grid(src.crs, src.transform, (src.height, src.width))
        for window in row_windows(src.height, src.width, chunk_rows):
            values = src.read(1, window=window)
            observed = ~nodata_mask(values, nodata_values)
            mining = observed & ((values != 0) if kind == KIND_CLASS_ID else (values == class_value))
            result.observed_ha += grid.hectares(observed, window)
            if not mining.any():
                continue
            result.mining_pixels += int(np.count_nonzero(mining))
            mining_ha = grid.hectares(mining, window)
            result.mining_ha += mining_ha
            counted = mining
            if others:
                counted = mining & _owned_in_window(src, window, to_lonlat, own, others)
            result.counted_mining_ha += mining_ha if counted is mining else grid.hectares(counted, window)
            if kind == KIND_CLASS_ID:
                areas = np.broadcast_to(grid.window(window), values.shape)
                _add_by_class(class_sums, values[mining], areas[mining])
                _add_by_class(counted_sums, values[counted], areas[counted])
        result.class_ha = dict(sorted(class_sums.items()))
        result.counted_class_ha = dict(sorted(counted_sums.items()))
    return result


def _owned_in_window(src, window: Window, to_lonlat: Transformer, own: Footprint, others: Sequence[Footprint]) -> np.ndarray:
    x0, y0 = src.transform @ (window.col_off, window.row_off)
    x1, y1 = src.transform @ (window.col_off + window.width, window.row_off + window.height)
    west, south, east, north = transform_bounds(src.crs, "EPSG:4326", min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    box = Footprint("window", west, south, east, north)
    near = [o for o in others if o.intersects(box)]
    rows, cols = int(window.height), int(window.width)
    if not near:
        return np.ones((rows, cols), dtype=bool)
    cc, rr = np.meshgrid(np.arange(cols) + window.col_off + 0.5, np.arange(rows) + window.row_off + 0.5)
    x, y = src.transform @ (cc.ravel(), rr.ravel())
    lon, lat = to_lonlat.transform(x, y)
    return owned_mask(np.asarray(lon).reshape(rows, cols), np.asarray(lat).reshape(rows, cols), own, near)


def _add_by_class(sums: dict[int, float], codes: np.ndarray, areas: np.ndarray) -> None:
    if codes.size == 0:
        return
    totals = np.bincount(codes.astype(np.int64), weights=areas.astype(np.float64))
    for code in np.flatnonzero(totals):
        sums[int(code)] += float(totals[code]) / SQUARE_METRES_PER_HECTARE


@dataclasses.dataclass
class AreaStatistics:
    """Every figure of a `stats` run: per grid-year rasters, totals per year and per class_id."""

    rasters: list[RasterArea]
    overlap_rule: bool

    @property
    def years(self) -> list[int]:
        """The years present, ascending."""
        return sorted({r.year for r in self.rasters})

    def total_by_year(self) -> dict[int, float]:
        """Mining hectares per year over all grids, overlaps counted once."""
        totals: dict[int, float] = defaultdict(float)
        for r in self.rasters:
            totals[r.year] += r.counted_mining_ha
        return {y: totals[y] for y in self.years}

    def grids_by_year(self) -> dict[int, int]:
        """How many grids contributed to each year's total."""
        counts: dict[int, int] = defaultdict(int)
        for r in self.rasters:
            counts[r.year] += 1
        return {y: counts[y] for y in self.years}

    def class_by_year(self) -> dict[int, dict[int, float]]:
        """Hectares per class_id per year (class_id rasters only), overlaps counted once."""
        table: dict[int, dict[int, float]] = {}
        for r in self.rasters:
            if r.kind != KIND_CLASS_ID:
                continue
            row = table.setdefault(r.year, defaultdict(float))
            for code, ha in r.counted_class_ha.items():
                row[code] += ha
        return {y: dict(sorted(table[y].items())) for y in sorted(table)}

    def type_by_year(self) -> dict[int, dict[str, float]]:
        """Hectares per mining type (industrial / garimpo / unidentified) per year, from the class_ids."""
        out: dict[int, dict[str, float]] = {}
        for year, codes in self.class_by_year().items():
            row = {name: 0.0 for name in TYPE_BY_HUNDREDS.values()}
            for code, ha in codes.items():
                row[mining_type_of(code)] += ha
            out[year] = row
        return out

    def comparison(self) -> dict:
        """The change from the first to the last year of the total."""
        return compare_first_last(self.total_by_year())


def compare_first_last(series: dict[int, float]) -> dict:
    """First year, last year, their values, the change in hectares and percent, and the ratio."""
    if not series:
        return {}
    first, last = min(series), max(series)
    a, b = series[first], series[last]
    return {
        "first_year": first,
        "last_year": last,
        "first_ha": round(a, 4),
        "last_ha": round(b, 4),
        "change_ha": round(b - a, 4),
        "change_percent": round(100.0 * (b - a) / a, 4) if a > 0 else None,
        "ratio": round(b / a, 6) if a > 0 else None,
    }


def compute_statistics(
    refs: Sequence[annual_rasters.RasterRef],
    class_value: int = 30,
    extra_nodata: Sequence[float] = (),
    chunk_rows: int = 512,
    progress=None,
) -> AreaStatistics:
    """Measure every raster; grids of one year that overlap are de-duplicated in the totals."""
    if not refs:
        raise UserError("no raster to measure")
    by_year: dict[int, list[annual_rasters.RasterRef]] = defaultdict(list)
    for ref in refs:
        by_year[ref.year].append(ref)
    multi_grid = any(len(v) > 1 for v in by_year.values())
    footprints = {ref.path: footprint_of(ref) for ref in refs} if multi_grid else {}
    rasters: list[RasterArea] = []
    overlap = False
    cache = AreaCache()
    for index, ref in enumerate(refs, start=1):
        others: list[Footprint] = []
        if multi_grid:
            own = footprints[ref.path]
            others = [footprints[o.path] for o in by_year[ref.year] if o.path != ref.path and footprints[o.path].intersects(own)]
            overlap |= bool(others)
        rasters.append(
            measure_raster(ref, class_value, extra_nodata, others, footprints.get(ref.path), chunk_rows, cache)
        )
        if progress:
            progress(index, len(refs), ref.path)
    return AreaStatistics(rasters=rasters, overlap_rule=overlap)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def csv_bytes(rows: list[list], header: list[str]) -> bytes:
    """A CSV file (header, then rows) as UTF-8 bytes with Unix line ends."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def statistics_files(stats: AreaStatistics, class_names: dict[int, str] | None = None) -> dict[str, bytes]:
    """The output files of `stats` (name → bytes): three or four CSVs and stats.json."""
    class_names = class_names or {}
    totals = stats.total_by_year()
    grids = stats.grids_by_year()
    files = {
        "areas_by_year.csv": csv_bytes(
            [[y, f"{totals[y]:.4f}", grids[y]] for y in stats.years], ["year", "mining_ha", "grids"]
        ),
        "areas_by_grid.csv": csv_bytes(
            [
                [r.grid or "", r.year, f"{r.mining_ha:.4f}", r.mining_pixels, f"{r.observed_ha:.4f}", f"{r.counted_mining_ha:.4f}", r.path]
                for r in stats.rasters
            ],
            ["grid", "year", "mining_ha", "mining_pixels", "observed_ha", "mining_ha_counted_in_total", "path"],
        ),
    }
    class_table = stats.class_by_year()
    if class_table:
        files["areas_by_class_id.csv"] = csv_bytes(
            [
                [y, code, mining_type_of(code), class_names.get(code, ""), f"{ha:.4f}"]
                for y, codes in class_table.items()
                for code, ha in codes.items()
            ],
            ["year", "class_id", "type", "name", "mining_ha"],
        )
    document = {
        "units": "hectares, from true pixel areas (DESIGN.md §4)",
        "overlap_rule": (
            "overlapping grids: each pixel counted in the total once, in the grid whose footprint centre is nearest"
            if stats.overlap_rule
            else "no overlapping grids"
        ),
        "years": stats.years,
        "total_by_year": {str(y): round(v, 4) for y, v in totals.items()},
        "grids_by_year": {str(y): v for y, v in grids.items()},
        "comparison": stats.comparison(),
        "by_grid": [
            {
                "grid": r.grid,
                "year": r.year,
                "kind": r.kind,
                "mining_ha": round(r.mining_ha, 4),
                "mining_pixels": r.mining_pixels,
                "observed_ha": round(r.observed_ha, 4),
                "mining_ha_counted_in_total": round(r.counted_mining_ha, 4),
                "path": r.path,
            }
            for r in stats.rasters
        ],
    }
    if class_table:
        document["by_class_id"] = {
            str(y): {str(code): round(ha, 4) for code, ha in codes.items()} for y, codes in class_table.items()
        }
        document["by_type"] = {
            str(y): {k: round(v, 4) for k, v in row.items()} for y, row in stats.type_by_year().items()
        }
        if class_names:
            document["class_names"] = {str(k): v for k, v in class_names.items()}
    files["stats.json"] = json.dumps(document, indent=2, ensure_ascii=False).encode()
    return files
