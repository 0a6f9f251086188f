"""`mining-mapper classify-type`: class_id (mining type and substance) per mining component (DESIGN.md §6)."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

NAME = "classify-type"
HELP = "Give each mining component of each year the class_id of nearby mineral occurrences (DESIGN.md §6); COG + table."
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("mining", "occurrences")
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the classify-type command."""
    parser.add_argument("mining", nargs="+", help="annual mining maps (files, folders or patterns; local or gs://)")
    parser.add_argument("--occurrences", required=True, help="occurrence features, points or polygons (GeoPackage, Shapefile, GeoJSON…)")
    parser.add_argument("--layer", default=None, help="layer of the occurrence file (required when it holds several)")
    parser.add_argument("--fields", default=None, help="field mapping to use: sigmine or geosgb (default: recognised from the columns)")
    parser.add_argument("--buffer", type=float, default=1000.0, help="search distance in metres for the nearest occurrence (default 1000)")
    parser.add_argument("--class-value", type=int, default=30, help="value meaning mining in the maps (default 30)")
    parser.add_argument("--years", help="years to classify, START-END or a comma list (default: all)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument("--prefix", default="class_id", help="file prefix for a single-grid series: PREFIX_YEAR.tif")


def run(args: argparse.Namespace) -> int:
    """Classify every grid-year and publish the class_id COGs, components.csv and a summary."""
    import csv
    import io
    import json
    from collections import defaultdict

    import numpy as np
    from rasterio.windows import Window

    from pipeline.method.areas import PixelAreas
    from pipeline.ranges import parse_years
    from pipeline.io.tables import load_class_id_table
    from pipeline.errors import UserError
    from pipeline.io import filesystem as fs
    from pipeline.io import rasters as annual_rasters
    from pipeline.products.classify_type import CLASS_ID_NODATA, classify_year, metric_crs, occurrences_within
    from pipeline.io.cog import CogWriter
    from pipeline.products.integrate import output_name
    from pipeline.products.occurrences import read_occurrences
    from pipeline.products.stats import nodata_mask, mining_type_of

    if args.buffer < 0:
        raise UserError(f"--buffer must be 0 or more metres, not {args.buffer}")
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    table = load_class_id_table()
    names = {entry["code"]: entry["name"] for entry in table.codes}
    occurrences = read_occurrences(args.occurrences, table, args.layer, args.fields)
    if len(occurrences.ids) == 0:
        reasons = "; ".join(f"{n} × {r}" for r, n in occurrences.unused.most_common(5))
        raise UserError(f"{args.occurrences}: none of its {occurrences.total} features has a known mining type and substance ({reasons})")
    say(f"{len(occurrences.ids)} of {occurrences.total} occurrence features usable ({occurrences.schema} fields)")
    refs = annual_rasters.discover(args.mining, parse_years(args.years))
    reprojected: dict[str, object] = {}
    checked_footprints: set[tuple] = set()
    areas_by_grid: dict[tuple, np.ndarray] = {}
    writers, files, rows = [], {}, []
    per_year: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    try:
        for index, ref in enumerate(refs, start=1):
            with annual_rasters.open_raster(ref.path) as src:
                if src.crs is None:
                    raise UserError(f"{ref.path}: raster has no CRS")
                values = src.read(1)
                crs, transform, bounds, nodata = src.crs, src.transform, src.bounds, src.nodata
            observed = ~nodata_mask(values, [nodata])
            mining = observed & (values == args.class_value)
            metric = metric_crs(crs, bounds)
            key = metric.to_wkt()
            if key not in reprojected:
                reprojected[key] = occurrences.to_crs(metric)
            footprint_key = (key, crs.to_wkt(), tuple(bounds))
            if footprint_key not in checked_footprints:
                checked_footprints.add(footprint_key)
                if occurrences_within(reprojected[key], crs, bounds, metric, args.buffer) == 0:
                    log.warning(
                        "%s: no occurrence of %s falls within the raster (or %g m of it) after reprojection to its CRS; "
                        "every mining component will be 301 (unidentified): check the occurrences' region and CRS",
                        ref.path, args.occurrences, args.buffer,
                    )
            grid_key = (crs.to_wkt(), tuple(transform)[:6], values.shape)
            if grid_key not in areas_by_grid:
                areas_by_grid.clear()
                areas_by_grid[grid_key] = PixelAreas(crs, transform, values.shape).window()
            class_ids, components = classify_year(
                mining, observed, crs, transform, reprojected[key], metric, args.buffer,
                table.order, table.unidentified, ref.year, ref.grid, areas_by_grid[grid_key],
            )
            writer = CogWriter(
                width=values.shape[1], height=values.shape[0], dtype="uint16", crs=crs, transform=transform,
                nodata=CLASS_ID_NODATA, descriptions=["class_id"],
                tags={
                    "product": "class_id", "year": ref.year, **({"grid": ref.grid} if ref.grid else {}),
                    "mining_source": fs.basename(ref.path), "occurrences": fs.basename(args.occurrences),
                    "occurrence_layer": occurrences.layer or "", "buffer_m": args.buffer,
                    "encoding": "0 not mining; Table 3 class_id where mining; 65535 not observed",
                },
            )
            writers.append(writer)
            writer.write(class_ids, Window(0, 0, values.shape[1], values.shape[0]))
            files[fs.join(args.output, output_name(ref, args.prefix))] = writer.finish()
            for c in components:
                per_year[c.year][c.class_id] += c.area_ha
                rows.append([
                    c.year, c.grid or "", c.label, c.pixels, f"{c.area_ha:.4f}", c.class_id, mining_type_of(c.class_id),
                    names.get(c.class_id, ""), c.match, "" if c.distance_m is None else f"{c.distance_m:.1f}",
                    ";".join(c.evidence_ids), ";".join(map(str, c.evidence_codes)),
                    f"{c.centroid_lon:.6f}", f"{c.centroid_lat:.6f}",
                ])
            say(f"{index}/{len(refs)} {fs.basename(ref.path)}: {len(components)} components")
        text = io.StringIO()
        writer_csv = csv.writer(text, lineterminator="\n")
        writer_csv.writerow([
            "year", "grid", "component", "pixels", "area_ha", "class_id", "type", "class_name", "match",
            "distance_m", "evidence", "evidence_class_ids", "centroid_lon", "centroid_lat",
        ])
        writer_csv.writerows(rows)
        files[fs.join(args.output, "components.csv")] = text.getvalue().encode()
        summary = {
            "occurrences": {
                "path": str(args.occurrences), "layer": occurrences.layer, "fields": occurrences.schema,
                "crs": occurrences.crs.to_wkt(), "features": occurrences.total, "usable": len(occurrences.ids),
                "unused_by_reason": dict(occurrences.unused.most_common()),
            },
            "buffer_m": args.buffer,
            "rule": "intersecting features, else the nearest within the buffer; most frequent class_id, ties by Table 3 order; none -> 301",
            "hectares_by_year_and_class_id": {
                str(y): {str(c): round(v, 4) for c, v in sorted(codes.items())} for y, codes in sorted(per_year.items())
            },
        }
        files[fs.join(args.output, "classify_type_summary.json")] = json.dumps(summary, indent=2, ensure_ascii=False).encode()
        fs.publish_atomically(files)
    finally:
        for writer in writers:
            writer.close()
    if not args.quiet:
        print(args.output)
    return 0
