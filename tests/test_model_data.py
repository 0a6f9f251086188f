"""Training-patch reading: record checks with clear errors, spatial splits, augmentation, the tf.data input."""
from __future__ import annotations

import numpy as np
import pytest

from model.data import (
    PatchSpec,
    augment_tf,
    block_of,
    choose_validation,
    example_bytes,
    group_of,
    list_record_files,
    make_dataset,
    observed_mask,
    scan_files,
    split_by_block,
    split_by_group,
    split_datasets_kwargs,
    synthetic_patches,
    write_patches,
    write_records,
)
from pipeline.contract import BAND_PRESETS
from pipeline.errors import UserError

BANDS = BAND_PRESETS["appendix"]
P = 16


def _write(path, n=3, seed=0, compress=True, extra=None, bands=BANDS, patch=P):
    images, labels = synthetic_patches(n, patch, bands, seed=seed)
    return write_patches(str(path), images, labels, bands, compress=compress, extra=extra), images, labels


def test_scan_reads_gzipped_and_plain_and_groups_by_grid_folder(tmp_path):
    """Both compressions are detected from the bytes; the grid is the first folder under the root."""
    _write(tmp_path / "1201" / "a.tfrecord.gz", n=3)
    _write(tmp_path / "1202" / "b.tfrecord", n=2, compress=False)
    infos = scan_files(list_record_files([str(tmp_path)]), PatchSpec(BANDS, P))
    assert [(i.group, i.records, i.compression) for i in infos] == [("1201", 3, "GZIP"), ("1202", 2, "")]


def test_group_of_files_directly_in_root_is_the_root():
    """Files lying directly in the data folder form one group named after it."""
    assert group_of("/d/train/x.tfrecord.gz", "/d/train") == "train"
    assert group_of("/d/train/77/2020/x.tfrecord.gz", "/d/train") == "77"


def _expect_error(tmp_path, features, match):
    path = write_records(str(tmp_path / "bad.tfrecord.gz"), [example_bytes(features)])
    with pytest.raises(UserError, match=match) as info:
        scan_files([(path, str(tmp_path))], PatchSpec(BANDS, P))
    assert path in str(info.value)


def _good_features(patch=P):
    return {**{b: np.full(patch * patch, 10.0) for b in BANDS}, "label": np.zeros(patch * patch)}


def test_missing_label_is_a_clear_error_naming_the_file(tmp_path):
    features = _good_features()
    del features["label"]
    _expect_error(tmp_path, features, r"record 0: no 'label' feature")


def test_wrong_bands_is_a_clear_error_naming_the_missing_bands(tmp_path):
    features = _good_features()
    del features["ndsi"]
    features["green"] = np.zeros(P * P)
    _expect_error(tmp_path, features, r"missing band\(s\) ndsi of the preset.*wrong --band-preset")


def test_wrong_patch_size_is_a_clear_error_suggesting_the_size(tmp_path):
    _expect_error(tmp_path, _good_features(patch=8), r"has 64 values, expected 256 \(16x16 patches\).*--patch-size 8")


def test_label_values_must_be_zero_or_one(tmp_path):
    features = _good_features()
    features["label"][5] = 3
    _expect_error(tmp_path, features, r"label has values other than 0 and 1 \(e.g. 3\)")


def test_not_a_tfrecord_file(tmp_path):
    path = tmp_path / "junk.tfrecord"
    path.write_bytes(b"this is not a TFRecord file at all, just text" * 3)
    with pytest.raises(UserError, match="junk.tfrecord: not a readable TFRecord"):
        scan_files([(str(path), str(tmp_path))], PatchSpec(BANDS, P))


