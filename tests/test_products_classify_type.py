"""class_id per mining component: the Lourenço maps with real SIGMINE titles, rules on synthetic data, bad input."""
from __future__ import annotations

import csv
import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from scipy import ndimage

from pipeline.io.tables import load_class_id_table
from pipeline.errors import UserError
from pipeline.products.classify_type import choose_code
from pipeline.products.occurrences import read_occurrences
from tests.conftest import shared_path
from tests.support.products import read, run_cli, write_raster

LAYER = "sigmine_AP_2021_poly"


@pytest.fixture(scope="module")
def lourenco(tmp_path_factory):
    maps = shared_path("mapbiomas_c6_lourenco")
    gpkg = shared_path("occurrences", "sigmine_amapa_2021.gpkg")
    out = tmp_path_factory.mktemp("class_id")
    code, _, err = run_cli("classify-type", maps, "--years", "2019-2020", "--occurrences", gpkg, "--layer", LAYER,
                           "--output", out, "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "components.csv")))
    return maps, gpkg, out, rows


def test_one_row_per_8_connected_component_and_a_class_id_cog(lourenco):
    maps, _, out, rows = lourenco
    for year in (2019, 2020):
        values = read(maps / f"utm_cover_AP_lorenco_{year}.tif")
        labels, count = ndimage.label(values == 30, structure=np.ones((3, 3)))
        mine = [r for r in rows if int(r["year"]) == year]
        assert len(mine) == count
        assert [int(r["pixels"]) for r in mine] == np.bincount(labels.ravel())[1:].tolist()
        class_ids = read(out / f"class_id_{year}.tif")
        assert (class_ids[values == 30] > 0).all()
        assert (class_ids[(values != 30) & (values != 65535)] == 0).all()
        assert (class_ids[values == 65535] == 65535).all()
        for r in mine:  # every pixel of a component carries the component's class_id
            assert (class_ids[labels == int(r["component"])] == int(r["class_id"])).all()
    with rasterio.open(out / "class_id_2020.tif") as src:
        assert src.dtypes[0] == "uint16" and src.tags()["product"] == "class_id" and src.overviews(1)


def _usable_titles(gpkg) -> gpd.GeoDataFrame:
    """Titles the tables resolve, read independently with geopandas."""
    table = load_class_id_table()
    frame = gpd.read_file(gpkg, layer=LAYER)
    keep = [table.type_of("FASE", f) is not None and table.substance_of(s) is not None for f, s in zip(frame.FASE, frame.SUBS)]
    return frame[keep]


def test_evidence_and_distances_rederived_independently(lourenco):
    """Rebuild each 2020 component from pixel squares, measure in a local azimuthal equidistant CRS."""
    maps, gpkg, _, rows = lourenco
    titles = _usable_titles(gpkg)
    path = maps / "utm_cover_AP_lorenco_2020.tif"
    with rasterio.open(path) as src:
        values, transform, crs = src.read(1), src.transform, CRS.from_wkt(src.crs.to_wkt())
    labels, _ = ndimage.label(values == 30, structure=np.ones((3, 3)))
    checked = {"intersects": 0, "nearest": 0, "none": 0}
    for r in (r for r in rows if r["year"] == "2020"):
        rr, cc = np.nonzero(labels == int(r["component"]))
        x0, y0 = transform @ (cc, rr)
        x1, y1 = transform @ (cc + 1, rr + 1)
        component = shapely.union_all(shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)))
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(*component.centroid.coords[0])
        local = CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +ellps=GRS80 +units=m")
        to_local = Transformer.from_crs(crs, local, always_xy=True)
        component_local = shapely.transform(component, lambda xy, f=to_local: np.column_stack(f.transform(xy[:, 0], xy[:, 1])))
        features = titles.to_crs(local)
        distances = features.distance(component_local)
        touching = set(features.PROCESSO[distances == 0])
        evidence = set(filter(None, r["evidence"].split(";")))
        if touching:
            assert r["match"] == "intersects" and evidence == touching and r["class_id"] == "115"
        elif distances.min() <= 995:
            nearest = set(features.PROCESSO[distances <= distances.min() + 0.5])
            assert r["match"] == "nearest" and evidence == nearest
            assert float(r["distance_m"]) == pytest.approx(distances.min(), rel=2e-3, abs=1.0)
        elif distances.min() > 1005:
            assert r["match"] == "none" and r["class_id"] == "301" and not evidence
        checked[r["match"]] += 1
    assert all(checked.values()), checked  # the real data exercise every rule


