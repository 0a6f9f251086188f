"""The yearly update: keep each grid-year's raw inference result, and re-use it when nothing that made it changed.

- `DecideRawReuse`: per (grid, year) asked for, the fingerprint of what would make its probabilities (model
  digest, band preset, export identity, inference precision; `pipeline.io.raw.fingerprint`). When the
  re-use folder holds a raw result with that fingerprint, the grid-year becomes its classified patches
  (classes at this run's threshold) and its geometry directly — not read, not inferred; otherwise it goes
  on to be read and inferred. Every grid-year gets a RawDecision (reused, or inferred and why).
- `WriteRawResults`: per inferred grid-year that was read whole (no dead letter), its probability raster
  as `{output}/raw/{grid}/{grid}_{year}.tif`, tagged with the fingerprint (whatever the inference tiling:
  it is assembled from the ClassifiedPatch elements).
- `AnnotateInference`: each GridYearStatus gets its decision (for summary.json and the report).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import apache_beam as beam
from apache_beam import pvalue, typehints
from apache_beam.metrics import Metrics

from pipeline.config import RunConfig
from pipeline.elements import (
    ClassifiedPatch,
    ExportGeometry,
    GridYearKey,
    PatchKey,
    RawDecision,
)
from pipeline.io.filesystem import write_atomically
from pipeline.io.raw import (
    assemble_raw,
    encode_raw,
    find_raw,
    export_identity,
    fingerprint,
    model_digest,
    raw_path,
    raw_root,
)
from pipeline.method.tiles import patches_of_probability
from transforms.metrics import NAMESPACE

TO_READ = "to_read"
REUSED_PATCHES = "reused_patches"
REUSED_GEOMETRY = "reused_geometry"
DECISIONS = "decisions"


def grid_year_fingerprint(config: RunConfig, digests: Mapping[str, str], grid: str, year: int,
                          identity: list | None = None) -> str:
    """The fingerprint a grid-year's raw result must carry in this run (its model, preset, export, precision)."""
    identity = export_identity(config.exports, grid, year) if identity is None else identity
    return fingerprint(digests[config.route_for(grid).name], config.band_preset, config.bands, config.export_nodata,
                       identity, config.inference_precision)


def model_digests(config: RunConfig) -> dict[str, str]:
    """Route name → digest of its model's files (computed once, when the job is built)."""
    return {route.name: model_digest(route.path) for route in config.routes}


class _DecideFn(beam.DoFn):
    """GridYearKey → reused patches and geometry, or the key to read; plus its RawDecision."""

    def __init__(self, config: RunConfig, digests: Mapping[str, str]):
        super().__init__()
        self._config = config
        self._digests = dict(digests)
        self._output_raw = raw_root(config.output)
        self._reused = Metrics.counter(NAMESPACE, "grid_years_reused")
        self._reused_patches = Metrics.counter(NAMESPACE, "patches_reused")

    def process(self, key: GridYearKey):
        """Re-use the grid-year's raw result when its fingerprint matches, else send it on to be read."""
        config = self._config
        grid, year = key
        expected = grid_year_fingerprint(config, self._digests, grid, year)
        found, reason = find_raw([config.reuse_raw and raw_path(config.reuse_raw, grid, year)], grid, year, expected,
                                 keep_in=raw_path(self._output_raw, grid, year))
        if found is None:
            yield pvalue.TaggedOutput(DECISIONS, (key, RawDecision(grid, year, "inferred", expected, reason)))
            yield key
            return
        geometry, probability = found
        patches = patches_of_probability(geometry, probability, config.threshold)
        for patch in patches:
            yield pvalue.TaggedOutput(REUSED_PATCHES, (patch.key, patch))
        yield pvalue.TaggedOutput(REUSED_GEOMETRY, (key, geometry))
        yield pvalue.TaggedOutput(DECISIONS, (key, RawDecision(grid, year, "reused", expected)))
        self._reused.inc()
        self._reused_patches.inc(len(patches))