def test_missing_input_paths_are_named(tmp_path):
    with pytest.raises(UserError, match="nowhere: no such file"):
        list_record_files([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no TFRecord files"):
        list_record_files([str(tmp_path / "empty")])


def test_choose_validation_is_seeded_and_keeps_both_sides():
    keys = [f"g{i}" for i in range(10)]
    a = choose_validation(keys, 0.2, seed=1)
    assert a == choose_validation(list(reversed(keys)), 0.2, seed=1)
    assert len(a) == 2 and set(a) < set(keys)
    assert choose_validation(["a", "b"], 0.9, seed=0) in (["a"], ["b"])
    with pytest.raises(UserError, match="single group"):
        choose_validation(["a", "a"], 0.2, seed=0)
    with pytest.raises(UserError, match="not in the data"):
        choose_validation(keys, 0.2, seed=0, explicit=["zz"])


def test_split_by_group_keeps_a_grid_on_one_side(tmp_path):
    for g in range(5):
        _write(tmp_path / f"{g}" / "p.tfrecord.gz", n=1 + g, seed=g)
    infos = scan_files(list_record_files([str(tmp_path)]), PatchSpec(BANDS, P))
    split = split_by_group(infos, 0.4, seed=3)
    assert len(split.validation_groups) == 2
    assert {f.group for f in split.validation_files} == set(split.validation_groups)
    assert not {f.group for f in split.train_files} & set(split.validation_groups)
    assert split.train_records + split.validation_records == sum(range(1, 6))


def test_block_split_and_tf_data_filter_agree(tmp_path):
    """The tf.data block filter keeps exactly the records the numpy split assigned to each side."""
    rng = np.random.default_rng(0)
    n = 12
    lon = rng.uniform(-60, -50, n).astype(np.float32)
    lat = rng.uniform(-10, 0, n).astype(np.float32)
    _write(tmp_path / "all.tfrecord.gz", n=n, extra={"lon": lon, "lat": lat})
    spec = PatchSpec(BANDS, P)
    infos = scan_files(list_record_files([str(tmp_path)]), spec, with_coordinates=True)
    split = split_by_block(infos, block_size=2.5, fraction=0.3, seed=0)
    expected_val = sum(block_of(x, y, 2.5) in set(split.validation_blocks) for x, y in zip(lon, lat))
    assert split.validation_records == expected_val > 0
    counts = {}
    for part in ("train", "validation"):
        ds = make_dataset(batch_size=1, spec=spec, **split_datasets_kwargs(split, part))
        counts[part] = sum(1 for _ in ds)
    assert counts == {"train": n - expected_val, "validation": expected_val}


def test_block_split_needs_coordinates(tmp_path):
    _write(tmp_path / "a.tfrecord.gz")
    with pytest.raises(UserError, match="no 'lon' feature; a split by block"):
        scan_files(list_record_files([str(tmp_path)]), PatchSpec(BANDS, P), with_coordinates=True)


def test_make_dataset_yields_raw_bands_labels_and_observed_weights(tmp_path):
    path, images, labels = _write(tmp_path / "a.tfrecord.gz", n=5)
    images[1, :3, :, :] = 0.0  # not observed: first band 0
    write_patches(path, images, labels, BANDS)
    infos = scan_files(list_record_files([path]), PatchSpec(BANDS, P))
    batches = list(make_dataset(infos, PatchSpec(BANDS, P), batch_size=2).as_numpy_iterator())
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    w = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y[..., 0], labels)
    np.testing.assert_array_equal(w[..., 0], observed_mask(images).astype(np.float32))
    assert w[1, :3].sum() == 0 and w[0].min() == 1


def test_observed_mask_rules():
    image = np.ones((2, 3, 2), np.float32)
    image[0, 0, 0] = 0.0  # first band 0
    image[0, 1, 1] = np.nan  # any band NaN
    image[1, 2, 1] = 0.0  # a zero in another band is a valid value
    assert observed_mask(image).tolist() == [[False, False, True], [True, True, True]]
    image[1, 0, 1] = 3e38  # outside the stored range 0-255 of a byte band
    image[1, 1, 0] = 255.0  # the top of the range is a valid value
    assert observed_mask(image).tolist() == [[False, False, True], [False, True, True]]


def test_augmentation_moves_image_and_label_together_and_is_seeded():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 8, 3)).astype(np.float32)
    label = (image[..., :1] > 0).astype(np.float32)
    seen = set()
    for i in range(40):
        seed = tf.constant([7, i], tf.int64)
        a_img, a_lab = augment_tf(tf.constant(image), tf.constant(label), seed)
        b_img, _ = augment_tf(tf.constant(image), tf.constant(label), seed)
        np.testing.assert_array_equal(a_img.numpy(), b_img.numpy())
        np.testing.assert_array_equal(a_lab.numpy(), (a_img.numpy()[..., :1] > 0).astype(np.float32))
        seen.add(a_img.numpy().tobytes())
    dihedral = {np.rot90(f, k).tobytes() for f in (image, image[:, ::-1]) for k in range(4)}
    assert seen <= dihedral and len(seen) >= 6


