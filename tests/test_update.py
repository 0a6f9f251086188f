"""The yearly update (issue 14): raw inference results kept, re-used when their fingerprint matches, and the
outputs of an update equal to those of a run from scratch, byte for byte.

Runs the whole pipeline on the FnApiRunner over the generated exports and stand-in model of
tests/test_pipeline.py (2 × 3 patches of 16 pixels; 1985–2023 for the update, 2000–2007 elsewhere); the handler's `patches_inferred` and
`patches_not_observed` counters say how many patches reached inference.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.elements import ExportGeometry, GridYearStatus
from pipeline.errors import UserError
from pipeline.io.raw import RawMismatch, decode_raw, encode_raw, raw_path
from pipeline.io.summary import RunSummary
from pipeline.method.tiles import (
    classes_at_threshold,
    classify_patch,
    patches_of_probability,
    probability_cutoff,
    quantise_probability,
)
from pipeline.run import run
from tests.support.outputs import tifs
from tests.support.synthetic_run import (
    COLS,
    ROWS,
    YEARS,
    pipeline_args,
    stand_in_model,
    truth_stack,
    write_exports,
)

PATCHES_PER_YEAR = ROWS * COLS


def inferred(summary) -> int:
    """Patches that reached the model handler (inferred, or skipped there as not observed)."""
    metrics = summary["metrics"]
    return metrics.get("patches_inferred", 0) + metrics.get("patches_not_observed", 0)


def by_year(summary) -> dict[int, dict]:
    return {entry["year"]: entry for entry in summary["grid_years"]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return stand_in_model(str(tmp_path_factory.mktemp("model") / "stand_in.keras"))


@pytest.fixture()
def exports(tmp_path):
    write_exports(tmp_path / "exports", truth_stack(7))
    return tmp_path / "exports"


BANDS = ("--probability_band", "true", "--origin_band", "true")


def test_update_infers_only_the_new_year_and_equals_a_fresh_run(tmp_path, model, monkeypatch):
    """Collection 9's span: 1985–2022, then the update to 1985–2023 against 1985–2023 from scratch."""
    import tests.support.synthetic_run as generated

    c9_years = list(range(1985, 2024))
    monkeypatch.setattr(generated, "YEARS", c9_years)  # the generated exports and truth span 1985–2023
    exports = tmp_path / "exports"
    generated.write_exports(exports, generated.truth_stack(7))
    first = run(pipeline_args(exports, tmp_path / "out", model, "--years", "1985-2022", *BANDS))
    assert inferred(first) == 38 * PATCHES_PER_YEAR and first["inference"] == {"inferred": 38, "reused": 0}
    update = run(pipeline_args(exports, tmp_path / "out", model, "--overwrite", "--years", "1985-2023", *BANDS))
    assert inferred(update) == PATCHES_PER_YEAR  # exactly 2023's patches
    assert update["metrics"]["patches_read"] == PATCHES_PER_YEAR and update["metrics"]["patches_reused"] == 38 * PATCHES_PER_YEAR
    assert update["inference"] == {"inferred": 1, "reused": 38} and update["format"] == "mining-mapper.run-summary/2"
    years = by_year(update)
    assert years[2023]["inference"] == "inferred" and "no raw result" in years[2023]["inference_reason"]
    assert all(years[y]["inference"] == "reused" and years[y]["fingerprint"].startswith("sha256:") for y in c9_years[:-1])
    fresh = run(pipeline_args(exports, tmp_path / "fresh", model, "--years", "1985-2023", "--reuse_raw", "off", *BANDS))
    assert inferred(fresh) == 39 * PATCHES_PER_YEAR and fresh["inference"] == {"inferred": 39, "reused": 0}
    assert by_year(fresh)[2003]["inference_reason"] == "re-use turned off"
    updated, scratch = tifs(tmp_path / "out"), tifs(tmp_path / "fresh")
    assert len(scratch) == 2 * 39 and set(updated) == set(scratch)  # classification COGs and raw results
    assert all(updated[name] == scratch[name] for name in scratch), [n for n in scratch if updated[n] != scratch[n]]
    assert {y: e["fingerprint"] for y, e in years.items()} == {y: e["fingerprint"] for y, e in by_year(fresh).items()}

    # A threshold change infers nothing and equals a fresh run at that threshold.
    again = run(pipeline_args(exports, tmp_path / "out", model, "--overwrite", "--threshold", "0.3", *BANDS))
    assert inferred(again) == 0 and again["inference"] == {"inferred": 0, "reused": 39}
    fresh03 = run(pipeline_args(exports, tmp_path / "fresh03", model, "--threshold", "0.3", "--reuse_raw", "off", *BANDS))
    assert inferred(fresh03) == 39 * PATCHES_PER_YEAR
    assert tifs(tmp_path / "out") == tifs(tmp_path / "fresh03")


