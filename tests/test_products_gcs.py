"""The products on gs:// paths, against `gcp-storage-emulator`: rasters read through GDAL's /vsigs/,
listings and outputs through Beam's FileSystems — the same code as for local paths."""
from __future__ import annotations

import json
import posixpath

import numpy as np
import rasterio
import pytest
from affine import Affine

from tests.support.products import run_cli, write_raster
from tests.support.storage import storage_emulator, upload_tree

BUCKET = "mm-products"


@pytest.fixture(scope="module")
def gcs():
    with storage_emulator((BUCKET,)) as client:
        yield client


def _pipeline_layout(root):
    """Two overlapping grids × two years in the pipeline's {grid}/{grid}_{year}.tif layout."""
    rng = np.random.default_rng(5)
    for grid, col0 in (("101", 0), ("152", 36)):
        for year in (2021, 2022):
            values = np.where(rng.random((40, 40)) < 0.2, 30, 0).astype(np.uint8)
            values[:2] = 255
            transform = Affine(0.01, 0, -55.0 + col0 * 0.01, 0, -0.01, -2.0)
            write_raster(root / grid / f"{grid}_{year}.tif", values, nodata=255, transform=transform,
                         tags={"grid": grid, "year": year})


def test_stats_and_report_on_gs_paths(gcs, tmp_path):
    local = tmp_path / "run"
    _pipeline_layout(local)
    upload_tree(gcs, local, BUCKET, "run")
    code, _, err = run_cli("stats", f"gs://{BUCKET}/run", "--output", f"gs://{BUCKET}/stats", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("stats", local, "--output", tmp_path / "stats", "--quiet")
    assert code == 0, err
    remote = json.loads(gcs.bucket(BUCKET).blob("stats/stats.json").download_as_bytes())
    here = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert remote["total_by_year"] == here["total_by_year"] and len(remote["by_grid"]) == 4
    assert remote["overlap_rule"].startswith("overlapping grids")
    assert {r["path"] for r in remote["by_grid"]} == {f"gs://{BUCKET}/run/{g}/{g}_{y}.tif" for g in ("101", "152") for y in (2021, 2022)}

    code, _, err = run_cli("report", f"gs://{BUCKET}/run", "--quicklook", "152:2022", "--output", f"gs://{BUCKET}/report")
    assert code == 0, err
    page = gcs.bucket(BUCKET).blob("report/report.html").download_as_bytes().decode()
    assert "grid 152, 2022" in page and page.count("<svg") == 1
    names = {b.name for b in gcs.list_blobs(BUCKET, prefix="report/stac/")}
    assert "report/stac/collection.json" in names and len(names) == 5
    item = json.loads(gcs.bucket(BUCKET).blob("report/stac/classification-152-2022/classification-152-2022.json").download_as_bytes())
    href = item["assets"]["data"]["href"]  # relative inside the bucket: the catalog moves with the run
    assert posixpath.normpath(posixpath.join("report/stac/classification-152-2022", href)) == "run/152/152_2022.tif"
    assert not any(n.split("/")[-1].startswith(".") for n in {b.name for b in gcs.list_blobs(BUCKET)})  # no temporaries left


def test_filter_reads_a_series_from_gs_paths(gcs, tmp_path):
    """`filter`'s inputs may be on Cloud Storage (its preflight probes them): the same COGs as from local files."""
    local = tmp_path / "series"
    rng = np.random.default_rng(9)
    for year in range(2000, 2004):
        values = np.where(rng.random((32, 32)) < 0.3, 30, 0).astype(np.uint8)
        write_raster(local / f"mining_{year}.tif", values, nodata=255, transform=Affine(0.001, 0, -55.0, 0, -0.001, -2.0))
    upload_tree(gcs, local, BUCKET, "series")
    code, _, err = run_cli("filter", f"gs://{BUCKET}/series", "--output", tmp_path / "remote", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("filter", local, "--output", tmp_path / "here", "--quiet")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "here").glob("*.tif"))
    assert len(names) == 4
    for name in names:
        with rasterio.open(tmp_path / "remote" / name) as remote, rasterio.open(tmp_path / "here" / name) as here:
            assert (remote.read() == here.read()).all()
