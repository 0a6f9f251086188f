"""Integration by prevalence: the Lourenço series through the real filter command, the table as data, bad grids."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.io.tables import load_prevalence_table
from pipeline.products.integrate import integrate_layers, rank_lookup
from tests.conftest import shared_path
from tests.support.products import read, run_cli, write_raster

YEARS = "2014-2020"


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """The real `mining-mapper filter` on the Lourenço series (7 years): mining maps 30 / 0 / 255."""
    source = shared_path("mapbiomas_c6_lourenco")
    out = tmp_path_factory.mktemp("filtered")
    code, _, err = run_cli("filter", source, "--years", YEARS, "--output", out, "--quiet")
    assert code == 0, err
    return source, out


@pytest.fixture(scope="module")
def integrated(filtered, tmp_path_factory):
    source, mining_dir = filtered
    out = tmp_path_factory.mktemp("integrated")
    code, _, err = run_cli("integrate", mining_dir, "--land-cover", source, "--output", out, "--quiet")
    assert code == 0, err
    return source, mining_dir, out


def test_every_mining_pixel_ends_as_30_and_nothing_else_changes(integrated):
    source, mining_dir, out = integrated
    added = 0
    for year in range(2014, 2021):
        mining = read(mining_dir / f"mining_{year}.tif")
        cover = read(source / f"utm_cover_AP_lorenco_{year}.tif")
        result = read(out / f"integrated_{year}.tif")
        assert (result[mining == 30] == 30).all()
        assert np.array_equal(result[mining != 30], cover[mining != 30])
        added += int(((mining == 30) & (cover != 30)).sum())
    # the filters (gap fill, temporal) added mining where the land-cover map had another class, so the
    # integration did change something; and removed some, which stays the land-cover class (tested above)
    assert added > 0
    summary = json.loads((out / "integrate_summary.json").read_text())
    assert [r["year"] for r in summary["rasters"]] == list(range(2014, 2021))
    for record in summary["rasters"]:
        year = record["year"]
        mining = read(mining_dir / f"mining_{year}.tif")
        cover = read(source / f"utm_cover_AP_lorenco_{year}.tif")
        # the land-cover map's own class 30 stays where the mining map has no mining (nothing changes there)
        assert record["mining_pixels"] == int(((mining == 30) | (cover == 30)).sum())
        assert record["changed_pixels"] == int(((mining == 30) & (cover != 30)).sum())
        replaced = {int(k) for k in record["replaced_ha_by_land_cover_class"] if k != "nodata"}
        assert replaced == {int(c) for c in np.unique(cover[(mining == 30) & (cover != 30) & (cover != 65535)])}


def test_output_is_a_cog_on_the_mining_grid(integrated):
    source, mining_dir, out = integrated
    with rasterio.open(out / "integrated_2020.tif") as dst, rasterio.open(mining_dir / "mining_2020.tif") as ref:
        assert dst.crs == ref.crs and dst.transform == ref.transform and dst.shape == ref.shape
        assert dst.dtypes[0] == "uint16" and dst.nodata == 65535
        assert dst.overviews(1) and dst.profile.get("tiled")
        assert dst.tags()["product"] == "integrated" and dst.tags()["year"] == "2020"
        assert dst.tags()["land_cover_year"] == "2020"
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(out / "integrated_2020.tif"))
    assert valid, errors


def test_the_prevalence_table_is_data():
    ranks = load_prevalence_table()
    assert ranks[30] == 1 and ranks[21] == 25 and len(ranks) == 25
    lookup = rank_lookup(ranks, 100)
    mining = np.array([[30, 30, 0, 0]])
    cover = np.array([[3, 33, 24, 99]])
    out = integrate_layers([np.full_like(mining, 30), cover], [mining == 30, np.ones_like(cover, bool)], lookup, 0)
    assert out.tolist() == [[30, 30, 24, 99]]
    # a different table changes the result: water before mining
    lookup = rank_lookup({33: 1, 30: 2, 3: 3}, 100)
    out = integrate_layers([np.full_like(mining, 30), cover], [mining == 30, np.ones_like(cover, bool)], lookup, 0)
    assert out.tolist() == [[30, 33, 24, 99]]
    # unlisted classes rank last; equal ranks go to the first layer; unclaimed pixels get nodata
    a, b = np.array([[7, 8, 5]]), np.array([[9, 3, 5]])
    out = integrate_layers([a, b], [np.array([[True, True, False]]), np.array([[True, True, False]])], rank_lookup({3: 1}, 20), 255)
    assert out.tolist() == [[7, 3, 255]]


def test_custom_prevalence_file_drives_the_command(filtered, tmp_path):
    source, mining_dir = filtered
    for year in range(2014, 2021):  # a year where the filtered mining covers another land-cover class
        mining = read(mining_dir / f"mining_{year}.tif")
        cover = read(source / f"utm_cover_AP_lorenco_{year}.tif")
        under = cover[(mining == 30) & (cover != 30) & (cover != 65535)]
        if under.size:
            break
    other = int(np.bincount(under).argmax())
    table = tmp_path / "prevalence.json"
    table.write_text(json.dumps({"classes": [{"class": other, "rank": 1}, {"class": 30, "rank": 2}]}))
    code, _, err = run_cli("integrate", mining_dir / f"mining_{year}.tif", "--land-cover", source, "--years", str(year),
                           "--prevalence", table, "--output", tmp_path / "out", "--quiet")
    assert code == 0, err
    result = read(tmp_path / "out" / f"integrated_{year}.tif")
    contested = (mining == 30) & (cover == other)
    assert contested.any() and (result[contested] == other).all()
    assert (result[(mining == 30) & (cover != other)] == 30).all()


def _small(tmp_path, name, year, values, transform, nodata):
    return write_raster(tmp_path / f"{name}_dir" / f"{name}_{year}.tif", values, crs="EPSG:32722", transform=transform, nodata=nodata)


def test_mismatched_grids_are_refused_unless_reprojected(tmp_path):
    mining = np.zeros((10, 12), np.uint8)
    mining[2:5, 3:7] = 30
    t = Affine(30, 0, 500_000, 0, -30, 9_000_000)
    cover = np.full((14, 16), 15, np.uint16)
    cover[:, :4] = 3
    m = _small(tmp_path, "mining", 2001, mining, t, 255)
    shifted = Affine(30, 0, 500_000 - 60, 0, -30, 9_000_000 + 60)  # two pixels west and north
    c = _small(tmp_path, "cover", 2001, cover, shifted, 65535)
    code, _, err = run_cli("integrate", m, "--land-cover", c, "--output", tmp_path / "o")
    assert code == 2 and str(c) in err and str(m) in err and "differs from the mining map" in err and "--reproject" in err
    code, _, err = run_cli("integrate", m, "--land-cover", c, "--output", tmp_path / "o", "--reproject", "--quiet")
    assert code == 0, err
    out = read(tmp_path / "o" / "integrated_2001.tif")
    expected = cover[2:12, 2:14].copy()
    expected[mining == 30] = 30
    assert np.array_equal(out, expected)


def test_missing_land_cover_year(tmp_path):
    t = Affine(30, 0, 500_000, 0, -30, 9_000_000)
    m = _small(tmp_path, "mining", 2005, np.zeros((4, 4), np.uint8), t, 255)
    c = _small(tmp_path, "cover", 2003, np.full((4, 4), 3, np.uint16), t, 0)
    code, _, err = run_cli("integrate", m, "--land-cover", c, "--output", tmp_path / "o")
    assert code == 2 and "no land-cover map for year(s) 2005" in err
    code, _, err = run_cli("integrate", m, "--land-cover", c, "--output", tmp_path / "o", "--nearest-land-cover-year", "--quiet")
    assert code == 0, err
    with rasterio.open(tmp_path / "o" / "integrated_2005.tif") as src:
        assert src.tags()["land_cover_year"] == "2003"
