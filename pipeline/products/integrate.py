"""Integration by prevalence (DESIGN.md §5): fold the mining maps into a land-cover map, year by year.

At each pixel the result takes the class of the layer with the best (lowest) prevalence rank among the
layers that claim the pixel. The mining map claims its mining pixels with class 30; the land-cover map
claims every pixel it observes with its own class. The ranks come from `pipeline/data/prevalence.json`
(read through `pipeline.io.tables.load_prevalence_table`); a class missing from the table ranks
after every listed class. Equal ranks go to the layer given first. Rasters are read and written window
by window.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from pipeline.method.areas import SQUARE_METRES_PER_HECTARE
from pipeline.errors import UserError
from pipeline.io import filesystem as fs
from pipeline.io import rasters as annual_rasters
from pipeline.io.cog import CogWriter, row_windows
from pipeline.products.stats import AreaCache

MINING_CLASS = 30


def rank_lookup(ranks: Mapping[int, int], max_code: int) -> np.ndarray:
    """Array rank[class] for classes 0…max_code; classes missing from the table rank after all listed ones."""
    worst = (max(ranks.values()) if ranks else 0) + 1
    lookup = np.full(int(max_code) + 1, worst, dtype=np.int32)
    for code, rank in ranks.items():
        if 0 <= code <= max_code:
            lookup[code] = rank
    return lookup


def integrate_layers(
    classes: Sequence[np.ndarray], claims: Sequence[np.ndarray], lookup: np.ndarray, nodata: int
) -> np.ndarray:
    """The prevalence integration of several layers over one window.

    `classes[k]` holds layer k's class at each pixel and `claims[k]` where layer k claims the pixel.
    Each pixel takes the claiming layer's class with the lowest rank (the earlier layer on a tie);
    pixels no layer claims get `nodata`.
    """
    if len(classes) != len(claims) or not classes:
        raise ValueError("one claim mask is needed per layer, and at least one layer")
    shape = classes[0].shape
    best_rank = np.full(shape, np.iinfo(np.int32).max, dtype=np.int32)
    result = np.full(shape, nodata, dtype=np.int64)
    for values, claimed in zip(classes, claims):
        codes = np.clip(values.astype(np.int64), 0, len(lookup) - 1)
        rank = np.where(claimed, lookup[codes], np.iinfo(np.int32).max)
        better = rank < best_rank
        result[better] = values[better]
        best_rank[better] = rank[better]
    return result


@dataclasses.dataclass
class YearChange:
    """What the integration changed in one grid-year: mining pixels and the land-cover classes they replaced."""

    grid: str | None
    year: int
    path: str
    mining_pixels: int = 0
    mining_ha: float = 0.0
    replaced_ha: dict[int, float] = dataclasses.field(default_factory=dict)
    changed_pixels: int = 0


def _same_grid(a, b) -> bool:
    return (
        a.crs == b.crs
        and (a.height, a.width) == (b.height, b.width)
        and a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(b.transform.a)))
    )


def pair_land_cover(
    mining: Sequence[annual_rasters.RasterRef], land_cover: Mapping[int, str], nearest_year: bool = False
) -> dict[str, tuple[annual_rasters.RasterRef, str, int]]:
    """For each mining raster, its land-cover raster of the same year (or the nearest year, if asked)."""
    if not land_cover:
        raise UserError("no land-cover raster given")
    pairs = {}
    missing = sorted({r.year for r in mining if r.year not in land_cover})
    if missing and not nearest_year:
        raise UserError(
            f"no land-cover map for year(s) {', '.join(map(str, missing))} (land-cover years: "
            f"{min(land_cover)}–{max(land_cover)}); give them or use --nearest-land-cover-year"
        )
    for ref in mining:
        year = ref.year if ref.year in land_cover else min(land_cover, key=lambda y: (abs(y - ref.year), -y))
        pairs[ref.path] = (ref, land_cover[year], year)
    return pairs


def integrate_raster(
    mining_ref: annual_rasters.RasterRef,
    land_cover_path: str,
    lookup: np.ndarray,
    mining_value: int = MINING_CLASS,
    reproject: bool = False,
    chunk_rows: int = 512,
    tags: Mapping[str, object] | None = None,
    cache: AreaCache | None = None,
) -> tuple[str, YearChange, CogWriter]:
    """Integrate one grid-year; returns the local COG path, what changed, and the writer (close it after publishing)."""
    change = YearChange(grid=mining_ref.grid, year=mining_ref.year, path=mining_ref.path)
    cache = cache or AreaCache()
    replaced: dict[int, float] = defaultdict(float)
    with annual_rasters.open_raster(mining_ref.path) as mining_src, annual_rasters.open_raster(land_cover_path) as cover_src:
        if mining_src.crs is None:
            raise UserError(f"{mining_ref.path}: raster has no CRS")
        if cover_src.crs is None:
            raise UserError(f"{land_cover_path}: raster has no CRS")
        if not _same_grid(mining_src, cover_src):
            if not reproject:
                raise UserError(
                    f"{land_cover_path}: its grid (CRS {cover_src.crs}, {cover_src.height}×{cover_src.width}, "
                    f"transform {tuple(cover_src.transform)[:6]}) differs from the mining map {mining_ref.path} "
                    f"(CRS {mining_src.crs}, {mining_src.height}×{mining_src.width}, transform {tuple(mining_src.transform)[:6]}); "
                    "use --reproject to resample the land-cover map onto the mining grid (nearest neighbour)"
                )
            cover = WarpedVRT(
                cover_src,
                crs=mining_src.crs,
                transform=mining_src.transform,
                width=mining_src.width,
                height=mining_src.height,
                resampling=Resampling.nearest,
                nodata=cover_src.nodata,
            )
        else:
            cover = cover_src
        cover_dtype = np.dtype(cover_src.dtypes[0])
        if not np.issubdtype(cover_dtype, np.integer):
            raise UserError(f"{land_cover_path}: a land-cover map must hold integer classes, not {cover_dtype}")
        out_dtype = np.promote_types(cover_dtype, np.uint8)
        nodata = cover_src.nodata
        if nodata is None:
            nodata = 0
        mining_nodata = mining_src.nodata
        writer = CogWriter(
            width=mining_src.width,
            height=mining_src.height,
            dtype=out_dtype.name,
            crs=mining_src.crs,
            transform=mining_src.transform,
            nodata=nodata,
            tags={
                "product": "integrated",
                "year": mining_ref.year,
                **({"grid": mining_ref.grid} if mining_ref.grid else {}),
                "mining_source": fs.basename(mining_ref.path),
                "land_cover_source": fs.basename(land_cover_path),
                "rule": "prevalence (DESIGN.md section 5, appendix Table 5)",
                **(tags or {}),
            },
            descriptions=["land_use_with_mining"],
        )
        try:
            shape = (mining_src.height, mining_src.width)
            for window in row_windows(mining_src.height, mining_src.width, chunk_rows):
                mining_values = mining_src.read(1, window=window)
                cover_values = cover.read(1, window=window)
                mining_claims = mining_values == mining_value
                if mining_nodata is not None:
                    mining_claims &= mining_values != mining_nodata
                cover_claims = cover_values != nodata if cover_src.nodata is not None else np.ones(cover_values.shape, bool)
                result = integrate_layers(
                    [np.full(mining_values.shape, MINING_CLASS), cover_values],
                    [mining_claims, cover_claims],
                    lookup,
                    int(nodata),
                )
                writer.write(result.astype(out_dtype), window)
                changed = result != cover_values
                change.changed_pixels += int(np.count_nonzero(changed))
                change.mining_pixels += int(np.count_nonzero(result == MINING_CLASS))
                if changed.any() or mining_claims.any():
                    areas = np.broadcast_to(cache.areas(mining_src.crs, mining_src.transform, shape, window), result.shape)
                    change.mining_ha += float(areas[result == MINING_CLASS].sum(dtype=np.float64)) / SQUARE_METRES_PER_HECTARE
                    before = cover_values[changed].astype(np.int64)
                    before = np.where(cover_claims[changed], before, -1)
                    for code in np.unique(before):
                        replaced[int(code)] += float(areas[changed][before == code].sum(dtype=np.float64)) / SQUARE_METRES_PER_HECTARE
            path = writer.finish()
        except BaseException:
            writer.close()
            raise
        finally:
            if cover is not cover_src:
                cover.close()
    change.replaced_ha = dict(sorted(replaced.items()))
    return path, change, writer


def output_name(ref: annual_rasters.RasterRef, prefix: str = "integrated") -> str:
    """Relative output path: ``{grid}/{grid}_{year}.tif`` for a grid, else ``{prefix}_{year}.tif``."""
    if ref.grid:
        return f"{ref.grid}/{ref.grid}_{ref.year}.tif"
    return f"{prefix}_{ref.year}.tif"
