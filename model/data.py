"""Training patches: Earth Engine TFRecord exports, their checks, the spatial split and the tf.data input.

A training record is a `tf.train.Example` with one float list per band (the preset's names) and `label`
(0/1), each of P x P values in row-major order (Earth Engine's `neighborhoodToArray` / patch exports),
gzipped or not. Optional per-record coordinates (`lon`, `lat`: one value, or P x P values of
`ee.Image.pixelLonLat()` whose centre pixel is used) allow a split by spatial block.

Everything that reads files checks them and names the file (and record) in its error; the pure
functions (masks, augmentation, splits, blocks) take arrays or tensors and are tested on their own.
"""
from __future__ import annotations

import logging
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.contract import DEFAULT_NODATA, LABEL_FEATURE, STORED_RANGE, export_scaled, observed_pixels
from pipeline.errors import UserError

log = logging.getLogger(__name__)

RECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz", ".tfr", ".tfr.gz")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class PatchSpec:
    """What a training record must hold: the bands in model order, the patch size and the label name."""

    bands: tuple[str, ...]
    patch_size: int = 256
    label: str = LABEL_FEATURE
    coordinates: tuple[str, str] = ("lon", "lat")

    @property
    def pixels(self) -> int:
        """Values per band feature: patch_size squared."""
        return self.patch_size * self.patch_size


@dataclass
class FileInfo:
    """One checked TFRecord file: compression, record count, spatial group and per-record blocks."""

    path: str
    compression: str
    records: int
    group: str
    label_dtype: str = "float"
    band_dtype: str = "float"
    coordinates: list[tuple[float, float]] | None = None

    def to_json(self) -> dict:
        """A JSON-ready summary (coordinates left out), for the model card and split records."""
        return {"path": self.path, "records": self.records, "group": self.group}


@dataclass
class Split:
    """Which records train and which validate: by file group (grid) or by spatial block of records."""

    by: str
    train_files: list[FileInfo]
    validation_files: list[FileInfo]
    validation_groups: list[str] = field(default_factory=list)
    block_size: float | None = None
    validation_blocks: list[tuple[int, int]] = field(default_factory=list)
    train_records: int = 0
    validation_records: int = 0

    def to_json(self) -> dict:
        """The split as recorded in the model card (enough for `evaluate` to rebuild the validation set)."""
        return {
            "by": self.by,
            "validation_groups": list(self.validation_groups),
            "block_size": self.block_size,
            "validation_blocks": [list(b) for b in self.validation_blocks],
            "train_files": [f.path for f in self.train_files],
            "validation_files": [f.path for f in self.validation_files],
            "train_records": self.train_records,
            "validation_records": self.validation_records,
        }


# ----------------------------------------------------------------------------------------------------
# Finding and reading files


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def is_record_file(path: str) -> bool:
    """True for names Earth Engine gives TFRecord exports (`.tfrecord`, `.tfrecord.gz`, ...)."""
    return path.lower().endswith(RECORD_SUFFIXES)


