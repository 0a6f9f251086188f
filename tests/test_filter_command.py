"""`mining-mapper filter` end to end: the real MapBiomas series, COG validity, and bad inputs."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from pipeline.method.areas import hectares_per_year, pixel_areas_m2
from pipeline.cli import main
from pipeline.method.filters import FilterParams, apply_chain
from pipeline.io.rasters import find_annual_rasters, read_class_series


@pytest.fixture(scope="module")
def lourenco_run(tmp_path_factory):
    from tests.conftest import shared_path

    source = shared_path("mapbiomas_c6_lourenco")
    out = tmp_path_factory.mktemp("lourenco")
    assert main(["filter", str(source), "--output", str(out), "--origin-band", "--quiet"]) == 0
    return source, out


def test_real_series_writes_one_valid_cog_per_year(lourenco_run):
    source, out = lourenco_run
    years = list(range(1985, 2021))
    assert sorted(os.listdir(out)) == sorted([f"mining_{y}.tif" for y in years] + ["areas.csv", "summary.json"])
    for year in (1985, 2003, 2020):
        path = out / f"mining_{year}.tif"
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
        with rasterio.open(path) as cog, rasterio.open(source / f"utm_cover_AP_lorenco_{year}.tif") as src:
            assert cog.crs == src.crs and cog.transform == src.transform and cog.shape == src.shape
            assert cog.count == 2 and cog.dtypes == ("uint8", "uint8") and cog.nodata == 255
            assert cog.compression is not None and cog.block_shapes[0] == (256, 256) and cog.overviews(1)
            tags = cog.tags()
            assert tags["year"] == str(year) and tags["filter_mode"] == "appendix"
            assert tags["software_version"] and tags["model"] and tags["threshold"]
            assert set(np.unique(cog.read(1))) <= {0, 30, 255}


def test_real_series_classes_equal_the_engine_on_the_same_stack(lourenco_run):
    source, out = lourenco_run
    series = read_class_series(find_annual_rasters([str(source)]))
    expected = apply_chain(series.stack, FilterParams())
    for index, year in enumerate(series.years):
        with rasterio.open(out / f"mining_{year}.tif") as cog:
            classes, origin = cog.read()
        want = np.select([expected.classes[index] == 1, expected.classes[index] == 0], [30, 0], 255)
        assert (classes == want).all(), year
        origin_years = np.where(expected.origin[index] == 255, 255, np.array(series.years)[np.minimum(expected.origin[index], len(series.years) - 1)] - 1900)
        assert (origin == origin_years).all(), year
    # The real series has mining in every year (3,000–8,600 pixels of class 30).
    assert (expected.mining_pixels["input"] >= 3000).all()


def test_real_series_areas_csv_uses_true_pixel_areas(lourenco_run):
    source, out = lourenco_run
    with open(out / "areas.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["year"]) for r in rows] == list(range(1985, 2021))
    assert list(rows[0]) == ["year", "mining_ha_input", "mining_ha_gap_fill", "mining_ha_temporal", "mining_ha_spatial", "mining_ha_frequency"]
    series = read_class_series(find_annual_rasters([str(source)]))
    areas = pixel_areas_m2(series.crs, series.transform, series.stack.shape[1:])
    before = hectares_per_year(series.stack, 1, areas)
    assert [float(r["mining_ha_input"]) for r in rows] == pytest.approx(before.tolist(), abs=1e-3)
    with rasterio.open(out / "mining_2020.tif") as cog:
        after_2020 = ((cog.read(1) == 30) * areas).sum() / 1e4
    assert float(rows[-1]["mining_ha_frequency"]) == pytest.approx(after_2020, abs=1e-3)
    # True UTM pixel areas are larger than the nominal 29.877² m² near the central meridian.
    nominal = (np.count_nonzero(series.stack[0] == 1) * series.transform.a ** 2) / 1e4
    assert before[0] > nominal
    summary = json.loads((out / "summary.json").read_text())
    assert all(v["status"] == "written" for v in summary["grid_years"]) and len(summary["grid_years"]) == 36
    assert summary["format"] == "mining-mapper.run-summary/2" and summary["command"] == "filter"
    assert all(v["path"].startswith("file:///") for v in summary["grid_years"])


def test_c9_mode_and_parameters_reach_the_outputs(lourenco_run, tmp_path):
    source, _ = lourenco_run
    assert main(["filter", str(source), "--years", "2000-2005", "--filter-mode", "c9-code", "--min-component-size", "20",
                 "--output", str(tmp_path), "--quiet"]) == 0
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".tif")) == [f"mining_{y}.tif" for y in range(2000, 2006)]
    with rasterio.open(tmp_path / "mining_2002.tif") as cog:
        assert cog.count == 1
        assert cog.tags()["filter_mode"] == "c9-code" and cog.tags()["filter_min_component_size"] == "20"


# ------------------------------------------------------------------ bad inputs
def write_map(path, data, crs="EPSG:31976", transform=Affine(30, 0, 400000, 0, -30, 270000), nodata=65535, tags=None):
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
        if tags:
            dst.update_tags(**tags)


@pytest.fixture
def small_series(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for year in range(2001, 2006):
        data = np.where(rng.random((20, 20)) < 0.3, 30, 3).astype(np.uint16)
        write_map(folder / f"map_{year}.tif", data)
    return folder


def run_filter(tmp_path, *args):
    out = tmp_path / "out"
    code = main(["filter", *map(str, args), "--output", str(out), "--quiet"])
    return code, out


def assert_refused(capsys, code, out, *fragments):
    assert code == 2
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists() or not any(out.iterdir()), "nothing may be written"


def test_refuses_mismatched_shape(tmp_path, small_series, capsys):
    write_map(small_series / "map_2003.tif", np.zeros((21, 20), dtype=np.uint16))
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "map_2003.tif", "shape 21×20")


def test_refuses_mismatched_crs(tmp_path, small_series, capsys):
    write_map(small_series / "map_2004.tif", np.zeros((20, 20), dtype=np.uint16), crs="EPSG:31975")
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "map_2004.tif", "CRS")


def test_refuses_mismatched_transform(tmp_path, small_series, capsys):
    write_map(small_series / "map_2002.tif", np.zeros((20, 20), dtype=np.uint16), transform=Affine(30, 0, 400030, 0, -30, 270000))
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "map_2002.tif", "transform")


def test_refuses_duplicate_year(tmp_path, small_series, capsys):
    shutil.copy(small_series / "map_2003.tif", small_series / "other_2003.tif")
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "year 2003 is given twice")


def test_refuses_missing_year_in_range(tmp_path, small_series, capsys):
    os.remove(small_series / "map_2003.tif")
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "2003", "consecutive")
    code, out = run_filter(tmp_path, small_series / "map_2001.tif", "--years", "2001-2002")
    assert_refused(capsys, code, out, "2002")


def test_refuses_file_without_year_and_unreadable_file(tmp_path, small_series, capsys):
    write_map(small_series / "landcover.tif", np.zeros((20, 20), dtype=np.uint16))
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "landcover.tif", "no year")
    os.remove(small_series / "landcover.tif")
    (small_series / "map_2006.tif").write_bytes(b"not a tiff")
    code, out = run_filter(tmp_path, small_series)
    assert_refused(capsys, code, out, "map_2006.tif", "not a readable raster")


def test_year_from_tag_and_extra_nodata(tmp_path, capsys):
    folder = tmp_path / "tagged"
    folder.mkdir()
    for index, year in enumerate((2010, 2011, 2012)):
        data = np.full((12, 12), 30, dtype=np.uint16)
        data[0, 0] = 0
        write_map(folder / f"layer{chr(97 + index)}.tif", data, tags={"year": str(year)})
    code, out = run_filter(tmp_path, folder, "--nodata-value", "0")
    assert code == 0
    with rasterio.open(out / "mining_2011.tif") as cog:
        band = cog.read(1)
    # (0, 0) is "0 = no data" in every year, so it stays not observed; the rest is one big pit.
    assert band[0, 0] == 255 and (band.ravel()[1:] == 30).all()


def test_failed_write_leaves_nothing(tmp_path, small_series, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    calls = {"n": 0}
    real_create = FileSystems.create

    def flaky_create(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_create(path, *a, **k)

    monkeypatch.setattr(FileSystems, "create", staticmethod(flaky_create))
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        main(["filter", str(small_series), "--output", str(out), "--quiet"])
    assert not out.exists() or os.listdir(out) == []
