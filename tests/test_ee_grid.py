"""The Collection 9 grid (DESIGN.md §1.3) and cell selection from reference files, checked against the lattice
formula written out independently here and a brute-force intersection of every feature with every cell."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from shapely.geometry import box, shape

from pipeline.cli import main
from pipeline.earthengine import grid as grid_lib
from pipeline.errors import UserError
from tests.conftest import shared_path

# DESIGN.md §1.3, written out again so the tests do not read the implementation's constants.
X0, Y0, SIZE, STRIDE, N = -73.990450, 5.271841, 0.8648, 0.77832, 51


def lattice():
    """id -> (west, south, east, north) of every cell, from the formula of DESIGN.md §1.3."""
    cells = {}
    for col in range(N):
        for row in range(N):
            west, north = X0 + col * STRIDE, Y0 - row * STRIDE
            cells[col * N + row + 1] = (west, north - SIZE, west + SIZE, north)
    return cells


LATTICE = lattice()
IDS = np.array(sorted(LATTICE))
CELL_BOUNDS = np.array([LATTICE[i] for i in IDS])


def touch_matrix(bounds: np.ndarray) -> np.ndarray:
    """cells x boxes: True where a cell's closed extent meets a closed box (rows of minx, miny, maxx, maxy)."""
    b, c = np.asarray(bounds, dtype=float).reshape(-1, 4), CELL_BOUNDS
    return (
        (c[:, None, 0] <= b[None, :, 2])
        & (c[:, None, 2] >= b[None, :, 0])
        & (c[:, None, 1] <= b[None, :, 3])
        & (c[:, None, 3] >= b[None, :, 1])
    )


def brute_force(bounds) -> set[int]:
    """Ids of the cells that meet any of the boxes."""
    return set(IDS[touch_matrix(bounds).any(axis=1)].tolist())


def test_ids_are_column_major_and_one_based():
    g = grid_lib.C9_GRID
    assert g.cell_id(0, 0) == 1
    assert g.cell_id(0, 50) == 51
    assert g.cell_id(1, 0) == 52
    assert g.cell_id(50, 50) == 2601
    assert [g.col_row(i) for i in (1, 51, 52, 2601)] == [(0, 0), (0, 50), (1, 0), (50, 50)]
    for cell in g.ids:
        assert g.cell_id(*g.col_row(cell)) == cell
    with pytest.raises(ValueError):
        g.col_row(2602)
    with pytest.raises(ValueError):
        g.cell_id(51, 0)


def test_bounds_follow_the_lattice_and_neighbours_overlap_ten_percent():
    g = grid_lib.C9_GRID
    for cell, expected in LATTICE.items():
        assert g.bounds(cell) == pytest.approx(expected, abs=1e-12)
    west1, _, east1, _ = g.bounds(1)
    west2, _, _, _ = g.bounds(52)  # the eastern neighbour
    assert (east1 - west2) / SIZE == pytest.approx(0.10, abs=1e-3)
    assert g.polygon(1).equals(box(*LATTICE[1]))
    assert g.extent() == pytest.approx((X0, Y0 - 50 * STRIDE - SIZE, X0 + 50 * STRIDE + SIZE, Y0))


def test_cells_touching_matches_brute_force_on_random_and_edge_boxes():
    g = grid_lib.C9_GRID
    rng = random.Random(7)
    boxes = []
    for _ in range(400):
        x, y = rng.uniform(-76, -32), rng.uniform(-36, 7)
        boxes.append((x, y, x + rng.uniform(0, 2.5), y + rng.uniform(0, 2.5)))
    # boxes that only share an edge or a corner with cells, and points exactly on edges
    w, s, e, n = LATTICE[600]
    boxes += [(e, s, e + 0.01, n), (w - 0.01, s - 0.01, w, s), (e, n, e, n), (w + 0.1, s + 0.1, w + 0.1, s + 0.1)]
    for b in boxes:
        assert set(g.cells_touching(*b)) == brute_force(np.array([b])), b
    assert g.cells_touching(-80, -5, -79, -4) == []  # west of the grid
    assert 1 in g.cells_touching(X0, Y0, X0, Y0)  # the north-west corner itself


