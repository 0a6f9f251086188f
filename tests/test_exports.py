"""Earth Engine export reading (pipeline/io/export_layout.py, export_reader.py, example.py, tfrecord.py): mixers, shard listing, records, bad inputs.

Real exports from ../shared/data/ee_exports (servir_aces: a 1-patch export; phen_asynch_kernel60: one
shard of a 15-patch export made with kernelSize 60) plus small exports written here with known values.
"""
from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.contract import crop_buffer, observed_pixels
from pipeline.elements import DeadLetter, ExportGeometry, ExportPatch, MissingExport
from pipeline.errors import ExportError, ExportFormatError, MissingExportError, RecordError, ShardError
from pipeline.io.example import decode_example, encode_example
from pipeline.io.export_layout import list_export, parse_mixer, shard_number
from pipeline.io.export_reader import arrays_from_features, parse_patch_record, read_export, read_export_patches, record_side_of
from pipeline.io.tfrecord import frame_record, read_shard
from tests.conftest import shared_path
from tests.support.exports import BANDS, PHEN_BANDS, SERVIR_BANDS, mixer_bytes, record_bytes, record_values, shard_bytes, write_export



# ----------------------------------------------------------------------------------------------------
# Reading the small synthetic exports of tests/support/exports.py


def read_all(folder: Path, bands=BANDS, **kwargs):
    """(patches by index, dead letters, geometries, missing) of read_export on a folder."""
    events = list(read_export(str(folder), "g", 2000, bands, **kwargs))
    patches = {e.index: e for e in events if isinstance(e, ExportPatch)}
    dead = [e for e in events if isinstance(e, DeadLetter)]
    geometry = [e for e in events if isinstance(e, ExportGeometry)]
    missing = [e for e in events if isinstance(e, MissingExport)]
    assert len([e for e in events if isinstance(e, ExportPatch)]) == len(patches), "a patch index was emitted twice"
    return patches, dead, geometry, missing


def assert_patch_is(patch: ExportPatch, index: int, side: int, per_row: int = 2) -> None:
    """The patch holds the values written for `index`, at its row/column, with pixel (0, 0) not observed."""
    expected = record_values(index, side, len(BANDS))
    expected[0, 0, :] = 0.0  # not observed: every band filled with 0
    assert patch.index == index and (patch.row, patch.col) == divmod(index, per_row)
    np.testing.assert_array_equal(patch.bands, expected)
    assert not patch.observed[0, 0] and patch.observed.sum() == side * side - 1


# ----------------------------------------------------------------------------------------------------
# Mixers and geometry


def test_servir_mixer_georeference():
    folder = shared_path("ee_exports", "servir_aces")
    g = parse_mixer(folder / "image_2021.json", "servir", 2021)
    assert g.crs == "EPSG:4326" and g.patch_size == 256 and g.patches_per_row == 1 and g.total_patches == 1
    assert g.rows == 1 and (g.width, g.height) == (256, 256)
    minx, miny, maxx, maxy = g.bounds
    assert minx == pytest.approx(89.390, abs=5e-4) and maxx == pytest.approx(89.413, abs=5e-4)
    assert miny == pytest.approx(27.425, abs=5e-4) and maxy == pytest.approx(27.448, abs=5e-4)
    # affine order (a, b, c, d, e, f): x resolution first, the top-left corner in c and f
    a, b, c, d, e, f = g.transform
    assert a > 0 and e < 0 and b == d == 0 and (c, f) == (minx, maxy)
    assert g.patch_transform(0) == g.transform


