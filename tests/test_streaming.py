"""The streaming job (issue 17) on Beam's BundleBasedDirectRunner in streaming mode, fed by TestStream.

Exports are the generated ones of tests/support/synthetic_run.py (2 × 3 patches of 16 pixels, 2000–2007)
with the stand-in model; each TestStream element is a file event for one (grid, year), as the watcher
(`WatchExports`, fileio.MatchContinuously) emits on Dataflow. The batch job's COGs are the reference.
"""
from __future__ import annotations

import json
import os
import random
import shutil

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream

from pipeline.elements import GridYearKey
from pipeline.errors import UserError
from pipeline.options import build_config
from pipeline.run import run
from tests.support.synthetic_run import YEARS, pipeline_args, stand_in_model, truth_stack, write_exports
from transforms import streaming
from transforms.streaming import StreamingGrids, grid_status_path, grid_year_of_path

GRIDS = ("1010", "1011")
BANDS = ("--probability_band", "true", "--origin_band", "true")
REPLACE = GridYearKey("replace", 0)
"""A test-only event: before it flows on, grid 1011's 2004 export is replaced (a re-export)."""


def tifs(folder) -> dict[str, bytes]:
    """Every .tif under a folder (classification COGs and raw results), by relative path."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".tif"):
                with open(os.path.join(root, name), "rb") as handle:
                    found[os.path.relpath(os.path.join(root, name), folder)] = handle.read()
    return found


def cogs(folder) -> dict[str, bytes]:
    """The classification COGs only (not the raw results)."""
    return {name: data for name, data in tifs(folder).items() if not name.startswith("raw")}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return stand_in_model(str(tmp_path_factory.mktemp("model") / "stand_in.keras"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory, model):
    """Exports of two grids and the batch run's outputs over them."""
    root = tmp_path_factory.mktemp("batch")
    write_exports(root / "exports", truth_stack(), grids=GRIDS)
    run(pipeline_args(root / "exports", root / "out", model, *BANDS))
    return root


