"""The mining pipeline: Earth Engine TFRecord exports → batched U-Net inference → filters → COGs.

    python -m pipeline.run --exports DIR --model MODEL --output DIR [--grids …] [--years …] [Beam flags]

Runs on the FnApiRunner locally (the default here; `--runner DirectRunner` is mapped to it, because
Beam's DirectRunner first tries the Prism runner, which downloads a binary) and on Dataflow
unchanged with `--runner DataflowRunner` and its options.
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.gpu import check_gpu
from pipeline.options import MiningMapperOptions, RunConfig, build_config, grid_years
from pipeline.rasters import publish_atomically
from transforms.filtering import FilterTiles
from transforms.inference import ClassifyPatches
from transforms.read import ReadEarthEngineExports
from transforms.write import WriteGridYears, build_summary, summary_json

LOCAL_RUNNERS = (None, "", "DirectRunner", "FnApiRunner", "SwitchingDirectRunner")


def output_tags(config: RunConfig) -> dict[str, str]:
    """Tags every COG of the run carries (DESIGN.md §2)."""
    from pipeline.products.cog import absolute_uri

    models = ";".join(f"{r.name}={absolute_uri(r.path)}" for r in config.routes)
    return {
        "model": models,
        "band_preset": config.band_preset,
        "threshold": str(config.threshold),
        "filter_mode": config.filter_params.mode,
        "spatial_filter": config.spatial_filter if config.spatial_filter != "earthengine" else "earthengine (pending, after ingestion)",
        **config.filter_params.as_tags(),
        "software_version": __version__,
    }


def run_info(config: RunConfig) -> dict:
    """What the summary records about the run itself."""
    return {
        "software_version": __version__,
        "exports": config.exports,
        "output": config.output,
        "grids": list(config.grids),
        "years": list(config.years),
        "models": [{"name": r.name, "path": r.path, "grids": list(r.grids)} for r in config.routes],
        "band_preset": config.band_preset,
        "threshold": config.threshold,
        "spatial_filter": config.spatial_filter,
        "filter_parameters": config.filter_params.as_tags(),
    }


def _write_run_files(statuses: list[dict], dead_letters: list[dict], config: RunConfig) -> str:
    summary = build_summary(sorted(statuses, key=lambda s: (s["grid"], s["year"])), grid_years(config), run_info(config))
    summary["dead_letters"] = len(dead_letters)
    dead = sorted(dead_letters, key=lambda d: (d["grid"], d["year"], d["file"], -1 if d["record"] is None else d["record"]))
    publish_atomically({
        f"{config.output}/summary.json": summary_json(summary),
        f"{config.output}/dead_letter.jsonl": "".join(json.dumps(d) + "\n" for d in dead).encode(),
    })
    return f"{config.output}/summary.json"


def build(pipeline: beam.Pipeline, config: RunConfig) -> beam.PCollection:
    """Add the whole job to `pipeline`; returns the PCollection of per-(grid, year) statuses."""
    # No reshuffle after reading: a run has thousands of (grid, year) elements, which already spread
    # the fused read → inference stage over the workers; a reshuffle would move every float32 record
    # (up to 512 × 512 × 6 × 4 bytes each) through the shuffle instead of the 256 × 256 uint8 classes.
    read = pipeline | "Read exports" >> ReadEarthEngineExports(
        config.exports, grid_years(config), config.bands, config.export_nodata, reshuffle=False
    )
    classified = read["patches"] | "Classify" >> ClassifyPatches(
        config.routes, config.threshold, config.min_batch_size, config.max_batch_size, config.require_gpu
    )
    tiles = classified | "Filter" >> FilterTiles(
        config.years, config.filter_params, config.spatial_filter == "local", config.probability_band, config.origin_band
    )
    dead_letters = read["dead_letter"]
    statuses = {
        "tiles": tiles,
        "geometry": read["geometry"],
        "missing": read["missing"],
        "dead_letter": dead_letters | "Key dead letters" >> beam.Map(lambda d: ((d["grid"], d["year"]), d)),
    } | "Write" >> WriteGridYears(
        config.output, config.years, output_tags(config), config.probability_band, config.origin_band
    )
    (
        statuses
        | "Collect statuses" >> beam.combiners.ToList()
        | "Write summary" >> beam.Map(_write_run_files, beam.pvalue.AsList(dead_letters), config)
    )
    return statuses


def run(argv: Sequence[str] | None = None) -> dict:
    """Validate the options, run the pipeline, wait, and return the summary (local runs)."""
    options = PipelineOptions(list(argv) if argv is not None else sys.argv[1:])
    standard = options.view_as(StandardOptions)
    local = standard.runner in LOCAL_RUNNERS
    if local:  # inference runs in this process: check before reading anything
        check_gpu(options.view_as(MiningMapperOptions).require_gpu == "true")
    config = build_config(options)
    runner = None
    if local:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
    else:
        options.view_as(SetupOptions).save_main_session = False
    logging.info("running %d grid(s) × %d year(s) on %s", len(config.grids), len(config.years), standard.runner or "FnApiRunner")
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        build(pipeline, config)
    result = pipeline.result
    summary_path = f"{config.output}/summary.json"
    if runner is None:
        return {"summary": summary_path}
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(summary_path) as handle:
        summary = json.loads(handle.read())
    summary["metrics"] = _metrics(result)
    publish_atomically({summary_path: summary_json(summary)})
    return summary


def _metrics(result) -> dict[str, int]:
    counters = result.metrics().query()["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        if counter.key.metric.namespace.startswith("mining_mapper"):
            totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(counter.committed or counter.attempted or 0)
    return dict(sorted(totals.items()))


def print_help() -> None:
    """The pipeline's own options (Beam's flags, e.g. --runner, are accepted too)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="mining-mapper run",
        description="Earth Engine TFRecord exports → U-Net inference → post-classification filters → COGs.",
        epilog="Beam's own flags pass through: --runner DataflowRunner --project … --region … --temp_location …",
    )
    MiningMapperOptions._add_argparse_args(parser)
    parser.print_help()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pipeline.run` and `mining-mapper run`: prints where the outputs are."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(argv)
    except UserError as error:
        print(f"mining-mapper run: error: {error}", file=sys.stderr)
        return 2
    if "grid_years" in summary:
        counts = summary.get("counts", {})
        print(f"COGs: {summary['output']}/{{grid}}/{{grid}}_{{year}}.tif  ({counts})")
        print(f"summary: {summary['output']}/summary.json")
    else:
        print(f"submitted; summary will be at {summary['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