def test_phen_mixer_layout_and_patch_transforms():
    folder = shared_path("ee_exports", "phen_asynch_kernel60")
    g = parse_mixer(folder / "TEST_coeff_output_SIF_C_S_Amer-mixer.json", "p", 2019).with_kernel(60)
    assert (g.patches_per_row, g.total_patches, g.rows, g.record_side) == (3, 15, 5, 316)
    assert g.patch_position(4) == (1, 1) and g.patch_position(14) == (4, 2)
    a, _, c, _, e, f = g.transform
    t = g.patch_transform(4)  # row 1, column 1: one patch right and one down
    assert t[2] == pytest.approx(c + 256 * a) and t[5] == pytest.approx(f + 256 * e)
    r = g.record_transform(4)  # the record starts K/2 = 30 pixels up and left of the patch
    assert r[2] == pytest.approx(t[2] - 30 * a) and r[5] == pytest.approx(t[5] - 30 * e)
    assert g.bounds == pytest.approx((-105.0, 20.0 - 5 * 256 * 0.05, -105.0 + 3 * 256 * 0.05, 20.0))
    with pytest.raises(IndexError):
        g.patch_position(15)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("totalPatches"), "no 'totalPatches'"),
    (lambda m: m["projection"]["affine"].pop("doubleMatrix"), "no 'projection.affine.doubleMatrix'"),
    (lambda m: m["projection"].pop("crs"), "projection.crs"),
    (lambda m: m.__setitem__("patchDimensions", [256, 128]), "not square"),
    (lambda m: m.__setitem__("patchesPerRow", 0), "'patchesPerRow' must be a positive integer"),
    (lambda m: m.__setitem__("totalPatches", 1.5), "'totalPatches' must be a positive integer"),
    (lambda m: m["projection"]["affine"].__setitem__("doubleMatrix", [0, 0, 1, 0, 0, 2]), "degenerate"),
    (lambda m: m["projection"]["affine"].__setitem__("doubleMatrix", [1, 0, 1]), "6 finite numbers"),
])
def test_mixer_errors_name_the_file_and_key(tmp_path, mutate, message):
    mixer = json.loads(mixer_bytes(8, 2, 4))
    mutate(mixer)
    path = tmp_path / "x-mixer.json"
    path.write_text(json.dumps(mixer))
    with pytest.raises(ExportFormatError, match=message) as info:
        parse_mixer(path, "g", 2000)
    assert str(path) in str(info.value)


def test_mixer_not_json(tmp_path):
    path = tmp_path / "x-mixer.json"
    path.write_text("{not json")
    with pytest.raises(ExportFormatError, match=f"{path}: not a JSON mixer"):
        parse_mixer(path, "g", 2000)
    with pytest.raises(ExportFormatError, match="<mixer bytes>"):
        parse_mixer(b"[1, 2]", "g", 2000)


# ----------------------------------------------------------------------------------------------------
# Listing exports


def test_list_real_exports():
    servir = shared_path("ee_exports", "servir_aces")
    mixer, shards = list_export(str(servir))
    # the table exports lying beside it (training/testing/validation.tfrecord.gz) are not shards of the image
    assert mixer.endswith("image_2021.json") and [Path(s).name for s in shards] == ["image_2021.tfrecord.gz"]
    phen = shared_path("ee_exports", "phen_asynch_kernel60")
    mixer, shards = list_export(str(phen))
    assert mixer.endswith("-mixer.json") and [shard_number(s) for s in shards] == [5]


def test_list_sorts_shards_by_number(tmp_path):
    for n in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9):
        (tmp_path / f"p-{n:05d}.tfrecord").write_bytes(b"")
    (tmp_path / "p-mixer.json").write_bytes(mixer_bytes(8, 2, 4))
    (tmp_path / "other-00000.tfrecord").write_bytes(b"")  # another prefix: not this export
    _, shards = list_export(str(tmp_path))
    assert [shard_number(s) for s in shards] == list(range(11))


