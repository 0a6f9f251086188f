"""Area statistics: true pixel areas on real data, window-by-window reading, overlapping grids, class_ids."""
from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod, Transformer

from pipeline.errors import UserError
from pipeline.io import rasters as annual_rasters
from pipeline.products.stats import compute_statistics, owned_mask, Footprint
from tests.conftest import shared_path
from tests.support.products import run_cli, write_raster

GEOD = Geod(ellps="GRS80")


def _geodesic_pixel_hectares(path, mask) -> float:
    """Independent check: the ellipsoidal area of each selected pixel's four corners, summed (pyproj.Geod)."""
    with rasterio.open(path) as src:
        transform, crs = src.transform, src.crs
    rows, cols = np.nonzero(mask)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    total = 0.0
    for r, c in zip(rows, cols):
        corners = [transform @ (c + dx, r + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
        lon, lat = to_lonlat.transform([p[0] for p in corners], [p[1] for p in corners])
        area, _ = GEOD.polygon_area_perimeter(lon, lat)
        total += abs(area)
    return total / 10_000


def test_lourenco_hectares_are_true_ellipsoidal_areas(tmp_path):
    folder = shared_path("mapbiomas_c6_lourenco")
    code, stdout, err = run_cli("stats", folder, "--years", "2019-2020", "--output", tmp_path, "--quiet")
    assert code == 0, err
    rows = {int(r["year"]): r for r in csv.DictReader(open(tmp_path / "areas_by_year.csv"))}
    assert sorted(rows) == [2019, 2020]
    path = folder / "utm_cover_AP_lorenco_2020.tif"
    with rasterio.open(path) as src:
        values = src.read(1)
        nominal_m2 = abs(src.transform.a * src.transform.e)
    mining = values == 30
    expected = _geodesic_pixel_hectares(path, mining)
    got = float(rows[2020]["mining_ha"])
    assert got == pytest.approx(expected, rel=2e-5)
    # not 30 m × 30 m, nor the nominal cell: UTM shrinks areas 70 km off the central meridian
    assert abs(got / (mining.sum() * 0.09) - 1) > 0.005  # pixels are 29.88 m, and UTM is not equal-area
    assert got > mining.sum() * nominal_m2 / 10_000 * 1.0005
    doc = json.loads((tmp_path / "stats.json").read_text())
    comparison = doc["comparison"]
    assert comparison["first_year"] == 2019 and comparison["last_year"] == 2020
    assert comparison["change_ha"] == pytest.approx(comparison["last_ha"] - comparison["first_ha"], abs=1e-3)
    assert comparison["last_ha"] == pytest.approx(got, abs=1e-3)


def test_windowed_reading_gives_the_same_figures_with_bounded_memory(tmp_path):
    height, width = 2400, 2000
    rng = np.random.default_rng(3)
    values = np.where(rng.random((height, width)) < 0.02, 30, 0).astype(np.uint8)
    values[:50] = 255
    path = write_raster(tmp_path / "big_2001.tif", values, nodata=255, transform=Affine(0.00025, 0, -55.0, 0, -0.00025, -3.0))
    refs = annual_rasters.discover([str(path)])
    whole = compute_statistics(refs, chunk_rows=height).rasters[0]
    tracemalloc.start()
    windowed = compute_statistics(refs, chunk_rows=64).rasters[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert windowed.mining_pixels == whole.mining_pixels == int((values == 30).sum())
    assert windowed.mining_ha == pytest.approx(whole.mining_ha, rel=1e-12)
    assert windowed.observed_ha == pytest.approx(whole.observed_ha, rel=1e-12)
    # the raster is 4.8 MB as uint8 and 38 MB as float areas; 64-row windows stay far below either
    assert peak < 2_500_000, peak


def _grid(tmp_path, name, col0, row0, size, year=2020, value=30, transform_offset=(0.0, 0.0)):
    transform = Affine(0.01, 0, -60.0 + col0 * 0.01 + transform_offset[0], 0, -0.01, 1.0 - row0 * 0.01 + transform_offset[1])
    array = np.full((size, size), value, dtype=np.uint8)
    return write_raster(tmp_path / name / f"{name}_{year}.tif", array, nodata=255, transform=transform, tags={"grid": name, "year": year})


def _union_hectares(paths) -> float:
    boxes = []
    for p in paths:
        with rasterio.open(p) as src:
            boxes.append(shapely.box(*src.bounds))
    union = shapely.union_all(boxes)
    area, _ = GEOD.geometry_area_perimeter(union)
    return abs(area) / 10_000


def test_overlapping_grids_are_counted_once_in_the_total(tmp_path):
    # a 2 × 2 lattice of 20-pixel cells on an 18-pixel stride: 10 % overlaps, as in the Collection 9 grid
    paths = [_grid(tmp_path, f"g{c}{r}", 18 * c, 18 * r, 20) for c in range(2) for r in range(2)]
    stats = compute_statistics(annual_rasters.discover([str(tmp_path)]))
    each = {r.grid: r.mining_ha for r in stats.rasters}
    assert len(each) == 4 and all(v == pytest.approx(_union_hectares([p]), rel=1e-4) for p, v in zip(paths, each.values()))
    total = stats.total_by_year()[2020]
    assert total == pytest.approx(_union_hectares(paths), rel=1e-4)
    assert sum(each.values()) > total * 1.08  # the naive sum double counts the overlaps
    assert stats.overlap_rule


def test_overlap_rule_with_grids_on_different_pixel_lattices(tmp_path):
    a = _grid(tmp_path, "a", 0, 0, 40)
    b = _grid(tmp_path, "b", 36, 0, 40, transform_offset=(0.004, -0.003))
    stats = compute_statistics(annual_rasters.discover([str(tmp_path)]))
    total = stats.total_by_year()[2020]
    pixel_ha = _union_hectares([a]) / 1600
    assert abs(total - _union_hectares([a, b])) < 40 * pixel_ha  # within one pixel column of the union


def test_owned_mask_partitions_the_overlap():
    a, b = Footprint("a", 0.0, 0.0, 1.0, 1.0), Footprint("b", 0.9, 0.0, 1.9, 1.0)
    lon = np.array([0.5, 0.93, 0.97, 1.5])
    lat = np.full(4, 0.5)
    in_a, in_b = owned_mask(lon, lat, a, [b]), owned_mask(lon, lat, b, [a])
    # pixels are a's own; in the overlap (0.9–1.0) the nearer centre wins: 0.93 is nearer a's, 0.97 b's
    assert in_a.tolist() == [True, True, False, False]
    assert (in_a[:3] ^ in_b[:3]).all()  # every point of the overlap in exactly one grid


def test_class_id_rasters_give_hectares_per_class_and_type(tmp_path):
    codes = np.zeros((30, 30), dtype=np.uint16)
    codes[:10, :10] = 215
    codes[20:, 20:] = 102
    codes[0, 29] = 301
    codes[29, 0] = 65535
    write_raster(tmp_path / "class_id_2019.tif", codes, nodata=65535, tags={"product": "class_id"})
    code, _, err = run_cli("stats", tmp_path / "class_id_2019.tif", "--output", tmp_path / "out", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "out" / "areas_by_class_id.csv")))
    by_code = {int(r["class_id"]): (r["type"], float(r["mining_ha"])) for r in rows}
    assert set(by_code) == {102, 215, 301}
    assert by_code[215][0] == "garimpo" and by_code[102][0] == "industrial" and by_code[301][0] == "unidentified"
    total = float(next(csv.DictReader(open(tmp_path / "out" / "areas_by_year.csv")))["mining_ha"])
    assert sum(v for _, v in by_code.values()) == pytest.approx(total)
    assert by_code[215][1] == pytest.approx(by_code[102][1], rel=0.01)  # equal 10 × 10 blocks 0.2° apart
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert doc["by_type"]["2019"]["garimpo"] == pytest.approx(by_code[215][1], abs=1e-3)


def test_bad_inputs_name_the_file(tmp_path):
    code, _, err = run_cli("stats", tmp_path / "nothing_here", "--output", tmp_path / "o")
    assert code == 2 and "nothing_here: no such file or folder" in err
    fake = tmp_path / "fake_2003.tif"
    fake.write_text("not a raster")
    code, _, err = run_cli("stats", fake, "--output", tmp_path / "o")
    assert code == 2 and str(fake) in err and "not a readable raster" in err
    write_raster(tmp_path / "y" / "undated.tif", np.zeros((4, 4), np.uint8))
    code, _, err = run_cli("stats", tmp_path / "y", "--output", tmp_path / "o")
    assert code == 2 and "undated.tif: no year in the file name" in err
    write_raster(tmp_path / "z" / "a_2001.tif", np.zeros((4, 4), np.uint8), tags={"grid": "7"})
    write_raster(tmp_path / "z" / "b_2001.tif", np.zeros((4, 4), np.uint8), tags={"grid": "7"})
    code, _, err = run_cli("stats", tmp_path / "z", "--output", tmp_path / "o")
    assert code == 2 and "grid 7, year 2001 is given twice" in err
    with pytest.raises(UserError, match="no raster to measure"):
        compute_statistics([])