class DecideRawReuse(beam.PTransform):
    """PBegin → {to_read: GridYearKey, reused_patches: (PatchKey, ClassifiedPatch),
    reused_geometry: (GridYearKey, ExportGeometry), decisions: (GridYearKey, RawDecision)}.

    Metrics: grid_years_reused, patches_reused (namespace mining_mapper).
    """

    def __init__(self, *, config: RunConfig, digests: Mapping[str, str]):
        super().__init__()
        self._config = config
        self._digests = dict(digests)

    def expand(self, pbegin: pvalue.PBegin) -> dict[str, beam.PCollection]:
        outputs = (
            pbegin
            | "GridYears" >> beam.Create(self._config.grid_years())
            | "Decide" >> beam.ParDo(_DecideFn(self._config, self._digests)).with_outputs(
                REUSED_PATCHES, REUSED_GEOMETRY, DECISIONS, main=TO_READ)
        )
        hints = {
            TO_READ: GridYearKey,
            REUSED_PATCHES: typehints.KV[PatchKey, ClassifiedPatch],
            REUSED_GEOMETRY: typehints.KV[GridYearKey, ExportGeometry],
            DECISIONS: typehints.KV[GridYearKey, RawDecision],
        }
        for tag, hint in hints.items():
            outputs[tag].element_type = hint
        return {tag: outputs[tag] for tag in hints}


class _WriteRawFn(beam.DoFn):
    def __init__(self, output: str):
        super().__init__()
        self._root = raw_root(output)
        self._written = Metrics.counter(NAMESPACE, "raw_results_written")

    def process(self, element):
        """Write one inferred grid-year's raw result when it was read whole."""
        (grid, year), parts = element
        decisions = [d for d in parts["decision"] if d.source == "inferred"]
        geometries = list(parts["geometry"])
        if not decisions or not geometries or list(parts["dead_letter"]):
            return
        geometry = geometries[0]
        patches = list(parts["patches"])
        if len({p.index for p in patches}) != geometry.total_patches:
            return  # not every patch reached inference: nothing to re-use later
        data = encode_raw(geometry, assemble_raw(geometry, patches), decisions[0].fingerprint)
        write_atomically(raw_path(self._root, grid, year), data)
        self._written.inc()


class WriteRawResults(beam.PTransform):
    """{patches: (PatchKey, ClassifiedPatch), geometry, dead_letter, decision: keyed by GridYearKey} →
    writes `{output}/raw/{grid}/{grid}_{year}.tif` per inferred, wholly read grid-year."""

    def __init__(self, *, output: str):
        super().__init__()
        self._output = output

    def expand(self, inputs: dict[str, beam.PCollection]):
        by_grid_year = inputs["patches"] | "Key by grid-year" >> beam.Map(lambda kv: (kv[0].grid_year, kv[1])).with_output_types(
            typehints.KV[GridYearKey, ClassifiedPatch])
        return (
            {**inputs, "patches": by_grid_year}
            | "Join per grid-year" >> beam.CoGroupByKey()
            | "Write raw COG" >> beam.ParDo(_WriteRawFn(self._output))
        )


def _annotate(element):
    _, parts = element
    decisions = list(parts["decision"])
    for status in parts["status"]:
        if decisions and status.status == "written":
            decision = decisions[0]
            status = replace(status, inference=decision.source, fingerprint=decision.fingerprint, inference_reason=decision.reason)
        yield status


class AnnotateInference(beam.PTransform):
    """{status: GridYearStatus, decision: (GridYearKey, RawDecision)} → each written status with its
    `inference` (inferred / reused), `fingerprint` and `inference_reason`."""

    def expand(self, inputs: dict[str, beam.PCollection]):
        keyed = inputs["status"] | "Key statuses" >> beam.Map(lambda s: (GridYearKey.of(s), s)).with_output_types(
            typehints.KV[GridYearKey, typehints.Any])
        return (
            {"status": keyed, "decision": inputs["decision"]}
            | "Join decisions" >> beam.CoGroupByKey()
            | "Annotate" >> beam.FlatMap(_annotate)  # no output type: Beam would turn the dataclass into a schema row
        )
