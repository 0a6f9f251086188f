"""`mining-mapper grids`: the Collection 9 grid cells touched by reference mining sites."""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "grids"
HELP = "select the Collection 9 grid cells that reference polygons/points touch; write ids and a GeoJSON"


def configure(parser) -> None:
    """Options: --reference FILE… (or --all), --layer, --ids, --geojson."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--reference", nargs="+", metavar="FILE", help="GeoJSON / GeoPackage / any OGR vector file")
    source.add_argument("--all", action="store_true", help="every cell of the 51 x 51 grid")
    parser.add_argument("--layer", help="layer name for multi-layer files (GeoPackage)")
    parser.add_argument("--ids", metavar="FILE", help="write the cell ids here, one a line (default: stdout)")
    parser.add_argument("--geojson", metavar="FILE", help="write the selected cells as a GeoJSON FeatureCollection")


def run(args) -> int:
    """Select the cells, write the ids (file or stdout) and optionally the GeoJSON; report counts on stderr."""
    from pipeline.earthengine import grid as grid_lib

    if args.all:
        ids = grid_lib.C9_GRID.ids
        print(f"grids: all {len(ids)} cells", file=sys.stderr)
    else:
        selection = grid_lib.select_cells(args.reference, args.layer)
        ids = selection.ids
        print(
            f"grids: {len(ids)} cells touched by {selection.features} features "
            f"({selection.outside} features outside the grid)",
            file=sys.stderr,
        )
    text = "".join(f"{cell}\n" for cell in ids)
    if args.ids:
        path = Path(args.ids)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.geojson:
        path = Path(args.geojson)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(grid_lib.cells_geojson(ids)) + "\n", encoding="utf-8")
    return 0
