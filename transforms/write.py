"""Assemble each (grid, year) from its tiles and publish it as a COG; account for every (grid, year).

Output names are deterministic, `{output}/{grid}/{grid}_{year}.tif`, and each file is written under
a temporary name then renamed, so a retried bundle or a re-run never leaves a partial or duplicate
file. Every (grid, year) asked for yields one GridYearStatus: written, skipped (and why) or failed
(and why).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import apache_beam as beam
import numpy as np
from affine import Affine
from apache_beam.metrics import Metrics

from pipeline.method.areas import SQUARE_METRES_PER_HECTARE, pixel_areas_m2
from pipeline.io.cog import classification_bands, encode_cog
from pipeline.io.filesystem import absolute_uri, write_atomically
from pipeline.elements import GridYearStatus
from pipeline.method.tiles import assemble_year, mining_rows_of_raster
from transforms.metrics import NAMESPACE


def cog_path(output: str, grid: str, year: int) -> str:
    """Where the COG of a (grid, year) goes (deterministic)."""
    return f"{output}/{grid}/{grid}_{year}.tif"


def row_areas_m2(geometry) -> np.ndarray:
    """True area of a pixel in each row of a (grid, year) raster (row mean in a projected CRS)."""
    transform = Affine(*geometry.transform[:6])
    areas = pixel_areas_m2(geometry.crs, transform, (geometry.height, geometry.width))
    return areas[:, 0] if areas.shape[1] == 1 else areas.mean(axis=1)


class _WriteGridYear(beam.DoFn):
    def __init__(self, *, output: str, years: Sequence[int], tags: Mapping[str, str], with_probability: bool, with_origin: bool):
        self._output = output
        self._years = tuple(years)
        self._tags = dict(tags)
        self._with_probability = with_probability
        self._with_origin = with_origin
        self._written = Metrics.counter(NAMESPACE, "grid_years_written")

    def process(self, element):
        key, parts = element
        grid, year = key
        missing = list(parts[MISSING])
        dead = list(parts[DEAD_LETTER])
        geometries = list(parts[GEOMETRY])
        if not geometries:
            reason = "; ".join(sorted({m.reason for m in missing})) or "no export found"
            yield GridYearStatus(grid, year, "skipped", reason=reason)
            return
        if dead:
            reasons = sorted({f"{d.file}: {d.reason}" for d in dead})
            yield GridYearStatus(grid, year, "failed", reason=f"{len(dead)} bad record(s) or shard(s): " + "; ".join(reasons[:10]))
            return
        geometry = geometries[0]
        tiles = list(parts[TILES])
        rasters = assemble_year(tiles, geometry.rows, geometry.patches_per_row, geometry.patch_size, self._years)
        height, width = geometry.height, geometry.width
        bands, descriptions = classification_bands(
            rasters["classes"][:height, :width],
            probability=rasters["probability"][:height, :width] if self._with_probability else None,
            origin_years=rasters["origin"][:height, :width] if self._with_origin else None,
        )
        tags = {**self._tags, "grid": grid, "year": str(year)}
        path = cog_path(self._output, grid, year)
        write_atomically(path, encode_cog(bands, geometry.crs, Affine(*geometry.transform[:6]), tags, descriptions))
        self._written.inc()
        areas = row_areas_m2(geometry)
        rows = mining_rows_of_raster(tiles, geometry.rows, geometry.patch_size)
        yield GridYearStatus(
            grid,
            year,
            "written",
            path=absolute_uri(path),
            mining_pixels={stage: int(values.sum()) for stage, values in rows.items()},
            mining_ha={stage: round(float(values[:height] @ areas) / SQUARE_METRES_PER_HECTARE, 4) for stage, values in rows.items()},
        )


TILES = "tiles"
GEOMETRY = "geometry"
MISSING = "missing"
DEAD_LETTER = "dead_letter"


class WriteGridYears(beam.PTransform):
    """Join tiles, geometry, missing exports and dead letters per GridYearKey; write COGs; emit a
    GridYearStatus for every (grid, year) that any of them names.

    Input: a dict with the keys `tiles` (GridYearKey, YearTile), `geometry` (GridYearKey, ExportGeometry),
    `missing` (GridYearKey, MissingExport) and `dead_letter` (GridYearKey, DeadLetter).
    """

    def __init__(self, *, output: str, years: Sequence[int], tags: Mapping[str, str], with_probability: bool, with_origin: bool):
        super().__init__()
        self._output = output
        self._years = tuple(years)
        self._tags = dict(tags)
        self._with_probability = with_probability
        self._with_origin = with_origin

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        return (
            inputs
            | "Join per grid-year" >> beam.CoGroupByKey()
            | "Write COG" >> beam.ParDo(
                _WriteGridYear(
                    output=self._output,
                    years=self._years,
                    tags=self._tags,
                    with_probability=self._with_probability,
                    with_origin=self._with_origin,
                )
            )  # no output type: Beam would turn the GridYearStatus dataclass into a schema row
        )