def test_synthetic_patches_are_in_export_scaling_and_labelled():
    images, labels = synthetic_patches(4, 32, BAND_PRESETS["c9-code"], seed=1, masked_fraction=0.05)
    assert images.shape == (4, 32, 32, 6) and labels.shape == (4, 32, 32)
    assert images.min() >= 0 and images.max() <= 255
    assert set(np.unique(labels)) <= {0, 1} and labels.sum() > 0
    observed = observed_mask(images)
    assert not labels[~observed].any() and (~observed).any()
    swir1 = images[..., 0][observed]
    assert swir1[labels[observed] == 1].mean() > swir1[labels[observed] == 0].mean() + 20


def test_integer_labels_as_earth_engine_exports_them(tmp_path):
    """Earth Engine writes integer bands as int64 lists: the label may come that way."""
    images, labels = synthetic_patches(2, P, BANDS, seed=3)
    records = [example_bytes({**{b: images[i, ..., k] for k, b in enumerate(BANDS)}, "label": labels[i].astype(np.int64)})
               for i in range(2)]
    path = write_records(str(tmp_path / "int.tfrecord.gz"), records)
    infos = scan_files([(path, str(tmp_path))], PatchSpec(BANDS, P))
    assert infos[0].label_dtype == "int64" and infos[0].band_dtype == "float"
    (x, y, _), = make_dataset(infos, PatchSpec(BANDS, P), batch_size=2).as_numpy_iterator()
    np.testing.assert_array_equal(y[..., 0], labels)


def test_training_and_inference_mask_the_same_pixels_of_the_real_phen_asynch_record():
    """The real kernel-60 export marks masked pixels -9999: training (numpy and tf.data) and the pipeline's
    reader must call exactly the same pixels not observed (the training mask once ignored -9999)."""
    import tensorflow as tf

    from model.data import observed_mask_tf
    from pipeline.io.example import decode_example
    from pipeline.io.export_reader import arrays_from_features
    from pipeline.io.tfrecord import read_shard
    from tests.conftest import shared_path
    from tests.support.exports import PHEN_BANDS

    shard = next(shared_path("ee_exports", "phen_asynch_kernel60").glob("*.tfrecord"))
    checked = masked = 0
    for data in read_shard(str(shard)):
        features = decode_example(data, str(shard))
        raw, reader_observed = arrays_from_features(features, PHEN_BANDS, 316, fill_value=None, source=str(shard))
        # phenology bands are not a preset's: neither side holds them to the stored byte range
        training = observed_mask(raw, stored_range=None)
        np.testing.assert_array_equal(training, reader_observed)
        np.testing.assert_array_equal(observed_mask_tf(tf.constant(raw), stored_range=None).numpy(), reader_observed)
        masked += int((raw == -9999).any(axis=-1).sum())
        checked += 1
    assert checked == 2 and masked > 0  # the shard's two records, -9999 in them
