"""Typed pipeline options: one flag per Flex Template parameter, validated before anything runs."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.config import ModelRoute, RunConfig
from pipeline.errors import UserError
from pipeline.contract import BAND_PRESETS
from pipeline.method.filters import MODES, FilterParams
from pipeline.flags import SwitchAction
from pipeline.ranges import parse_int_list
from model.inference import PRECISIONS


SPATIAL_FILTER_PLACES = ("local", "earthengine", "off")


class MiningMapperOptions(PipelineOptions):
    """Options of the mining pipeline. Beam's own flags (--runner, Dataflow options) pass through."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--exports", help="root of the Earth Engine exports, {exports}/{grid}/{year}/ (local path or gs://; required)")
        parser.add_argument("--output", help="where the COGs and the run summary go (local path or gs://; required)")
        parser.add_argument("--grids", default="", help="grid ids: a comma list with ranges, e.g. 1010,1200-1210 (default: all under --exports)")
        parser.add_argument("--years", default="", help="years: a comma list with ranges, e.g. 1985-2023 (default: all under --exports)")
        parser.add_argument("--model", help="the national model: a serving model exported by `mining-mapper train`, or a .keras file (local path or gs://; required)")
        parser.add_argument("--model_routing", default="", help="JSON file mapping model paths to grid ids, for state models: {\"models\": [{\"path\": ..., \"grids\": [..]}]}")
        parser.add_argument("--band_preset", default="appendix", choices=sorted(BAND_PRESETS), help="the model's input bands, in order (DESIGN.md §1.2)")
        parser.add_argument("--threshold", type=float, default=0.5, help="probability at or above which a pixel is mining")
        parser.add_argument("--filter_mode", default="appendix", choices=list(MODES), help="post-classification semantics (DESIGN.md §3)")
        parser.add_argument("--min_component_size", type=int, default=10, help="spatial filter: minimum mining component, in pixels")
        parser.add_argument("--spatial_window", type=int, default=3, help="c9-code spatial filter: mode window side")
        parser.add_argument("--backfill_limit", type=int, default=3, help="gap fill: years an earlier observation may be carried forward")
        parser.add_argument("--frequency_cut", type=float, default=10.0, help="frequency filter: percent of years under which mining is dropped")
        parser.add_argument("--c9_backfill_from_index", type=int, default=32, help="c9-code gap fill: first year index back-filled from earlier years")
        parser.add_argument("--spatial_filter", default="local", choices=SPATIAL_FILTER_PLACES, help="where the spatial filter runs: here, later in Earth Engine, or not at all. The committed C9 "
                            "script (5-SpatialFilter.js) filters class 10, which never occurs in 0/30 maps, so as committed it changes "
                            "nothing: --spatial_filter off reproduces it; --filter_mode c9-code filters class 30 as its own preview line does")
        parser.add_argument("--min_batch_size", type=int, default=1, help="inference: smallest batch of patches")
        parser.add_argument("--max_batch_size", type=int, default=16, help="inference: largest batch of patches")
        parser.add_argument("--inference_tile", default="", help="large-tile inference: the core size in pixels of each tile (a multiple of the network's "
                            "pooling grid, e.g. 1024), or 'grid' for a whole grid-year at once; each tile carries the network's derived halo "
                            "and the result equals record-wise inference bit for bit in float32 (DESIGN §1.5). Empty (default): record-wise, "
                            "the model sees each kernel-buffered record (4x the core pixels for the published geometry). Needs the "
                            "serving.keras of `mining-mapper train`; exports whose buffer is smaller than the halo fall back to record-wise")
        parser.add_argument("--inference_precision", default="float32", choices=list(PRECISIONS), help="float32 (exact), or bfloat16/float16 "
                            "mixed precision (16-bit computation, float32 probabilities), XLA-compiled; a few pixels near the threshold "
                            "may change class (the benchmark reports how many)")
        parser.add_argument("--precision_check", action=SwitchAction, help="with a 16-bit --inference_precision, also infer in float32 and "
                            "report in the summary the fraction of observed pixels whose class differs (before the filters; the inference "
                            "cost doubles)")
        parser.add_argument("--inference_memory_gb", type=float, default=12.0, help="accelerator memory (GiB) one inference batch may use: "
                            "large-tile batches are cut to fit it (T4 16 GB, L4 24 GB, H200 141 GB; leave room for the runtime)")
        parser.add_argument("--export_nodata", default="-9999", help="comma list of values that mark masked pixels in the exports (besides NaN and a 0 in the first band)")
        parser.add_argument("--probability_band", action=SwitchAction, help="add the probability (p × 255) as a band of each COG")
        parser.add_argument("--origin_band", action=SwitchAction, help="add the gap-fill origin year (year − 1900) as a band of each COG")
        parser.add_argument("--overwrite", action=SwitchAction, help="replace the outputs of an earlier run in --output: once this run's set is "
                            "published, every COG, CSV and dead-letter file its summary does not list is removed (without it, a folder "
                            "holding another run's outputs is refused)")
        parser.add_argument("--require_gpu", action=SwitchAction, help="fail at start-up when no GPU is visible to TensorFlow")
        parser.add_argument("--series_timeout", type=float, default=7 * 24 * 3600.0, help="streaming: seconds after the job "
                            "starts after which a grid still missing years is reported in {output}/streaming/{grid}.json")
        parser.add_argument("--watch_interval", type=float, default=60.0, help="streaming: seconds between two listings of --exports")
        parser.add_argument("--exports_subscription", default="", help="streaming: a Pub/Sub subscription (projects/P/subscriptions/S) to "
                            "the Cloud Storage notifications (OBJECT_FINALIZE) of the exports' bucket: each new object is an event "
                            "at once, instead of listing --exports every --watch_interval (the exports present at the start are "
                            "listed once)")
        parser.add_argument("--finish_incomplete", action=SwitchAction, help="streaming: at the series timeout, filter a grid with "
                            "the years it has (missing years not observed, their COGs reported skipped)")
        parser.add_argument("--reuse_raw", default="", help="raw inference results to re-use (a folder of {grid}/{grid}_{year}.tif written by an earlier run): "
                            "grid-years whose result has the same fingerprint (model, band preset, export, inference precision) are neither "
                            "read nor inferred. Default: the output's own raw folder, {output}/raw; 'off' infers every grid-year")