def test_list_errors(tmp_path):
    with pytest.raises(MissingExportError, match="no such export folder"):
        list_export(str(tmp_path / "absent"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "p-00000.tfrecord.gz").write_bytes(b"")
    with pytest.raises(MissingExportError, match="no mixer"):
        list_export(str(tmp_path / "a"))
    (tmp_path / "a" / "p-mixer.json").write_bytes(mixer_bytes(8, 2, 4))
    (tmp_path / "a" / "q-mixer.json").write_bytes(mixer_bytes(8, 2, 4))
    with pytest.raises(ExportFormatError, match="several mixers"):
        list_export(str(tmp_path / "a"))
    (tmp_path / "a" / "q-mixer.json").unlink()
    (tmp_path / "a" / "p.tfrecord.gz").write_bytes(b"")
    with pytest.raises(ExportFormatError, match="ambiguous shards"):
        list_export(str(tmp_path / "a"))


# ----------------------------------------------------------------------------------------------------
# Records: the wire-format decoder against TensorFlow's parser


def _real_records():
    servir = shared_path("ee_exports", "servir_aces", "image_2021.tfrecord.gz")
    phen = shared_path("ee_exports", "phen_asynch_kernel60", "TEST_coeff_output_SIF_C_S_Amer-00005.tfrecord")
    return [(r, SERVIR_BANDS) for r in read_shard(str(servir))] + [(r, PHEN_BANDS) for r in read_shard(str(phen))]


def test_decoder_matches_tensorflow_on_real_and_written_records():
    import tensorflow as tf

    written = encode_example({"a": np.arange(9, dtype=np.float32) - 4.5, "b": [np.inf, -0.0, 1e30]})
    cases = _real_records() + [(written, ("a", "b"))]
    assert len(cases) == 4  # 1 servir record, 2 phen records, 1 written here
    for record, bands in cases:
        decoded = decode_example(record)
        message = tf.train.Example.FromString(record).features.feature
        assert sorted(decoded) == sorted(message.keys()) == sorted(bands)
        spec = {b: tf.io.FixedLenFeature([decoded[b].size], tf.float32) for b in bands}
        parsed = tf.io.parse_single_example(record, spec)
        for band in bands:
            np.testing.assert_array_equal(decoded[band], np.asarray(message[band].float_list.value, np.float32))
            np.testing.assert_array_equal(decoded[band], parsed[band].numpy())


def test_decoder_reads_int64_and_unpacked_lists():
    from google.protobuf.internal import encoder
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    example.features.feature["i"].int64_list.value.extend([3, -7, 2**40])
    example.features.feature["f"].float_list.value.extend([1.5, -2.0])
    decoded = decode_example(example.SerializeToString())
    np.testing.assert_array_equal(decoded["i"], np.array([3, -7, 2**40], np.float32))
    np.testing.assert_array_equal(decoded["f"], [1.5, -2.0])
    # an unpacked float list (valid protobuf that TensorFlow accepts): tag 13 = field 1, wire type 5
    floats = b"".join(b"\x0d" + struct.pack("<f", v) for v in (0.25, 4.0))
    feature = encoder._VarintBytes(0x12) + encoder._VarintBytes(len(floats)) + floats
    entry = b"\x0a\x01u" + b"\x12" + encoder._VarintBytes(len(feature)) + feature
    features = b"\x0a" + encoder._VarintBytes(len(entry)) + entry
    record = b"\x0a" + encoder._VarintBytes(len(features)) + features
    assert list(example_pb2.Example.FromString(record).features.feature["u"].float_list.value) == [0.25, 4.0]
    np.testing.assert_array_equal(decode_example(record)["u"], [0.25, 4.0])


def test_decoder_errors():
    from tensorflow.core.example import example_pb2

    with pytest.raises(RecordError, match="rec 3: not a tf.train.Example"):
        decode_example(b"\x0a\xff\xff\xff", "rec 3")
    example = example_pb2.Example()
    example.features.feature["name"].bytes_list.value.append(b"text")
    with pytest.raises(RecordError, match="feature 'name': a bytes list"):
        decode_example(example.SerializeToString())


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.lists(st.floats(width=32, allow_nan=False), max_size=20),
    max_size=5,
))
def test_encode_decode_round_trip(features):
    decoded = decode_example(encode_example(features))
    assert sorted(decoded) == sorted(features)
    for name, values in features.items():
        np.testing.assert_array_equal(decoded[name], np.asarray(values, np.float32))


# ----------------------------------------------------------------------------------------------------
# Patches


def test_servir_record_parses_as_a_patch():
    record, _ = _real_records()[0]
    features = decode_example(record)
    assert record_side_of(features, SERVIR_BANDS) == 256
    bands, observed = parse_patch_record(record, SERVIR_BANDS, 256)
    assert bands.shape == (256, 256, 8) and bands.dtype == np.float32 and observed.all()
    for i, band in enumerate(SERVIR_BANDS):  # the last axis follows the requested order
        np.testing.assert_array_equal(bands[..., i].ravel(), features[band])
    reordered, _ = parse_patch_record(record, SERVIR_BANDS[::-1], 256)
    np.testing.assert_array_equal(reordered, bands[..., ::-1])


