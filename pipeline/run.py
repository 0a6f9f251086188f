"""The mining pipeline: Earth Engine TFRecord exports → batched U-Net inference → filters → COGs.

    python -m pipeline.run --exports DIR --model MODEL --output DIR [--grids …] [--years …] [Beam flags]

Runs on the FnApiRunner locally (the default here; `--runner DirectRunner` is mapped to it, because
Beam's DirectRunner first tries the Prism runner, which downloads a binary) and on Dataflow
unchanged with `--runner DataflowRunner` and its options.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from pipeline.errors import UserError
from model.gpu import check_gpu
from pipeline.io.filesystem import publish_atomically, read_bytes
from pipeline.io.summary import RunSummary, command_line, now_utc
from pipeline.options import MiningMapperOptions, build_config
from transforms.job import MiningMapperJob, summary_path
from transforms.metrics import NAMESPACE

LOCAL_RUNNERS = (None, "", "DirectRunner", "FnApiRunner", "SwitchingDirectRunner")


def run(argv: Sequence[str] | None = None) -> dict:
    """Validate the options, run the pipeline, wait, and return the summary as a dict (local runs)."""
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
    started, arguments = now_utc(), command_line() if argv is None else ["mining-mapper", "run", *argv]
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        _ = pipeline | "Mining mapper" >> MiningMapperJob(config=config, started=started, command_line=arguments)
    result = pipeline.result
    path = summary_path(config)
    if runner is None:
        return {"summary": path}
    summary = RunSummary.from_json(read_bytes(path), path)
    summary.metrics = _metrics(result)
    publish_atomically({path: summary.to_json()})
    return summary.as_dict()


def _metrics(result) -> dict[str, int]:
    counters = result.metrics().query()["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        if counter.key.metric.namespace.startswith(NAMESPACE):
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