def test_a_new_model_invalidates_every_grid_year_and_a_touched_export_only_its_own(tmp_path, exports, model):
    own = str(tmp_path / "model.keras")
    shutil.copy(model, own)
    run(pipeline_args(exports, tmp_path / "out", own))
    # Touching one export (same bytes, new modification time, as a new Cloud Storage generation would be).
    shard = exports / "1010" / "2003" / "mining_1010_2003-00000.tfrecord.gz"
    stat = shard.stat()
    os.utime(shard, (stat.st_atime, stat.st_mtime + 60))
    touched = run(pipeline_args(exports, tmp_path / "out", own, "--overwrite"))
    assert inferred(touched) == PATCHES_PER_YEAR and touched["inference"] == {"inferred": 1, "reused": 7}
    assert "fingerprint differs" in by_year(touched)[2003]["inference_reason"]
    # Replacing the model file (other weights, same path) invalidates every grid-year.
    import keras

    replaced = keras.models.load_model(own, compile=False)
    weights, bias = replaced.layers[-1].get_weights()
    replaced.layers[-1].set_weights([weights, bias - 1.0])
    replaced.save(own)
    renewed = run(pipeline_args(exports, tmp_path / "out", own, "--overwrite"))
    assert inferred(renewed) == len(YEARS) * PATCHES_PER_YEAR and renewed["inference"] == {"inferred": 8, "reused": 0}
    assert all("fingerprint differs" in e["inference_reason"] for e in renewed["grid_years"])


def test_truncated_or_foreign_raw_results_are_re_inferred_and_the_summary_says_why(tmp_path, exports, model):
    out = tmp_path / "out"
    run(pipeline_args(exports, out, model))
    truncated = raw_path(str(out / "raw"), "1010", 2004)
    with open(truncated, "rb") as handle:
        good = handle.read()
    with open(truncated, "wb") as handle:
        handle.write(good[: len(good) // 2])
    shutil.copy(out / "1010" / "1010_2005.tif", raw_path(str(out / "raw"), "1010", 2005))  # a classification COG
    summary = run(pipeline_args(exports, out, model, "--overwrite"))
    assert inferred(summary) == 2 * PATCHES_PER_YEAR and summary["inference"] == {"inferred": 2, "reused": 6}
    years = by_year(summary)
    assert years[2004]["inference"] == "inferred" and truncated in years[2004]["inference_reason"]
    assert "truncated" in years[2004]["inference_reason"]
    assert years[2005]["inference"] == "inferred" and "not a raw result" in years[2005]["inference_reason"]
    with open(truncated, "rb") as handle:
        assert handle.read() == good  # written again, whole


def test_reuse_from_another_folder_copies_the_raw_results_into_the_output(tmp_path, exports, model):
    run(pipeline_args(exports, tmp_path / "first", model))
    summary = run(pipeline_args(exports, tmp_path / "second", model, "--reuse-raw", str(tmp_path / "first" / "raw")))
    assert inferred(summary) == 0 and summary["parameters"]["reuse_raw"] == f"file://{tmp_path}/first/raw"
    assert tifs(tmp_path / "second") == tifs(tmp_path / "first")


def test_a_reused_year_whose_export_contradicts_the_grid_is_failed_and_kept_out_of_the_filters(tmp_path, exports, model):
    """2000 is re-used from its raw result (16-pixel patches) while 2001–2007 now say 18: 2000 is refused like an
    inferred year would be (failed, its patches not filtered with the others, which would end the run)."""
    run(pipeline_args(exports, tmp_path / "out", model, "--years", "2000-2000"))
    for year in YEARS[1:]:
        mixer = exports / "1010" / str(year) / f"mining_1010_{year}-mixer.json"
        mixer.write_text(mixer.read_text().replace('"patchDimensions": [16, 16]', '"patchDimensions": [18, 18]'))
    update = run(pipeline_args(exports, tmp_path / "out", model, "--overwrite"))
    years = by_year(update)
    assert years[2000]["status"] == "failed" and update["metrics"]["patches_reused"] == PATCHES_PER_YEAR
    assert "mining_1010_2000-mixer.json" in years[2000]["reason"] and "patchDimensions 16" in years[2000]["reason"]
    assert all(years[y]["status"] == "written" and years[y]["inference"] == "inferred" for y in YEARS[1:])
    # The other years equal those of a run from scratch, where 2000 is inferred and then refused.
    fresh = run(pipeline_args(exports, tmp_path / "fresh", model, "--reuse_raw", "off"))
    assert by_year(fresh)[2000]["status"] == "failed" and by_year(fresh)[2000]["reason"] == years[2000]["reason"]
    cogs = [f"1010/1010_{y}.tif" for y in YEARS[1:]]
    updated, scratch = tifs(tmp_path / "out"), tifs(tmp_path / "fresh")
    assert "1010/1010_2000.tif" not in updated and all(updated[name] == scratch[name] for name in cogs)


# --- The stored probability and the classes ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.floats(0.25, 0.75, width=32), st.floats(0, 1, width=32))
def test_at_the_default_threshold_the_stored_uint8_gives_the_float_rule(near, anywhere):
    """uint8 p × 255 loses no class at 0.5: rint(255 p) ≥ 128 ⟺ p ≥ 0.5 (255 × 0.5 = 127.5)."""
    probability = np.array([[near, anywhere]], dtype=np.float32)
    stored = quantise_probability(probability, np.ones((1, 2), bool))
    assert (classes_at_threshold(stored, 0.5) == np.where(probability >= 0.5, 1, 0)).all()


def test_at_the_default_threshold_every_float32_next_to_one_half_keeps_its_class():
    """The 20,001 float32 values closest to 0.5 (where rounding could bite): stored value and float rule agree."""
    below = np.float32(0.5) - np.arange(10_001, dtype=np.float32) * np.spacing(np.float32(0.25))
    above = np.float32(0.5) + np.arange(1, 10_001, dtype=np.float32) * np.spacing(np.float32(0.5))
    probability = np.concatenate([below, above]).reshape(1, -1).astype(np.float32)
    stored = quantise_probability(probability, np.ones(probability.shape, bool))
    assert (classes_at_threshold(stored, 0.5) == (probability >= 0.5)).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=16), st.floats(0.01, 0.99))