def test_phen_records_crop_from_316_to_256_with_nodata():
    records = [r for r, bands in _real_records() if bands == PHEN_BANDS]
    assert len(records) == 2
    first, second = (parse_patch_record(r, PHEN_BANDS, 316) for r in records)
    assert first[0].shape == (316, 316, 5)
    assert not first[1].any() and (first[0] == 0).all()  # the fully masked record: -9999 everywhere, filled 0
    raw, _ = parse_patch_record(records[1], PHEN_BANDS, 316, fill_value=None)
    expected = (raw != -9999).all(axis=-1) & (raw[..., 0] != 0) & np.isfinite(raw).all(axis=-1)
    np.testing.assert_array_equal(second[1], expected)
    assert 0.1 < second[1].mean() < 0.2
    np.testing.assert_array_equal(second[0][second[1]], raw[second[1]])
    assert (second[0][~second[1]] == 0).all()
    core = crop_buffer(second[0], 60)
    assert core.shape == (256, 256, 5)
    np.testing.assert_array_equal(core, second[0][30:286, 30:286])
    # without the no-data value, -9999 counts as observed
    _, observed_all = parse_patch_record(records[1], PHEN_BANDS, 316, nodata_values=())
    assert observed_all.all()


def test_record_errors_list_missing_and_extra_bands():
    record = record_bytes(0, 4, bands=("swir1", "NIR", "red"))
    with pytest.raises(RecordError, match=r"f.tfrecord record 7: missing band\(s\) nir .*extra: NIR"):
        parse_patch_record(record, BANDS, 4, source="f.tfrecord record 7")
    with pytest.raises(RecordError, match="band 'swir1' has 16 values \\(4x4\\), expected 25"):
        parse_patch_record(record_bytes(0, 4), BANDS, 5)
    with pytest.raises(RecordError, match="extra: red"):
        parse_patch_record(record_bytes(0, 4), ("swir1", "nir"), 4, allow_extra_bands=False)
    bands, _ = parse_patch_record(record_bytes(0, 4), ("nir",), 4)  # extra bands are ignored by default
    assert bands.shape == (4, 4, 1) and bands[1, 1, 0] == 11


def test_observed_rules():
    stack = np.full((6, 6, 2), 5.0, dtype=np.float32)
    stack[0, 0, 1] = np.nan
    stack[0, 1, 0] = np.inf
    stack[0, 2, 1] = -9999
    stack[0, 3, 0] = 0.0  # first band 0: Earth Engine's default fill
    stack[0, 4, 1] = 0.0  # another band at 0 is a value
    expected = np.ones((6, 6), dtype=bool)
    expected[0, :4] = False
    np.testing.assert_array_equal(observed_pixels(stack), expected)
    features = {"a": stack[..., 0].ravel(), "b": stack[..., 1].ravel()}
    bands, observed = arrays_from_features(features, ("a", "b"), 6)
    np.testing.assert_array_equal(observed, expected)
    assert (bands[0, :4] == 0).all() and (bands[expected] == stack[expected]).all()


def test_crop_buffer():
    array = np.arange(36).reshape(6, 6)
    assert crop_buffer(array, 0) is not None and (crop_buffer(array, 0) == array).all()
    np.testing.assert_array_equal(crop_buffer(array, 2), array[1:5, 1:5])
    for bad in (3, -2, 6):
        with pytest.raises(ValueError):
            crop_buffer(array, bad)


def test_tfrecord_checksums(tmp_path):
    frames = [frame_record(record_bytes(i, 4)) for i in range(3)]
    bad_data = bytearray(b"".join(frames))
    bad_data[len(frames[0]) + 20] ^= 0xFF  # inside record 1's data: only that record is lost
    path = tmp_path / "a.tfrecord"
    path.write_bytes(bytes(bad_data))
    items = list(read_shard(str(path)))
    assert [type(i).__name__ for i in items] == ["bytes", "CorruptRecord", "bytes"]
    assert "record 1 fails its data checksum" in items[1].reason
    bad_length = bytearray(b"".join(frames))
    bad_length[len(frames[0]) + 2] ^= 0xFF  # record 1's length: the framing is lost
    path.write_bytes(bytes(bad_length))
    with pytest.raises(ShardError, match="corrupt at record 1 \\(length checksum\\)") as info:
        list(read_shard(str(path)))
    assert info.value.records_read == 1
    path.write_bytes(b"".join(frames)[:-10])
    with pytest.raises(ShardError, match="truncated in record 2"):
        list(read_shard(str(path)))
    path.write_bytes(gzip.compress(b"".join(frames)))
    with pytest.raises(ShardError, match="gzipped but not named .tfrecord.gz"):
        list(read_shard(str(path)))


