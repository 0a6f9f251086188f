"""`mining-mapper integrate`: fold the mining maps into a land-cover map by prevalence (DESIGN.md §5)."""
from __future__ import annotations

import argparse
import sys

NAME = "integrate"
HELP = "Integrate the mining maps with a land-cover map per year by prevalence rank (DESIGN.md §5); write COGs."
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("mining", "land_cover", "prevalence")
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the integrate command."""
    parser.add_argument("mining", nargs="+", help="annual mining maps (classification COGs: files, folders or patterns; local or gs://)")
    parser.add_argument("--land-cover", nargs="+", required=True, help="annual land-cover maps, one per year (year in the name or a 'year' tag)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument("--class-value", type=int, default=30, help="value meaning mining in the mining maps (default 30)")
    parser.add_argument("--prevalence", default=None, help="prevalence table JSON (default: pipeline/data/prevalence.json)")
    parser.add_argument("--reproject", action="store_true", help="resample a land-cover map that is on another grid onto the mining grid (nearest neighbour)")
    parser.add_argument("--nearest-land-cover-year", action="store_true", help="use the nearest land-cover year when a mining year has none")
    parser.add_argument("--years", help="years to integrate, START-END or a comma list (default: all mining years)")
    parser.add_argument("--prefix", default="integrated", help="file prefix for a single-grid series: PREFIX_YEAR.tif")
    parser.add_argument("--chunk-rows", type=int, default=512, help="rows processed at a time (default 512)")


def run(args: argparse.Namespace) -> int:
    """Integrate every mining grid-year with its land-cover year and publish the COGs and a summary."""
    import json

    from pipeline.ranges import parse_years
    from pipeline.io.tables import load_prevalence_table
    from pipeline.errors import UserError
    from pipeline.io import filesystem as fs
    from pipeline.io import rasters as annual_rasters
    from pipeline.products.integrate import integrate_raster, output_name, pair_land_cover, rank_lookup
    from pipeline.products.stats import AreaCache

    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    ranks = load_prevalence_table(args.prevalence)
    mining = annual_rasters.discover(args.mining, parse_years(args.years))
    cover_refs = annual_rasters.discover(args.land_cover)
    land_cover: dict[int, str] = {}
    for ref in cover_refs:
        if ref.year in land_cover:
            raise UserError(f"land cover: year {ref.year} is given twice ({land_cover[ref.year]} and {ref.path}); give one map per year")
        land_cover[ref.year] = ref.path
    pairs = pair_land_cover(mining, land_cover, args.nearest_land_cover_year)
    lookup = rank_lookup(ranks, 65535)
    cache = AreaCache()
    writers, files, summary = [], {}, []
    try:
        for index, (ref, cover_path, cover_year) in enumerate(pairs.values(), start=1):
            path, change, writer = integrate_raster(
                ref, cover_path, lookup, args.class_value, args.reproject, args.chunk_rows,
                tags={"land_cover_year": cover_year}, cache=cache,
            )
            writers.append(writer)
            name = output_name(ref, args.prefix)
            files[fs.join(args.output, name)] = path
            summary.append(
                {
                    "grid": ref.grid,
                    "year": ref.year,
                    "land_cover_year": cover_year,
                    "output": name,
                    "mining_pixels": change.mining_pixels,
                    "mining_ha": round(change.mining_ha, 4),
                    "changed_pixels": change.changed_pixels,
                    "replaced_ha_by_land_cover_class": {
                        ("nodata" if code < 0 else str(code)): round(ha, 4) for code, ha in change.replaced_ha.items()
                    },
                }
            )
            say(f"{index}/{len(pairs)} {name}: {change.mining_ha:.1f} ha of mining, {change.changed_pixels} pixels changed")
        document = {"rule": "prevalence (DESIGN.md section 5)", "ranks": {str(k): v for k, v in ranks.items()}, "rasters": summary}
        files[fs.join(args.output, "integrate_summary.json")] = json.dumps(document, indent=2).encode()
        fs.publish_atomically(files)
    finally:
        for writer in writers:
            writer.close()
    if not args.quiet:
        print(args.output)
    return 0
