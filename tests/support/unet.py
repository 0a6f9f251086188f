"""Small random-weight U-Nets and generated Earth Engine exports for the inference tests."""
from __future__ import annotations

import keras
import numpy as np

from model.unet import build_unet
from pipeline.contract import observed_pixels
from pipeline.elements import ExportGeometry, ExportPatch


def random_unet(depth: int, bands: int = 3, filters: int = 4, seed: int = 0):
    """An any-size U-Net with random weights, BatchNorm statistics included (so no layer is the identity)."""
    keras.utils.set_random_seed(seed)
    model = build_unet(bands, base_filters=filters, depth=depth, patch_size=None)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        value = np.asarray(w)
        if "moving_variance" in w.path:
            value = rng.uniform(0.5, 2.0, value.shape)
        elif "moving_mean" in w.path or "beta" in w.path:
            value = rng.normal(0.0, 0.2, value.shape)
        elif "gamma" in w.path:
            value = rng.uniform(0.5, 1.5, value.shape)
        weights.append(value.astype(np.float32))
    model.set_weights(weights)
    return model


def generated_export(rows, cols, patch, kernel, bands, *, total=None, missing=(), blank=(), seed=0, grid="1137", year=2020):
    """(geometry, [ExportPatch]) cut from one random image as Earth Engine cuts it: records overlap consistently.

    Values 1-255 with cloud gaps (not observed: every band 0); `blank` patches have nothing observed
    in their core; `missing` patch indices are left out (as a dead-lettered record); `total` below
    rows * cols leaves the last row partial.
    """
    rng = np.random.default_rng(seed)
    total = rows * cols if total is None else total
    half = kernel // 2
    image = rng.uniform(1.0, 255.0, size=(rows * patch + kernel, cols * patch + kernel, bands)).astype(np.float32)
    for _ in range(3 * rows * cols):  # cloud gaps
        r, c = rng.integers(0, image.shape[0]), rng.integers(0, image.shape[1])
        image[r : r + patch // 3, c : c + patch // 4] = 0.0
    for index in blank:
        r, c = divmod(index, cols)
        image[half + r * patch : half + (r + 1) * patch, half + c * patch : half + (c + 1) * patch] = 0.0
    geometry = ExportGeometry(grid, year, "EPSG:4326", (0.00027, 0.0, -50.0, 0.0, -0.00027, -5.0), patch, cols, total, kernel)
    patches = []
    for index in range(total):
        if index in missing:
            continue
        r, c = divmod(index, cols)
        record = image[r * patch : r * patch + patch + kernel, c * patch : c * patch + patch + kernel].copy()
        observed = observed_pixels(record)
        record[~observed] = 0.0
        patches.append(ExportPatch(grid, year, index, r, c, kernel, record, observed))
    return geometry, patches
