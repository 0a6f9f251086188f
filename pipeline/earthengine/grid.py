"""The MapBiomas Collection 9 processing grid (DESIGN.md §1.3) and the selection of its cells from reference data.

Square cells of 0.8648° on a 0.77832° stride (neighbours overlap by 10 %), a 51 × 51 lattice whose north-west
corner is lon −73.990450, lat 5.271841. Cell (col, row) spans
lon [x0 + col·stride, x0 + col·stride + size] and lat [y0 − row·stride − size, y0 − row·stride];
its id is col·51 + row + 1 (column-major, 1-based).

Selection: reference polygons or points (Amazon Mining Watch, DETER, CPRM…) → per-feature bounding boxes →
the cells those boxes touch (closed intervals: a box sharing only an edge with a cell touches it).
Pure Python and shapely; geopandas/pyogrio only to read the reference files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.errors import UserError
from pipeline.ranges import parse_int_list


@dataclass(frozen=True)
class Grid:
    """A lattice of square lon/lat cells with a north-west origin and column-major 1-based ids."""

    origin_lon: float = -73.990450
    origin_lat: float = 5.271841
    size: float = 0.8648
    stride: float = 0.77832
    ncols: int = 51
    nrows: int = 51

    def cell_id(self, col: int, row: int) -> int:
        """The id of cell (col, row): col * nrows + row + 1."""
        if not (0 <= col < self.ncols and 0 <= row < self.nrows):
            raise ValueError(f"cell ({col}, {row}) is outside the {self.ncols} x {self.nrows} grid")
        return col * self.nrows + row + 1

    def col_row(self, cell_id: int) -> tuple[int, int]:
        """(col, row) of a cell id; raises ValueError for ids outside 1 … ncols·nrows."""
        if not (1 <= cell_id <= self.ncols * self.nrows):
            raise ValueError(f"grid id {cell_id} is outside 1..{self.ncols * self.nrows}")
        return divmod(cell_id - 1, self.nrows)

    def cell_at(self, lon: float, lat: float) -> int:
        """Id of the cell whose stride square (its own part, before the overlap) holds (lon, lat)."""
        col = math.floor((lon - self.origin_lon) / self.stride)
        row = math.floor((self.origin_lat - lat) / self.stride)
        return self.cell_id(col, row)

    @property
    def ids(self) -> list[int]:
        """Every cell id, ascending."""
        return list(range(1, self.ncols * self.nrows + 1))

    def bounds(self, cell_id: int) -> tuple[float, float, float, float]:
        """(west, south, east, north) of a cell in degrees."""
        col, row = self.col_row(cell_id)
        west = self.origin_lon + col * self.stride
        north = self.origin_lat - row * self.stride
        return (west, north - self.size, west + self.size, north)

    def polygon(self, cell_id: int):
        """The cell as a shapely Polygon (lon/lat, counter-clockwise)."""
        from shapely.geometry import box

        return box(*self.bounds(cell_id))

    def cells_touching(self, minx: float, miny: float, maxx: float, maxy: float) -> list[int]:
        """Ids of the cells whose closed extent meets the closed box [minx, maxx] × [miny, maxy]."""
        if not (minx <= maxx and miny <= maxy) or any(math.isnan(v) for v in (minx, miny, maxx, maxy)):
            return []
        # columns: west_c <= maxx and west_c + size >= minx, with west_c = x0 + c * stride
        col_lo = math.ceil((minx - self.size - self.origin_lon) / self.stride)
        col_hi = math.floor((maxx - self.origin_lon) / self.stride)
        # rows: north_r - size <= maxy and north_r >= miny, with north_r = y0 - r * stride
        row_lo = math.ceil((self.origin_lat - self.size - maxy) / self.stride)
        row_hi = math.floor((self.origin_lat - miny) / self.stride)
        found = []
        for col in range(max(col_lo - 1, 0), min(col_hi + 1, self.ncols - 1) + 1):
            for row in range(max(row_lo - 1, 0), min(row_hi + 1, self.nrows - 1) + 1):
                west, south, east, north = self.bounds(self.cell_id(col, row))
                # the ±1 widening above guards against rounding in the divisions; this exact test decides
                if west <= maxx and east >= minx and south <= maxy and north >= miny:
                    found.append(self.cell_id(col, row))
        return sorted(found)

    def cells_for_boxes(self, boxes: Iterable[Sequence[float]]) -> list[int]:
        """Union of the cells touched by each (minx, miny, maxx, maxy) box, ascending."""
        selected: set[int] = set()
        for minx, miny, maxx, maxy in boxes:
            selected.update(self.cells_touching(minx, miny, maxx, maxy))
        return sorted(selected)

    def extent(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the whole lattice."""
        return (
            self.origin_lon,
            self.origin_lat - (self.nrows - 1) * self.stride - self.size,
            self.origin_lon + (self.ncols - 1) * self.stride + self.size,
            self.origin_lat,
        )


