"""The whole mining job as one composite PTransform: re-use or read → classify → filter → write → summary.

Grid-years whose raw result (`{output}/raw`, or `--reuse_raw`) still matches are not read nor inferred
(transforms/raw.py); the others are, and their raw results are written. The filters and the writer see
the same (PatchKey, ClassifiedPatch) elements either way.

`pipeline/run.py` only launches it (options → config → pipeline → wait → summary); a notebook user can
apply `MiningMapperJob` to a pipeline of their own.
"""
from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.elements import DeadLetter, encode_dead_letters
from pipeline.io.filesystem import absolute_uri, publish_atomically
from pipeline.elements import GridYearStatus
from pipeline.io.run_folder import DEAD_LETTER_NAME, raw_files, remove_stale
from pipeline.io.summary import SUMMARY_NAME, RunSummary, account, now_utc
from transforms.consistency import RefuseContradictingExports, drop_refused
from transforms.filtering import FilterTiles
from transforms.inference import ClassifyPatches
from transforms.progress import LogProgress
from transforms.raw import DECISIONS, REUSED_GEOMETRY, REUSED_PATCHES, TO_READ, AnnotateInference, DecideRawReuse, WriteRawResults, model_digests
from transforms.read import DEAD_LETTER, GEOMETRY, MISSING, PATCHES, ReadEarthEngineExports
from transforms.write import TILES, WriteGridYears


def output_tags(config: RunConfig) -> dict[str, str]:
    """Tags every COG of the run carries (DESIGN.md §2)."""
    models = ";".join(f"{r.name}={absolute_uri(r.path)}" for r in config.routes)
    return {
        "model": models,
        "band_preset": config.band_preset,
        "threshold": str(config.threshold),
        "filter_mode": config.filter_params.mode,
        "inference_precision": config.inference_precision,
        "spatial_filter": config.spatial_filter if config.spatial_filter != "earthengine" else "earthengine (pending, after ingestion)",
        **config.filter_params.as_tags(),
        "software_version": __version__,
    }


def run_parameters(config: RunConfig) -> dict:
    """What the summary records about the run's inputs and parameters (paths as absolute URIs)."""
    return {
        "exports": absolute_uri(config.exports),
        "grids": list(config.grids),
        "years": list(config.years),
        "models": [{"name": r.name, "path": absolute_uri(r.path), "grids": list(r.grids)} for r in config.routes],
        "band_preset": config.band_preset,
        "threshold": config.threshold,
        "spatial_filter": config.spatial_filter,
        "filter_parameters": config.filter_params.as_dict(),
        "inference_tile": "grid" if config.inference_tile is None else config.inference_tile,
        "inference_precision": config.inference_precision,
        "precision_check": config.precision_check,
        "probability_band": config.probability_band,
        "origin_band": config.origin_band,
        "reuse_raw": absolute_uri(config.reuse_raw) if config.reuse_raw else None,
    }


def summary_path(config: RunConfig) -> str:
    """Where the run's summary goes."""
    return f"{config.output}/{SUMMARY_NAME}"


def write_run_files(statuses: list[GridYearStatus], dead_letters: list[DeadLetter], config: RunConfig, started: str,
                    command_line: Sequence[str]) -> str:
    """Publish summary.json (every grid-year asked for, with the run's manifest) and dead_letter.jsonl together,
    then remove the files of an earlier run that the manifest does not list (`run_folder.remove_stale`:
    a grid-year that failed this time keeps no older map); returns the summary path."""
    grid_years = account(statuses, config.grid_years())
    summary = RunSummary(
        command="run",
        output=absolute_uri(config.output),
        parameters=run_parameters(config),
        grid_years=grid_years,
        started=started,
        finished=now_utc(),
        command_line=list(command_line),
        dead_letters=len(dead_letters),
        outputs=run_manifest(config.output, grid_years),
    )
    publish_atomically({
        summary_path(config): summary.to_json(),
        f"{config.output}/{DEAD_LETTER_NAME}": encode_dead_letters(dead_letters),
    })
    remove_stale(config.output, summary.outputs)
    return summary_path(config)


