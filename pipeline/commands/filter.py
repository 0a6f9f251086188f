"""`mining-mapper filter`: the post-classification chain over a folder of annual rasters."""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

NAME = "filter"
HELP = "Apply gap fill → temporal → spatial → frequency filters (DESIGN.md §3) to annual rasters; write COGs."
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("inputs",)
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the filter command; the filter parameters mirror `pipeline.method.filters.FilterParams`."""
    parser.add_argument("inputs", nargs="+", help="annual GeoTIFFs: a folder, a glob pattern or files (year in the name or a 'year' tag)")
    parser.add_argument("--output", required=True, help="output folder (local path or gs://)")
    parser.add_argument("--class-value", type=int, default=30, help="input value meaning mining; other valid values are not mining (default 30)")
    parser.add_argument("--nodata-value", type=float, action="append", default=[], help="extra input value meaning not observed (repeatable); the raster's own nodata always counts")
    parser.add_argument("--years", help="years to use, START-END or a comma list; all of them must be present")
    parser.add_argument("--filter-mode", choices=["appendix", "c9-code"], default="appendix", help="filter semantics (DESIGN.md §3)")
    parser.add_argument("--min-component-size", type=int, default=10, help="spatial filter: smaller 8-connected mining components are removed (default 10). "
                        "The committed C9 script (5-SpatialFilter.js) filters class 10, which never occurs in 0/30 maps, so as committed it "
                        "changes nothing; --min-component-size 1 (no component is smaller: the spatial filter off) reproduces it, "
                        "while --filter-mode c9-code filters class 30 as the script's own preview line does")
    parser.add_argument("--spatial-window", type=int, default=3, help="c9-code spatial filter: mode window size (default 3)")
    parser.add_argument("--backfill-limit", type=int, default=3, help="gap fill: how many years back an earlier observation may be taken (default 3)")
    parser.add_argument("--frequency-cut", type=float, default=10.0, help="frequency filter: percent of years under which mining is removed (default 10)")
    parser.add_argument("--c9-backfill-from-index", type=int, default=32, help="c9-code gap fill: first year index that back-fills from earlier years (default 32, as published)")
    parser.add_argument("--origin-band", action="store_true", help="add a second band with the gap-fill origin year (year − 1900; 255 none)")
    parser.add_argument("--grid", default=None, help="grid id recorded in the output tags")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output: once this run's "
                        "COGs, areas.csv and summary.json are published, every COG or CSV of ours they do not list is removed "
                        "(without it, a folder holding another run's outputs is refused)")
    parser.add_argument("--prefix", default="mining", help="output file name prefix: PREFIX_YEAR.tif (default 'mining')")


def _progress(quiet: bool):
    start = time.monotonic()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def run(args: argparse.Namespace) -> int:
    """Read, filter, and publish the COGs, areas.csv and summary.json all at once (or nothing).

    The output folder is one run (`pipeline.io.run_folder`): another run's folder is refused without
    --overwrite, the folder is locked while this run writes, and with --overwrite whatever of ours the new
    summary's manifest does not list is removed once the new set is published.
    """
    from pipeline.errors import UserError
    from pipeline.method.filters import FilterParams
    from pipeline.io.run_folder import claim_output, release_lock
    from pipeline.io.summary import now_utc

    say = _progress(args.quiet)
    started = now_utc()
    try:
        params = FilterParams.from_arguments(args, mode=args.filter_mode)
    except ValueError as error:
        raise UserError(str(error)) from None
    lock = claim_output(args.output, "filter", args.overwrite)
    try:
        return _filter(args, params, started, say)
    finally:
        release_lock(lock)


def _filter(args: argparse.Namespace, params, started: str, say) -> int:
    """The filter run proper, once the output folder is ours."""
    from pipeline.method.areas import PixelAreas, hectares_per_year
    from pipeline.method.filters import STAGES, apply_chain
    from pipeline.ranges import parse_years
    from pipeline.contract import origin_to_band
    from pipeline.io.cog import classification_bands, encode_cog
    from pipeline.io.filesystem import absolute_uri, join, publish_atomically
    from pipeline.io.run_folder import AREAS_NAME, raw_files, remove_stale
    from pipeline.io.summary import SUMMARY_NAME, GridYearStatus, RunSummary, command_line, now_utc
    from pipeline.io.rasters import find_annual_rasters, read_class_series

    rasters = find_annual_rasters(args.inputs, parse_years(args.years))
    years = list(rasters)
    say(f"{len(years)} years {years[0]}–{years[-1]}; reading")
    series = read_class_series(
        rasters,
        class_value=args.class_value,
        extra_nodata=args.nodata_value,
        progress=lambda i, n, path: say(f"read {i}/{n} {os.path.basename(path)}") if i % 10 == 0 or i == n else None,
    )
    say(f"filtering a {series.stack.shape[0]}×{series.stack.shape[1]}×{series.stack.shape[2]} stack, mode {params.mode}")
    areas = PixelAreas(series.crs, series.transform, series.stack.shape[1:]).window()  # lattice: not 160 B/px
    hectares: dict[str, object] = {}

    def measure(stage, stack):
        hectares[stage] = hectares_per_year(stack, 1, areas)
        say(f"{stage}: {hectares[stage].sum() / len(years):.1f} ha of mining a year on average")

    result = apply_chain(series.stack, params, with_origin=args.origin_band, on_stage=measure)

    say("encoding COGs")
    tags_common = {
        "filter_mode": params.mode,
        "model": "none (filtered from input maps)",
        "threshold": "n/a",
        "class_value": str(args.class_value),
        **params.as_tags(),
    }
    if args.grid:
        tags_common["grid"] = args.grid
    outputs: dict[str, bytes] = {}
    for index, year in enumerate(years):
        bands, descriptions = classification_bands(
            result.classes[index], origin_years=origin_to_band(result.origin[index], years) if args.origin_band else None
        )
        tags = {**tags_common, "year": str(year), "source": os.path.basename(series.paths[index])}
        if args.origin_band:
            tags["origin_encoding"] = "band 2 = origin year - 1900 (offset 1900); 255 = never observed"
        outputs[join(args.output, f"{args.prefix}_{year}.tif")] = encode_cog(
            bands, series.crs, series.transform, tags, descriptions
        )
    outputs[join(args.output, AREAS_NAME)] = _areas_csv(years, hectares)
    grid = args.grid or args.prefix
    summary = RunSummary(
        command="filter",
        output=absolute_uri(args.output),
        parameters={
            **params.as_dict(),
            "class_value": args.class_value,
            "extra_nodata": list(args.nodata_value),
            "crs": series.crs.to_string(),
            "transform": list(series.transform)[:6],
            "shape": list(series.stack.shape[1:]),
        },
        inputs={str(y): absolute_uri(series.paths[i]) for i, y in enumerate(years)},
        grid_years=[
            GridYearStatus(
                grid,
                year,
                "written",
                path=absolute_uri(join(args.output, f"{args.prefix}_{year}.tif")),
                mining_pixels={stage: int(result.mining_pixels[stage][i]) for stage in STAGES},
                mining_ha={stage: round(float(hectares[stage][i]), 4) for stage in STAGES},
            )
            for i, year in enumerate(years)
        ],
        started=started,
        finished=now_utc(),
        command_line=command_line(),
        outputs=sorted({*(f"{args.prefix}_{year}.tif" for year in years), AREAS_NAME, SUMMARY_NAME, *raw_files(args.output)}),
    )
    outputs[join(args.output, SUMMARY_NAME)] = summary.to_json()
    say(f"writing {len(years)} COGs, areas.csv and summary.json to {args.output}")
    publish_atomically(outputs)
    stale = remove_stale(args.output, summary.outputs)
    if stale:
        say(f"removed {len(stale)} file(s) of the earlier run: {', '.join(stale[:5])}{' …' if len(stale) > 5 else ''}")
    say(f"done: {len(years)} years; mining {hectares['input'].sum() / len(years):.1f} ha/yr before, "
        f"{hectares['frequency'].sum() / len(years):.1f} ha/yr after")
    print(args.output)
    return 0


def _areas_csv(years, hectares) -> bytes:
    from pipeline.method.filters import STAGES

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["year", *[f"mining_ha_{stage}" for stage in STAGES]])
    for i, year in enumerate(years):
        writer.writerow([year, *[f"{hectares[stage][i]:.4f}" for stage in STAGES]])
    return text.getvalue().encode()
