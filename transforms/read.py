"""READ stage: Earth Engine TFRecord exports → keyed patches, geometries, dead letters (DESIGN §2).

A thin Beam shell over `pipeline.io.export_reader.read_export`: one element per (grid, year) reads that export's
mixer and shards in order (streaming, one record at a time) and routes what it finds to four outputs.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam import pvalue, typehints
from apache_beam.metrics import Metrics

from pipeline.contract import DEFAULT_NODATA
from pipeline.elements import DeadLetter, ExportGeometry, ExportPatch, GridYearKey, GridYearRecords, MissingExport, PatchKey
from pipeline.io.export_layout import export_dir_of
from pipeline.io.export_reader import read_export
from transforms.metrics import READ_NAMESPACE

PATCHES = "patches"
GEOMETRY = "geometry"
DEAD_LETTER = "dead_letter"
MISSING = "missing"


class _ReadExportFn(beam.DoFn):
    """(grid, year) → patches (main output) and tagged geometry / dead_letter / missing outputs."""

    def __init__(
        self,
        exports_root: str,
        bands: tuple[str, ...],
        nodata_values: tuple[float, ...],
        kernel: int | None,
        fill_value: float | None,
        per_export: bool = False,
    ):
        super().__init__()
        self._per_export = per_export
        self._root = exports_root
        self._bands = bands
        self._nodata = nodata_values
        self._kernel = kernel
        self._fill = fill_value
        self._patches = Metrics.counter(READ_NAMESPACE, "patches_read")
        self._not_observed = Metrics.counter(READ_NAMESPACE, "not_observed_pixels")
        self._out_of_range = Metrics.counter(READ_NAMESPACE, "out_of_range_pixels")
        self._dead = Metrics.counter(READ_NAMESPACE, "dead_letters")
        self._missing = Metrics.counter(READ_NAMESPACE, "missing_exports")
        self._exports = Metrics.counter(READ_NAMESPACE, "exports_read")

    def process(self, element: GridYearKey) -> Iterator:
        """Read one (grid, year) export, routing each event to its output and counting it."""
        grid, year = element
        export_dir = export_dir_of(self._root, grid, year)
        patches: list[ExportPatch] = []
        for event in read_export(
            export_dir, grid, year, self._bands, self._nodata, kernel=self._kernel, fill_value=self._fill
        ):
            if isinstance(event, ExportPatch):
                self._patches.inc()
                _, core_observed = event.core()
                self._not_observed.inc(int(core_observed.size - int(core_observed.sum())))
                if event.out_of_range:
                    self._out_of_range.inc(event.out_of_range)
                if self._per_export:
                    patches.append(event)
                else:
                    yield (event.key, event)
            elif isinstance(event, ExportGeometry):
                self._exports.inc()
                if self._per_export and patches:  # the geometry comes last, with the kernel read from the records
                    yield (GridYearKey.of(event), GridYearRecords(event, tuple(patches)))
                yield pvalue.TaggedOutput(GEOMETRY, (GridYearKey.of(event), event))
            elif isinstance(event, DeadLetter):
                self._dead.inc()
                yield pvalue.TaggedOutput(DEAD_LETTER, (GridYearKey.of(event), event))
            elif isinstance(event, MissingExport):
                self._missing.inc()
                yield pvalue.TaggedOutput(MISSING, (GridYearKey.of(event), event))
            else:  # pragma: no cover - read_export yields only the four kinds
                raise TypeError(f"unexpected read event {event!r}")


class ReadEarthEngineExports(beam.PTransform):
    """Read the Earth Engine exports `{exports_root}/{grid}/{year}/` of the given (grid, year) pairs (or,
    applied to a PCollection of GridYearKey, of its elements).

    Returns a dict of PCollections:
      - "patches": (PatchKey, ExportPatch), bands in `bands` order with the kernel
        buffer kept (the model sees the context; crop after inference with `ExportPatch.core()` or
        `pipeline.contract.crop_buffer`), not-observed pixels filled with `fill_value`;
      - "geometry": (GridYearKey, ExportGeometry) for every export whose mixer was read;
      - "dead_letter": (GridYearKey, DeadLetter) for every bad record, unreadable shard, shard that
        cannot be placed, and record-count mismatch with the mixer (the file and the reason);
      - "missing": (GridYearKey, MissingExport) when the export folder or its mixer is absent.
    Metrics (namespace "mining_mapper.read"): patches_read, not_observed_pixels (in the unbuffered
    patches), out_of_range_pixels (of those, the ones with a band outside the preset's stored range),
    dead_letters, missing_exports, exports_read.

    `per_export` puts one (GridYearKey, GridYearRecords) per export on "patches" instead of one element
    per record (large-tile inference assembles each grid-year; the records stay on the worker that read them).

    `kernel` (even) makes the record size a check (records must be patch + kernel square); by default it
    is read from each export's records. `reshuffle` redistributes the patches after reading, so that
    the heavy steps downstream (inference) are not fused to the one worker that read an export.
    """

    def __init__(
        self,
        exports_root: str,
        grid_years: Iterable[tuple[str, int]] | None,
        bands: Sequence[str],
        nodata_values: Sequence[float] = DEFAULT_NODATA,
        *,
        kernel: int | None = None,
        fill_value: float | None = 0.0,
        reshuffle: bool = True,
        per_export: bool = False,
        label: str | None = None,
    ):
        super().__init__(label)
        bands = tuple(bands)
        if not bands:
            raise ValueError("ReadEarthEngineExports needs at least one band")
        if len(set(bands)) != len(bands):
            raise ValueError(f"duplicate band names in {bands}")
        if kernel is not None and (kernel < 0 or kernel % 2):
            raise ValueError(f"kernel must be even and >= 0, got {kernel}")
        self._root = str(exports_root)
        self._grid_years = None if grid_years is None else sorted({(str(grid), int(year)) for grid, year in grid_years})
        self._bands = bands
        self._nodata = tuple(float(v) for v in nodata_values)
        self._kernel = kernel
        self._fill = fill_value
        self._reshuffle = reshuffle
        self._per_export = per_export

    def expand(self, pbegin: pvalue.PBegin | beam.PCollection) -> dict[str, beam.PCollection]:
        """(grid, year) elements → one read per export → the four outputs (patches reshuffled if asked).

        Applied to a pipeline, it reads the `grid_years` given; applied to a PCollection of GridYearKey
        (the grid-years left to infer, transforms/raw.py), it reads those, and `grid_years` must be None.
        """
        keys = pbegin
        if isinstance(pbegin, pvalue.PBegin):
            if self._grid_years is None:
                raise ValueError("ReadEarthEngineExports applied to a pipeline needs the grid_years to read")
            keys = pbegin | "GridYears" >> beam.Create([GridYearKey(grid, year) for grid, year in self._grid_years])
        elif self._grid_years is not None:
            raise ValueError("ReadEarthEngineExports applied to a PCollection reads its GridYearKey elements: pass grid_years=None")
        outputs = (
            keys
            | "ReadExports"
            >> beam.ParDo(
                _ReadExportFn(self._root, self._bands, self._nodata, self._kernel, self._fill, self._per_export)
            ).with_outputs(GEOMETRY, DEAD_LETTER, MISSING, main=PATCHES)
        )
        keyed = {
            PATCHES: typehints.KV[GridYearKey, GridYearRecords] if self._per_export else typehints.KV[PatchKey, ExportPatch],
            GEOMETRY: typehints.KV[GridYearKey, ExportGeometry],
            DEAD_LETTER: typehints.KV[GridYearKey, DeadLetter],
            MISSING: typehints.KV[GridYearKey, MissingExport],
        }
        for tag, hint in keyed.items():
            outputs[tag].element_type = hint
        patches = outputs[PATCHES]
        if self._reshuffle:
            patches = patches | "SpreadPatches" >> beam.Reshuffle()
        return {
            PATCHES: patches,
            GEOMETRY: outputs[GEOMETRY],
            DEAD_LETTER: outputs[DEAD_LETTER],
            MISSING: outputs[MISSING],
        }
