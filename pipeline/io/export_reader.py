"""Reading one Earth Engine export: records → patches in the preset's band order, plus dead letters.

Each record is a `tf.train.Example` with one float list per band of (P + K)^2 values, row-major, where
P is the mixer's patch size and K the export's kernel size (a K/2 buffer on each side). Records are in
patch order: shards sorted by number, records in file order; patch i sits at patch row i // patchesPerRow,
column i % patchesPerRow.

Everything here is plain Python and numpy (no Beam pipeline, no TensorFlow): the `ReadEarthEngineExports`
transform (`transforms/read.py`) is a thin shell over `read_export`. Gzipped shards are inflated as a
stream, so the records before a corrupt spot are still delivered, each checked by its own TFRecord
checksums.
"""
from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from pipeline.contract import DEFAULT_NODATA, band_observed, crop_buffer, outside_stored_range
from pipeline.elements import DeadLetter, ExportGeometry, ExportPatch, MissingExport, ReadEvent
from pipeline.errors import ExportError, MissingExportError, RecordError, ShardError
from pipeline.io.example import decode_example
from pipeline.io.export_layout import export_dir_of, list_export, parse_mixer, shard_number
from pipeline.io.filesystem import size_of
from pipeline.io.tfrecord import CorruptRecord, read_shard, uncompressed_size


def record_side_of(features: Mapping[str, np.ndarray], bands: Sequence[str], source: str = "<record>") -> int:
    """The side S of a square record from the length of its first requested band (S^2 values)."""
    for band in bands:
        if band in features:
            n = features[band].size
            side = math.isqrt(n)
            if side * side != n or side == 0:
                raise RecordError(f"{source}: band '{band}' has {n} values, not a square patch")
            return side
    raise RecordError(_band_message(source, bands, features))


def _band_message(source: str, bands: Sequence[str], features: Mapping[str, np.ndarray]) -> str:
    missing = [b for b in bands if b not in features]
    extra = sorted(set(features) - set(bands))
    return (
        f"{source}: missing band(s) {', '.join(missing)} (wanted {', '.join(bands)}); "
        f"the record has {', '.join(sorted(features)) or 'no features'}"
        + (f" (extra: {', '.join(extra)})" if extra else "")
    )


def arrays_from_features(
    features: Mapping[str, np.ndarray],
    bands: Sequence[str],
    record_side: int,
    nodata_values: Sequence[float] = DEFAULT_NODATA,
    *,
    fill_value: float | None = 0.0,
    allow_extra_bands: bool = True,
    source: str = "<record>",
) -> tuple[np.ndarray, np.ndarray]:
    """(bands float32 (S, S, B) in `bands` order, observed bool (S, S)) from decoded features.

    Checks that every band is present (the error lists missing and extra names) and has S^2 values.
    Not-observed pixels get `fill_value` in every band (0, Earth Engine's default), so NaN or -9999
    never reach the model's convolutions; None keeps the values as read.
    """
    bands_, observed, _ = _arrays_observed_outside(features, bands, record_side, nodata_values, fill_value=fill_value,
                                                   allow_extra_bands=allow_extra_bands, source=source)
    return bands_, observed