def test_two_known_amazon_mining_watch_polygons():
    path = shared_path("labels", "amazon_mining_watch", "mining_201800_simplified.geojson")
    features = json.loads(path.read_text())["features"]
    # the first feature and the largest one by mined area
    largest = max(features, key=lambda f: f["properties"]["Mined area (ha)"])
    for feature in (features[0], largest):
        minx, miny, maxx, maxy = shape(feature["geometry"]).bounds
        expected = sorted(
            cell for cell, (w, s, e, n) in LATTICE.items() if w <= maxx and e >= minx and s <= maxy and n >= miny
        )
        assert grid_lib.C9_GRID.cells_touching(minx, miny, maxx, maxy) == expected
        assert expected, "the known polygons lie inside the grid"


@pytest.mark.parametrize(
    "names, count",
    [
        (["mining_201800_simplified"], 256),
        (["mining_202300_simplified"], 207),
        (["mining_201800_simplified", "mining_202300_simplified"], 301),
        (["tapajos_basin"], 30),
    ],
)
def test_selection_from_reference_files_is_exact_and_stable(names, count):
    paths = [shared_path("labels", "amazon_mining_watch", f"{name}.geojson") for name in names]
    selection = grid_lib.select_cells(paths)
    bounds = []
    for path in paths:
        for feature in json.loads(path.read_text())["features"]:
            bounds.append(shape(feature["geometry"]).bounds)
    meets = touch_matrix(bounds)
    assert selection.ids == IDS[meets.any(axis=1)].tolist()
    assert len(selection.ids) == count  # pinned: changes only if the grid or the selection rule changes
    assert selection.features == len(bounds)
    assert selection.outside == int((~meets.any(axis=0)).sum())


def test_geopackage_layers_are_reprojected_and_must_be_named():
    path = shared_path("occurrences", "sigmine_amapa_2021.gpkg")
    with pytest.raises(UserError, match="layers"):
        grid_lib.select_cells([path])
    frame = grid_lib.read_reference(path, "sigmine_AP_2021_centroids")
    minx, miny, maxx, maxy = frame.total_bounds
    assert -54 < minx < maxx < -50 and -2 < miny < maxy < 5  # Amapá, in degrees after reprojection
    selection = grid_lib.select_cells([path], layer="sigmine_AP_2021_centroids")
    assert selection.ids == sorted(brute_force(frame.geometry.bounds.to_numpy()))
    assert selection.outside == 0


def test_grids_command_writes_ids_and_geojson(tmp_path, capsys):
    reference = shared_path("labels", "amazon_mining_watch", "tapajos_basin.geojson")
    ids_path, geojson_path = tmp_path / "ids.txt", tmp_path / "cells.geojson"
    assert main(["grids", "--reference", str(reference), "--ids", str(ids_path), "--geojson", str(geojson_path)]) == 0
    ids = [int(line) for line in ids_path.read_text().split()]
    basin = shape(json.loads(reference.read_text())["features"][0]["geometry"])
    assert ids == sorted(brute_force(np.array([basin.bounds])))
    cells = json.loads(geojson_path.read_text())
    assert [f["properties"]["id"] for f in cells["features"]] == ids
    for feature in cells["features"]:
        assert shape(feature["geometry"]).equals(box(*LATTICE[feature["properties"]["id"]]))
    assert "cells touched by 1 features" in capsys.readouterr().err
    assert grid_lib.read_ids_file(ids_path) == ids


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.geojson: reference file not found"):
        grid_lib.read_reference(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("not json")
    with pytest.raises(UserError, match="bad.geojson"):
        grid_lib.read_reference(bad)
    ids = tmp_path / "ids.txt"
    ids.write_text("12\n3000\n")
    with pytest.raises(UserError, match="ids.txt: .*3000"):
        grid_lib.read_ids_file(ids)
    assert grid_lib.parse_ids("5, 7-9") == [5, 7, 8, 9]
    with pytest.raises(UserError):
        grid_lib.parse_ids("9-7")
    assert main(["grids", "--reference", str(tmp_path / "missing.geojson")]) == 2