def test_fresh_classes_are_those_recomputed_from_the_stored_value(values, threshold):
    """Whatever the threshold, inference classifies from the value it stores, so a re-use run classifies the same."""
    probability = np.array(values, dtype=np.float32).reshape(1, -1)
    observed = np.ones(probability.shape, bool)
    observed[0, 0] = False
    classes, stored = classify_patch(probability, observed, 0, threshold)
    assert (classes == classes_at_threshold(stored, threshold)).all() and classes[0, 0] == stored[0, 0] == 255
    assert ((classes == 1) == ((stored >= probability_cutoff(threshold)) & (stored != 255))).all()


def test_off_the_half_step_thresholds_uint8_would_change_classes_of_the_float_rule():
    """Why classes come from the stored value: at 0.4 (255 × 0.4 = 102, not a half step) p = 0.399 is stored as
    102 = 0.4 × 255, so the float rule (not mining) and the stored value (mining) disagree; within 1/510 only."""
    assert probability_cutoff(0.4) == 102 and probability_cutoff(0.5) == 128 and probability_cutoff(0.3) == 77
    stored = quantise_probability(np.array([[0.399, 0.398]], dtype=np.float32), np.ones((1, 2), bool))
    assert stored.tolist() == [[102, 101]] and classes_at_threshold(stored, 0.4).tolist() == [[1, 0]]


GEOMETRY = ExportGeometry("1010", 2001, "EPSG:4326", (0.00027, 0.0, -54.0, 0.0, -0.00027, -3.0), 16, 3, 5, 4)


def test_raw_result_round_trips_and_refuses_another_fingerprint_or_grid_year():
    rng = np.random.default_rng(0)
    probability = rng.integers(0, 256, (GEOMETRY.height, GEOMETRY.width), dtype=np.uint8)
    data = encode_raw(GEOMETRY, probability, "sha256:abc")
    geometry, back = decode_raw(data, "r.tif", "1010", 2001, "sha256:abc")
    assert geometry == GEOMETRY and (back == probability).all()
    patches = patches_of_probability(geometry, back, 0.5)
    assert [p.index for p in patches] == [0, 1, 2, 3, 4] and (patches[4].probability == probability[16:, 16:32]).all()
    with pytest.raises(RawMismatch, match="r.tif: fingerprint differs"):
        decode_raw(data, "r.tif", "1010", 2001, "sha256:other")
    with pytest.raises(RawMismatch, match="holds grid 1010 year 2001, not 1010 2002"):
        decode_raw(data, "r.tif", "1010", 2002, "sha256:abc")
    with pytest.raises(RawMismatch, match="r.tif: unreadable, truncated or foreign"):
        decode_raw(b"not a tiff", "r.tif", "1010", 2001, "sha256:abc")