def test_buffer_parameter(lourenco, tmp_path):
    maps, gpkg, _, rows = lourenco
    code, _, err = run_cli("classify-type", maps / "utm_cover_AP_lorenco_2020.tif", "--occurrences", gpkg, "--layer", LAYER,
                           "--buffer", "0", "--output", tmp_path, "--quiet")
    assert code == 0, err
    no_buffer = {r["component"]: r for r in csv.DictReader(open(tmp_path / "components.csv"))}
    for r in (r for r in rows if r["year"] == "2020"):
        other = no_buffer[r["component"]]
        if r["match"] == "nearest":
            assert other["match"] == "none" and other["class_id"] == "301"
        else:
            assert other["match"] == r["match"] and other["class_id"] == r["class_id"]


def test_points_layer_and_a_crs_given_as_wkt_only(lourenco, tmp_path):
    maps, gpkg, _, _ = lourenco
    occurrences = read_occurrences(str(gpkg), load_class_id_table(), "sigmine_AP_2021_centroids")
    assert occurrences.crs.to_epsg() is None and "Albers" in occurrences.crs.to_wkt()
    assert occurrences.total == 1115 and 0 < len(occurrences.ids) < 1115
    code, _, err = run_cli("classify-type", maps / "utm_cover_AP_lorenco_2020.tif", "--occurrences", gpkg,
                           "--layer", "sigmine_AP_2021_centroids", "--buffer", "3000", "--output", tmp_path, "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "components.csv")))
    assert any(r["match"] == "nearest" for r in rows)
    summary = json.loads((tmp_path / "classify_type_summary.json").read_text())
    assert summary["occurrences"]["usable"] == len(occurrences.ids)


# --------------------------------------------------------------------------------------------------
# Rules on synthetic data (geographic raster, GeoSGB-like points)
# --------------------------------------------------------------------------------------------------
GEOD = Geod(ellps="WGS84")
PIXEL = 0.0003  # about 33 m


def _geographic_map(tmp_path, blocks):
    values = np.zeros((60, 60), np.uint8)
    for r0, r1, c0, c1 in blocks:
        values[r0:r1, c0:c1] = 30
    transform = Affine(PIXEL, 0, -55.0, 0, -PIXEL, -6.0)
    return write_raster(tmp_path / "maps" / "mining_2010.tif", values, nodata=255, transform=transform), transform


def _points(tmp_path, records, name="occ.geojson", crs="EPSG:4326"):
    frame = gpd.GeoDataFrame(
        [{k: v for k, v in r.items() if k != "xy"} for r in records],
        geometry=[shapely.Point(*r["xy"]) for r in records], crs=crs,
    )
    path = tmp_path / name
    frame.to_file(path, driver="GeoJSON")
    return path


def test_geosgb_fields_majority_and_table_order_ties(tmp_path):
    raster, t = _geographic_map(tmp_path, [(5, 15, 5, 15), (30, 40, 30, 40)])
    a = t @ (10, 10)
    b = t @ (35, 35)
    path = _points(tmp_path, [
        {"ID_OCORRENCIA": 1, "STATUS_ECONOMICO": "Garimpo", "SUBSTANCIAS": "Ouro, Prata", "xy": a},
        {"ID_OCORRENCIA": 2, "STATUS_ECONOMICO": "Garimpo", "SUBSTANCIAS": "Ouro", "xy": (a[0] + PIXEL, a[1])},
        {"ID_OCORRENCIA": 3, "STATUS_ECONOMICO": "Mina", "SUBSTANCIAS": "Ferro", "xy": (a[0], a[1] - PIXEL)},
        {"ID_OCORRENCIA": 4, "STATUS_ECONOMICO": "Garimpo", "SUBSTANCIAS": "Ouro", "xy": b},
        {"ID_OCORRENCIA": 5, "STATUS_ECONOMICO": "Mina", "SUBSTANCIAS": "Ferro", "xy": (b[0] + PIXEL, b[1])},
        {"ID_OCORRENCIA": 6, "STATUS_ECONOMICO": "Ocorrência", "SUBSTANCIAS": "Ouro", "xy": b},
    ])
    code, _, err = run_cli("classify-type", raster, "--occurrences", path, "--output", tmp_path / "out", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "out" / "components.csv")))
    assert [(r["class_id"], r["match"], r["evidence"]) for r in rows] == [
        ("215", "intersects", "1;2;3"),  # two gold garimpos beat one iron mine
        ("102", "intersects", "4;5"),  # 1 : 1, and 102 (iron) comes before 215 in Table 3
    ]
    summary = json.loads((tmp_path / "out" / "classify_type_summary.json").read_text())
    assert summary["occurrences"]["fields"] == "geosgb" and summary["occurrences"]["usable"] == 5


