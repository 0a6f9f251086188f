"""Contracts checked before work starts (issue 16, deliverable 2): `ingest`, `export`, `accuracy estimate`
and `classify-type` refuse (or, for classify-type, warn about) inputs that would give a wrong result."""
from __future__ import annotations

import csv
import datetime
import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine

from pipeline.earthengine import ingest, mosaic
from pipeline.errors import UserError
from tests.support.products import run_cli, write_raster

COLLECTION = "projects/my-project/assets/mining/c9"
URI = "gs://bkt/out/1200/2020/mining.tif"
META = ["--model", "unet-c9", "--filter-mode", "appendix", "--software-version", "0.1.0"]


def ingest_cli(tmp_path, *argv):
    """Run `ingest` as a dry run (nothing is sent) with complete metadata."""
    return run_cli("ingest", *argv, *META, "--dry-run", "--out", tmp_path / "m.json")


# --------------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("collection", [
    "projects/my-project/assets/mining c9",  # a space
    "projects/my-project/assets/mining//c9",  # an empty folder
    "projects/My_Project/assets/mining",  # not a Cloud project id
    "projects/p/assets/mining",  # project id too short
    "projects/my-project/assets/mining/c9?x=1",
])
def test_ingest_invalid_asset_id_is_refused_naming_it(tmp_path, collection):
    code, _, err = ingest_cli(tmp_path, "--cogs", URI, "--collection", collection, "--threshold", "0.5")
    assert code == 2 and f"--collection {collection!r}: not a valid asset id" in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("collection", [COLLECTION, "users/someone/mining_c9", "projects/earthengine-legacy/assets/users/x/y"])
def test_ingest_valid_asset_ids_are_accepted(collection):
    assert ingest.collection_name(collection).endswith(collection.rsplit("/", 1)[-1])


@pytest.mark.parametrize("threshold", ["-0.1", "1.5", "nan", "50"])
def test_ingest_threshold_outside_0_1_is_refused(tmp_path, threshold):
    code, _, err = ingest_cli(tmp_path, "--cogs", URI, "--collection", COLLECTION, "--threshold", threshold)
    assert code == 2 and "--threshold" in err and "not a probability in [0, 1]" in err


def test_ingest_threshold_outside_0_1_in_a_cog_tag_is_refused_naming_the_cog():
    with pytest.raises(UserError, match=r"mining.tif: threshold 1.7 is not a probability"):
        ingest.make_item(URI, ingest.IngestOptions(COLLECTION, model="m", filter_mode="appendix", version="1"),
                         {"threshold": "1.7"})


def test_ingest_same_cog_twice_is_refused(tmp_path):
    code, _, err = ingest_cli(tmp_path, "--cogs", URI, URI, "--collection", COLLECTION, "--threshold", "0.5")
    assert code == 2 and f"{URI}: duplicated COG (listed twice)" in err


def test_ingest_two_cogs_of_one_grid_year_are_refused_naming_both(tmp_path):
    other = "gs://bkt/rerun/1200_2020.tif"
    code, _, err = ingest_cli(tmp_path, "--cogs", URI, other, "--collection", COLLECTION, "--threshold", "0.5")
    assert code == 2 and f"{other}: duplicated COG (same grid 1200 and year 2020 as {URI})" in err


def test_ingest_local_source_is_refused_for_real_ingestion_before_any_request(tmp_path, monkeypatch):
    from pipeline.earthengine import auth

    monkeypatch.setattr(auth, "initialize", lambda *a, **k: pytest.fail("Earth Engine must not be contacted"))
    local = str(tmp_path / "1200" / "2020" / "mining.tif")
    code, _, err = run_cli("ingest", "--cogs", local, "--collection", COLLECTION, "--threshold", "0.5", *META)
    assert code == 2 and f"{local}: not a gs:// URI" in err


def test_ingest_local_source_is_accepted_for_a_dry_run(tmp_path):
    local = str(tmp_path / "1200" / "2020" / "mining.tif")
    code, _, err = ingest_cli(tmp_path, "--cogs", local, "--collection", COLLECTION, "--threshold", "0.5")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())[0]["uri"] == local


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("years", ["1984", "1984-1990", "2099", "1990,2099"])
def test_export_years_outside_the_landsat_collections_are_refused(tmp_path, years):
    code, _, err = run_cli("export", "--exports", "gs://bkt/exports", "--years", years, "--grids", "1137",
                           "--dry-run", "--out", tmp_path / "tasks.json")
    assert code == 2, err
    assert "--years:" in err and "outside the Landsat collections the mosaics use (1985-" in err
    assert "Traceback" not in err and not (tmp_path / "tasks.json").exists()


def test_export_year_span_runs_from_1985_to_the_current_year():
    today = datetime.date(2031, 3, 1)
    mosaic.check_years([1985, 2030, 2031], today=today)
    with pytest.raises(UserError, match=r"--years: 2032 outside .*\(1985-2031: LANDSAT/LT05"):
        mosaic.check_years([2032], today=today)
    with pytest.raises(UserError, match=r"--years: 1984 outside"):
        mosaic.check_years([1984], today=today)