C9_GRID = Grid()


def parse_ids(text: str, grid: Grid = C9_GRID) -> list[int]:
    """Parse '12,15-18' into sorted unique ids, checking each is a cell of `grid`."""
    ids = parse_int_list(text, "grids")
    for cell in ids:
        try:
            grid.col_row(cell)
        except ValueError as error:
            raise UserError(f"grid ids: {error}") from error
    return sorted(ids)


def read_ids_file(path: str | Path, grid: Grid = C9_GRID) -> list[int]:
    """Read grid ids from a text file (one id or range per line, as `mining-mapper grids` writes; # comments)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UserError(f"{path}: cannot read grid ids: {error.strerror or error}") from error
    text = ",".join(line.split("#", 1)[0] for line in lines)
    try:
        ids = parse_ids(text, grid)
    except UserError as error:
        raise UserError(f"{path}: {error}") from error
    if not ids:
        raise UserError(f"{path}: no grid ids in the file")
    return ids


def read_reference(path: str | Path, layer: str | None = None):
    """Read reference features (GeoJSON, GeoPackage, any OGR vector) as a GeoDataFrame in lon/lat (EPSG:4326).

    A file without a CRS is taken as lon/lat only when its coordinates fit in ±180/±90; otherwise it is an error.
    """
    import geopandas as gpd
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: reference file not found")
    try:
        if layer is None:
            layers = pyogrio.list_layers(path)
            if len(layers) > 1:
                names = ", ".join(str(name) for name, _ in layers)
                raise UserError(f"{path}: has {len(layers)} layers ({names}); name one with --layer")
        frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    except UserError:
        raise
    except Exception as error:  # pyogrio raises DataSourceError, DataLayerError, ...
        raise UserError(f"{path}: cannot read as vector data: {error}") from error
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.crs is None:
        minx, miny, maxx, maxy = frame.total_bounds if len(frame) else (0, 0, 0, 0)
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise UserError(f"{path}: no CRS and the coordinates are not longitude/latitude")
        frame = frame.set_crs(4326)
    elif not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs(4326)
    return frame


@dataclass(frozen=True)
class Selection:
    """Cells selected from reference files, with counts of the features used and those outside the grid."""

    ids: list[int]
    features: int
    outside: int


def select_cells(paths: Sequence[str | Path], layer: str | None = None, grid: Grid = C9_GRID) -> Selection:
    """The grid cells touched by the bounding boxes of every feature of the reference files."""
    selected: set[int] = set()
    features = outside = 0
    for path in paths:
        frame = read_reference(path, layer)
        for minx, miny, maxx, maxy in frame.geometry.bounds.itertuples(index=False, name=None):
            features += 1
            cells = grid.cells_touching(minx, miny, maxx, maxy)
            if cells:
                selected.update(cells)
            else:
                outside += 1
    return Selection(sorted(selected), features, outside)


def cells_geojson(ids: Iterable[int], grid: Grid = C9_GRID) -> dict:
    """A GeoJSON FeatureCollection of the cells (polygons with id, col, row properties)."""
    features = []
    for cell in ids:
        col, row = grid.col_row(cell)
        west, south, east, north = grid.bounds(cell)
        ring = [[west, north], [west, south], [east, south], [east, north], [west, north]]
        features.append(
            {
                "type": "Feature",
                "id": cell,
                "properties": {"id": cell, "col": col, "row": row},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    return {"type": "FeatureCollection", "features": features}