def run_manifest(output: str, grid_years: Sequence[GridYearStatus]) -> list[str]:
    """Every file the run leaves in `output`, relative to it: written COGs, dead letters, summary, raw results."""
    prefix = absolute_uri(output).rstrip("/") + "/"  # statuses name their COGs by absolute URI
    cogs = [s.path[len(prefix):] for s in grid_years if s.status == "written" and s.path and s.path.startswith(prefix)]
    return sorted({*cogs, DEAD_LETTER_NAME, SUMMARY_NAME, *raw_files(output)})


class MiningMapperJob(beam.PTransform):
    """PBegin → the GridYearStatus of every (grid, year) asked for; writes the COGs and the run summary."""

    def __init__(self, *, config: RunConfig, started: str | None = None, command_line: Sequence[str] = ()):
        super().__init__()
        self._config = config
        self._started = started or now_utc()
        self._command_line = tuple(command_line)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        config = self._config
        # No reshuffle after reading: a run has thousands of (grid, year) elements, which already spread
        # the fused read → inference stage over the workers; a reshuffle would move every float32 record
        # (up to 512 × 512 × 6 × 4 bytes each) through the shuffle instead of the 256 × 256 uint8 classes.
        # The yearly update: grid-years whose raw result still matches are neither read nor inferred.
        decided = pbegin | "Reuse raw results" >> DecideRawReuse(config=config, digests=model_digests(config))
        read = decided[TO_READ] | "Read exports" >> ReadEarthEngineExports(
            config.exports, None, config.bands, config.export_nodata, reshuffle=False,
            per_export=config.large_tiles,
        )
        geometry = (read[GEOMETRY], decided[REUSED_GEOMETRY]) | "With reused geometry" >> beam.Flatten()
        # A grid's years are checked against each other, reused ones included (they are the majority in an update).
        contradictions = geometry | "Check geometries" >> RefuseContradictingExports(exports_root=config.exports)
        inferred = drop_refused(read[PATCHES] | "Classify" >> ClassifyPatches(config=config), contradictions)
        dead_letter = (read[DEAD_LETTER], contradictions) | "All dead letters" >> beam.Flatten()
        _ = {
            "patches": inferred,
            "geometry": read[GEOMETRY],
            "dead_letter": dead_letter,
            "decision": decided[DECISIONS],
        } | "Write raw results" >> WriteRawResults(output=config.output)
        # A re-used year can be the one refused (its raw result kept another patch size or origin).
        reused = drop_refused(decided[REUSED_PATCHES], contradictions, label="Drop refused reused years")
        classified = (inferred, reused) | "With reused patches" >> beam.Flatten()
        tiles = classified | "Filter" >> FilterTiles(
            years=config.years,
            params=config.filter_params,
            spatial=config.spatial_filter == "local",
            keep_probability=config.probability_band,
            keep_origin=config.origin_band,
        )
        written = {
            TILES: tiles,
            GEOMETRY: geometry,
            MISSING: read[MISSING],
            DEAD_LETTER: dead_letter,
        } | "Write" >> WriteGridYears(
            output=config.output,
            years=config.years,
            tags=output_tags(config),
            with_probability=config.probability_band,
            with_origin=config.origin_band,
        )
        statuses = {"status": written, "decision": decided[DECISIONS]} | "Inferred or reused" >> AnnotateInference()
        _ = statuses | "Progress" >> LogProgress(config.grid_years())
        dead_letters = dead_letter | "Dead letters" >> beam.Values()
        (
            statuses
            | "Collect statuses" >> beam.combiners.ToList()
            | "Write summary" >> beam.Map(
                write_run_files, beam.pvalue.AsList(dead_letters), config, self._started, self._command_line
            )
        )
        return statuses