def list_record_files(paths: Sequence[str]) -> list[tuple[str, str]]:
    """Expand files, directories (recursively) and globs into sorted (file, root) pairs.

    The root is the directory the user named (or the glob's fixed prefix, or a file's folder): the
    spatial group of a file is read from its path below that root (see `group_of`).
    """
    gfile = _gfile()
    found: list[tuple[str, str]] = []
    for given in paths:
        if any(ch in given for ch in "*?["):
            matches = sorted(gfile.glob(given))
            prefix = re.split(r"[*?\[]", given, maxsplit=1)[0]
            root = prefix.rstrip("/") if prefix.endswith("/") else posixpath.dirname(prefix)
            files = [m for m in matches if not gfile.isdir(m)]
            for m in matches:
                if gfile.isdir(m):
                    files.extend(_walk_records(m))
            if not files:
                raise UserError(f"{given}: no TFRecord files match")
            found.extend((f, root) for f in sorted(files))
        elif gfile.isdir(given):
            files = _walk_records(given)
            if not files:
                raise UserError(f"{given}: no TFRecord files (*.tfrecord, *.tfrecord.gz) in this folder")
            found.extend((f, given.rstrip("/")) for f in files)
        elif gfile.exists(given):
            found.append((given, posixpath.dirname(given) or "."))
        else:
            raise UserError(f"{given}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for f, root in found:
        if f not in seen:
            seen.add(f)
            unique.append((f, root))
    return unique


def _walk_records(folder: str) -> list[str]:
    """Every TFRecord file under a folder, sorted."""
    gfile = _gfile()
    out = []
    for dirpath, _, filenames in gfile.walk(folder):
        out.extend(posixpath.join(dirpath, n) for n in filenames if is_record_file(n))
    return sorted(out)


def group_of(path: str, root: str) -> str:
    """The spatial group (grid) of a file: its first folder below the root, else the root's own name.

    Training data laid out as `{root}/{grid}/...` (as the exports are) splits by grid; files lying
    directly in the root all belong to one group, the root folder.
    """
    rel = posixpath.relpath(path, root) if root else path
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if len(parts) >= 2 and parts[0] != "..":
        return parts[0]
    return posixpath.basename(posixpath.normpath(root)) or root


def detect_compression(path: str) -> str:
    """'GZIP' when the file starts with the gzip magic bytes, else '' (plain TFRecord)."""
    with _gfile().GFile(path, "rb") as handle:
        head = handle.read(2)
    return "GZIP" if head == GZIP_MAGIC else ""


def iter_records(path: str, compression: str | None = None) -> Iterator[bytes]:
    """Serialized records of one TFRecord file; a corrupt or non-TFRecord file is a UserError naming it."""
    import tensorflow as tf

    if compression is None:
        compression = detect_compression(path)
    dataset = tf.data.TFRecordDataset(path, compression_type=compression)
    try:
        yield from dataset.as_numpy_iterator()
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise UserError(f"{path}: not a readable TFRecord file ({error.message.splitlines()[0]})") from None


# ----------------------------------------------------------------------------------------------------
# Checking records


def parse_example(record: bytes, where: str):
    """Parse one serialized tf.train.Example; a clear error naming the record if it is not one."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    try:
        example.ParseFromString(record)
    except DecodeError:
        raise UserError(f"{where}: not a tf.train.Example record") from None
    return example


def _feature_values(feature) -> tuple[str, object]:
    """(dtype name, repeated values) of a tf.train.Feature: float, int64 or bytes."""
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return "float", feature.float_list.value
    if kind == "int64_list":
        return "int64", feature.int64_list.value
    if kind == "bytes_list":
        return "bytes", feature.bytes_list.value
    return "empty", []


def _size_hint(n: int) -> str:
    """A hint naming the patch size a wrong-length feature suggests."""
    side = math.isqrt(n)
    if side * side == n and side > 0:
        return f"; the file holds {side}x{side} patches (set --patch-size {side})"
    return ""


def check_example(example, spec: PatchSpec, where: str, check_label_values: bool = True) -> dict[str, str]:
    """Check one training Example against the spec; returns the dtype of the bands and the label.

    Errors name `where` (file and record): missing label, missing preset bands (listing what the record
    has), a band or label of the wrong length (suggesting the patch size the data has), a non-numeric
    feature, label values other than 0 and 1.
    """
    features = example.features.feature
    present = sorted(features.keys())
    if spec.label not in features:
        raise UserError(
            f"{where}: no '{spec.label}' feature; training patches need the label band "
            f"(the record has: {', '.join(present) or 'nothing'})"
        )
    missing = [b for b in spec.bands if b not in features]
    if missing:
        raise UserError(
            f"{where}: missing band(s) {', '.join(missing)} of the preset ({', '.join(spec.bands)}); "
            f"the record has: {', '.join(present)} (wrong --band-preset?)"
        )
    dtypes: dict[str, str] = {}
    for name in (*spec.bands, spec.label):
        dtype, values = _feature_values(features[name])
        if dtype not in ("float", "int64"):
            raise UserError(f"{where}: feature '{name}' is {dtype}, expected a float list")
        if len(values) != spec.pixels:
            raise UserError(
                f"{where}: feature '{name}' has {len(values)} values, expected {spec.pixels} "
                f"({spec.patch_size}x{spec.patch_size} patches){_size_hint(len(values))}"
            )
        dtypes[name] = dtype
    band_dtypes = {dtypes[b] for b in spec.bands}
    if len(band_dtypes) > 1:
        raise UserError(f"{where}: bands mix float and integer lists; export them with one type")
    if check_label_values:
        label = np.asarray(_feature_values(features[spec.label])[1], dtype=np.float64)
        bad = label[(label != 0) & (label != 1)]
        if bad.size:
            raise UserError(f"{where}: label has values other than 0 and 1 (e.g. {bad[0]:g})")
    return {"band": band_dtypes.pop(), "label": dtypes[spec.label]}


def record_coordinates(example, spec: PatchSpec, where: str) -> tuple[float, float]:
    """(lon, lat) of a record's patch centre from its coordinate features (one value or P x P values)."""
    features = example.features.feature
    out = []
    for name in spec.coordinates:
        if name not in features:
            raise UserError(
                f"{where}: no '{name}' feature; a split by block needs per-record coordinates "
                f"({' and '.join(spec.coordinates)}: the patch centre, or ee.Image.pixelLonLat() bands); "
                "use --split grid otherwise"
            )
        _, values = _feature_values(features[name])
        if len(values) == 1:
            out.append(float(np.float32(values[0])))
        elif len(values) == spec.pixels:
            centre = (spec.patch_size // 2) * spec.patch_size + spec.patch_size // 2
            out.append(float(np.float32(values[centre])))
        else:
            raise UserError(f"{where}: feature '{name}' has {len(values)} values, expected 1 or {spec.pixels}")
    return out[0], out[1]


def scan_files(
    files: Sequence[tuple[str, str]], spec: PatchSpec, with_coordinates: bool = False
) -> list[FileInfo]:
    """Read and check every record of every file, before any training starts.

    Returns one FileInfo per file (record count, compression, group, coordinates when asked).
    Files must agree on feature types. Empty files are skipped with a warning.
    """
    infos: list[FileInfo] = []
    seen_dtypes: dict[str, str] | None = None
    first_path = None
    for path, root in files:
        compression = detect_compression(path)
        count = 0
        coords: list[tuple[float, float]] = []
        dtypes = None
        for index, record in enumerate(iter_records(path, compression)):
            where = f"{path}: record {index}"
            example = parse_example(record, where)
            dtypes = check_example(example, spec, where)
            if seen_dtypes is None:
                seen_dtypes, first_path = dtypes, path
            elif dtypes != seen_dtypes:
                raise UserError(
                    f"{where}: feature types {dtypes} differ from {first_path} ({seen_dtypes}); "
                    "export all training files the same way"
                )
            if with_coordinates:
                coords.append(record_coordinates(example, spec, where))
            count += 1
        if count == 0:
            log.warning("%s: no records, skipped", path)
            continue
        infos.append(
            FileInfo(
                path=path,
                compression=compression,
                records=count,
                group=group_of(path, root),
                label_dtype=dtypes["label"],
                band_dtype=dtypes["band"],
                coordinates=coords if with_coordinates else None,
            )
        )
    if not infos:
        raise UserError(f"{', '.join(p for p, _ in files) or 'input'}: no training records found")
    return infos


def example_arrays(example, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (P, P, bands) in preset order, label uint8 (P, P)) from a checked Example."""
    features = example.features.feature
    p = spec.patch_size
    image = np.empty((p, p, len(spec.bands)), dtype=np.float32)
    for i, band in enumerate(spec.bands):
        image[..., i] = np.asarray(_feature_values(features[band])[1], dtype=np.float32).reshape(p, p)
    label = np.asarray(_feature_values(features[spec.label])[1], dtype=np.float32).reshape(p, p)
    return image, label.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Spatial split


def block_of(lon: float, lat: float, block_size: float) -> tuple[int, int]:
    """The (column, row) of the square block of `block_size` degrees holding a point, in float32 math.

    float32 so that the tf.data filter (which computes the same in TensorFlow) agrees bit for bit.
    """
    size = np.float32(block_size)
    return int(np.floor(np.float32(lon) / size)), int(np.floor(np.float32(lat) / size))


def choose_validation(keys: Sequence, fraction: float, seed: int, explicit: Sequence | None = None) -> list:
    """Pick the validation keys (groups or blocks): the explicit ones, else a seeded share of the sorted keys.

    At least one key validates when `fraction` > 0, and at least one trains; fewer than two keys cannot
    be split (a UserError saying so).
    """
    unique = sorted(set(keys))
    if explicit:
        unknown = [k for k in explicit if k not in set(unique)]
        if unknown:
            raise UserError(f"validation group(s) {', '.join(map(str, unknown))} not in the data ({', '.join(map(str, unique))})")
        chosen = sorted(set(explicit))
        if len(chosen) == len(unique):
            raise UserError("every group is a validation group: nothing left to train on")
        return chosen
    if fraction <= 0:
        return []
    if len(unique) < 2:
        raise UserError(
            f"cannot split spatially: the data has a single group ({unique[0] if unique else 'none'}); "
            "lay files out as {root}/{grid}/..., use --split block, give --validation data, "
            "or --val-fraction 0"
        )
    n_val = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    return sorted(unique[i] for i in order[:n_val])


def split_by_group(
    infos: Sequence[FileInfo], fraction: float, seed: int, explicit: Sequence[str] | None = None
) -> Split:
    """Split whole files by their group (grid): a grid is either all training or all validation."""
    groups = [f.group for f in infos]
    val_groups = set(choose_validation(groups, fraction, seed, explicit))
    train = [f for f in infos if f.group not in val_groups]
    val = [f for f in infos if f.group in val_groups]
    return Split(
        by="grid",
        train_files=train,
        validation_files=val,
        validation_groups=sorted(val_groups),
        train_records=sum(f.records for f in train),
        validation_records=sum(f.records for f in val),
    )


def split_by_block(infos: Sequence[FileInfo], block_size: float, fraction: float, seed: int) -> Split:
    """Split records by square blocks of `block_size` degrees from their coordinates (seeded choice)."""
    if block_size <= 0:
        raise UserError(f"--block-size must be positive, got {block_size}")
    blocks_per_file = [[block_of(lon, lat, block_size) for lon, lat in (f.coordinates or [])] for f in infos]
    all_blocks = [b for blocks in blocks_per_file for b in blocks]
    val_blocks = set(choose_validation(all_blocks, fraction, seed))
    n_val = sum(1 for b in all_blocks if b in val_blocks)
    train_files = [f for f, bl in zip(infos, blocks_per_file) if any(b not in val_blocks for b in bl)]
    val_files = [f for f, bl in zip(infos, blocks_per_file) if any(b in val_blocks for b in bl)]
    return Split(
        by="block",
        train_files=train_files,
        validation_files=val_files,
        block_size=block_size,
        validation_blocks=sorted(val_blocks),
        train_records=len(all_blocks) - n_val,
        validation_records=n_val,
    )


def no_split(infos: Sequence[FileInfo], validation: Sequence[FileInfo] = ()) -> Split:
    """All files train; validation (if any) comes from separately given files."""
    return Split(
        by="files",
        train_files=list(infos),
        validation_files=list(validation),
        train_records=sum(f.records for f in infos),
        validation_records=sum(f.records for f in validation),
    )


# ----------------------------------------------------------------------------------------------------
# Pure array/tensor functions


def observed_mask(image: np.ndarray, stored_range: tuple[float, float] | None = STORED_RANGE) -> np.ndarray:
    """Pixels with a valid mosaic value: `pipeline.contract.observed_pixels`, the rule inference uses too.

    Training images hold preset bands only, so every band is held to the stored range 0-255 as the
    pipeline's reader holds the preset's bands (a 3e38 is not observed, in training as in inference);
    `stored_range=None` for bands that are not a preset's (the reader does not range-check those).
    """
    observed = observed_pixels(image, DEFAULT_NODATA)
    if stored_range is None:
        return observed
    low, high = stored_range
    with np.errstate(invalid="ignore"):
        in_range = np.all((image >= low) & (image <= high), axis=-1)
    return observed & in_range


def observed_mask_tf(image, stored_range: tuple[float, float] | None = STORED_RANGE):
    """TensorFlow twin of `observed_mask` (last axis = bands) inside the tf.data graph: the same rule
    (every band finite, inside the stored range and not a no-data value, the first band not 0); a bool
    tensor without that axis."""
    import tensorflow as tf

    ok = tf.logical_and(tf.reduce_all(tf.math.is_finite(image), axis=-1), tf.not_equal(image[..., 0], 0.0))
    if stored_range is not None:
        low, high = stored_range
        in_range = tf.logical_and(tf.greater_equal(image, tf.cast(low, image.dtype)), tf.less_equal(image, tf.cast(high, image.dtype)))
        ok = tf.logical_and(ok, tf.reduce_all(in_range, axis=-1))
    for value in DEFAULT_NODATA:
        ok = tf.logical_and(ok, tf.logical_not(tf.reduce_any(tf.equal(image, tf.cast(value, image.dtype)), axis=-1)))
    return ok


def augment_tf(image, label, seed):
    """Random flips (left-right, up-down) and 90-degree rotations applied alike to image and label.

    `seed` is a shape-[2] int tensor: stateless, so an epoch's augmentation depends only on the run seed,
    the epoch and the record's position (reproducible, also after resuming).
    """
    import tensorflow as tf

    draws = tf.random.stateless_uniform([3], seed=seed, minval=0, maxval=4, dtype=tf.int32)
    both = tf.concat([image, label], axis=-1)
    both = tf.cond(draws[0] % 2 == 1, lambda: tf.reverse(both, axis=[1]), lambda: both)
    both = tf.cond(draws[1] % 2 == 1, lambda: tf.reverse(both, axis=[0]), lambda: both)
    both = tf.image.rot90(both, k=draws[2])
    bands = image.shape[-1]
    return both[..., :bands], both[..., bands:]


# ----------------------------------------------------------------------------------------------------
# tf.data input


def feature_spec(spec: PatchSpec, band_dtype: str, label_dtype: str, with_coordinates: bool = False) -> dict:
    """tf.io parsing spec for training records (bands and label of P x P values, optional coordinates)."""
    import tensorflow as tf

    def dtype(name):
        return tf.int64 if name == "int64" else tf.float32

    parsing = {b: tf.io.FixedLenFeature([spec.pixels], dtype(band_dtype)) for b in spec.bands}
    parsing[spec.label] = tf.io.FixedLenFeature([spec.pixels], dtype(label_dtype))
    if with_coordinates:
        for name in spec.coordinates:
            parsing[name] = tf.io.VarLenFeature(tf.float32)
    return parsing


def _parse_fn(spec: PatchSpec, band_dtype: str, label_dtype: str, with_coordinates: bool):
    """A tf.data map function: serialized record -> (image (P,P,B) float32, label (P,P,1) float32[, lonlat])."""
    import tensorflow as tf

    parsing = feature_spec(spec, band_dtype, label_dtype, with_coordinates)
    p = spec.patch_size
    centre = (p // 2) * p + p // 2

    def parse(record):
        parsed = tf.io.parse_single_example(record, parsing)
        image = tf.stack([tf.cast(parsed[b], tf.float32) for b in spec.bands], axis=-1)
        image = tf.reshape(image, [p, p, len(spec.bands)])
        label = tf.reshape(tf.cast(parsed[spec.label], tf.float32), [p, p, 1])
        if not with_coordinates:
            return image, label
        coords = []
        for name in spec.coordinates:
            values = parsed[name].values
            coords.append(tf.where(tf.size(values) == 1, values[0], values[tf.minimum(centre, tf.size(values) - 1)]))
        return image, label, tf.stack(coords)

    return parse


def make_dataset(
    files: Sequence[FileInfo],
    spec: PatchSpec,
    *,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 64,
    augment: bool = False,
    transform=None,
    block_size: float | None = None,
    validation_blocks: Iterable[tuple[int, int]] = (),
    keep: str = "all",
    drop_remainder: bool = False,
    records: int | None = None,
):
    """The tf.data input: parallel interleaved reading, parsing, block filter, shuffle, augmentation,
    batching, the transform, prefetch. Yields (x, label, weight) with weight = observed pixels.

    `keep` is 'all', 'train' (records outside `validation_blocks`) or 'validation' (inside), used with
    a block split. With `training`, file order and shuffle are seeded by (seed, epoch). `transform` maps
    a raw batch (B, H, W, bands) to the network input; None keeps raw values (serving-model evaluation).
    """
    import tensorflow as tf

    if not files:
        raise UserError("no files to read")
    band_dtypes = {f.band_dtype for f in files}
    label_dtypes = {f.label_dtype for f in files}
    if len(band_dtypes) > 1 or len(label_dtypes) > 1:
        raise UserError(f"{files[0].path}: files mix float and integer features; export them the same way")
    filtering = keep != "all"
    if filtering and block_size is None:
        raise ValueError("keep='train'/'validation' needs block_size")
    epoch_seed = int(seed) * 1_000_003 + int(epoch)

    paths = tf.constant([f.path for f in files])
    compressions = tf.constant([f.compression for f in files])
    ds = tf.data.Dataset.from_tensor_slices((paths, compressions))
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.interleave(
        lambda path, compression: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=max(1, min(len(files), 8)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    parse = _parse_fn(spec, band_dtypes.pop(), label_dtypes.pop(), with_coordinates=filtering)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if filtering:
        blocks = sorted(set(tuple(b) for b in validation_blocks))
        vb = tf.constant(blocks if blocks else np.zeros((0, 2)), dtype=tf.int64, shape=[len(blocks), 2])
        size = tf.constant(block_size, tf.float32)
        want_validation = keep == "validation"

        def in_validation(image, label, lonlat):
            block = tf.cast(tf.floor(lonlat / size), tf.int64)
            hit = tf.reduce_any(tf.reduce_all(tf.equal(vb, block[None, :]), axis=1))
            return hit if want_validation else tf.logical_not(hit)

        ds = ds.filter(in_validation).map(lambda image, label, lonlat: (image, label))
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=epoch_seed + 1, reshuffle_each_iteration=False)
    if augment:
        ds = ds.enumerate().map(
            lambda i, pair: augment_tf(pair[0], pair[1], tf.stack([tf.constant(epoch_seed, tf.int64), i])),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def with_weight(image, label):
        weight = tf.cast(observed_mask_tf(image), tf.float32)[..., None]
        return image, label, weight

    ds = ds.map(with_weight, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if records is None and not filtering:
        records = sum(f.records for f in files)
    if records is not None:
        batches = records // batch_size if drop_remainder else -(-records // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    if transform is not None:
        ds = ds.map(lambda x, y, w: (transform(x), y, w), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def split_datasets_kwargs(split: Split, part: str) -> dict:
    """make_dataset keyword arguments (files, block filter) for the 'train' or 'validation' part of a split."""
    files = split.train_files if part == "train" else split.validation_files
    records = split.train_records if part == "train" else split.validation_records
    kwargs: dict = {"files": files, "records": records}
    if split.by == "block":
        kwargs.update(block_size=split.block_size, validation_blocks=split.validation_blocks, keep=part)
    return kwargs


# ----------------------------------------------------------------------------------------------------
# Writing patches (synthetic demo and test data, re-exports)


def example_bytes(features: dict[str, np.ndarray | Sequence[float]]) -> bytes:
    """Serialize a dict of name -> values as a tf.train.Example of float lists (integers stay int64)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    example = example_pb2.Example()
    for name, values in features.items():
        arr = np.asarray(values).ravel()
        feature = example.features.feature[name]
        if np.issubdtype(arr.dtype, np.integer):
            feature.CopyFrom(feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=arr.astype(np.int64))))
        else:
            feature.CopyFrom(feature_pb2.Feature(float_list=feature_pb2.FloatList(value=arr.astype(np.float32))))
    return example.SerializeToString()


