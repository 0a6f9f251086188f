"""Stats at scale (issue 16, deliverable 7): pixel areas prepared once per grid (per row when geographic, on a
lattice when projected), reused across years, window by window, matching the exact per-pixel areas."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from pipeline.method import areas as areas_lib
from pipeline.method.areas import PixelAreas, hectares, pixel_areas_m2
from pipeline.io import rasters as annual_rasters
from pipeline.products.stats import compute_statistics
from tests.support.products import write_raster

# A UTM grid whose east edge is ~480 km from the central meridian (where the scale varies fastest),
# a south-polar-ish geographic grid, and an Albers grid like the SIGMINE data's.
GRIDS = {
    "utm_edge": ("EPSG:32722", Affine(30.0, 0, 150_000.0, 0, -30.0, 9_300_000.0), (700, 900)),
    "albers": ("ESRI:102033", Affine(30.0, 0, 1_000_000.0, 0, -30.0, 900_000.0), (500, 640)),
    "geographic": ("EPSG:4326", Affine(0.00027, 0, -55.0, 0, -0.00027, -60.0), (800, 300)),
}


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(GRIDS)),
    step=st.sampled_from([1, 7, 32, 64]),  # the default is 64: the documented bound holds up to it
    corner=st.tuples(st.floats(0, 0.95), st.floats(0, 0.95)),
    size=st.tuples(st.integers(1, 120), st.integers(1, 120)),
)
def test_window_areas_match_the_exact_per_pixel_areas(name, step, corner, size):
    crs, transform, shape = GRIDS[name]
    row_off, col_off = int(corner[0] * shape[0]), int(corner[1] * shape[1])
    window = Window(col_off, row_off, min(size[1], shape[1] - col_off), min(size[0], shape[0] - row_off))
    exact = np.broadcast_to(pixel_areas_m2(crs, transform, shape, window), (int(window.height), int(window.width)))
    got = np.broadcast_to(PixelAreas(crs, transform, shape, step=step).window(window), exact.shape)
    assert np.abs(got / exact - 1).max() < 1e-7


def test_geographic_areas_are_one_exact_value_per_row():
    crs, transform, shape = GRIDS["geographic"]
    window = Window(10, 20, 50, 30)
    got = PixelAreas(crs, transform, shape).window(window)
    assert got.shape == (30, 1)
    assert np.array_equal(got, pixel_areas_m2(crs, transform, shape, window))


@given(mask=st.lists(st.lists(st.booleans(), min_size=5, max_size=5), min_size=4, max_size=4),
       per_row=st.booleans())
def test_hectares_equals_the_masked_sum(mask, per_row):
    mask = np.array(mask)
    areas = np.arange(1.0, 5.0)[:, None] * 1000.0 if per_row else np.arange(20.0).reshape(4, 5) * 1000.0
    assert hectares(mask, areas) == pytest.approx(float((np.broadcast_to(areas, mask.shape) * mask).sum()) / 10_000)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(GRIDS)), seed=st.integers(0, 2**16), density=st.floats(0, 1),
       rows=st.tuples(st.integers(0, 400), st.integers(1, 200)), cols=st.tuples(st.integers(0, 250), st.integers(1, 50)))
def test_masked_hectares_equal_the_sum_of_the_window_areas(name, seed, density, rows, cols):
    crs, transform, shape = GRIDS[name]
    window = Window(cols[0], rows[0], cols[1], rows[1])
    mask = np.random.default_rng(seed).random((rows[1], cols[1])) < density
    grid = PixelAreas(crs, transform, shape)
    expected = float(np.sum(np.broadcast_to(grid.window(window), mask.shape) * mask)) / 10_000
    assert grid.hectares(mask, window) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_projected_areas_are_computed_once_for_a_series_of_years(tmp_path, monkeypatch):
    crs, transform, shape = GRIDS["utm_edge"]
    calls = []
    exact = areas_lib.projected_areas_m2
    monkeypatch.setattr(areas_lib, "projected_areas_m2", lambda *a: calls.append(a[2].size * a[3].size) or exact(*a))
    values = np.where(np.random.default_rng(0).random(shape) < 0.1, 30, 0).astype(np.uint8)
    paths = [write_raster(tmp_path / f"map_{year}.tif", values, crs=crs, transform=transform, nodata=255)
             for year in (2001, 2002, 2003)]
    stats = compute_statistics(annual_rasters.discover([str(p) for p in paths]), chunk_rows=100)
    assert len(calls) == 1 and calls[0] < shape[0] * shape[1] / 1000  # one lattice, not the pixels
    expected = float((values == 30).astype(float).ravel() @ pixel_areas_m2(crs, transform, shape).ravel()) / 10_000
    assert [r.mining_ha for r in stats.rasters] == pytest.approx([expected] * 3, rel=1e-7)  # the lattice: < 1e-7


def test_projected_stats_memory_is_bounded_by_the_window(tmp_path):
    crs, transform, _ = GRIDS["utm_edge"]
    height, width = 2000, 2000
    values = np.where(np.random.default_rng(1).random((height, width)) < 0.05, 30, 0).astype(np.uint8)
    path = write_raster(tmp_path / "big_2010.tif", values, crs=crs, transform=transform, nodata=255)
    refs = annual_rasters.discover([str(path)])
    tracemalloc.start()
    compute_statistics(refs, chunk_rows=64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the raster is 4 MB as uint8 and 32 MB as float areas; a 64-row window of areas is 1 MB
    assert peak < 6_000_000, peak
