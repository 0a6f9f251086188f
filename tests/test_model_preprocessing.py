"""tf.Transform preprocessing: analysis in Beam gives the exact per-band statistics; the graph applies them."""
from __future__ import annotations

import numpy as np
import pytest

from model.data import PatchSpec, block_of, list_record_files, observed_mask, scan_files, split_by_block, write_patches
from model.preprocessing import analyze, band_statistics, load_transform, make_preprocessing_fn, transform_images

BANDS = ("swir1", "nir", "red", "mndwi", "ndvi", "ndsi")
P = 16


def _dataset(tmp_path, n_files=3, n=4, seed=0, extra=None):
    """Random band values with masked (first band 0) and NaN pixels, over several files and grids."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(1, 255, (n_files, n, P, P, len(BANDS))).astype(np.float32)
    images[..., 1] *= 0.25  # different spreads per band
    images[0, 0, :4, :, 0] = 0.0  # not observed: first band 0
    images[-1, -1, 5, 5, 3] = np.nan  # not observed: NaN in one band
    labels = (rng.random((n_files, n, P, P)) < 0.2).astype(np.uint8)
    for f in range(n_files):
        write_patches(str(tmp_path / f"{f}" / "p.tfrecord.gz"), images[f], labels[f], BANDS,
                      extra=None if extra is None else {k: v[f] for k, v in extra.items()})
    return images


def test_zscore_analysis_gives_exact_mean_and_std_of_observed_pixels(tmp_path):
    images = _dataset(tmp_path)
    spec = PatchSpec(BANDS, P)
    infos = scan_files(list_record_files([str(tmp_path)]), spec)
    out = analyze(infos, spec, "zscore", str(tmp_path / "transform"))
    tft_output = load_transform(out)
    stats = band_statistics(tft_output, BANDS)

    flat = images.reshape(-1, P, P, len(BANDS))
    pixels = flat[observed_mask(flat)].astype(np.float64)
    assert pixels.shape[0] == flat.shape[0] * P * P - 4 * P - 1
    for i, band in enumerate(BANDS):
        assert stats[band]["mean"] == pytest.approx(pixels[:, i].mean(), rel=1e-6)
        assert stats[band]["std"] == pytest.approx(pixels[:, i].std(), rel=1e-6)

    # the graph applies exactly these statistics; NaN inputs become 0 before scaling (no NaN leaks)
    import tensorflow as tf

    batch = flat[:3].copy()
    got = transform_images(tft_output.transform_features_layer(), tf.constant(batch), BANDS).numpy()
    mean = pixels.mean(axis=0)
    std = pixels.std(axis=0)
    want = (np.nan_to_num(batch, nan=0.0) - mean) / std
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    nan_input = flat[-1:].copy()
    assert np.isnan(nan_input).any()
    assert np.isfinite(transform_images(tft_output.transform_features_layer(), tf.constant(nan_input), BANDS).numpy()).all()


def test_c9_code_feeds_the_stored_bytes_unchanged(tmp_path):
    # DESIGN.md §1.5: the published notebooks feed the stored byte values (0-255 as float), no division.
    _dataset(tmp_path, n_files=1, n=1)
    spec = PatchSpec(BANDS, P)
    out = analyze(scan_files(list_record_files([str(tmp_path)]), spec), spec, "c9-code", str(tmp_path / "t"))
    tft_output = load_transform(out)
    assert band_statistics(tft_output, BANDS) == {b: {"mean": 0.0, "std": 1.0} for b in BANDS}
    import tensorflow as tf

    from model.export import make_serving_module
    from model.unet import build_unet

    x = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 6)).astype(np.float32)
    got = transform_images(tft_output.transform_features_layer(), tf.constant(x), BANDS).numpy()
    np.testing.assert_array_equal(got, x)
    # The serving model under c9-code is the bare network on the raw bytes.
    network = build_unet(len(BANDS), base_filters=4, depth=2, patch_size=None)
    module = make_serving_module(network, tft_output.transform_features_layer(), BANDS)
    served = module.serve(tf.constant(x)).numpy()
    bare = network(tf.constant(x), training=False).numpy()
    np.testing.assert_array_equal(served, bare)
    assert not np.allclose(bare, network(tf.constant(x / 255.0), training=False).numpy())  # the scaling matters


def test_block_split_analysis_uses_training_blocks_only(tmp_path):
    rng = np.random.default_rng(5)
    lon = rng.uniform(-55, -45, (2, 4)).astype(np.float32)
    lat = rng.uniform(-5, 5, (2, 4)).astype(np.float32)
    images = _dataset(tmp_path, n_files=2, n=4, extra={"lon": lon, "lat": lat})
    spec = PatchSpec(BANDS, P)
    infos = scan_files(list_record_files([str(tmp_path)]), spec, with_coordinates=True)
    split = split_by_block(infos, block_size=4.0, fraction=0.3, seed=1)
    assert split.validation_records > 0
    out = analyze(split.train_files, spec, "zscore", str(tmp_path / "t"), block_size=4.0,
                  validation_blocks=split.validation_blocks, keep="train")
    stats = band_statistics(load_transform(out), BANDS)
    keep = np.array([[block_of(x, y, 4.0) not in set(split.validation_blocks) for x, y in zip(lo, la)]
                     for lo, la in zip(lon, lat)])
    train = images[keep]
    pixels = train[observed_mask(train)].astype(np.float64)
    assert stats["nir"]["mean"] == pytest.approx(pixels[:, 1].mean(), rel=1e-6)
    assert stats["ndsi"]["std"] == pytest.approx(pixels[:, 5].std(), rel=1e-6)


def test_unknown_normalization_is_rejected():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="unknown normalization 'minmax'"):
        make_preprocessing_fn(BANDS, "minmax")
