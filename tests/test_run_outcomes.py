"""`mining-mapper run` outcomes (issue 16): exit statuses, bad data as dead letters naming the wrong file, one
run per output folder, and the multi-process runner giving the same bytes as the default one."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from pipeline.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.io.example import decode_example, encode_example
from pipeline.io.export_reader import read_export_patches
from pipeline.io.tfrecord import frame_record, read_shard
from pipeline.run import main
from tests.support.outputs import files
from tests.support.synthetic_run import (
    BANDS,
    YEARS,
    pipeline_args,
    truth_stack,
    write_exports,
)


def reshard_with_a_wrong_first_shard(folder):
    """Rewrite an export as three shards of two records each, the first holding 24x24 records (not 20x20)."""
    shards = sorted(folder.glob("*.tfrecord.gz"))
    records = [r for path in shards for r in read_shard(str(path))]
    for path in shards:
        path.unlink()
    wrong = [frame_record(encode_example({band: np.full(24 * 24, 120.0) for band in BANDS})) for _ in range(2)]
    chunks = [wrong, [frame_record(r) for r in records[2:4]], [frame_record(r) for r in records[4:6]]]
    for number, chunk in enumerate(chunks):
        with gzip.open(folder / f"mining_1010_2005-{number:05d}.tfrecord.gz", "wb") as handle:
            handle.write(b"".join(chunk))
    return folder / "mining_1010_2005-00000.tfrecord.gz"


def test_run_all_written_exits_0_and_multiprocess_runner_gives_byte_identical_outputs(tmp_path, model_path):
    write_exports(tmp_path / "exports", truth_stack(11))
    assert main(pipeline_args(tmp_path / "exports", tmp_path / "default", model_path, "-q")) == EXIT_OK
    multi = [a for a in pipeline_args(tmp_path / "exports", tmp_path / "multi", model_path, "-q") if a not in ("--direct_num_workers", "1")]
    assert main([*multi, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]) == EXIT_OK
    default, parallel = files(tmp_path / "default"), files(tmp_path / "multi")
    assert sorted(default) == sorted(parallel) == sorted(
        [f"1010/1010_{y}.tif" for y in YEARS] + [f"raw/1010/1010_{y}.tif" for y in YEARS] + ["dead_letter.jsonl", "summary.json"])
    for name in default:
        if name != "summary.json":  # the summary names its folder and times
            assert default[name] == parallel[name], name  # raw results too: their tags hold no path
    first, second = (json.loads(d["summary.json"]) for d in (default, parallel))
    paths = ("path", "inference_reason")  # these name the run's own folder
    strip = [{k: v for k, v in e.items() if k not in paths} for e in first["grid_years"]]
    assert strip == [{k: v for k, v in e.items() if k not in paths} for e in second["grid_years"]]
    assert first["outputs"] == second["outputs"] == sorted(default)


def test_run_with_nothing_to_do_exits_2_before_reading(tmp_path, model_path, capsys):
    write_exports(tmp_path / "exports", truth_stack(1))
    assert main(pipeline_args(tmp_path / "exports", tmp_path / "out", model_path, "--grids", "9999")) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nothing to do" in error and "9999" in error
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_rerun_is_refused_then_overwrite_with_a_contradicting_mixer_and_a_bad_shard_exits_3_and_leaves_no_old_map(
        tmp_path, model_path, capsys):
    exports, out = tmp_path / "exports", tmp_path / "out"
    write_exports(exports, truth_stack(13))
    assert main(pipeline_args(exports, out, model_path, "-q")) == EXIT_OK
    assert (out / "1010" / "1010_2003.tif").exists() and (out / "1010" / "1010_2005.tif").exists()
    before = files(out)
    capsys.readouterr()
    assert main(pipeline_args(exports, out, model_path)) == EXIT_USAGE  # refused before reading
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(out) in error and "--overwrite" in error
    assert files(out) == before
    # 2003: the mixer says 18-pixel patches while its records (and every other year) are 16 + kernel 4;
    # 2005: shard 00000 holds records of the wrong size while its siblings 00001 and 00002 are intact.
    mixer = exports / "1010" / "2003" / "mining_1010_2003-mixer.json"
    data = json.loads(mixer.read_text())
    data["patchDimensions"] = [18, 18]
    mixer.write_text(json.dumps(data))
    wrong = reshard_with_a_wrong_first_shard(exports / "1010" / "2005")
    assert main(pipeline_args(exports, out, model_path, "-q", "--overwrite")) == EXIT_FAILED
    summary = json.loads((out / "summary.json").read_text())
    status = {e["year"]: e for e in summary["grid_years"]}
    assert status[2003]["status"] == "failed" and status[2005]["status"] == "failed"
    assert all(status[y]["status"] == "written" for y in YEARS if y not in (2003, 2005))
    assert not (out / "1010" / "1010_2003.tif").exists() and not (out / "1010" / "1010_2005.tif").exists()
    assert sorted(files(out)) == summary["outputs"]
    dead = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    assert {d["file"] for d in dead if d["year"] == 2003} == {str(mixer)}
    assert {os.path.basename(d["file"]) for d in dead if d["year"] == 2005} == {wrong.name}


def test_values_outside_the_stored_range_are_not_observed_counted_and_reported(tmp_path, model_path, capsys):
    exports = tmp_path / "exports"
    write_exports(exports, truth_stack(17))
    folder = exports / "1010" / "2004"
    shard = folder / "mining_1010_2004-00000.tfrecord.gz"
    records = list(read_shard(str(shard)))
    features = decode_example(records[0])
    features["nir"] = features["nir"].copy()
    features["nir"][[42, 43, 44]] = 3e38  # row 2, columns 2-4 of a 20x20 record: inside the 16x16 core
    records[0] = encode_example(features)
    with gzip.open(shard, "wb") as handle:
        handle.write(b"".join(frame_record(r) for r in records))
    assert main(pipeline_args(exports, tmp_path / "out", model_path)) == EXIT_OK
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"]["out_of_range_pixels"] == 3
    assert "out of range  3 pixel(s)" in capsys.readouterr().out
    _, patches = read_export_patches(str(exports), "1010", 2004, BANDS)
    assert patches[0].out_of_range == 3 and not patches[0].observed[2, 2:5].any() and patches[0].observed[2, 5]
    assert sum(p.out_of_range for p in patches) == 3


def exported_model(folder, preset: str, depth: int = 2):
    """A model folder as `mining-mapper train` exports it, as far as the checks before a run read it."""
    from pipeline.contract import BAND_PRESETS

    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    card = {"preset": preset, "bands": list(BAND_PRESETS[preset]), "normalization": {"kind": "zscore"},
            "architecture": {"depth": depth}, "input": {"dtype": "float32"}}
    (folder / "model_card.json").write_text(json.dumps(card))
    return str(folder)


def keras_model(path, bands: int, outputs: int = 1) -> str:
    import keras

    inputs = keras.Input((None, None, bands))
    model = keras.Model(inputs, keras.layers.Conv2D(outputs, 1, activation="sigmoid")(inputs))
    model.save(path)
    return str(path)


@pytest.mark.parametrize("case, preset, extra, wanted", [
    ("model_card_of_another_preset", "c9-code", [], "takes bands swir1, nir, red, green, mndwi, ndvi (preset c9-code), but --band_preset appendix"),
    ("exports_lacking_the_models_bands", "c9-code", ["--band_preset", "c9-code"], "lacks band(s) green of --band_preset c9-code"),
    ("records_the_model_cannot_take", "appendix", [], "records are 20x20, but --model"),
])
def test_run_refuses_before_reading_a(tmp_path, capsys, case, preset, extra, wanted):
    write_exports(tmp_path / "exports", truth_stack(2))
    model = exported_model(tmp_path / "model", preset, depth=3)  # a U-Net of depth 3 takes sides of 8k
    assert main(pipeline_args(tmp_path / "exports", tmp_path / "out", model, *extra)) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and wanted in error, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, bands, outputs, wanted", [
    ("keras_model_of_4_input_bands", 4, 1, "its input is (None, None, None, 4)"),
    ("keras_model_of_2_outputs", 6, 2, "its output is (None, None, None, 2)"),
])
def test_run_refuses_before_reading_a_wrong_model(tmp_path, capsys, case, bands, outputs, wanted):
    write_exports(tmp_path / "exports", truth_stack(2))
    model = keras_model(tmp_path / "wrong.keras", bands, outputs)
    assert main(pipeline_args(tmp_path / "exports", tmp_path / "out", model)) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and wanted in error, error
    assert not (tmp_path / "out").exists()


def test_run_help_documents_the_exit_statuses(capsys):
    assert main(["--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 every grid-year asked for was written" in text
    assert "3 the run finished and wrote its summary, but at least one grid-year failed" in text
    assert "2 usage error" in text and "nothing to do" in text and "--overwrite" in text


class _Claimed(Exception):
    """Raised in place of claiming the output folder: every check before it has passed."""


@pytest.mark.parametrize("extra, contract, listings, probed", [
    ([], True, 1, [("1010", YEARS[0])]),  # grids and years from the one listing
    (["--grids", "1,1010", "--years", f"{YEARS[2]}-{YEARS[3]}"], True, 1, [("1010", YEARS[2])]),  # grid 1 has none
    (["--grids", "1010", "--years", f"{YEARS[0]}-{YEARS[-1]}"], False, 1, []),  # no model needs a record
    (["--streaming", "--grids", "1010", "--years", f"{YEARS[0]}-{YEARS[-1]}"], True, 0, []),  # before the exports
])
def test_the_exports_are_listed_once_and_one_asked_export_is_probed(tmp_path, model_path, monkeypatch,
                                                                     extra, contract, listings, probed):
    import pipeline.io.export_reader as export_reader
    import pipeline.modelcheck as modelcheck
    import pipeline.options as options
    import pipeline.run as run_module

    write_exports(tmp_path / "exports", truth_stack(2))
    listed, read = [], []
    discover, probe, model_contract = options.discover_grid_years, export_reader.probe_export, modelcheck.model_contract

    def counted_discover(exports):
        listed.append(exports)
        return discover(exports)

    def counted_probe(export_dir, grid, year):
        read.append((grid, year))
        return probe(export_dir, grid, year)

    def claim(*args, **kwargs):
        raise _Claimed

    monkeypatch.setattr(options, "discover_grid_years", counted_discover)
    monkeypatch.setattr(run_module, "discover_grid_years", counted_discover)
    monkeypatch.setattr(export_reader, "probe_export", counted_probe)
    monkeypatch.setattr(modelcheck, "model_contract", model_contract if contract else lambda path: None)
    monkeypatch.setattr(run_module, "claim_output", claim)
    monkeypatch.setattr(run_module, "import_tensorflow_quietly", lambda: None)
    with pytest.raises(_Claimed):
        run_module.run(pipeline_args(tmp_path / "exports", tmp_path / "out", model_path, *extra))
    assert len(listed) == listings and read == probed
