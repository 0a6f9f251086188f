"""The streaming job (issue 17) on Beam's BundleBasedDirectRunner in streaming mode, fed by TestStream.

Exports are the generated ones of tests/support/synthetic_run.py (2 × 3 patches of 16 pixels, 2000–2007)
with the stand-in model; each TestStream element is a file event for one (grid, year), as the watcher
(`WatchExports`) emits. The batch job's COGs are the reference. The local watcher itself runs in the end-to-end
smoke test, and its Dataflow branch (defer_remainder) is checked on its own.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream

from pipeline.elements import GridYearKey
from pipeline.errors import UserError
from pipeline.options import build_config
from pipeline.run import run
from tests.support.outputs import tifs
from tests.support.synthetic_run import YEARS, pipeline_args, stand_in_model, truth_stack, write_exports
from transforms import streaming
from transforms.streaming import StreamingGrids, grid_status_path, grid_year_of_path

GRIDS = ("1010", "1011")
BANDS = ("--probability_band", "true", "--origin_band", "true")
REPLACE = GridYearKey("replace", 0)
"""A test-only event: before it flows on, grid 1011's 2004 export is replaced (a re-export)."""


def cogs(folder) -> dict[str, bytes]:
    """The classification COGs only (not the raw results, nor a failed export's partial one under streaming/)."""
    return {name: data for name, data in tifs(folder).items() if not name.startswith(("raw", "streaming"))}


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


def stream(exports, output, model, events, *extra, timeout=3600.0, finish=False, replacement=None, every_grid=False):
    """Run StreamingGrids over a TestStream of `events` (GridYearKey, one per second of event and of processing
    time: TestStream's clock starts at 0, and so does the one the series timeouts are set from); returns what
    happened, counted in this process (the DirectRunner runs the DoFns here; its streaming metrics are not
    reliable): grid-years inferred, grids filtered (by grid)."""
    config = build_config(PipelineOptions(pipeline_args(exports, output, model, "--grids", ",".join(GRIDS),
                                                        "--years", f"{YEARS[0]}-{YEARS[-1]}", *BANDS, *extra)))
    test_stream = TestStream(coder=beam.coders.PickleCoder())
    for second, event in enumerate(events):
        test_stream = test_stream.add_elements([event], event_timestamp=second).advance_watermark_to(second).advance_processing_time(1)
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
                 | StreamingGrids(config=config, series_timeout=timeout, finish_incomplete=finish, start_every_grid=every_grid,
                                  clock=lambda: 0.0))
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
    events += [GridYearKey("1010", 2000)] * 40  # time passes beyond the timeout
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


def test_the_series_timeout_waits_its_time_and_counts_from_the_job_start_for_a_grid_with_no_export(tmp_path, model):
    exports = tmp_path / "exports"
    write_exports(exports, truth_stack(), grids=("1011",), skip_year=2003)
    events = shuffled([GridYearKey("1011", year) for year in YEARS if year != 2003])  # grid 1010: no export at all
    events += [GridYearKey("1011", 2000)] * 20
    stream(exports, tmp_path / "early", model, events, timeout=100.0, every_grid=True)  # 27 s pass: no timeout yet
    assert not os.path.exists(grid_status_path(str(tmp_path / "early"), "1011"))
    assert not os.path.exists(grid_status_path(str(tmp_path / "early"), "1010"))
    seen = stream(exports, tmp_path / "out", model, events, timeout=20.0, every_grid=True, finish=True)
    nothing = json.loads(open(grid_status_path(str(tmp_path / "out"), "1010")).read())
    assert nothing["state"] == "finished incomplete" and nothing["missing_years"] == YEARS and nothing["years_in"] == {}
    assert {e["status"] for e in nothing["grid_years"]} == {"skipped"} and len(nothing["grid_years"]) == len(YEARS)
    assert json.loads(open(grid_status_path(str(tmp_path / "out"), "1011")).read())["missing_years"] == [2003]
    assert sorted(seen["filtered"]) == list(GRIDS)


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


def _no_probe(monkeypatch):
    """The option values are refused before any network probe: the probe is a trap."""
    import pipeline.run as run_module

    def trap(*args, **kwargs):
        raise AssertionError("the cloud paths were probed before the option values were checked")

    monkeypatch.setattr(run_module, "probe_cloud_paths", trap)


def test_streaming_needs_grids_years_and_positive_seconds(tmp_path, model, monkeypatch):
    _no_probe(monkeypatch)
    with pytest.raises(UserError, match="needs --grids and --years"):
        run(pipeline_args(tmp_path / "exports", tmp_path / "out", model, "--streaming"))
    with pytest.raises(UserError, match="must be positive seconds"):
        run(pipeline_args(tmp_path / "exports", tmp_path / "out", model, "--streaming", "--grids", "1010", "--years", "2000",
                          "--watch_interval", "0"))


