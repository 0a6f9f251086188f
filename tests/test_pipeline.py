"""The whole pipeline on the FnApiRunner over generated Earth Engine exports, with a stand-in model
whose output is known, checked pixel by pixel against the filter engine run on the whole raster."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from pipeline.method.filters import FilterParams, apply_chain
from pipeline.run import run
from tests.support.synthetic_run import (
    COLS,
    ROWS,
    YEARS,
    expected_cog,
    pipeline_args,
    truth_stack,
    write_exports,
)


@pytest.mark.parametrize("mode", ["appendix", "c9-code"])
def test_pipeline_cogs_equal_the_engine_on_the_whole_raster(tmp_path, model_path, mode):
    stack = truth_stack()
    write_exports(tmp_path / "exports", stack)
    summary = run(pipeline_args(tmp_path / "exports", tmp_path / "out", model_path, "--filter_mode", mode,
                                "--probability_band", "true", "--origin_band", "true"))
    assert summary["counts"] == {"written": len(YEARS)}
    expected = expected_cog(stack, FilterParams(mode=mode))
    origin = apply_chain(stack, FilterParams(mode=mode)).origin
    for t, year in enumerate(YEARS):
        path = tmp_path / "out" / "1010" / f"1010_{year}.tif"
        assert cog_validate(str(path))[0]
        with rasterio.open(path) as cog:
            classes, probability, origin_band = cog.read()
            assert cog.crs.to_epsg() == 4326
            assert cog.transform.c == pytest.approx(-54.0) and cog.transform.f == pytest.approx(-3.0)
            assert cog.tags()["grid"] == "1010" and cog.tags()["year"] == str(year) and cog.tags()["filter_mode"] == mode
            assert cog.tags()["model"] == f"national=file://{model_path}"  # the model as an absolute URI
            assert cog.scales == (1.0, 1 / 255, 1.0) and cog.offsets == (0.0, 0.0, 1900.0)
            assert json.loads(cog.tags(1)["classes"])[0] == {"value": 30, "name": "mining", "title": "mining", "color_hint": "9C0027"}
        assert (classes == expected[t]).all(), f"{mode} {year}: {np.argwhere(classes != expected[t])[:5]}"
        observed = stack[t] != 255
        assert (probability[~observed] == 255).all()
        assert (probability[observed & (stack[t] == 1)] == 254).all()  # sigmoid(10) × 255, capped at 254
        assert (probability[observed & (stack[t] == 0)] == 2).all()  # sigmoid(−5) × 255 = 1.71
        want_origin = np.where(origin[t] == 255, 255, np.array(YEARS)[np.minimum(origin[t], len(YEARS) - 1)] - 1900)
        assert (origin_band == want_origin).all()
    entry = summary["grid_years"][0]
    assert entry["status"] == "written" and entry["mining_pixels"]["input"] == int((stack[0] == 1).sum())
    assert entry["mining_pixels"]["frequency"] == int((expected[0] == 30).sum())
    assert summary["metrics"]["patches_inferred"] + summary["metrics"]["patches_not_observed"] == len(YEARS) * ROWS * COLS
    assert summary["metrics"]["patches_not_observed"] == 1


def test_every_grid_year_is_accounted_for(tmp_path, model_path):
    stack = truth_stack(5)
    write_exports(tmp_path / "exports", stack, grids=("1010", "1011"), skip_year=2003)
    # Corrupt one shard of grid 1011 in 2006: its records are lost, the rest goes on.
    shard = tmp_path / "exports" / "1011" / "2006" / "mining_1011_2006-00001.tfrecord.gz"
    shard.write_bytes(shard.read_bytes()[:60])
    summary = run(pipeline_args(tmp_path / "exports", tmp_path / "out", model_path, "--grids", "1010-1012"))
    status = {(e["grid"], e["year"]): e for e in summary["grid_years"]}
    assert len(status) == 3 * len(YEARS)
    assert status[("1010", 2003)]["status"] == "skipped" and status[("1011", 2003)]["status"] == "skipped"
    assert all(status[("1012", y)]["status"] == "skipped" for y in YEARS)
    assert status[("1011", 2006)]["status"] == "failed" and "00001" in status[("1011", 2006)]["reason"]
    written = [k for k, v in status.items() if v["status"] == "written"]
    assert len(written) == 2 * (len(YEARS) - 1) - 1
    for grid, year in written:
        assert (tmp_path / "out" / grid / f"{grid}_{year}.tif").exists()
    dead = [json.loads(line) for line in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()]
    assert dead and all(d["grid"] == "1011" and d["year"] == 2006 for d in dead)
    # The skipped year is not observed for the filters: grid 1010 equals the engine with 2003 all 255.
    gapped = stack.copy()
    gapped[YEARS.index(2003)] = 255
    expected = expected_cog(gapped, FilterParams())
    with rasterio.open(tmp_path / "out" / "1010" / "1010_2004.tif") as cog:
        assert (cog.read(1) == expected[YEARS.index(2004)]).all()
    assert not [p for p in os.listdir(tmp_path / "out" / "1010") if "partial" in p]


def test_rerun_overwrites_with_identical_files(tmp_path, model_path):
    stack = truth_stack(9)
    write_exports(tmp_path / "exports", stack)
    args = pipeline_args(tmp_path / "exports", tmp_path / "out", model_path, "--years", "2000-2007", "--overwrite")
    run(args)
    first = {p: (tmp_path / "out" / "1010" / p).read_bytes() for p in os.listdir(tmp_path / "out" / "1010")}
    inodes = {p: (tmp_path / "out" / "1010" / p).stat().st_ino for p in first}
    assert run(args)["counts"] == {"written": len(YEARS)}
    second = {p: (tmp_path / "out" / "1010" / p).read_bytes() for p in os.listdir(tmp_path / "out" / "1010")}
    assert first == second and len(first) == len(YEARS)
    assert all((tmp_path / "out" / "1010" / p).stat().st_ino != inodes[p] for p in first)  # written again, not kept
