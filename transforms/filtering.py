"""The post-classification chain of DESIGN.md §3 as Beam transforms over pixel tiles.

Patches are regrouped by tile (grid, patch row, patch column) across years for gap fill and the
temporal filter; each tile then sends its edge strips to the tiles whose halo they fall in, so the
spatial filter of every tile sees context wide enough to make it exactly the whole-raster filter; the
frequency filter follows per tile; finally the tiles are split back per (grid, year).
"""
from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.filters import FilterParams
from pipeline.tiles import (
    HaloStrip,
    TileSeries,
    halo_strips,
    spatial_frequency_tile,
    split_years,
    stack_tile_years,
    temporal_filter_tile,
)
from transforms.inference import METRICS_NAMESPACE

_CORE = "core"
_STRIP = "strip"


class _TemporalFilterTile(beam.DoFn):
    def __init__(self, years: Sequence[int], params: FilterParams, keep_probability: bool, keep_origin: bool):
        self._years = tuple(years)
        self._params = params
        self._keep_probability = keep_probability
        self._keep_origin = keep_origin
        self._tiles = Metrics.counter(METRICS_NAMESPACE, "tiles_filtered")

    def process(self, element):
        (grid, row, col), patches = element
        patches = list(patches)
        size = patches[0].classes.shape[0]
        tile = stack_tile_years(grid, row, col, self._years, patches, size, self._keep_probability)
        self._tiles.inc()
        yield temporal_filter_tile(tile, self._params, self._keep_origin)


class TemporalFilterTiles(beam.PTransform):
    """((grid, year, index), ClassifiedPatch) → TileSeries after gap fill and the temporal filter."""

    def __init__(self, years: Sequence[int], params: FilterParams, keep_probability: bool, keep_origin: bool):
        super().__init__()
        self._years = tuple(years)
        self._params = params
        self._keep_probability = keep_probability
        self._keep_origin = keep_origin

    def expand(self, classified: beam.PCollection) -> beam.PCollection:
        return (
            classified
            | "Key by tile" >> beam.Map(lambda kv: ((kv[1].grid, kv[1].row, kv[1].col), kv[1]))
            | "Group years of a tile" >> beam.GroupByKey()
            | "Gap fill and temporal" >> beam.ParDo(
                _TemporalFilterTile(self._years, self._params, self._keep_probability, self._keep_origin)
            )
        )


def _emit_core_and_strips(tile: TileSeries, halo: int):
    key = (tile.grid, tile.row, tile.col)
    yield key, (_CORE, tile)
    if halo:
        for (row, col), strip in halo_strips(tile, halo):
            yield (tile.grid, row, col), (_STRIP, strip)


class _SpatialFrequencyTile(beam.DoFn):
    def __init__(self, params: FilterParams, spatial: bool):
        self._params = params
        self._spatial = spatial
        self._counters = {
            stage: Metrics.counter(METRICS_NAMESPACE, f"mining_pixels_{stage}")
            for stage in ("input", "gap_fill", "temporal", "spatial", "frequency")
        }

    def process(self, element):
        _, parts = element
        core: TileSeries | None = None
        strips: dict[tuple[int, int], HaloStrip] = {}
        for kind, value in parts:
            if kind == _CORE:
                core = value
            else:
                strips[(value.source_row, value.source_col)] = value
        # Strips addressed to a tile that does not exist (beyond the grid's edge) arrive alone: dropped.
        if core is not None:
            tile = spatial_frequency_tile(core, strips.values(), self._params, self._spatial)
            for stage, values in tile.mining_rows.items():
                self._counters[stage].inc(int(values.sum()))
            yield from split_years(tile)


class SpatialFrequencyTiles(beam.PTransform):
    """TileSeries → ((grid, year), YearTile) after the spatial (with halo) and frequency filters."""

    def __init__(self, params: FilterParams, spatial: bool):
        super().__init__()
        self._params = params
        self._spatial = spatial

    def expand(self, tiles: beam.PCollection) -> beam.PCollection:
        halo = self._params.spatial_halo if self._spatial else 0
        return (
            tiles
            | "Send halo strips" >> beam.FlatMap(_emit_core_and_strips, halo)
            | "Group tile with halo" >> beam.GroupByKey()
            | "Spatial and frequency" >> beam.ParDo(_SpatialFrequencyTile(self._params, self._spatial))
        )


class FilterTiles(beam.PTransform):
    """The whole chain: classified patches → ((grid, year), YearTile), exact across tile edges."""

    def __init__(self, years: Sequence[int], params: FilterParams, spatial: bool, keep_probability: bool, keep_origin: bool):
        super().__init__()
        self._years = tuple(years)
        self._params = params
        self._spatial = spatial
        self._keep_probability = keep_probability
        self._keep_origin = keep_origin

    def expand(self, classified: beam.PCollection) -> beam.PCollection:
        return (
            classified
            | "Temporal" >> TemporalFilterTiles(self._years, self._params, self._keep_probability, self._keep_origin)
            | "Spatial and frequency" >> SpatialFrequencyTiles(self._params, self._spatial)
        )