def test_the_local_watcher_streams_exports_copied_in_over_time_and_stops_after_the_last_grid(tmp_path, batch, model):
    """The end-to-end smoke: `run --streaming` on the local runner, watching a folder into which the exports'
    files are copied one at a time in shuffled order (each appears whole, as a Cloud Storage object does)."""
    exports, output = tmp_path / "exports", tmp_path / "out"
    exports.mkdir()
    files = sorted(path for path in (batch / "exports").rglob("*") if path.is_file())
    random.Random(3).shuffle(files)

    def copy_in():
        for source in files:
            target = exports / source.relative_to(batch / "exports")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target.with_name(target.name + ".part"))
            os.replace(target.with_name(target.name + ".part"), target)
            time.sleep(0.05)

    copier = threading.Thread(target=copy_in, daemon=True)
    copier.start()
    summary = run(pipeline_args(exports, output, model, "--grids", ",".join(GRIDS), "--years", f"{YEARS[0]}-{YEARS[-1]}", *BANDS,
                                "--streaming", "--watch_interval", "0.5", "--series_timeout", "300"))
    copier.join()
    assert summary["counts"] == {"written": 16} and summary["parameters"]["streaming"] is True
    for grid in GRIDS:  # settled because complete, not at the series timeout
        status = json.loads(open(grid_status_path(str(output), grid)).read())
        assert status["state"] == "filtered" and status["missing_years"] == []
    assert len(os.listdir(output / "raw" / "1010")) == len(YEARS)
    run(pipeline_args(exports, tmp_path / "reference", model, *BANDS))  # the batch run over the same exports
    got, want = cogs(output), cogs(tmp_path / "reference")
    assert len(want) == 16 and set(got) == set(want)
    assert [name for name in want if got[name] != want[name]] == []

    # A restart over the same output (after a stop or a drain) re-infers nothing, waits for its own grid
    # statuses (not the first run's), and writes the same bytes.
    raw_files = {path: path.stat().st_mtime_ns for path in (output / "raw").rglob("*.tif")}
    again = run(pipeline_args(exports, output, model, "--grids", ",".join(GRIDS), "--years", f"{YEARS[0]}-{YEARS[-1]}", *BANDS,
                              "--streaming", "--watch_interval", "0.5", "--series_timeout", "300", "--overwrite"))
    assert again["counts"] == {"written": 16} and again["started"] >= summary["finished"]
    assert {path: path.stat().st_mtime_ns for path in (output / "raw").rglob("*.tif")} == raw_files
    assert cogs(output) == got


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


def test_the_watch_claims_one_poll_per_call_and_checkpoints_only_after_it():
    from apache_beam.io.restriction_trackers import OffsetRange
    from apache_beam.runners.common import SplitResultResidual
    from apache_beam.utils.windowed_value import WindowedValue

    tracker = streaming._PollTracker(OffsetRange(1000, streaming.FOREVER))
    assert tracker.try_split(0) is None and not tracker.checkpointed.is_set()  # nothing claimed: nothing to checkpoint
    assert not tracker.try_claim(999) and tracker.try_claim(1500) and not tracker.try_claim(1600)  # one poll per call
    assert tracker.try_split(0.5) is None  # never split into parallel watches
    primary, residual = tracker.try_split(0)
    assert (primary.start, primary.stop) == (1000, 1501) and (residual.start, residual.stop) == (1501, streaming.FOREVER)
    assert tracker.try_split(0) == (primary, residual) and tracker.checkpointed.is_set()  # asked twice, same answer
    assert tracker.check_done() is None and not tracker.is_bounded()
    # Beam's local runner hands the checkpoint back wrapped in the invoker's split result.
    wrapped = [SplitResultResidual(residual_value=WindowedValue((("exports", (residual, None)), 1), 0, ()),
                                   current_watermark=None, deferred_timestamp=None)]
    restrictions = streaming._PollRestrictions()
    assert restrictions.create_tracker(wrapped).current_restriction() == residual
    assert restrictions.truncate("exports", residual) is None  # a drained job stops watching


