"""`mining-mapper report`: a self-contained HTML page and a STAC catalog for one run."""
from __future__ import annotations

import argparse
import sys

NAME = "report"
HELP = "One self-contained HTML report per run (areas per grid and in total, summary, filter effects, quicklooks over the input mosaic, links) and a STAC collection of its COGs."
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("run", "class_id", "products", "before")
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the report command."""
    parser.add_argument("run", help="the run folder: the pipeline's output or the filter command's (local or gs://)")
    parser.add_argument("--output", required=True, help="folder for report.html and stac/collection.json (local or gs://)")
    parser.add_argument("--class-id", action="append", default=[], help="folder of class_id COGs from classify-type (repeatable): area by mining type")
    parser.add_argument("--products", action="append", default=[], help="further product folders to catalog and link (e.g. integrate's output; repeatable)")
    parser.add_argument("--quicklook", action="append", default=[], help="GRID:YEAR (or YEAR for a single-grid run) to draw; repeatable (default: first and last year of every grid, up to --max-quicklook-grids)")
    parser.add_argument("--max-quicklook-grids", type=int, default=6, help="most grids drawn by default; with more, those with the most mining (default 6)")
    parser.add_argument("--exports", default=None, help="exports root for the quicklooks' false-colour mosaic (default: the one the run's summary.json records)")
    parser.add_argument("--before", default=None, help="folder of the classifications before the filters (default: the filter command's recorded inputs)")
    parser.add_argument("--before-class-value", type=int, default=None, help="mining value in the --before rasters (default: the run's class_value, else 30)")
    parser.add_argument("--title", default="Mining mapper run report", help="page title")
    parser.add_argument("--no-stac", action="store_true", help="do not write the STAC collection (default: write it)")


def run(args: argparse.Namespace) -> int:
    """Gather the run, draw the charts and quicklooks, write report.html and the STAC catalog."""
    from pipeline.errors import UserError
    from pipeline.io import filesystem as fs
    from pipeline.products.report import (
        before_paths, choose_quicklooks, parse_quicklook, per_grid_series, quicklook_png, render_report, run_exports, scan_run,
    )
    from pipeline.products.stac import build_collection
    from pipeline.products.stats import compute_statistics

    if args.max_quicklook_grids < 1:
        raise UserError(f"--max-quicklook-grids {args.max_quicklook_grids}: must be at least 1")
    contents = scan_run(args.run, args.class_id, args.products)
    by_key = {(r.grid, r.year): r for r in contents.classification}
    stats = compute_statistics(contents.classification)
    per_grid = per_grid_series(stats.rasters)
    if args.quicklook:
        wanted, note = [parse_quicklook(q) for q in args.quicklook], None
    else:
        wanted, note = choose_quicklooks(contents.classification, per_grid, args.max_quicklook_grids)
    for grid, year in wanted:
        if (grid, year) not in by_key:
            known = ", ".join(f"{g}:{y}" if g else str(y) for g, y in sorted(by_key, key=lambda k: (k[0] or "", k[1]))[:8])
            raise UserError(f"{args.run}: no classification COG for {f'grid {grid}, ' if grid else ''}year {year} (e.g. {known})")
    by_type = compute_statistics(contents.class_id).type_by_year() if contents.class_id else None
    before = before_paths(contents, args.before)
    class_value = args.before_class_value
    if class_value is None:
        parameters = contents.summary.parameters if contents.summary is not None else {}
        class_value = int(parameters.get("class_value", 30))
    exports = run_exports(contents.summary, args.exports)
    quicklooks = []
    for grid, year in wanted:
        ref = by_key[(grid, year)]
        png, panels, mosaic = quicklook_png(ref, before.get((grid, year)), class_value, exports=exports)
        label = f"{'grid ' + grid + ', ' if grid else ''}{year}: {fs.basename(ref.path)} ({'; '.join(panels)})"
        quicklooks.append((label, png, mosaic))
    files = {}
    stac_href = None
    if not args.no_stac:
        refs = [*contents.classification, *contents.class_id, *contents.others]
        files.update(build_collection(refs, fs.join(args.output, "stac"), title=args.title))
        stac_href = "stac/collection.json"
    page = render_report(contents, args.output, stats.total_by_year(), stats.comparison(), by_type, quicklooks, stac_href,
                         args.title, per_grid=per_grid, quicklook_note=note)
    files[fs.join(args.output, "report.html")] = page.encode("utf-8")
    fs.publish_atomically(files)
    print(fs.join(args.output, "report.html"), file=sys.stdout)
    return 0
