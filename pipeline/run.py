"""The launcher of the mining pipeline: options → config → pipeline → wait → summary.

    python -m pipeline.run --exports DIR --model MODEL --output DIR [--grids …] [--years …] [Beam flags]

The job itself is `transforms.job.MiningMapperJob`. Runs on the FnApiRunner locally (the default here;
`--runner DirectRunner` is mapped to it, because Beam's DirectRunner first tries the Prism runner, which
downloads a binary) and on Dataflow unchanged with `--runner DataflowRunner` and its options.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from model.gpu import check_gpu
from pipeline.console import QUIET, VERBOSE, configure_logging, import_tensorflow_quietly, run_table, verbosity_of
from pipeline.errors import EXIT_FAILED, EXIT_OK, EXIT_STATUS_HELP, UserError
from pipeline.failures import report
from pipeline.flags import HelpFormatter, check_run_argv
from pipeline.io.filesystem import local_or_remote, publish_atomically, read_bytes
from pipeline.io.run_folder import claim_output, release_lock
from pipeline.io.summary import RunSummary, command_line, now_utc
from pipeline.modelcheck import check_models
from pipeline.options import MiningMapperOptions, build_config, check_option_values, discover_grid_years
from transforms.job import MiningMapperJob, summary_path
from transforms.metrics import NAMESPACE

LOCAL_RUNNERS = (None, "", "DirectRunner", "FnApiRunner", "SwitchingDirectRunner")


def run(argv: Sequence[str] | None = None) -> dict:
    """Validate the options, run the pipeline, wait, and return the summary as a dict (local runs).

    Unknown flags and stray values are refused first (`pipeline.flags.check_run_argv`); the GPU (local
    runs), every model (there, readable, fitting the preset and the exports' records: `check_models`) and
    that there is something to do are checked before anything is read; then the output
    folder is claimed (`pipeline.io.run_folder.claim_output`: refused if it holds another run without
    --overwrite, locked while the run writes).
    """
    arguments = check_run_argv(list(argv) if argv is not None else sys.argv[1:])
    options = PipelineOptions(arguments)
    check_option_values(options)  # values first: a typo is not blamed on the network
    probe_cloud_paths(options)
    standard = options.view_as(StandardOptions)
    local = standard.runner in LOCAL_RUNNERS
    if local:  # inference runs in this process: check before reading anything
        import_tensorflow_quietly()
        check_gpu(options.view_as(MiningMapperOptions).require_gpu == "true")
    streaming = standard.streaming
    # One listing of the exports, after the checks that need none; a streaming job starts before they exist.
    discovered = None if streaming else discover_grid_years(options.view_as(MiningMapperOptions).exports)
    config = build_config(options, discovered)
    check_models(config, discovered)
    if discovered is not None:
        check_something_to_do(config, discovered)
    lock = claim_output(config.output, "run", config.overwrite, clean=local)
    try:
        return _run_pipeline(options, arguments, argv, config, runner_name=standard.runner, local=local)
    finally:  # a submitted job is not waited for: the lock guards the launch, the refusal holds for both
        release_lock(lock)


def _run_pipeline(options, arguments, argv, config, *, runner_name, local: bool) -> dict:
    """Build and run the job (waiting for it on a local runner); the summary as a dict, or where it will be."""
    runner = None
    if local:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
    else:
        options.view_as(SetupOptions).save_main_session = False
    streaming = options.view_as(StandardOptions).streaming
    where = runner_name if not local else "LocalStreamingRunner" if streaming else "FnApiRunner"
    logging.getLogger(__name__).info("running %d grid(s) × %d year(s) on %s", len(config.grids), len(config.years), where)
    started = now_utc()
    recorded = command_line() if argv is None else ["mining-mapper", "run", *arguments]
    if streaming:
        view = options.view_as(MiningMapperOptions)
        if local:
            return _run_streaming_locally(options, config, view, started, recorded)
        return _run_streaming(options, config, view, started, recorded)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        _ = pipeline | "Mining mapper" >> MiningMapperJob(config=config, started=started, command_line=recorded)
    result = pipeline.result
    path = summary_path(config)
    if runner is None:
        return {"summary": path, "job": _job_id(result)}
    summary = RunSummary.from_json(read_bytes(path), path)
    summary.metrics = _metrics(result)
    if summary.metrics.get("precision_check_pixels"):
        pixels, changed = summary.metrics["precision_check_pixels"], summary.metrics.get("precision_check_class_changes", 0)
        summary.precision_check = {"pixels": pixels, "class_changes": changed, "fraction": changed / pixels}
    publish_atomically({path: summary.to_json()})
    return summary.as_dict()


def _streaming_job(config, view, started: str, recorded: Sequence[str], *, local: bool):
    """The streaming job's composite transform for these options."""
    from transforms.streaming import StreamingJob

    return StreamingJob(config=config, series_timeout=view.series_timeout, finish_incomplete=view.finish_incomplete == "true",
                        watch_interval=view.watch_interval, exports_subscription=view.exports_subscription, local=local,
                        started=started, command_line=recorded)


def _run_streaming(options, config, view, started: str, recorded: Sequence[str]) -> dict:
    """Submit the streaming job (transforms/streaming.py) to Dataflow; returns where its summary will be
    (rebuilt as grids complete; each grid's state is in {output}/streaming/{grid}.json)."""
    with beam.Pipeline(options=options) as pipeline:
        _ = pipeline | "Streaming job" >> _streaming_job(config, view, started, recorded, local=False)
    return {"summary": summary_path(config), "job": _job_id(pipeline.result)}


def _run_streaming_locally(options, config, view, started: str, recorded: Sequence[str]) -> dict:
    """Run the streaming job in this process on Beam's BundleBasedDirectRunner (the FnApiRunner has no
    streaming mode), watching --exports every --watch_interval seconds, and stop it once every asked grid is
    settled: filtered, or reported at its series timeout (counted from now; finished too with
    --finish_incomplete). Prints a line per grid as it settles; returns the summary the job last wrote."""
    import threading
    import time

    from transforms.streaming import LocalStreamingRunner, grids_settled

    log = logging.getLogger(__name__)
    pipeline = beam.Pipeline(runner=LocalStreamingRunner(), options=options)
    _ = pipeline | "Streaming job" >> _streaming_job(config, view, started, recorded, local=True)
    since = time.time()  # status files of an earlier run over this output do not count
    result = pipeline.run(test_runner_api=False)
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            result.wait_until_finish()
        except BaseException as error:  # noqa: BLE001 - handed to the launching thread
            failures.append(error)

    waiter = threading.Thread(target=wait, name="streaming job", daemon=True)
    waiter.start()
    log.info("streaming: watching %s every %g s for %d grid(s) × %d year(s); stops once every grid is filtered or "
             "reported at its series timeout (%g s)", config.exports, view.watch_interval, len(config.grids),
             len(config.years), view.series_timeout)
    settled: dict[str, str] = {}
    try:
        while waiter.is_alive() and len(settled) < len(config.grids):
            time.sleep(min(view.watch_interval, 0.5))
            for grid, state in sorted(grids_settled(config.output, config.grids, since).items()):
                if grid not in settled:
                    settled[grid] = state
                    log.info("%s %d/%d grids (%.0f s)  %s", state, len(settled), len(config.grids), time.time() - since, grid)
    finally:
        if waiter.is_alive():
            result.cancel()
    if failures:
        raise failures[0]
    path = summary_path(config)
    return RunSummary.from_json(read_bytes(path), path).as_dict()


def check_something_to_do(config, discovered: dict[str, list[int]]) -> None:
    """Refuse a run none of whose asked grid-years has an export (a usage error: nothing to do).

    `discovered` is the run's one listing of `{exports}/*/*/*mixer.json` (`discover_grid_years`); a run
    with at least one export goes ahead, and the asked grid-years without one are reported as skipped in
    its summary.
    """
    if not any(year in discovered.get(grid, ()) for grid, year in config.grid_years()):
        grids = ", ".join(config.grids[:10]) + (", …" if len(config.grids) > 10 else "")
        years = f"{config.years[0]}-{config.years[-1]}"
        raise UserError(f"nothing to do: {config.exports} holds no export (*mixer.json) for grid(s) {grids} in {years}; "
                        "check --exports, --grids and --years")


def exit_status(summary: dict) -> int:
    """The exit status of a finished run: EXIT_FAILED when any grid-year failed, else EXIT_OK.

    A submitted (not waited for) job has no counts yet and is EXIT_OK.
    """
    return EXIT_FAILED if summary.get("counts", {}).get("failed") else EXIT_OK


def probe_cloud_paths(options: PipelineOptions) -> None:
    """Probe every gs:// input (list) and output (write) once before anything else, so that missing network or
    credentials is one line within seconds instead of minutes of retries deep in the pipeline."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from pipeline.preflight import probe_storage

    view, cloud = options.view_as(MiningMapperOptions), options.view_as(GoogleCloudOptions)
    # --reuse_raw as given: its words for "off" (pipeline.io.raw.NO_REUSE) are no gs:// path, which
    # probe_storage skips as it skips local paths.
    probe_storage(
        [view.exports, view.model, view.model_routing or None, view.reuse_raw],
        [view.output, cloud.temp_location, cloud.staging_location],
        project=cloud.project,
    )


def _job_id(result) -> str | None:
    """The runner's id of a submitted job (Dataflow's), or None when the runner has none."""
    try:
        return str(result.job_id())
    except Exception:  # noqa: BLE001 - a runner without job ids
        return None


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
        epilog="Beam's own flags pass through: --runner DataflowRunner --project … --region … --temp_location …; "
               "any other flag is refused. Every flag may be spelled with hyphens or underscores "
               "(--band-preset = --band_preset); true/false flags are switches too (--origin-band, --no-origin-band). "
               "--streaming (Beam's flag, with --grids and --years): the streaming job, which infers each export as it lands and "
               "filters each grid when its series is complete; on Dataflow it runs until drained (templates/README.md), "
               "locally it watches --exports and stops once every grid is filtered or reported at its --series_timeout. "
               + EXIT_STATUS_HELP,
        formatter_class=HelpFormatter,
    )
    MiningMapperOptions._add_argparse_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="show everything: Beam's INFO lines, ours at DEBUG")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.print_help()


def main(argv: Sequence[str] | None = None, verbosity: int | None = None) -> int:
    """Entry point of `python -m pipeline.run` and `mining-mapper run`: ends with the run's table.

    Returns the exit status (`pipeline.errors`): 0 when every grid-year asked for was written or
    skipped for want of an export, 3 when any failed (the summary is written all the same), 2 for a
    usage error, including nothing to do.

    -v / -q may come anywhere in `argv` (they are not pipeline options); `verbosity` is the one the
    `mining-mapper` command already parsed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    flags = {"-v", "--verbose", "-q", "--quiet"}
    if verbosity is None or flags & set(argv):
        verbosity = verbosity_of(bool({"-v", "--verbose"} & set(argv)), bool({"-q", "--quiet"} & set(argv)))
    argv = [arg for arg in argv if arg not in flags]
    configure_logging(verbosity)
    try:
        summary = run(argv)
    except Exception as error:  # people's mistakes become one line (a read-only output too); bugs keep their traceback
        status = report(error, "run", verbosity >= VERBOSE)
        if status is None:
            raise
        return status
    if verbosity > QUIET:
        if "grid_years" in summary:
            print(run_table(summary))
        else:
            job = f" job {summary['job']}" if summary.get("job") else ""
            print(f"submitted{job}; summary will be at {summary['summary']}")
    status = exit_status(summary)
    if status == EXIT_FAILED:
        failed = summary["counts"]["failed"]
        print(f"mining-mapper run: {failed} grid-year(s) failed; see {local_or_remote(summary['output'])}/summary.json "
              "and dead_letter.jsonl", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
