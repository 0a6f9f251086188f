"""An output folder is one run (issue 16): refuse another run's folder, --overwrite leaves exactly the new set,
a lock keeps two runs apart, a killed run's temporaries go, and stats/report/ingest read the manifest."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from affine import Affine

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.io.rasters import list_rasters
from tests.support.products import write_raster
from pipeline.io.run_folder import (
    LOCK_NAME,
    acquire_lock,
    claim_output,
    read_lock,
    release_lock,
    remove_leftovers,
)

YEARS = list(range(2000, 2006))


def write_series(folder, years=YEARS, seed=0) -> None:
    """Small annual maps (30 mining / 0 / 255) with the year in the name, as `filter` reads them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for year in years:
        data = np.where(rng.random((24, 24)) < 0.3, 30, 0).astype(np.uint8)
        data[4:12, 4:12] = 30
        write_raster(folder / f"map_{year}.tif", data, crs="EPSG:31982", transform=Affine(30, 0, 500000, 0, -30, 9000000), nodata=255)


def run_filter(inputs, output, *extra) -> int:
    return main(["filter", str(inputs), "--output", str(output), "--quiet", *extra])


def test_second_filter_into_a_run_folder_is_refused_naming_the_folder_and_overwrite(tmp_path, capsys):
    write_series(tmp_path / "in")
    assert run_filter(tmp_path / "in", tmp_path / "out") == 0
    before = {p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")}
    capsys.readouterr()
    assert run_filter(tmp_path / "in", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path / "out") in error and "--overwrite" in error
    assert {p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")} == before


def test_filter_overwrite_leaves_exactly_the_new_set_and_the_manifest_lists_it(tmp_path):
    write_series(tmp_path / "in")
    assert run_filter(tmp_path / "in", tmp_path / "out") == 0
    (tmp_path / "out" / "raw" / "1").mkdir(parents=True)
    (tmp_path / "out" / "raw" / "1" / "1_2000.tif").write_bytes(b"reused by a later run")
    assert run_filter(tmp_path / "in", tmp_path / "out", "--years", "2002-2004", "--overwrite") == 0
    files = sorted(p for p in os.listdir(tmp_path / "out") if p != "raw")
    assert files == ["areas.csv", "mining_2002.tif", "mining_2003.tif", "mining_2004.tif", "summary.json"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["outputs"] == ["areas.csv", "mining_2002.tif", "mining_2003.tif", "mining_2004.tif",
                                  "raw/1/1_2000.tif", "summary.json"]
    assert (tmp_path / "out" / "raw" / "1" / "1_2000.tif").read_bytes() == b"reused by a later run"  # raw/ is never cleaned


def test_stats_and_report_read_only_the_rasters_the_manifest_lists(tmp_path):
    write_series(tmp_path / "in")
    assert run_filter(tmp_path / "in", tmp_path / "out", "--years", "2001-2003") == 0
    write_series(tmp_path / "stray", years=[1999])  # a map that is no part of the run, lying in its folder
    os.replace(tmp_path / "stray" / "map_1999.tif", tmp_path / "out" / "mining_1999.tif")
    listed = [os.path.basename(p) for p in list_rasters([str(tmp_path / "out")])]
    assert listed == ["mining_2001.tif", "mining_2002.tif", "mining_2003.tif"]
    assert main(["stats", str(tmp_path / "out"), "--output", str(tmp_path / "stats"), "--quiet"]) == 0
    csvs = [p for p in os.listdir(tmp_path / "stats") if p.endswith(".csv")]
    text = "".join((tmp_path / "stats" / p).read_text() for p in csvs)
    assert csvs and "1999" not in text and "2002" in text
    assert main(["report", str(tmp_path / "out"), "--output", str(tmp_path / "report"), "--quiet"]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "mining_2002.tif" in page and "mining_1999.tif" not in page


def test_a_live_lock_refuses_a_second_run_naming_pid_and_host(tmp_path, capsys):
    write_series(tmp_path / "in")
    lock = acquire_lock(str(tmp_path / "out"), "filter")
    try:
        assert run_filter(tmp_path / "in", tmp_path / "out") == 2
        error = capsys.readouterr().err
        assert f"pid {os.getpid()} on {socket.gethostname()}" in error and str(tmp_path / "out") in error
    finally:
        release_lock(lock)
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_lock_whose_process_is_gone_is_stale_and_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00", "command": "run"}))
    assert read_lock(str(tmp_path / "out")).is_stale(max_age_s=10**9)
    write_series(tmp_path / "in")
    assert run_filter(tmp_path / "in", tmp_path / "out") == 0
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_stale_only_past_the_age_bound(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(
        {"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00", "command": "run"}))
    lock = read_lock(str(tmp_path / "out"))
    assert not lock.is_stale(max_age_s=10**9) and lock.is_stale(max_age_s=60)
    with pytest.raises(UserError, match="another run is writing here.*elsewhere"):
        acquire_lock(str(tmp_path / "out"), "run", max_age_s=10**9)
    taken = acquire_lock(str(tmp_path / "out"), "run", max_age_s=60)
    assert read_lock(str(tmp_path / "out")).pid == os.getpid()
    release_lock(taken)


def test_a_killed_runs_partials_and_empty_beam_temp_folders_are_gone_after_the_next_run(tmp_path):
    out = tmp_path / "out"
    (out / "1010").mkdir(parents=True)
    (out / "1010" / ".1010_2000.tif.partial-0123abcd").write_bytes(b"half a COG")
    (out / ".summary.json.partial-99").write_bytes(b"{")
    (out / "beam-temp-summary-1a2b").mkdir()
    (out / "raw").mkdir()
    (out / "raw" / ".x.tif.partial-1").write_bytes(b"raw/ belongs to its feature")
    write_series(tmp_path / "in")
    assert run_filter(tmp_path / "in", out) == 0  # partials alone are not another run's outputs
    assert not (out / "1010" / ".1010_2000.tif.partial-0123abcd").exists()
    assert not (out / ".summary.json.partial-99").exists() and not (out / "beam-temp-summary-1a2b").exists()
    assert (out / "raw" / ".x.tif.partial-1").exists()
    assert remove_leftovers(str(out)) == []


def test_an_output_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="the output is a file"):
        claim_output(str(tmp_path / "file"), "filter", overwrite=False)


def test_ingest_of_a_run_folder_takes_the_cogs_its_manifest_lists_not_a_stray_one(tmp_path):
    import argparse

    from pipeline.commands.ingest import cog_uris

    write_series(tmp_path / "in")
    assert run_filter(tmp_path / "in", tmp_path / "out", "--years", "2001-2002") == 0
    (tmp_path / "out" / "mining_1999.tif").write_bytes(b"an earlier run's map")
    args = argparse.Namespace(cogs=None, cogs_list=None, cogs_prefix=str(tmp_path / "out"), project=None)
    assert [os.path.basename(u) for u in cog_uris(args)] == ["mining_2001.tif", "mining_2002.tif"]


def test_a_run_into_a_locked_output_is_refused_before_reading(tmp_path, capsys):
    from pipeline.run import main as run_main
    from tests.support.synthetic_run import pipeline_args, stand_in_model, truth_stack, write_exports

    write_exports(tmp_path / "exports", truth_stack(1))
    model = stand_in_model(str(tmp_path / "m.keras"))
    lock = acquire_lock(str(tmp_path / "out"), "run")
    try:
        assert run_main(pipeline_args(tmp_path / "exports", tmp_path / "out", model)) == 2
    finally:
        release_lock(lock)
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "another run is writing here" in error
    assert sorted(os.listdir(tmp_path / "out")) == []
