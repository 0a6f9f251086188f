"""`mining-mapper run --inference_tile`: the whole pipeline by large tiles gives the record-wise COGs byte for byte.

Exports are cut from one random image as Earth Engine cuts them (overlapping records, cloud gaps), the model
is a random-weight U-Net of depth 2 (halo 24 px on a 4-px grid), saved as a .keras file.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pipeline.contract import BAND_PRESETS
from pipeline.demo.sample import mixer_json
from pipeline.io.example import encode_example
from pipeline.io.tfrecord import frame_record
from pipeline.run import run
from tests.support.outputs import tifs

BANDS = BAND_PRESETS["appendix"]
PATCH, ROWS, COLS = 32, 2, 3
YEARS = (2000, 2001, 2002)
RES = 0.00026949458523585647


def write_random_exports(root: Path, kernel: int, seed: int = 0) -> None:
    """One export per year of grid 1010: records of (PATCH + kernel)², cut from one random image per year."""
    rng = np.random.default_rng(seed)
    for year in YEARS:
        image = rng.uniform(1.0, 255.0, size=(ROWS * PATCH + kernel, COLS * PATCH + kernel, len(BANDS))).astype(np.float32)
        gaps = rng.random(image.shape[:2]) < 0.05
        image[gaps] = 0.0  # not observed: every band 0
        folder = root / "1010" / str(year)
        folder.mkdir(parents=True)
        (folder / "mining-mixer.json").write_bytes(mixer_json([RES, 0.0, -54.0, 0.0, -RES, -3.0], PATCH, COLS, ROWS * COLS))
        records = []
        for index in range(ROWS * COLS):
            r, c = divmod(index, COLS)
            record = image[r * PATCH : r * PATCH + PATCH + kernel, c * PATCH : c * PATCH + PATCH + kernel]
            records.append(frame_record(encode_example({band: record[..., i].ravel() for i, band in enumerate(BANDS)})))
        with gzip.open(folder / "mining-00000.tfrecord.gz", "wb") as handle:
            handle.write(b"".join(records))


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory) -> str:
    from tests.support.unet import random_unet

    path = tmp_path_factory.mktemp("model") / "unet.keras"
    random_unet(2, bands=len(BANDS), filters=4, seed=1).save(path)
    return str(path)


def run_pipeline(exports: Path, output: Path, model: str, *extra: str) -> dict:
    return run([
        "--exports", str(exports), "--model", model, "--output", str(output), "--runner", "FnApiRunner",
        "--direct_num_workers", "1", "--probability_band", "true", "--origin_band", "true", *extra,
    ])


@pytest.mark.parametrize("kernel", [48, 16], ids=["buffer-covers-halo", "buffer-too-small-falls-back"])
def test_large_tiles_write_the_record_wise_cogs_byte_for_byte(tmp_path, unet_file, kernel):
    exports = tmp_path / "exports"
    write_random_exports(exports, kernel)
    record_wise = run_pipeline(exports, tmp_path / "records", unet_file)
    assert record_wise["counts"] == {"written": len(YEARS)}
    expected = tifs(tmp_path / "records")
    for tile in ("32", "grid"):
        tiled = run_pipeline(exports, tmp_path / f"tiles_{tile}", unet_file, "--inference_tile", tile)
        assert tiled["counts"] == {"written": len(YEARS)}
        assert tiled["parameters"]["inference_tile"] == (tile if tile == "grid" else int(tile))
        assert tifs(tmp_path / f"tiles_{tile}") == expected, f"--inference_tile {tile}"
        assert [e["mining_ha"] for e in tiled["grid_years"]] == [e["mining_ha"] for e in record_wise["grid_years"]]
        metrics = tiled["metrics"]
        if kernel == 48:
            assert metrics.get("grid_years_large_tiles") == len(YEARS) and not metrics.get("grid_years_record_wise_fallback")
        else:  # K/2 = 8 px < the 24-px halo: said, and inferred record-wise
            assert metrics.get("grid_years_record_wise_fallback") == len(YEARS) and not metrics.get("grid_years_large_tiles")


def test_inference_options_are_checked_before_anything_runs(tmp_path, unet_file):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="--inference_tile 'big'"):
        run_pipeline(tmp_path, tmp_path / "out", unet_file, "--grids", "1", "--years", "2000", "--inference_tile", "big")
    with pytest.raises(UserError, match="--inference_precision: invalid choice: 'int8'"):
        run_pipeline(tmp_path, tmp_path / "out", unet_file, "--grids", "1", "--years", "2000", "--inference_precision", "int8")


def test_bfloat16_runs_compiled_and_changes_few_classes(tmp_path, unet_file):
    import rasterio

    exports = tmp_path / "exports"
    write_random_exports(exports, 48)
    run_pipeline(exports, tmp_path / "f32", unet_file, "--inference_tile", "grid")
    summary = run_pipeline(exports, tmp_path / "bf16", unet_file, "--inference_tile", "grid", "--inference_precision", "bfloat16")
    assert summary["parameters"]["inference_precision"] == "bfloat16"
    changed = total = differ = 0
    for year in YEARS:
        name = f"1010/1010_{year}.tif"
        with rasterio.open(tmp_path / "f32" / name) as a, rasterio.open(tmp_path / "bf16" / name) as b:
            pa, pb = a.read(2).astype(int), b.read(2).astype(int)
            observed = pa != 255
            assert np.array_equal(observed, pb != 255)  # the not-observed mask does not depend on precision
            assert np.abs(pa - pb)[observed].mean() < 2  # probabilities × 255 agree to a few units on average
            differ += int(np.count_nonzero((pa != pb)[observed]))
            changed += int(np.count_nonzero((a.read(1) != b.read(1))[observed]))
            total += int(observed.sum())
    assert changed / total < 0.05
    assert differ > 0  # bfloat16 did run: some probabilities differ


@pytest.mark.parametrize("tile", ["", "grid"], ids=["record-wise", "large-tiles"])
def test_precision_check_reports_the_class_changes_of_bfloat16(tmp_path, unet_file, tile):
    import rasterio

    exports = tmp_path / "exports"
    write_random_exports(exports, 48)
    run_pipeline(exports, tmp_path / "f32", unet_file, *(["--inference_tile", tile] if tile else []))
    summary = run_pipeline(exports, tmp_path / "bf16", unet_file, "--inference_precision", "bfloat16", "--precision_check", "true",
                           *(["--inference_tile", tile] if tile else []))
    check = summary["precision_check"]
    # the fraction counts exactly the observed pixels whose class differs before the filters
    compared = changed = 0
    for year in YEARS:
        name = f"1010_{year}.tif"
        with rasterio.open(tmp_path / "f32" / "1010" / name) as a, rasterio.open(tmp_path / "bf16" / "1010" / name) as b:
            observed = a.read(2) != 255
            compared += int(observed.sum())
            # band 2 is the probability before the filters: its class at 0.5 is p × 255 ≥ 127.5
            changed += int(np.count_nonzero(((a.read(2) >= 128) != (b.read(2) >= 128))[observed]))
    assert check["pixels"] == compared and check["class_changes"] > 0  # bfloat16 did change some classes
    assert abs(check["class_changes"] - changed) <= changed * 0.1 + 3  # rounding of p × 255 at the threshold
    assert check["fraction"] == pytest.approx(check["class_changes"] / check["pixels"])