# --------------------------------------------------------------------------------------------------
# accuracy estimate
# --------------------------------------------------------------------------------------------------
def _map(tmp_path, name, seed):
    values = np.zeros((40, 40), np.uint8)
    rng = np.random.default_rng(seed)
    r, c = rng.integers(5, 25, size=2)
    values[r:r + 8, c:c + 8] = 30
    return write_raster(tmp_path / name, values, nodata=255, transform=Affine(0.0003, 0, -55.0, 0, -0.0003, -6.0))


def _design(tmp_path, name, seed):
    out = tmp_path / f"design_{name}"
    code, _, err = run_cli("accuracy", "design", _map(tmp_path, f"{name}.tif", seed), "--n", "30", "--rare-n", "10",
                           "--ring-width", "100", "--seed", "1", "--output", out)
    assert code == 0, err
    return out


def _rows(path):
    """The rows of a sample.csv as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _labelled(path, rows):
    rows = [dict(row, reference=row["map_class"]) for row in rows]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_accuracy_estimate_of_its_own_design_is_accepted(tmp_path):
    out = _design(tmp_path, "a", 1)
    sample = _labelled(tmp_path / "s.csv", _rows(out / "sample.csv"))
    code, _, err = run_cli("accuracy", "estimate", sample, "--design", out / "design.json", "--output", tmp_path / "e")
    assert code == 0, err


def test_accuracy_estimate_duplicated_unit_id_is_refused(tmp_path):
    out = _design(tmp_path, "a", 1)
    rows = _rows(out / "sample.csv")
    sample = _labelled(tmp_path / "s.csv", rows + [rows[3]])
    code, _, err = run_cli("accuracy", "estimate", sample, "--design", out / "design.json", "--output", tmp_path / "e")
    assert code == 2 and str(sample) in err and f"unit {rows[3]['id']}: duplicated (the id is used twice)" in err
    assert not (tmp_path / "e").exists()


def test_accuracy_estimate_two_units_on_one_pixel_are_refused(tmp_path):
    out = _design(tmp_path, "a", 1)
    rows = _rows(out / "sample.csv")
    copy = dict(rows[0], id="99")
    sample = _labelled(tmp_path / "s.csv", rows + [copy])
    code, _, err = run_cli("accuracy", "estimate", sample, "--design", out / "design.json", "--output", tmp_path / "e")
    assert code == 2
    assert f"unit 99: duplicated (same pixel row {rows[0]['row']}, col {rows[0]['col']} as unit {rows[0]['id']})" in err


def test_accuracy_estimate_with_a_design_made_for_another_map_is_refused(tmp_path):
    mine, other = _design(tmp_path, "a", 1), _design(tmp_path, "b", 2)
    sample = _labelled(tmp_path / "s.csv", _rows(mine / "sample.csv"))
    code, _, err = run_cli("accuracy", "estimate", sample, "--design", other / "design.json", "--output", tmp_path / "e")
    assert code == 2, err
    assert str(sample) in err and "the sample was drawn for another map or design" in err and "b.tif" in err


def test_accuracy_estimate_with_an_older_design_counts_units_per_stratum(tmp_path):
    out = _design(tmp_path, "a", 1)
    design = json.loads((out / "design.json").read_text())
    del design["units"]
    (out / "old.json").write_text(json.dumps(design))
    rows = _rows(out / "sample.csv")
    extra = [dict(rows[0], id=str(100 + i), row="0", col=str(i)) for i in range(3)]  # more mining units than drawn
    sample = _labelled(tmp_path / "s.csv", rows + extra)
    code, _, err = run_cli("accuracy", "estimate", sample, "--design", out / "old.json", "--output", tmp_path / "e")
    assert code == 2 and "units in stratum mining but" in err and "drew 10" in err


# --------------------------------------------------------------------------------------------------
# classify-type
# --------------------------------------------------------------------------------------------------
def _occurrences(tmp_path, lon, lat, crs="EPSG:4326"):
    frame = gpd.GeoDataFrame([{"PROCESSO": "1/2000", "FASE": "LAVRA GARIMPEIRA", "SUBS": "MINÉRIO DE OURO"}],
                             geometry=[shapely.Point(lon, lat)], crs=crs)
    path = tmp_path / "occ.geojson"
    frame.to_file(path, driver="GeoJSON")
    return path


def test_classify_type_warns_naming_the_raster_when_no_occurrence_falls_within_it(tmp_path):
    raster = _map(tmp_path, "mining_2010.tif", 1)
    occurrences = _occurrences(tmp_path, -40.0, -20.0)  # another state entirely
    code, _, err = run_cli("classify-type", raster, "--occurrences", occurrences, "--output", tmp_path / "o")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {raster}: no occurrence of {occurrences} falls within")


def test_classify_type_does_not_warn_when_an_occurrence_is_within_the_buffer(tmp_path):
    raster = _map(tmp_path, "mining_2010.tif", 1)
    occurrences = _occurrences(tmp_path, -55.0 - 0.005, -6.005)  # ~550 m west of the raster, within 1 km
    code, _, err = run_cli("classify-type", raster, "--occurrences", occurrences, "--output", tmp_path / "o")
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("warning: ")]  # not quiet: a warning would show