def _arrays_observed_outside(
    features: Mapping[str, np.ndarray],
    bands: Sequence[str],
    record_side: int,
    nodata_values: Sequence[float],
    *,
    fill_value: float | None,
    allow_extra_bands: bool,
    source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`arrays_from_features` plus where a band is outside its stored range (`outside_stored_range`), from
    the same pass over each band: the reader counts those pixels apart."""
    if not bands:
        raise ValueError("no bands requested")
    missing = [b for b in bands if b not in features]
    extra = sorted(set(features) - set(bands))
    if missing or (extra and not allow_extra_bands):
        raise RecordError(_band_message(source, bands, features))
    n = record_side * record_side
    out = np.empty((record_side, record_side, len(bands)), dtype=np.float32)
    observed = np.ones(n, dtype=bool)
    outside = np.zeros(n, dtype=bool)
    nodata = [np.float32(v) for v in nodata_values]
    for i, band in enumerate(bands):
        values = features[band]
        if values.size != n:
            side = math.isqrt(values.size)
            hint = f" ({side}x{side})" if side * side == values.size else ""
            raise RecordError(
                f"{source}: band '{band}' has {values.size} values{hint}, expected {n} "
                f"({record_side}x{record_side}: patch + kernel)"
            )
        out[..., i] = values.reshape(record_side, record_side)
        # DESIGN §2's rule (`pipeline.contract.observed_pixels`), one contiguous band at a time: observed
        # with no range (band None), less what lies outside the band's stored range
        bad = outside_stored_range(values, band, nodata)
        observed &= band_observed(values, first_band=i == 0, nodata_values=nodata) & ~bad
        outside |= bad
    observed = observed.reshape(record_side, record_side)
    if fill_value is not None:
        out[~observed] = fill_value
    return out, observed, outside.reshape(record_side, record_side)


def parse_patch_record(
    serialized: bytes,
    bands: Sequence[str],
    record_side: int,
    nodata_values: Sequence[float] = DEFAULT_NODATA,
    *,
    fill_value: float | None = 0.0,
    allow_extra_bands: bool = True,
    source: str = "<record>",
) -> tuple[np.ndarray, np.ndarray]:
    """Parse one export record into (bands float32 (S, S, B), observed bool (S, S)), S = record_side.

    `bands` gives the order of the last axis (a preset). See `arrays_from_features` for the checks
    and the no-data handling; errors are RecordError naming `source`.
    """
    features = decode_example(serialized, source)
    return arrays_from_features(
        features, bands, record_side, nodata_values,
        fill_value=fill_value, allow_extra_bands=allow_extra_bands, source=source,
    )



@dataclass
class _Reader:
    """State of one export's read: its geometry, the requested bands, the kernel once known, frame lengths."""

    geometry: ExportGeometry
    bands: tuple[str, ...]
    nodata_values: tuple[float, ...]
    kernel: int | None
    fill_value: float | None
    frame_lengths: set = field(default_factory=set)

    def side_for(self, features, source: str) -> int:
        """The record side, learning the kernel from the first record (or checking the given one)."""
        side = record_side_of(features, self.bands, source)
        patch = self.geometry.patch_size
        if self.kernel is None:
            extra = side - patch
            if extra < 0 or extra % 2:
                raise RecordError(
                    f"{source}: records are {side}x{side}, which is not patch {patch} + an even kernel"
                )
            self.kernel = extra
        elif side != patch + self.kernel:
            raise RecordError(
                f"{source}: records are {side}x{side}, expected {patch + self.kernel}x{patch + self.kernel} "
                f"(patch {patch} + kernel {self.kernel})"
            )
        return side

    def learn_kernel(self, path: str) -> None:
        """Read the kernel from a shard's first record that has one (records not placed still tell it)."""
        if self.kernel is not None:
            return
        for item in _intact_records(path):
            try:
                self.side_for(decode_example(item, path), path)
                return
            except RecordError:
                continue

    def vote_kernel(self, paths: Sequence[str]) -> None:
        """Set the kernel from the record size most shards share, so a shard of the wrong size is the one blamed.

        One record is read from each shard; the side most shards have wins, a tie goes to the side with
        more records (only then are the tied shards' frames counted), and a remaining tie to the first
        shard's. Without this, the first shard read would set the size and its intact siblings would be
        dead-lettered instead of it. A side that cannot be patch + an even kernel is left to the
        per-record checks (every record then says why).
        """
        if self.kernel is not None:
            return
        sides: dict[int, list[str]] = {}
        for path in paths:
            side = _first_record_side(path, self.bands)
            if side is not None:
                sides.setdefault(side, []).append(path)
        if not sides:
            return
        most = max(len(p) for p in sides.values())
        tied = [side for side, p in sides.items() if len(p) == most]
        if len(tied) > 1:
            records = {side: sum(_count_frames(p)[0] for p in sides[side]) for side in tied}
            top = max(records.values())
            tied = [side for side in tied if records[side] == top]
        order = {path: i for i, path in enumerate(paths)}
        side = min(tied, key=lambda s: order[sides[s][0]])
        extra = side - self.geometry.patch_size
        if extra >= 0 and extra % 2 == 0:
            self.kernel = extra

    def patch(self, data: bytes, index: int, source: str) -> ExportPatch:
        """An ExportPatch from one record's bytes (RecordError if it is not a usable patch)."""
        features = decode_example(data, source)
        side = self.side_for(features, source)
        bands, observed, outside = _arrays_observed_outside(
            features, self.bands, side, self.nodata_values, fill_value=self.fill_value, allow_extra_bands=True, source=source
        )
        g = self.geometry
        row, col = g.patch_position(index)
        return ExportPatch(g.grid, g.year, index, row, col, self.kernel, bands, observed,
                           int(crop_buffer(outside, self.kernel).sum()))


def _count_frames(path: str) -> tuple[int, str | None]:
    """(records, error or None) of a shard, reading only its framing."""
    count = 0
    try:
        for _ in read_shard(path):
            count += 1
    except ShardError as error:
        return error.records_read, str(error)
    return count, None


def _intact_records(path: str) -> Iterator[bytes]:
    """A shard's records that pass their checksums, in order, until its framing breaks (no error raised):
    what the probes of a shard's first usable record read."""
    try:
        for item in read_shard(path):
            if isinstance(item, bytes):
                yield item
    except ShardError:
        return


def _first_record_side(path: str, bands: Sequence[str]) -> int | None:
    """The record side of a shard's first intact record (None when it has none or it does not decode)."""
    item = next(_intact_records(path), None)
    if item is None:
        return None
    try:
        return record_side_of(decode_example(item, path), bands, path)
    except RecordError:
        return None


@dataclass(frozen=True)
class RecordProbe:
    """What one record of an export holds: its shard, the export's patch size, the bands and the record side."""

    shard: str
    patch_size: int
    bands: tuple[str, ...]
    side: int


def probe_export(export_dir: str, grid: str, year: int) -> RecordProbe | None:
    """The first decodable record of an export, for the checks made before a run reads anything.

    None when the export is absent or has no readable record (the read reports those as usual).
    """
    try:
        mixer_path, shards = list_export(export_dir)
        geometry = parse_mixer(mixer_path, grid, year)
    except ExportError:
        return None
    for path in shards:
        item = next(_intact_records(path), None)
        if item is None:
            continue
        try:
            features = decode_example(item, path)
        except RecordError:
            continue
        first = next(iter(features.values()), None)
        side = math.isqrt(first.size) if first is not None else 0
        return RecordProbe(path, geometry.patch_size, tuple(sorted(features)), side)
    return None


def _first_record_length(paths: Sequence[str]) -> int | None:
    """The length of the first readable record among the shards (None if none)."""
    for path in paths:
        item = next(_intact_records(path), None)
        if item is not None:
            return len(item)
    return None


_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than this factor


def recover_record_count(path: str, record_length: int, at_least: int) -> int | None:
    """How many records a broken shard held, from its size, when that is unambiguous (else None).

    Earth Engine's records of one export all have the same length, so the uncompressed size is a
    whole number of frames (record + 16 bytes): the file size for a plain shard, the gzip trailer's
    ISIZE (size mod 2^32) for a gzipped one, which must also be reachable from the compressed size.
    """
    frame = record_length + 16
    try:
        size = size_of(path)
        isize = uncompressed_size(path, size)
    except Exception:  # noqa: BLE001 - any failure means the count cannot be recovered
        return None
    if not path.endswith(".gz"):
        candidates = [isize]
    else:
        limit = size * _DEFLATE_MAX_RATIO
        candidates = [isize + k * (1 << 32) for k in range(0, limit // (1 << 32) + 1) if isize + k * (1 << 32) <= limit]
    fits = [c // frame for c in candidates if c % frame == 0 and c // frame >= at_least]
    return fits[0] if len(fits) == 1 else None


def read_export(
    export_dir: str,
    grid: str,
    year: int,
    bands: Sequence[str],
    nodata_values: Sequence[float] = DEFAULT_NODATA,
    *,
    kernel: int | None = None,
    fill_value: float | None = 0.0,
) -> Iterator[ReadEvent]:
    """Read one (grid, year) export: its patches, then its geometry, plus what could not be read.

    Yields ExportPatch for every good record (in patch order), DeadLetter for every bad record, bad
    shard, or count mismatch, then the ExportGeometry (with the kernel read from the records, or the
    given `kernel`, which records must then match; 0 when no record told it); or a single
    MissingExport when the folder or its mixer is absent; or a single DeadLetter when the mixer is
    unreadable or the folder ambiguous. Nothing bad stops the rest: a record of the wrong size or
    bands is dropped alone; a record failing its checksum is dropped alone; a shard whose compression
    or framing breaks keeps the records read before the break.

    Patch indices come from counting records across the sorted shards, and are never guessed: after
    a broken shard, later shards are placed only when the broken shard's record count can be
    recovered exactly from its size (`recover_record_count`: Earth Engine's records of one export all
    have the same length; gzip keeps the uncompressed size in its trailer); after a missing shard
    number (a gap, like phen_asynch's lone shard 00005), later shards cannot be placed. Records that
    cannot be placed become dead letters saying why.
    """
    bands = tuple(bands)
    try:
        mixer_path, shards = list_export(export_dir)
    except MissingExportError as error:
        yield MissingExport(str(grid), int(year), str(error))
        return
    except ExportError as error:
        yield DeadLetter(str(grid), int(year), export_dir, None, str(error))
        return
    try:
        geometry = parse_mixer(mixer_path, grid, year)
    except ExportError as error:
        yield DeadLetter(str(grid), int(year), mixer_path, None, str(error))
        return
    if kernel is not None and (kernel < 0 or kernel % 2):
        raise ValueError(f"kernel must be even and >= 0, got {kernel}")
    reader = _Reader(geometry, bands, tuple(nodata_values), kernel, fill_value)
    total = geometry.total_patches
    if not shards:
        yield DeadLetter(geometry.grid, geometry.year, export_dir, None, f"{export_dir}: no TFRecord shards beside {posixpath.basename(mixer_path)}",
                         incomplete=True)

    def emit(data_or_bad, index: int, path: str) -> Iterator[ReadEvent]:
        source = f"{path} record {index}"
        if isinstance(data_or_bad, CorruptRecord):
            yield DeadLetter(geometry.grid, geometry.year, path, index, data_or_bad.reason)
            return
        reader.frame_lengths.add(len(data_or_bad))
        if index >= total:
            yield DeadLetter(geometry.grid, geometry.year, path, index, f"{source}: beyond the mixer's totalPatches {total}")
            return
        try:
            yield reader.patch(data_or_bad, index, source)
        except RecordError as error:
            yield DeadLetter(geometry.grid, geometry.year, path, index, str(error))

    numbers = [shard_number(p) for p in shards]
    gap_at = next((i for i, n in enumerate(numbers) if n is not None and n != i), len(shards))
    if len(shards) > 1:
        reader.vote_kernel(shards)
    index: int | None = 0  # None once a broken shard's record count is unknown
    blocked_by = ""
    for i, path in enumerate(shards[:gap_at]):
        if index is None:
            count, err = _count_frames(path)
            yield DeadLetter(
                geometry.grid, geometry.year, path, None,
                f"{path}: {count} record(s) not read: their patch positions are unknown after broken shard "
                f"{posixpath.basename(blocked_by)}" + (f"; also {err}" if err else ""),
            )
            continue
        start = index
        try:
            for item in read_shard(path):
                yield from emit(item, index, path)
                index += 1
        except ShardError as error:
            kept = error.records_read
            length = next(iter(reader.frame_lengths)) if len(reader.frame_lengths) == 1 else None
            if length is None and not reader.frame_lengths:
                length = _first_record_length(shards[i + 1 : gap_at])
            count = recover_record_count(path, length, kept) if length is not None else None
            if count is None:
                index, blocked_by = None, path
                fate = "the rest of this shard is lost and its record count cannot be recovered"
            else:
                index = start + count
                lost = count - kept
                fate = (f"patches {start + kept}-{start + count - 1} are lost" if lost else "no record is lost")
            yield DeadLetter(
                geometry.grid, geometry.year, path, None,
                f"{error}; {kept} record(s) before the break kept, {fate}",
            )
    if gap_at < len(shards):
        number = numbers[gap_at]
        gap = f"{gap_at:05d}" + (f"-{number - 1:05d}" if number - 1 > gap_at else "")
        yield DeadLetter(
            geometry.grid, geometry.year, export_dir, None,
            f"{export_dir}: shard(s) {gap} missing (found {', '.join(posixpath.basename(p) for p in shards)}); "
            f"records from {posixpath.basename(shards[gap_at])} on cannot be placed (the mixer says totalPatches {total})",
            incomplete=True,
        )
        for later in shards[gap_at:]:
            count, err = _count_frames(later)
            reader.learn_kernel(later)
            yield DeadLetter(
                geometry.grid, geometry.year, later, None,
                f"{later}: {count} record(s) not read: their patch positions are unknown because shard(s) {gap} "
                f"are missing" + (f"; also {err}" if err else ""),
                incomplete=not err,
            )
    elif shards and index is not None and index != total:
        yield DeadLetter(
            geometry.grid, geometry.year, mixer_path, None,
            f"{export_dir}: {index} record(s) in {len(shards)} shard(s) but the mixer says totalPatches {total}",
            incomplete=index < total,
        )
    yield geometry.with_kernel(reader.kernel if reader.kernel is not None else 0)


def read_export_patches(
    exports_root: str,
    grid: str,
    year: int,
    bands: Sequence[str],
    nodata_values: Sequence[float] = DEFAULT_NODATA,
    *,
    kernel: int | None = None,
) -> tuple[ExportGeometry, list[ExportPatch]]:
    """(geometry, patches in index order) of `{exports_root}/{grid}/{year}`, for scripts and benchmarks.

    Strict, unlike the pipeline: a missing export or any dead letter is an ExportError with its reason.
    """
    export_dir = export_dir_of(exports_root, grid, year)
    geometry, patches = None, []
    for event in read_export(export_dir, grid, year, bands, nodata_values, kernel=kernel):
        if isinstance(event, ExportPatch):
            patches.append(event)
        elif isinstance(event, ExportGeometry):
            geometry = event
        elif isinstance(event, MissingExport):
            raise MissingExportError(event.reason)
        else:
            raise ExportError(event.reason)
    return geometry, patches