def test_a_dataflow_poll_lists_every_export_file_and_defers_the_rest_of_the_watch(tmp_path, batch):
    """The watch's Dataflow branch, called as the runner calls it (no Dataflow here)."""
    from apache_beam.io.restriction_trackers import OffsetRange
    from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
    from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker

    exports = tmp_path / "exports"
    shutil.copytree(batch / "exports", exports)
    (exports / "notes.txt").write_text("not an export")  # outside {grid}/{year}/: ignored
    tracker = ThreadsafeRestrictionTracker(streaming._PollTracker(OffsetRange(0, streaming.FOREVER)))
    poll = streaming._PollExportsFn(interval=60.0, local=False)
    poll.setup()
    before = time.time()
    out = poll.process(str(exports), tracker=tracker, estimator=ManualWatermarkEstimator(None))
    files = sorted(str(path) for path in exports.rglob("*") if path.is_file() and path.name != "notes.txt")
    assert sorted(value.value[0] for value in out) == files
    assert {value.value[1][0] for value in out} == set(all_keys())
    residual, delay = tracker.deferred_status()
    assert residual.start >= int(before * 1000) and residual.stop == streaming.FOREVER and 59 <= delay.micros / 1e6 <= 60
    # The next call, before the interval has passed, lists nothing and defers again; after it, only what changed.
    again = ThreadsafeRestrictionTracker(streaming._PollTracker(residual))
    assert poll.process(str(exports), tracker=again, estimator=ManualWatermarkEstimator(None)) == [] and again.deferred_status()
    changed = exports / "1011" / "2004" / "mining_1011_2004-mixer.json"
    os.utime(changed, (time.time() + 5, time.time() + 5))
    poll._listed_at -= 60
    later = ThreadsafeRestrictionTracker(streaming._PollTracker(again.deferred_status()[0]))
    assert [value.value[0] for value in poll.process(str(exports), tracker=later, estimator=ManualWatermarkEstimator(None))] == [str(changed)]
    stopped = streaming._PollExportsFn(interval=60.0, local=False, stop_at=before - 1)
    fresh = ThreadsafeRestrictionTracker(streaming._PollTracker(residual))
    assert stopped.process(str(exports), tracker=fresh, estimator=ManualWatermarkEstimator(None)) == []  # the watch ends


def test_a_whole_export_with_a_bad_record_fails_as_in_the_batch_run_and_a_clean_rewrite_heals_it(tmp_path, batch, model):
    """An export whose files are all there but one record fails its checksum: failed at once (not waited for
    until the timeout), its good patches still in the filters, its dead letters in dead_letter.jsonl — the batch
    run's COGs, statuses and dead letters; the same export written again clean replaces it."""
    import gzip

    exports = tmp_path / "exports"
    shutil.copytree(batch / "exports", exports)
    shard = exports / "1010" / "2003" / "mining_1010_2003-00000.tfrecord.gz"
    clean = shard.read_bytes()
    data = bytearray(gzip.decompress(clean))
    length = int.from_bytes(data[:8], "little")
    data[12 + length + 4 + 12 + 20] ^= 0xFF  # inside record 1's data: that record fails its checksum
    shard.write_bytes(gzip.compress(bytes(data)))
    seen = stream(exports, tmp_path / "out", model, shuffled(all_keys()) * 2)
    reference = run(pipeline_args(exports, tmp_path / "reference", model, *BANDS))
    failed = [e for e in reference["grid_years"] if e["status"] == "failed"]
    assert [(e["grid"], e["year"]) for e in failed] == [("1010", 2003)] and "checksum" in failed[0]["reason"]
    got, want = cogs(tmp_path / "out"), cogs(tmp_path / "reference")
    assert set(got) == set(want) and "1010/1010_2003.tif" not in want
    assert [name for name in want if got[name] != want[name]] == []  # its good patches counted in the filters
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    fields = ("grid", "year", "status", "reason", "mining_pixels")
    assert [{k: e.get(k) for k in fields} for e in summary["grid_years"]] == [{k: e.get(k) for k in fields} for e in reference["grid_years"]]
    assert (tmp_path / "out" / "dead_letter.jsonl").read_text() == (tmp_path / "reference" / "dead_letter.jsonl").read_text()
    assert summary["dead_letters"] == 1 and seen["inferred"].count(("1010", 2003)) == 1  # a re-delivery infers nothing
    assert not (tmp_path / "out" / "raw" / "1010" / "1010_2003.tif").exists()  # never a raw result to re-use

    shard.write_bytes(clean)  # Earth Engine writes the export again; it reads clean
    os.utime(shard, (time.time() + 5, time.time() + 5))
    again = stream(exports, tmp_path / "out", model, [GridYearKey("1010", 2003)] + shuffled(all_keys()))
    assert again["inferred"] == [("1010", 2003)] and again["filtered"] == list(GRIDS)  # a restart: both grids re-filtered
    assert cogs(tmp_path / "out") == cogs(batch / "out") and (tmp_path / "out" / "dead_letter.jsonl").read_text() == ""
    assert not os.listdir(tmp_path / "out" / "streaming" / "failed")