# ----------------------------------------------------------------------------------------------------
# read_export: whole exports, good and bad


def test_read_good_export_in_patch_order(tmp_path):
    write_export(tmp_path, 5, total=5, per_shard=2)  # 3 shards: 2 + 2 + 1 records
    patches, dead, geometry, missing = read_all(tmp_path)
    assert not dead and not missing
    assert sorted(patches) == [0, 1, 2, 3, 4]
    for i, patch in patches.items():
        assert_patch_is(patch, i, 12)
        assert patch.kernel == 4 and patch.core()[0].shape == (8, 8, 3)
    (g,) = geometry
    assert (g.kernel, g.record_side, g.rows, g.total_patches) == (4, 12, 3, 5)


def test_plain_and_single_file_exports(tmp_path):
    write_export(tmp_path / "plain", 3, gz=False)
    patches, dead, _, _ = read_all(tmp_path / "plain")
    assert sorted(patches) == [0, 1, 2] and not dead
    single = tmp_path / "single"
    single.mkdir()
    (single / "image_2000.json").write_bytes(mixer_bytes(8, 2, 2))
    (single / "image_2000.tfrecord.gz").write_bytes(shard_bytes([record_bytes(i, 12) for i in range(2)]))
    patches, dead, _, _ = read_all(single)
    assert sorted(patches) == [0, 1] and not dead