def test_nearest_within_the_buffer_in_metres_on_a_geographic_raster(tmp_path):
    raster, t = _geographic_map(tmp_path, [(20, 30, 20, 30)])
    east_edge, mid_lat = t @ (30, 25)
    lon, lat, _ = GEOD.fwd(east_edge, mid_lat, 90, 500.0)  # 500 m east of the component, on the ellipsoid
    path = _points(tmp_path, [{"PROCESSO": "1/2000", "FASE": "LAVRA GARIMPEIRA", "SUBS": "CASSITERITA", "xy": (lon, lat)}])
    code, _, err = run_cli("classify-type", raster, "--occurrences", path, "--output", tmp_path / "a", "--quiet")
    assert code == 0, err
    (row,) = csv.DictReader(open(tmp_path / "a" / "components.csv"))
    assert row["class_id"] == "214" and row["match"] == "nearest" and row["evidence"] == "1/2000"
    assert float(row["distance_m"]) == pytest.approx(500.0, abs=2.0)
    code, _, err = run_cli("classify-type", raster, "--occurrences", path, "--buffer", "450", "--output", tmp_path / "b", "--quiet")
    (row,) = csv.DictReader(open(tmp_path / "b" / "components.csv"))
    assert row["class_id"] == "301" and row["match"] == "none"


def test_choose_code_ties_follow_table_order():
    order = load_class_id_table().order
    assert choose_code([215, 102], order) == 102
    assert choose_code([215, 215, 102], order) == 215
    assert choose_code([301, 217], order) == 217


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_bad_occurrence_files(tmp_path, lourenco):
    maps, gpkg, _, _ = lourenco
    raster = maps / "utm_cover_AP_lorenco_2020.tif"

    def fails(path, *extra):
        code, _, err = run_cli("classify-type", raster, "--occurrences", path, *extra, "--output", tmp_path / "o")
        assert code == 2, err
        return err

    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    assert f"{empty}: layer" in fails(empty) and "holds no features" in fails(empty)
    garbage = tmp_path / "garbage.gpkg"
    garbage.write_bytes(b"\x00\x01 not a database")
    assert f"{garbage}: not a readable vector file" in fails(garbage)
    err = fails(gpkg)
    assert str(gpkg) in err and "several layers" in err and LAYER in err
    assert "no layer 'nope'" in fails(gpkg, "--layer", "nope")
    unknown = _points(tmp_path, [{"NAME": "x", "KIND": "y", "xy": (-51.6, 2.3)}], "unknown.geojson")
    assert "match no known occurrence source" in fails(unknown)
    useless = _points(tmp_path, [{"PROCESSO": "1", "FASE": "REQUERIMENTO DE PESQUISA", "SUBS": "OURO", "xy": (-51.6, 2.3)}], "useless.geojson")
    assert "none of its 1 features has a known mining type and substance" in fails(useless)
    frame = gpd.GeoDataFrame({"PROCESSO": ["1"], "FASE": ["LAVRA GARIMPEIRA"], "SUBS": ["OURO"]}, geometry=[shapely.Point(0, 0)])
    no_crs = tmp_path / "no_crs.shp"
    with pytest.warns(UserWarning, match="crs"):
        pyogrio.write_dataframe(frame, no_crs)
    assert f"{no_crs}: layer" in fails(no_crs) and "has no CRS" in fails(no_crs)
    with pytest.raises(UserError, match="unknown field mapping"):
        read_occurrences(str(gpkg), load_class_id_table(), LAYER, fields="anm-2030")