def test_only_what_a_later_file_can_answer_is_marked_incomplete(tmp_path, batch):
    """The streaming job waits for an export whose dead letters are all `incomplete`, and fails the others."""
    from pipeline.elements import DeadLetter
    from pipeline.io.export_reader import read_export
    from tests.support.synthetic_run import BANDS as SYNTHETIC_BANDS

    def letters(folder):
        return [e for e in read_export(str(folder), "1010", 2002, SYNTHETIC_BANDS, (0.0,)) if isinstance(e, DeadLetter)]

    export = tmp_path / "1010" / "2002"
    shutil.copytree(batch / "exports" / "1010" / "2002", export)
    assert letters(export) == []
    first, second = export / "mining_1010_2002-00000.tfrecord.gz", export / "mining_1010_2002-00001.tfrecord.gz"
    shutil.move(second, tmp_path / "second.gz")  # the last shard not there yet
    assert [d.incomplete for d in letters(export)] == [True]
    shutil.move(first, tmp_path / "first.gz")  # no shard at all yet
    assert [d.incomplete for d in letters(export)] == [True]
    shutil.move(tmp_path / "second.gz", second)  # shard 00001 without 00000: a gap
    assert {d.incomplete for d in letters(export)} == {True}
    shutil.move(tmp_path / "first.gz", first)
    second.write_bytes(second.read_bytes()[:-30])  # a truncated shard: whole files, a broken one
    assert letters(export) and not any(d.incomplete for d in letters(export))


def test_cloud_storage_notifications_drive_the_same_job(tmp_path, batch, model):
    """The Pub/Sub option: OBJECT_FINALIZE notifications of the exports' objects (in shuffled order, some twice,
    among deletions, metadata updates and other objects) give the batch run's COGs. Pub/Sub itself is not here:
    the messages come from a TestStream, as ReadFromPubSub(with_attributes=True) hands them on."""
    from apache_beam.io.gcp.pubsub import PubsubMessage

    from transforms.streaming import GridYearsOfNotifications, grid_year_of_notification

    def note(event, name):
        return PubsubMessage(b"{}", {"eventType": event, "bucketId": "bucket", "objectId": name})

    assert grid_year_of_notification("gs://bucket/exports", note("OBJECT_FINALIZE", "exports/1010/2003/x-mixer.json").attributes) == ("1010", 2003)
    assert grid_year_of_notification("gs://bucket/exports", note("OBJECT_DELETE", "exports/1010/2003/x-mixer.json").attributes) is None
    assert grid_year_of_notification("gs://bucket/exports", note("OBJECT_FINALIZE", "other/1010/2003/x.json").attributes) is None
    assert grid_year_of_notification("gs://bucket/exports", {"eventType": "OBJECT_FINALIZE"}) is None
    names = sorted(str(path.relative_to(batch)) for path in (batch / "exports").rglob("*") if path.is_file())
    messages = [note("OBJECT_FINALIZE", name) for name in names] * 2
    messages += [note("OBJECT_DELETE", names[0]), note("OBJECT_METADATA_UPDATE", names[1]), note("OBJECT_FINALIZE", "notes/readme.txt")]
    random.Random(4).shuffle(messages)
    test_stream = TestStream(coder=beam.coders.PickleCoder())
    for second, message in enumerate(messages):
        test_stream = test_stream.add_elements([message], event_timestamp=second).advance_processing_time(1)
    config = build_config(PipelineOptions(pipeline_args(batch / "exports", tmp_path / "out", model, "--grids", ",".join(GRIDS),
                                                        "--years", f"{YEARS[0]}-{YEARS[-1]}", *BANDS)))
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as pipeline:
        _ = (pipeline | test_stream.advance_watermark_to_infinity()
             | GridYearsOfNotifications(exports="gs://bucket/exports")
             | StreamingGrids(config=config, series_timeout=3600.0, finish_incomplete=False, clock=lambda: 0.0))
    got, want = cogs(tmp_path / "out"), cogs(batch / "out")
    assert len(want) == 16 and [name for name in want if got.get(name) != want[name]] == []


def test_the_notification_option_is_checked_before_anything_runs(tmp_path, model, monkeypatch):
    _no_probe(monkeypatch)
    base = pipeline_args(tmp_path / "exports", tmp_path / "out", model, "--grids", "1010", "--years", "2000")
    with pytest.raises(UserError, match="expected projects/PROJECT/subscriptions/NAME"):  # a typo, not the network
        run(pipeline_args("gs://mm-in/exports", "gs://mm-out/run", model, "--grids", "1010", "--years", "2000",
                          "--streaming", "--exports_subscription", "projects/p/subscription/s"))
    with pytest.raises(UserError, match="is for the streaming job"):
        run([*base, "--exports_subscription", "projects/p/subscriptions/s"])
    with pytest.raises(UserError, match="expected projects/PROJECT/subscriptions/NAME"):
        run([*base, "--streaming", "--exports_subscription", "topics/exports"])
    with pytest.raises(UserError, match="needs --exports on Cloud Storage"):
        run([*base, "--streaming", "--exports_subscription", "projects/p/subscriptions/s"])
