"""A synthetic whole run: a stand-in Keras model whose output is known and Earth Engine–layout exports of a
class stack, so that the pipeline's COGs can be checked pixel by pixel against the filter engine.

Used by tests/test_pipeline.py and the tests that run the whole job another way (CLI, gs://, templates, report).
"""
from __future__ import annotations

import gzip
import json

import numpy as np

from pipeline.io.example import encode_example
from pipeline.io.tfrecord import frame_record
from pipeline.method.filters import FilterParams, apply_chain

BANDS = ("swir1", "nir", "red", "mndwi", "ndvi", "ndsi")
PATCH, KERNEL, ROWS, COLS = 16, 4, 2, 3
YEARS = list(range(2000, 2008))
RES = 0.00026949458523585647


def stand_in_model(path: str) -> str:
    """A real Keras model: p = sigmoid((swir1 − 100) / 10), so mining ⇔ swir1 ≥ 100 at threshold 0.5."""
    import keras

    inputs = keras.Input((None, None, len(BANDS)))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    weights = np.zeros((1, 1, len(BANDS), 1), dtype=np.float32)
    weights[0, 0, 0, 0] = 0.1
    conv.set_weights([weights, np.array([-10.0], dtype=np.float32)])
    model.save(path)
    return path


def truth_stack(seed: int = 3) -> np.ndarray:
    """Classes (years, H, W): growing pits, speckle that the filters remove, clouds, one blank patch-year."""
    rng = np.random.default_rng(seed)
    height, width = ROWS * PATCH, COLS * PATCH
    stack = np.zeros((len(YEARS), height, width), dtype=np.uint8)
    for t in range(len(YEARS)):
        stack[t, 10:14 + t, 12:18 + t] = 1  # a pit straddling the tile edges at rows/cols 16 and 32
        stack[t, 2:4, 40:43] = 1 if t >= 3 else 0  # a 6-pixel pit: removed by the spatial filter
        stack[t][rng.random((height, width)) < 0.01] = 1  # classifier speckle
    clouds = rng.random(stack.shape) < 0.08
    stack[clouds] = 255
    stack[5, :PATCH, PATCH: 2 * PATCH] = 255  # patch 1 fully masked in 2005
    return stack


def write_exports(root, stack: np.ndarray, grids=("1010",), skip_year=None) -> None:
    """Earth Engine–layout exports: per (grid, year) a mixer and two gzipped shards of buffered records."""
    half = KERNEL // 2
    for grid in grids:
        for t, year in enumerate(YEARS):
            if year == skip_year:
                continue
            folder = root / grid / str(year)
            folder.mkdir(parents=True)
            mixer = {
                "projection": {"crs": "EPSG:4326", "affine": {"doubleMatrix": [RES, 0.0, -54.0, 0.0, -RES, -3.0]}},
                "patchDimensions": [PATCH, PATCH],
                "patchesPerRow": COLS,
                "totalPatches": ROWS * COLS,
            }
            (folder / f"mining_{grid}_{year}-mixer.json").write_text(json.dumps(mixer))
            padded = np.pad(stack[t], half, constant_values=255)
            records = []
            for index in range(ROWS * COLS):
                r, c = divmod(index, COLS)
                classes = padded[r * PATCH: r * PATCH + PATCH + KERNEL, c * PATCH: c * PATCH + PATCH + KERNEL]
                swir1 = np.select([classes == 1, classes == 0], [200.0, 50.0], 0.0)
                features = {band: (swir1 if i == 0 else np.where(classes == 255, 0.0, 120.0)) for i, band in enumerate(BANDS)}
                records.append(frame_record(encode_example(features)))
            for shard, chunk in enumerate((records[:4], records[4:])):
                with gzip.open(folder / f"mining_{grid}_{year}-{shard:05d}.tfrecord.gz", "wb") as handle:
                    handle.write(b"".join(chunk))


def pipeline_args(exports, output, model, *extra):
    """The `run` flags for exports → output with the stand-in model, one worker, batches of at most 4."""
    return ["--exports", str(exports), "--output", str(output), "--model", model, "--max_batch_size", "4",
            "--direct_num_workers", "1", *extra]


def expected_cog(stack: np.ndarray, params: FilterParams) -> np.ndarray:
    """The classification band the pipeline must write for `stack`: the filter engine on the whole raster."""
    result = apply_chain(stack, params).classes
    return np.select([result == 1, result == 0], [30, 0], 255).astype(np.uint8)