def parse_inference_tile(text: str, problems: list[str]) -> int | None:
    """--inference_tile: '' → 0 (record-wise), 'grid' → None (a whole grid-year), N → N px (appends problems)."""
    text = str(text or "").strip().lower()
    if not text:
        return 0
    if text == "grid":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    problems.append(f"--inference_tile {text!r}: expected a core size in pixels (e.g. 1024) or 'grid'")
    return 0


def load_routes(national: str | None, routing_file: str) -> tuple[ModelRoute, ...]:
    """The national model plus the state models of the routing file (DESIGN.md §1.3: Minas Gerais)."""
    if not national:
        raise UserError("--model is required: the national model that classifies every grid not routed elsewhere")
    routes = [ModelRoute("national", national, ())]
    if not routing_file:
        return tuple(routes)
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(routing_file) as handle:
            config = json.loads(handle.read().decode("utf-8"))
    except Exception as error:  # noqa: BLE001 - any failure to read is the user's file
        raise UserError(f"{routing_file}: cannot read the model routing file ({error})") from None
    entries = config.get("models") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{routing_file}: expected {{\"models\": [{{\"name\", \"path\", \"grids\"}}, …]}}")
    claimed: dict[str, str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("path") or not entry.get("grids"):
            raise UserError(f"{routing_file}: models[{index}] needs a 'path' and a non-empty 'grids' list")
        name = str(entry.get("name") or f"model{index + 1}")
        grids = tuple(str(g) for g in entry["grids"])
        for grid in grids:
            if grid in claimed:
                raise UserError(f"{routing_file}: grid {grid} is routed to both {claimed[grid]} and {name}")
            claimed[grid] = name
        routes.append(ModelRoute(name, str(entry["path"]), grids))
    return tuple(routes)


def discover_grid_years(exports: str) -> dict[str, list[int]]:
    """The (grid, year) folders present under the exports root (those holding a mixer)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(exports.rstrip("/"), "*", "*", "*mixer.json")
    found: dict[str, set[int]] = {}
    for match in FileSystems.match([pattern])[0].metadata_list:
        parts = match.path.rstrip("/").split("/")
        grid, year = parts[-3], parts[-2]
        if year.isdigit():
            found.setdefault(grid, set()).add(int(year))
    return {grid: sorted(years) for grid, years in sorted(found.items(), key=lambda kv: _grid_sort_key(kv[0]))}


def _grid_sort_key(grid: str):
    return (0, int(grid), "") if grid.isdigit() else (1, 0, grid)


def check_option_values(options: PipelineOptions) -> tuple[int | None, FilterParams, tuple[float, ...]]:
    """Validate the option values alone, touching no file (so a typo is reported before any network probe):
    (inference tile, filter parameters, export no-data values); one UserError listing every problem."""
    view = options.view_as(MiningMapperOptions)
    problems: list[str] = []
    if not view.exports:
        problems.append("--exports is required")
    if not view.output:
        problems.append("--output is required")
    if not 0.0 < view.threshold < 1.0:
        problems.append(f"--threshold must be strictly between 0 and 1, not {view.threshold}")
    tile = parse_inference_tile(view.inference_tile, problems)
    if view.inference_memory_gb <= 0:
        problems.append(f"--inference_memory_gb must be positive, not {view.inference_memory_gb}")
    if view.min_batch_size < 1 or view.max_batch_size < view.min_batch_size:
        problems.append(f"--min_batch_size ({view.min_batch_size}) must be ≥ 1 and ≤ --max_batch_size ({view.max_batch_size})")
    try:
        params = FilterParams.from_arguments(view, mode=view.filter_mode)
    except ValueError as error:
        problems.append(str(error))
    try:
        nodata = tuple(float(v) for v in filter(None, (p.strip() for p in view.export_nodata.split(","))))
    except ValueError:
        problems.append(f"--export_nodata {view.export_nodata!r}: expected a comma list of numbers")
    problems += _streaming_problems(view, options.view_as(StandardOptions).streaming)
    if problems:
        raise UserError("; ".join(problems))
    return tile, params, nodata


def _streaming_problems(view: MiningMapperOptions, streaming: bool) -> list[str]:
    """What makes a streaming run unable to work (or a streaming option useless), from the values alone: the
    streaming job needs --grids and --years (its exports do not exist yet when it starts), positive seconds,
    and a subscription named in full on exports on Cloud Storage; --exports_subscription needs --streaming."""
    if not streaming:
        return ["--exports_subscription is for the streaming job: add --streaming (with --grids and --years)"] \
            if view.exports_subscription else []
    problems = []
    if not view.grids or not view.years:
        problems.append("--streaming needs --grids and --years: the series each grid waits for (its exports do not exist yet)")
    subscription = view.exports_subscription
    if subscription and not re.fullmatch(r"projects/[^/]+/subscriptions/[^/]+", subscription):
        problems.append(f"--exports_subscription {subscription!r}: expected projects/PROJECT/subscriptions/NAME")
    elif subscription and not (view.exports or "").startswith("gs://"):
        problems.append(f"--exports_subscription needs --exports on Cloud Storage (gs://…), got {view.exports}")
    if view.series_timeout <= 0 or view.watch_interval <= 0:
        problems.append(f"--series_timeout ({view.series_timeout}) and --watch_interval ({view.watch_interval}) "
                        "must be positive seconds")
    return problems


def build_config(options: PipelineOptions, discovered: dict[str, list[int]] | None = None) -> RunConfig:
    """Validate the options and resolve defaults (grids and years found under the exports)."""
    view = options.view_as(MiningMapperOptions)
    tile, params, nodata = check_option_values(options)
    routes = load_routes(view.model, view.model_routing)
    grids = [str(g) for g in parse_int_list(view.grids, "grids")]
    years = parse_int_list(view.years, "years")
    if not grids or not years:
        discovered = discover_grid_years(view.exports) if discovered is None else discovered
        if not discovered and (not grids or not years):
            raise UserError(f"nothing to do: {view.exports}: no exports found ({{grid}}/{{year}}/*mixer.json); give --grids and --years or check the path")
        grids = grids or list(discovered)
        found = sorted({y for g in grids for y in discovered.get(g, [])})
        if not years and not found:
            raise UserError(f"nothing to do: {view.exports}: no year found for grids {', '.join(grids)}")
        # The span of the years found: a year missing in the middle is reported as skipped, not dropped.
        years = years or list(range(found[0], found[-1] + 1))
    span = list(range(min(years), max(years) + 1))
    if years != span:
        raise UserError(f"--years must be consecutive for the temporal filters; missing {sorted(set(span) - set(years))}")
    return RunConfig(
        exports=view.exports.rstrip("/"),
        output=view.output.rstrip("/"),
        grids=tuple(grids),
        years=tuple(years),
        routes=routes,
        bands=BAND_PRESETS[view.band_preset],
        band_preset=view.band_preset,
        threshold=view.threshold,
        filter_params=params,
        spatial_filter=view.spatial_filter,
        min_batch_size=view.min_batch_size,
        max_batch_size=view.max_batch_size,
        inference_tile=tile,
        inference_precision=view.inference_precision,
        inference_memory_bytes=int(view.inference_memory_gb * (1 << 30)),
        precision_check=view.precision_check == "true",
        export_nodata=nodata,
        probability_band=view.probability_band == "true",
        origin_band=view.origin_band == "true",
        require_gpu=view.require_gpu == "true",
        reuse_raw=_reuse_raw(view.reuse_raw, view.output.rstrip("/")),
        overwrite=view.overwrite == "true",
    )


def _reuse_raw(value: str, output: str) -> str | None:
    """The raw folder to re-use: the given one, the output's own by default, None when turned off."""
    from pipeline.io.raw import NO_REUSE, raw_root

    value = (value or "").strip()
    if value.lower() in NO_REUSE:
        return None
    return value.rstrip("/") if value else raw_root(output)


def option_names() -> Sequence[str]:
    """The flag names this module adds (for the Flex Template metadata, which must match one-to-one)."""
    import argparse

    parser = argparse.ArgumentParser()
    MiningMapperOptions._add_argparse_args(parser)
    return [action.dest for action in parser._actions if action.dest != "help"]
