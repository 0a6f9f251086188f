"""Assemble each (grid, year) from its tiles and publish it as a COG; account for every (grid, year).

Output names are deterministic, `{output}/{grid}/{grid}_{year}.tif`, and each file is written under
a temporary name then renamed, so a retried bundle or a re-run never leaves a partial or duplicate
file. Every (grid, year) asked for yields one status record: written, skipped (and why) or failed
(and why).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import apache_beam as beam
import numpy as np
from affine import Affine
from apache_beam.metrics import Metrics

from pipeline.areas import SQUARE_METRES_PER_HECTARE, pixel_areas_m2
from pipeline.rasters import classes_to_output, encode_cog, write_atomically
from pipeline.tiles import assemble_year, mining_rows_of_raster
from transforms.inference import METRICS_NAMESPACE


def cog_path(output: str, grid: str, year: int) -> str:
    """Where the COG of a (grid, year) goes (deterministic)."""
    return f"{output}/{grid}/{grid}_{year}.tif"


def row_areas_m2(geometry) -> np.ndarray:
    """True area of a pixel in each row of a (grid, year) raster (row mean in a projected CRS)."""
    transform = Affine(*geometry.transform[:6])
    areas = pixel_areas_m2(geometry.crs, transform, (geometry.height, geometry.width))
    return areas[:, 0] if areas.shape[1] == 1 else areas.mean(axis=1)


class _WriteGridYear(beam.DoFn):
    def __init__(self, output: str, years: Sequence[int], tags: Mapping[str, str], with_probability: bool, with_origin: bool):
        self._output = output
        self._years = tuple(years)
        self._tags = dict(tags)
        self._with_probability = with_probability
        self._with_origin = with_origin
        self._written = Metrics.counter(METRICS_NAMESPACE, "grid_years_written")

    def process(self, element):
        (grid, year), parts = element
        status = {"grid": grid, "year": year}
        missing = list(parts["missing"])
        dead = list(parts["dead_letter"])
        geometries = list(parts["geometry"])
        if not geometries:
            status.update(status="skipped", reason="; ".join(sorted(set(missing))) or "no export found")
            yield status
            return
        if dead:
            reasons = sorted({f"{d.get('file')}: {d.get('reason')}" for d in dead})
            status.update(status="failed", reason=f"{len(dead)} bad record(s) or shard(s): " + "; ".join(reasons[:10]))
            yield status
            return
        geometry = geometries[0]
        tiles = list(parts["tiles"])
        rasters = assemble_year(tiles, geometry.rows, geometry.patches_per_row, geometry.patch_size, self._years)
        height, width = geometry.height, geometry.width
        bands = [classes_to_output(rasters["classes"][:height, :width])]
        descriptions = ["mining_classification"]
        if self._with_probability:
            bands.append(rasters["probability"][:height, :width])
            descriptions.append("probability_x255")
        if self._with_origin:
            bands.append(rasters["origin"][:height, :width])
            descriptions.append("gapfill_origin_year")
        tags = {**self._tags, "grid": grid, "year": str(year)}
        path = cog_path(self._output, grid, year)
        write_atomically(path, encode_cog(bands, geometry.crs, Affine(*geometry.transform[:6]), tags, descriptions))
        self._written.inc()
        areas = row_areas_m2(geometry)
        rows = mining_rows_of_raster(tiles, geometry.rows, geometry.patch_size)
        status.update(
            status="written",
            path=path,
            mining_pixels={stage: int(values.sum()) for stage, values in rows.items()},
            mining_ha={stage: round(float(values[:height] @ areas) / SQUARE_METRES_PER_HECTARE, 4) for stage, values in rows.items()},
        )
        yield status


class WriteGridYears(beam.PTransform):
    """Join tiles, geometry, missing exports and dead letters per (grid, year); write COGs; emit statuses."""

    def __init__(self, output: str, years: Sequence[int], tags: Mapping[str, str], with_probability: bool, with_origin: bool):
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
                _WriteGridYear(self._output, self._years, self._tags, self._with_probability, self._with_origin)
            )
        )


def build_summary(statuses: Sequence[dict], asked: Sequence[tuple[str, int]], run_info: Mapping) -> dict:
    """The run summary: every (grid, year) asked for with its status, plus totals and run parameters."""
    by_key = {(s["grid"], s["year"]): s for s in statuses}
    entries = []
    for grid, year in asked:
        entries.append(by_key.get((grid, year), {"grid": grid, "year": year, "status": "failed", "reason": "no result reached the writer"}))
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return {**run_info, "counts": counts, "grid_years": entries}


def summary_json(summary: Mapping) -> bytes:
    """The summary as stable, human-readable JSON bytes."""
    return json.dumps(summary, indent=2, sort_keys=False).encode("utf-8")