def test_corrupt_gz_shard_loses_nothing_else(tmp_path):
    shards = write_export(tmp_path, 6, total=6, per_shard=2)
    data = bytearray(shards[1].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\xff" * 8  # corrupt compressed data; the gzip trailer is intact
    shards[1].write_bytes(bytes(data))
    patches, dead, geometry, _ = read_all(tmp_path)
    # every record before and after the corrupt shard is placed where it belongs
    assert {0, 1, 4, 5} <= set(patches)
    for i, patch in patches.items():
        assert_patch_is(patch, i, 12)
    shard_letters = [d for d in dead if d.file == str(shards[1]) and d.record is None]
    assert len(shard_letters) == 1 and "before the break kept" in shard_letters[0].reason
    assert all(d.file == str(shards[1]) for d in dead)
    assert geometry[0].kernel == 4


def test_truncated_gz_shard_blocks_only_what_cannot_be_placed(tmp_path):
    shards = write_export(tmp_path, 6, total=6, per_shard=2)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # cut: the trailer (and the record count) is gone
    patches, dead, _, _ = read_all(tmp_path)
    assert {0, 1} <= set(patches) and not {4, 5} & set(patches)
    for i, patch in patches.items():
        assert_patch_is(patch, i, 12)
    (broken,) = [d for d in dead if d.file == str(shards[1])]
    assert "truncated" in broken.reason and "cannot be recovered" in broken.reason
    (later,) = [d for d in dead if d.file == str(shards[2])]
    assert "2 record(s) not read" in later.reason and "positions are unknown" in later.reason


def test_corrupt_plain_shard_recovers_count_from_size(tmp_path):
    shards = write_export(tmp_path, 6, total=6, per_shard=2, gz=False)
    data = bytearray(shards[0].read_bytes())
    data[2] ^= 0xFF  # first record's length header
    shards[0].write_bytes(bytes(data))
    patches, dead, _, _ = read_all(tmp_path)
    assert sorted(patches) == [2, 3, 4, 5]
    for i, patch in patches.items():
        assert_patch_is(patch, i, 12)
    (letter,) = dead
    assert letter.file == str(shards[0]) and "patches 0-1 are lost" in letter.reason


def test_bad_records_are_dropped_alone(tmp_path):
    records = [record_bytes(i, 12) for i in range(6)]
    records[1] = record_bytes(1, 11)  # wrong size
    records[3] = record_bytes(3, 12, bands=("swir1", "nir", "RED"))  # wrong band name
    write_export(tmp_path, 6, records=records, total=6)
    patches, dead, _, _ = read_all(tmp_path)
    assert sorted(patches) == [0, 2, 4, 5]
    by_record = {d.record: d.reason for d in dead}
    assert set(by_record) == {1, 3}
    assert "not patch 8 + an even kernel" in by_record[1] or "expected 12x12" in by_record[1]
    assert "missing band(s) red" in by_record[3] and "extra: RED" in by_record[3]


def test_explicit_kernel_checks_record_size(tmp_path):
    write_export(tmp_path, 2, total=2)
    patches, dead, geometry, _ = read_all(tmp_path, kernel=6)
    assert not patches and len(dead) == 2 and all("expected 14x14 (patch 8 + kernel 6)" in d.reason for d in dead)
    assert geometry[0].kernel == 6


def test_record_counts_against_the_mixer(tmp_path):
    write_export(tmp_path / "few", 3, total=4)
    patches, dead, _, _ = read_all(tmp_path / "few")
    assert sorted(patches) == [0, 1, 2]
    (letter,) = dead
    assert "3 record(s) in 2 shard(s) but the mixer says totalPatches 4" in letter.reason
    assert letter.file.endswith("-mixer.json")
    write_export(tmp_path / "many", 5, total=4)
    patches, dead, _, _ = read_all(tmp_path / "many")
    assert sorted(patches) == [0, 1, 2, 3]
    assert {d.record for d in dead} == {4, None}
    assert any("beyond the mixer's totalPatches 4" in d.reason for d in dead)


def test_missing_shard_number(tmp_path):
    shards = write_export(tmp_path, 6, total=6)
    shards[1].unlink()
    patches, dead, _, _ = read_all(tmp_path)
    assert sorted(patches) == [0, 1]
    assert any("shard(s) 00001 missing" in d.reason for d in dead)
    assert any(d.file == str(shards[2]) and "2 record(s) not read" in d.reason for d in dead)


def test_missing_folder_mixer_and_bad_mixer(tmp_path):
    _, _, _, missing = read_all(tmp_path / "nothing")
    assert len(missing) == 1 and "no such export folder" in missing[0].reason
    shards = write_export(tmp_path / "nomixer", 2)
    (tmp_path / "nomixer" / "g_2000-mixer.json").unlink()
    patches, dead, geometry, missing = read_all(tmp_path / "nomixer")
    assert not patches and not dead and not geometry and "no mixer" in missing[0].reason
    write_export(tmp_path / "badmixer", 2)
    (tmp_path / "badmixer" / "g_2000-mixer.json").write_text("{}")
    patches, dead, geometry, missing = read_all(tmp_path / "badmixer")
    assert not patches and not geometry and not missing
    assert "mixer has no 'projection'" in dead[0].reason and dead[0].file.endswith("g_2000-mixer.json")
    del shards


def test_phen_export_is_reported_not_guessed():
    folder = shared_path("ee_exports", "phen_asynch_kernel60")
    events = list(read_export(str(folder), "phen", 2019, PHEN_BANDS))
    assert not [e for e in events if isinstance(e, ExportPatch)]
    dead = [e for e in events if isinstance(e, DeadLetter)]
    assert any("shard(s) 00000-00004 missing" in d.reason and "totalPatches 15" in d.reason for d in dead)
    assert any(d.file.endswith("-00005.tfrecord") and "2 record(s) not read" in d.reason for d in dead)
    (geometry,) = [e for e in events if isinstance(e, ExportGeometry)]
    assert geometry.kernel == 60 and geometry.record_side == 316


def test_servir_export_reads_one_georeferenced_patch():
    folder = shared_path("ee_exports", "servir_aces")
    events = list(read_export(str(folder), "servir", 2021, SERVIR_BANDS))
    (patch,) = [e for e in events if isinstance(e, ExportPatch)]
    (geometry,) = [e for e in events if isinstance(e, ExportGeometry)]
    assert not [e for e in events if isinstance(e, DeadLetter)]
    assert patch.key == ("servir", 2021, 0) and patch.bands.shape == (256, 256, 8) and patch.kernel == 0
    assert geometry.kernel == 0 and math.isclose(geometry.bounds[0], 89.39005136557161)


def test_strict_reader_for_scripts(tmp_path):
    write_export(tmp_path / "g" / "2000", 3, total=3)
    geometry, patches = read_export_patches(str(tmp_path), "g", 2000, BANDS)
    assert geometry.total_patches == 3 and [p.index for p in patches] == [0, 1, 2]
    with pytest.raises(MissingExportError, match="no such export folder"):
        read_export_patches(str(tmp_path), "g", 2001, BANDS)
    with pytest.raises(ExportError, match="missing band\\(s\\) blue"):
        read_export_patches(str(tmp_path), "g", 2000, ("blue",))
