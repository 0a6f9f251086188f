"""`mining-mapper stats`: mining hectares per year, per grid and per class_id, from true pixel areas."""
from __future__ import annotations

import argparse
import sys

from pipeline.ranges import parse_years

NAME = "stats"
HELP = "Mining area per year (total, per grid, per class_id) in hectares from true pixel areas; CSV and JSON."
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("inputs",)
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the stats command."""
    parser.add_argument(
        "inputs",
        nargs="+",
        help="annual rasters: files, folders (searched recursively, e.g. the pipeline's {output}/{grid}/{grid}_{year}.tif) "
        "or glob patterns; local or gs://. Classification COGs (30 mining), categorical maps, or class_id COGs",
    )
    parser.add_argument("--output", required=True, help="folder for areas_by_year.csv, areas_by_grid.csv, areas_by_class_id.csv, stats.json")
    parser.add_argument("--class-value", type=int, default=30, help="value meaning mining in classification maps (default 30)")
    parser.add_argument("--nodata-value", type=float, action="append", default=[], help="extra value meaning not observed (repeatable)")
    parser.add_argument("--years", help="years to measure, START-END or a comma list (default: all found)")
    parser.add_argument("--chunk-rows", type=int, default=512, help="rows read at a time (bounds memory; default 512)")


def run(args: argparse.Namespace) -> int:
    """Measure every raster and publish the tables; print the per-year totals and the comparison."""
    from pipeline.errors import UserError
    from pipeline.io import filesystem as fs
    from pipeline.io import rasters as annual_rasters
    from pipeline.products.stats import compute_statistics, statistics_files

    if args.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be at least 1, not {args.chunk_rows}")
    refs = annual_rasters.discover(args.inputs, parse_years(args.years))
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"measuring {len(refs)} raster(s)")
    stats = compute_statistics(
        refs,
        class_value=args.class_value,
        extra_nodata=args.nodata_value,
        chunk_rows=args.chunk_rows,
        progress=lambda i, n, p: say(f"  {i}/{n} {fs.basename(p)}") if i % 10 == 0 or i == n else None,
    )
    files = statistics_files(stats, _class_names())
    fs.publish_atomically({fs.join(args.output, name): data for name, data in files.items()})
    if not args.quiet:
        for year, ha in stats.total_by_year().items():
            print(f"{year}\t{ha:.2f} ha")
        c = stats.comparison()
        change = f"{c['change_percent']:+.1f} %" if c.get("change_percent") is not None else "n/a"
        print(f"{c['first_year']}→{c['last_year']}: {c['first_ha']:.2f} → {c['last_ha']:.2f} ha ({c['change_ha']:+.2f} ha, {change})")
    return 0


def _class_names() -> dict[int, str]:
    """Table 3 names by code, when the shared table is readable (names are a courtesy in the CSV)."""
    try:
        from pipeline.io.tables import load_class_id_table

        return {entry["code"]: entry["name"] for entry in load_class_id_table().codes}
    except Exception:  # the table is optional for stats; codes are reported either way
        return {}