def stream(exports, output, model, events, *extra, timeout=3600.0, finish=False, replacement=None):
    """Run StreamingGrids over a TestStream of `events` (GridYearKey, one per event time, the watermark
    following); returns what happened, counted in this process (the DirectRunner runs the DoFns here; its
    streaming metrics are not reliable): grid-years inferred, grids filtered (by grid)."""
    config = build_config(PipelineOptions(pipeline_args(exports, output, model, "--grids", ",".join(GRIDS),
                                                        "--years", f"{YEARS[0]}-{YEARS[-1]}", *BANDS, *extra)))
    test_stream = TestStream(coder=beam.coders.PickleCoder())
    for second, event in enumerate(events):
        test_stream = test_stream.add_elements([event], event_timestamp=second).advance_watermark_to(second)
    test_stream = test_stream.advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True

    def replace(key):
        if key == REPLACE:
            replacement()
        return key

    seen = {"inferred": [], "filtered": []}
    classify, filter_grid = streaming._InferCompleteExportFn._classify, streaming.filter_grid

    def counting_classify(fn, grid, patches, geometry):
        seen["inferred"].append((grid, geometry.year))
        return classify(fn, grid, patches, geometry)

    def counting_filter(grid, *args, **kwargs):
        seen["filtered"].append(grid)
        return filter_grid(grid, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(streaming._InferCompleteExportFn, "_classify", counting_classify)
        patch.setattr(streaming, "filter_grid", counting_filter)
        with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as pipeline:
            _ = (pipeline | test_stream | "Replace" >> beam.Map(replace)
                 | StreamingGrids(config=config, series_timeout=timeout, finish_incomplete=finish))
    return seen


def shuffled(keys, seed=5):
    keys = list(keys)
    random.Random(seed).shuffle(keys)
    return keys


def all_keys():
    return [GridYearKey(grid, year) for grid in GRIDS for year in YEARS]


def test_shuffled_exports_give_the_batch_runs_cogs_byte_for_byte_and_duplicates_change_nothing(tmp_path, batch, model):
    events = shuffled(all_keys())
    events = events + shuffled(events, seed=9)  # every export delivered twice (a re-listing, a re-delivery)
    seen = stream(batch / "exports", tmp_path / "out", model, events)
    assert sorted(seen["inferred"]) == sorted(all_keys()) and sorted(seen["filtered"]) == list(GRIDS)  # each once
    got, want = tifs(tmp_path / "out"), tifs(batch / "out")
    assert set(got) == set(want) and len(want) == 2 * 2 * len(YEARS)  # COGs and raw results
    assert [name for name in want if got[name] != want[name]] == []
    status = json.loads(open(grid_status_path(str(tmp_path / "out"), "1010")).read())
    assert status["state"] == "filtered" and status["missing_years"] == [] and len(status["grid_years"]) == len(YEARS)
    assert {entry["status"] for entry in status["grid_years"]} == {"written"}
    summary, reference = (json.loads((folder / "summary.json").read_text()) for folder in (tmp_path / "out", batch / "out"))
    fields = ("grid", "year", "status", "mining_pixels", "mining_ha")
    assert [{k: e[k] for k in fields} for e in summary["grid_years"]] == [{k: e[k] for k in fields} for e in reference["grid_years"]]
    assert summary["parameters"]["streaming"] is True and summary["counts"] == {"written": 16}

    # A restart (after a drain) over the same output re-infers nothing and writes the same bytes.
    again = stream(batch / "exports", tmp_path / "out", model, shuffled(all_keys(), seed=11))
    assert again["inferred"] == [] and sorted(again["filtered"]) == list(GRIDS)
    assert tifs(tmp_path / "out") == want


def test_a_replaced_export_re_infers_that_year_and_re_filters_its_grid_only(tmp_path, batch, model):
    exports = tmp_path / "exports"
    shutil.copytree(batch / "exports", exports)
    other = tmp_path / "other"
    write_exports(other, truth_stack(seed=8), grids=GRIDS)

    def re_export():
        shutil.rmtree(exports / "1011" / "2004")
        shutil.copytree(other / "1011" / "2004", exports / "1011" / "2004")

    events = [*shuffled(all_keys()), REPLACE, GridYearKey("1011", 2004)]
    seen = stream(exports, tmp_path / "out", model, events, replacement=re_export)
    assert len(seen["inferred"]) == 17 and seen["inferred"][-1] == ("1011", 2004)
    assert sorted(seen["filtered"]) == ["1010", "1011", "1011"] and seen["filtered"][-1] == "1011"
    run(pipeline_args(exports, tmp_path / "reference", model, *BANDS))  # the batch run over the final exports
    got, want = cogs(tmp_path / "out"), cogs(tmp_path / "reference")
    assert [name for name in want if got[name] != want[name]] == []
    assert got["1011/1011_2004.tif"] != cogs(batch / "out")["1011/1011_2004.tif"]  # the replacement did change it


@pytest.mark.parametrize("finish", [False, True])
def test_a_grid_missing_a_year_is_reported_after_the_timeout_and_finished_by_flag(tmp_path, model, finish):
    exports = tmp_path / "exports"
    write_exports(exports, truth_stack(), grids=("1011",), skip_year=2003)
    write_exports(exports, truth_stack(), grids=("1010",))
    events = shuffled([k for k in all_keys() if k != GridYearKey("1011", 2003)])
    events += [GridYearKey("1010", 2000)] * 40  # time passes (the watermark follows) beyond the timeout
    seen = stream(exports, tmp_path / "out", model, events, timeout=20.0, finish=finish)
    status = json.loads(open(grid_status_path(str(tmp_path / "out"), "1011")).read())
    assert status["missing_years"] == [2003] and sorted(map(int, status["years_in"])) == [y for y in YEARS if y != 2003]
    assert json.loads(open(grid_status_path(str(tmp_path / "out"), "1010")).read())["state"] == "filtered"
    grid_cogs = {name for name in cogs(tmp_path / "out") if name.startswith("1011/")}
    pending = [e for e in json.loads((tmp_path / "out" / "summary.json").read_text())["grid_years"] if e["status"] == "skipped"]
    if not finish:
        assert status["state"] == "incomplete" and grid_cogs == set() and seen["filtered"] == ["1010"]
        assert len(pending) == len(YEARS) and all("missing years [2003]" in e["reason"] for e in pending)
        return
    assert status["state"] == "finished incomplete" and sorted(seen["filtered"]) == list(GRIDS)
    skipped = [e for e in status["grid_years"] if e["status"] == "skipped"]
    assert [e["year"] for e in skipped] == [2003] and "series timeout" in skipped[0]["reason"]
    # The batch run over the same exports (2003 missing: not observed) writes the same COGs.
    run(pipeline_args(exports, tmp_path / "reference", model, "--grids", "1011", "--years", "2000-2007", *BANDS))
    want = cogs(tmp_path / "reference")
    assert len(want) == len(YEARS) - 1 and grid_cogs == set(want)
    assert [name for name in want if cogs(tmp_path / "out")[name] != want[name]] == []


def test_an_incomplete_export_waits_for_its_last_shard(tmp_path, batch, model):
    exports = tmp_path / "exports"
    shutil.copytree(batch / "exports", exports)
    shard = exports / "1010" / "2002" / "mining_1010_2002-00001.tfrecord.gz"
    held = tmp_path / "held.gz"
    shutil.move(shard, held)
    events = [*shuffled(all_keys()), REPLACE, GridYearKey("1010", 2002)]
    seen = stream(exports, tmp_path / "out", model, events, replacement=lambda: shutil.move(held, shard))
    assert sorted(seen["inferred"]) == sorted(all_keys()) and seen["inferred"][-1] == ("1010", 2002)
    assert sorted(seen["filtered"]) == list(GRIDS)
    assert cogs(tmp_path / "out") == cogs(batch / "out")


def test_grid_year_of_path():
    assert grid_year_of_path("gs://b/exports", "gs://b/exports/1010/2003/mining_1010_2003-00000.tfrecord.gz") == ("1010", 2003)
    assert grid_year_of_path("gs://b/exports/", "gs://b/exports/1010/2003/x-mixer.json") == ("1010", 2003)
    assert grid_year_of_path("gs://b/exports", "gs://b/exports/1010/notes/x.txt") is None
    assert grid_year_of_path("gs://b/exports", "gs://b/other/1010/2003/x.json") is None


def test_streaming_is_refused_locally_and_without_grids_and_years(tmp_path, model):
    with pytest.raises(UserError, match="--streaming needs --runner DataflowRunner"):
        run(pipeline_args(tmp_path / "exports", tmp_path / "out", model, "--streaming"))
    from pipeline.run import check_streaming

    options = PipelineOptions(pipeline_args(tmp_path / "exports", tmp_path / "out", model, "--streaming"))
    with pytest.raises(UserError, match="needs --grids and --years"):
        check_streaming(options, local=False)


def test_a_mixer_contradicting_its_grid_is_refused_as_in_the_batch_run(tmp_path, batch, model):
    exports = tmp_path / "exports"
    shutil.copytree(batch / "exports", exports)
    mixer = exports / "1011" / "2003" / "mining_1011_2003-mixer.json"
    record = json.loads(mixer.read_text())
    record["projection"]["affine"]["doubleMatrix"][2] += 0.5  # another origin: contradicts the grid's other years
    mixer.write_text(json.dumps(record))
    stream(exports, tmp_path / "out", model, shuffled(all_keys()))
    reference = run(pipeline_args(exports, tmp_path / "reference", model, *BANDS))
    failed = [(e["grid"], e["year"]) for e in reference["grid_years"] if e["status"] == "failed"]
    assert failed == [("1011", 2003)]
    status = json.loads(open(grid_status_path(str(tmp_path / "out"), "1011")).read())
    entry = next(e for e in status["grid_years"] if e["year"] == 2003)
    assert entry["status"] == "failed" and "contradicts grid 1011" in entry["reason"]
    got, want = cogs(tmp_path / "out"), cogs(tmp_path / "reference")
    assert set(got) == set(want) and "1011/1011_2003.tif" not in want
    assert [name for name in want if got[name] != want[name]] == []
