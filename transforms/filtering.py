"""The post-classification chain of DESIGN.md §3 as Beam transforms over pixel tiles.

Patches are regrouped by tile (grid, patch row, patch column) across years for gap fill and the
temporal filter; each tile then sends its edge strips to the tiles whose halo they fall in, so the
spatial filter of every tile sees context wide enough to make it exactly the whole-raster filter; the
frequency filter follows per tile; finally the tiles are split back per (grid, year).
"""
from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam import typehints
from apache_beam.metrics import Metrics

from pipeline.method.filters import FilterParams
from pipeline.elements import ClassifiedPatch, GridYearKey, HaloStrip, TileKey, TileSeries, YearTile
from pipeline.method.tiles import halo_strips, spatial_frequency_tile, split_years, stack_tile_years, temporal_filter_tile
from transforms.metrics import NAMESPACE

_CORE = "core"
_STRIP = "strip"


class _TemporalFilterTile(beam.DoFn):
    def __init__(self, *, years: Sequence[int], params: FilterParams, keep_probability: bool, keep_origin: bool):
        self._years = tuple(years)
        self._params = params
        self._keep_probability = keep_probability
        self._keep_origin = keep_origin
        self._tiles = Metrics.counter(NAMESPACE, "tiles_filtered")

    def process(self, element):
        key, patches = element
        patches = list(patches)
        size = patches[0].classes.shape[0]
        tile = stack_tile_years(key.grid, key.row, key.col, self._years, patches, size, self._keep_probability)
        self._tiles.inc()
        yield temporal_filter_tile(tile, self._params, self._keep_origin)


class TemporalFilterTiles(beam.PTransform):
    """(PatchKey, ClassifiedPatch) → TileSeries after gap fill and the temporal filter."""

    def __init__(self, *, years: Sequence[int], params: FilterParams, keep_probability: bool, keep_origin: bool):
        super().__init__()
        self._years = tuple(years)
        self._params = params
        self._keep_probability = keep_probability
        self._keep_origin = keep_origin

    def expand(self, classified: beam.PCollection) -> beam.PCollection:
        return (
            classified
            | "Key by tile" >> beam.Map(lambda kv: (TileKey.of(kv[1]), kv[1])).with_output_types(
                typehints.KV[TileKey, ClassifiedPatch]
            )
            | "Group years of a tile" >> beam.GroupByKey()
            | "Gap fill and temporal" >> beam.ParDo(
                _TemporalFilterTile(
                    years=self._years, params=self._params, keep_probability=self._keep_probability, keep_origin=self._keep_origin
                )
            ).with_output_types(TileSeries)
        )


def _core(tile: TileSeries):
    return TileKey.of(tile), tile


def _strips(tile: TileSeries, halo: int):
    for (row, col), strip in halo_strips(tile, halo):
        yield TileKey(tile.grid, row, col), strip


class _SpatialFrequencyTile(beam.DoFn):
    def __init__(self, *, params: FilterParams, spatial: bool):
        self._params = params
        self._spatial = spatial
        self._counters = {
            stage: Metrics.counter(NAMESPACE, f"mining_pixels_{stage}")
            for stage in ("input", "gap_fill", "temporal", "spatial", "frequency")
        }

    def process(self, element):
        _, parts = element
        cores = list(parts[_CORE])
        strips: dict[tuple[int, int], HaloStrip] = {(s.source_row, s.source_col): s for s in parts[_STRIP]}
        # Strips addressed to a tile that does not exist (beyond the grid's edge) arrive alone: dropped.
        if cores:
            core = cores[0]
            tile = spatial_frequency_tile(core, strips.values(), self._params, self._spatial)
            for stage, values in tile.mining_rows.items():
                self._counters[stage].inc(int(values.sum()))
            yield from split_years(tile)


class SpatialFrequencyTiles(beam.PTransform):
    """TileSeries → (GridYearKey, YearTile) after the spatial (with halo) and frequency filters.

    Each tile is joined, by a named CoGroupByKey on its TileKey, with the halo strips its neighbours
    send it, so its spatial filter sees exactly the context the whole-raster filter would.
    """

    def __init__(self, *, params: FilterParams, spatial: bool):
        super().__init__()
        self._params = params
        self._spatial = spatial

    def expand(self, tiles: beam.PCollection) -> beam.PCollection:
        halo = self._params.spatial_halo if self._spatial else 0
        cores = tiles | "Key tiles" >> beam.Map(_core).with_output_types(typehints.KV[TileKey, TileSeries])
        strips = tiles | "Send halo strips" >> beam.FlatMap(_strips, halo).with_output_types(typehints.KV[TileKey, HaloStrip])
        return (
            {_CORE: cores, _STRIP: strips}
            | "Join tile with halo" >> beam.CoGroupByKey()
            | "Spatial and frequency" >> beam.ParDo(_SpatialFrequencyTile(params=self._params, spatial=self._spatial)).with_output_types(
                typehints.KV[GridYearKey, YearTile]
            )
        )


class FilterTiles(beam.PTransform):
    """The whole chain: (PatchKey, ClassifiedPatch) → (GridYearKey, YearTile), exact across tile edges."""

    def __init__(self, *, years: Sequence[int], params: FilterParams, spatial: bool, keep_probability: bool, keep_origin: bool):
        super().__init__()
        self._years = tuple(years)
        self._params = params
        self._spatial = spatial
        self._keep_probability = keep_probability
        self._keep_origin = keep_origin

    def expand(self, classified: beam.PCollection) -> beam.PCollection:
        return (
            classified
            | "Temporal" >> TemporalFilterTiles(
                years=self._years, params=self._params, keep_probability=self._keep_probability, keep_origin=self._keep_origin
            )
            | "Spatial and frequency" >> SpatialFrequencyTiles(params=self._params, spatial=self._spatial)
        )