def test_summary_counts_inferred_and_reused_and_still_reads_format_1():
    statuses = [GridYearStatus("1", 2000, "written", inference="reused", fingerprint="sha256:a"),
                GridYearStatus("1", 2001, "written", inference="inferred", fingerprint="sha256:b", inference_reason="no raw result"),
                GridYearStatus("1", 2002, "skipped", reason="no export")]
    summary = RunSummary("run", "/o", {}, statuses, "s", "f")
    record = summary.as_dict()
    assert record["inference"] == {"inferred": 1, "reused": 1} and record["format"] == "mining-mapper.run-summary/2"
    assert RunSummary.from_json(summary.to_json()).grid_years == statuses
    old = {**record, "format": "mining-mapper.run-summary/1", "grid_years": [{"grid": "1", "year": 2002, "status": "skipped"}]}
    assert RunSummary.from_dict(old).inference_counts == {"inferred": 0, "reused": 0}
    with pytest.raises(UserError, match="not a mining-mapper run summary"):
        RunSummary.from_dict({**record, "format": "mining-mapper.run-summary/9"})


# --- The option and the file identity ------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (None, "OUT/raw"), ("", "OUT/raw"), ("off", None), ("OFF", None), ("none", None),
    ("gs://b/c9-2023/raw/", "gs://b/c9-2023/raw"), ("/data/raw", "/data/raw"),
])
def test_reuse_raw_defaults_to_the_outputs_raw_folder_and_can_be_turned_off(value, expected, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import build_config

    argv = ["--exports", "gs://b/e", "--output", str(tmp_path / "out"), "--model", "gs://b/m", "--grids", "1", "--years", "2000"]
    if value is not None:
        argv += ["--reuse_raw", value]
    config = build_config(PipelineOptions(argv))
    assert config.reuse_raw == (expected.replace("OUT", str(tmp_path / "out")) if expected else None)


def test_match_identity_gives_size_and_modification_time(tmp_path):
    from pipeline.io.filesystem import match_identity
    from pipeline.io.raw import export_identity

    folder = tmp_path / "1010" / "2000"
    folder.mkdir(parents=True)
    (folder / "a-mixer.json").write_bytes(b"{}")
    (folder / "a-00000.tfrecord.gz").write_bytes(b"12345")
    os.utime(folder / "a-00000.tfrecord.gz", (1_700_000_000, 1_700_000_000))
    found = match_identity(str(folder / "*"))
    assert [(os.path.basename(p), size) for p, size, _ in found] == [("a-00000.tfrecord.gz", 5), ("a-mixer.json", 2)]
    assert found[0][2] == 1_700_000_000
    assert export_identity(str(tmp_path), "1010", 2000)[0] == ("a-00000.tfrecord.gz", 5, 1_700_000_000.0)
    assert export_identity(str(tmp_path), "1010", 2001) == []


def test_fingerprint_covers_model_preset_export_and_precision_and_nothing_else():
    """Each input of the fingerprint changes it; threshold and filter parameters are not among its inputs."""
    import inspect

    from pipeline.io.raw import fingerprint

    base = {"model": "m1", "band_preset": "appendix", "bands": ("swir1", "nir"), "nodata": (-9999.0,),
                "identity": [("a-mixer.json", 2, 1.0), ("a-00000.tfrecord.gz", 5, 1.0)], "precision": "float32"}
    reference = fingerprint(**base)
    assert reference == fingerprint(**base) and reference.startswith("sha256:") and len(reference) == 7 + 64
    changes = {"model": "m2", "band_preset": "c9-code", "bands": ("swir1", "red"), "nodata": (0.0,),
               "identity": [("a-mixer.json", 2, 1.0), ("a-00000.tfrecord.gz", 5, 2.0)], "precision": "bfloat16"}
    for name, value in changes.items():
        assert fingerprint(**{**base, name: value}) != reference, name
    assert set(inspect.signature(fingerprint).parameters) == set(base)


def test_model_digest_covers_every_file_of_a_model_folder(tmp_path):
    """A serving model folder: weights and the tf.Transform preprocessing both count, by name and content."""
    from pipeline.io.raw import model_digest

    folder = tmp_path / "national"
    (folder / "transform_fn").mkdir(parents=True)
    (folder / "serving.keras").write_bytes(b"weights")
    (folder / "transform_fn" / "stats.json").write_text('{"mean": 1}')
    first = model_digest(str(folder))
    assert model_digest(str(folder)) == first
    (folder / "transform_fn" / "stats.json").write_text('{"mean": 2}')
    assert model_digest(str(folder)) != first
    second = model_digest(str(folder))
    (folder / "transform_fn" / "stats.json").rename(folder / "transform_fn" / "statistics.json")  # same bytes, new name
    assert model_digest(str(folder)) != second
    assert model_digest(str(folder / "serving.keras")) != model_digest(str(folder))