def write_records(path: str, records: Iterable[bytes], compress: bool = True) -> str:
    """Write serialized records to a TFRecord file (gzipped like Earth Engine's exports when `compress`)."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if compress else "")
    parent = posixpath.dirname(path)
    if parent:
        _gfile().makedirs(parent)
    with tf.io.TFRecordWriter(path, options) as writer:
        for record in records:
            writer.write(record)
    return path


def write_patches(
    path: str,
    images: np.ndarray,
    labels: np.ndarray,
    bands: Sequence[str],
    *,
    compress: bool = True,
    label_name: str = LABEL_FEATURE,
    extra: dict[str, np.ndarray] | None = None,
) -> str:
    """Write patches (N, P, P, B) and labels (N, P, P) as Earth Engine-style training records.

    `extra` adds per-record features (name -> array with N rows), e.g. `lon`/`lat` patch centres.
    """
    if images.ndim != 4 or images.shape[-1] != len(bands):
        raise ValueError(f"images must be (N, P, P, {len(bands)}), got {images.shape}")

    def records():
        for i in range(images.shape[0]):
            features = {band: images[i, ..., b] for b, band in enumerate(bands)}
            features[label_name] = labels[i].astype(np.float32)
            for name, values in (extra or {}).items():
                features[name] = np.atleast_1d(values[i]).astype(np.float32)
            yield example_bytes(features)

    return write_records(path, records(), compress)


def synthetic_patches(
    count: int,
    patch_size: int,
    bands: Sequence[str],
    seed: int = 0,
    masked_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generated training patches: vegetated background with bright bare-soil pits labelled mining.

    Returns (images (N, P, P, B) float32 in export scaling, labels (N, P, P) uint8). Mining pits are
    ellipses with high SWIR1/red and low NIR, so the label is learnable from the bands. A
    `masked_fraction` of pixels per patch is set to 0 in every band (not observed, label 0).
    For demos, tests and benchmarks: not real imagery.
    """
    rng = np.random.default_rng(seed)
    p = patch_size
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float32)
    images = np.empty((count, p, p, len(bands)), dtype=np.float32)
    labels = np.zeros((count, p, p), dtype=np.uint8)
    background = {"blue": 0.03, "green": 0.06, "red": 0.04, "nir": 0.32, "swir1": 0.15, "swir2": 0.07}
    pit = {"blue": 0.10, "green": 0.13, "red": 0.17, "nir": 0.21, "swir1": 0.30, "swir2": 0.25}
    for n in range(count):
        mine = np.zeros((p, p), dtype=bool)
        for _ in range(rng.integers(0, 4)):
            cy, cx = rng.uniform(0, p, 2)
            ry, rx = rng.uniform(p / 16, p / 5, 2)
            mine |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        reflectance = {}
        for band in background:
            base = np.where(mine, pit[band], background[band])
            noise = rng.normal(0.0, 0.012, (p, p))
            reflectance[band] = np.clip(base + noise, 0.001, 1.0)
        images[n] = export_scaled(reflectance, bands)  # as Earth Engine stores them
        labels[n] = mine
        if masked_fraction > 0:
            masked = rng.random((p, p)) < masked_fraction
            images[n][masked] = 0.0
            labels[n][masked] = 0
    return images, labels
