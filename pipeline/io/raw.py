"""Raw inference results: per (grid, year), the probability before any filter, kept so that a yearly update
infers only what is new (issue 14).

`{output}/raw/{grid}/{grid}_{year}.tif` is a one-band uint8 COG: the probability p × 255 (rounded, capped at
254) with 255 where the pixel was not observed, so the band is both the probability and the not-observed
mask. uint8 suffices because the classes are computed from that stored value in every run
(`pipeline.method.tiles.classes_at_threshold`), whether it inferred the grid-year or re-used it
(`pipeline.method.tiles.patches_of_probability` turns a raw result back into classified patches).

Each file is tagged with its fingerprint: a hash of what made the probability — the serving model's files
(weights and preprocessing), the band preset and no-data values, the export's identity (every file's name,
size and modification time, which changes with a new Cloud Storage generation) and the inference
precision. Threshold and filter parameters are not part of it: they act after the raw result. The file
also carries its geometry (so a re-use needs no export) and a hash of its pixels (so a truncated or
altered file is refused rather than trusted).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.contract import NOT_OBSERVED
from pipeline.elements import ClassifiedPatch, ExportGeometry
from pipeline.io.export_layout import export_dir_of
from pipeline.io.filesystem import basename, exists, join, match_identity, open_read, read_bytes, write_atomically

RAW_FOLDER = "raw"
RAW_FORMAT = "mining-mapper.raw/1"
FORMAT_TAG = "raw_format"
FINGERPRINT_TAG = "raw_fingerprint"
PIXELS_TAG = "raw_pixels_sha256"
GEOMETRY_TAG = "raw_geometry"
BAND = "probability_x255"
NO_REUSE = ("off", "none", "false", "no")
"""`--reuse_raw` values that turn re-use off."""


class RawMismatch(Exception):
    """A raw result that cannot be trusted for this run; the message says why (recorded in the summary)."""


def raw_root(output: str) -> str:
    """The raw results' folder of an output: `{output}/raw`."""
    return join(output, RAW_FOLDER)


def raw_path(root: str, grid: str, year: int) -> str:
    """Where the raw result of a (grid, year) lies under a raw folder: `{root}/{grid}/{grid}_{year}.tif`."""
    return join(root, str(grid), f"{grid}_{year}.tif")


def model_digest(path: str) -> str:
    """SHA-256 over a serving model's files: a `.keras`/`.h5` file, or every file under a model folder
    (weights, the tf.Transform preprocessing, the model card) with its relative name, in name order."""
    files = match_identity(join(path, "**")) if not str(path).endswith((".keras", ".h5")) else []
    if not files:
        files = match_identity(path)
    digest = hashlib.sha256()
    prefix = str(path).rstrip("/") + "/"
    for name, _, _ in files:
        digest.update((name[len(prefix):] if name.startswith(prefix) else basename(name)).encode() + b"\0")
        with open_read(name) as handle:
            for chunk in iter(lambda: handle.read(8 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def export_identity(exports_root: str, grid: str, year: int) -> list[tuple[str, int, float]]:
    """(name, size, modification time) of every file of a (grid, year) export: mixer and shards."""
    folder = export_dir_of(exports_root, grid, year)
    return [(basename(path), size, mtime) for path, size, mtime in match_identity(join(folder, "*"))]


def fingerprint(model: str, band_preset: str, bands: Sequence[str], nodata: Sequence[float],
                identity: Iterable[tuple[str, int, float]], precision: str) -> str:
    """The fingerprint of a raw result: SHA-256 of what made it (model digest, preset and its bands, export
    no-data values, export identity, inference precision), as `sha256:` and 64 hex digits."""
    made_of = {
        "model": model,
        "band_preset": band_preset,
        "bands": list(bands),
        "export_nodata": [float(v) for v in nodata],
        "export": [[name, int(size), float(mtime)] for name, size, mtime in identity],
        "inference_precision": precision,
    }
    return "sha256:" + hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()


def _geometry_record(geometry: ExportGeometry) -> dict:
    return {"crs": geometry.crs, "transform": list(geometry.transform), "patch_size": geometry.patch_size,
            "patches_per_row": geometry.patches_per_row, "total_patches": geometry.total_patches, "kernel": geometry.kernel}


def assemble_raw(geometry: ExportGeometry, patches: Iterable[ClassifiedPatch]) -> np.ndarray:
    """The (height, width) uint8 probability raster of a grid-year from its classified patches (255 elsewhere)."""
    raster = np.full((geometry.height, geometry.width), NOT_OBSERVED, dtype=np.uint8)
    size = geometry.patch_size
    for patch in patches:
        row, col = geometry.patch_position(patch.index)
        raster[row * size:(row + 1) * size, col * size:(col + 1) * size] = patch.probability
    return raster


def encode_raw(geometry: ExportGeometry, probability: np.ndarray, fingerprint_: str) -> bytes:
    """The raw result's COG bytes: the probability band tagged with the fingerprint, geometry and pixel hash."""
    from affine import Affine

    from pipeline.io.cog import encode_cog

    probability = np.ascontiguousarray(probability, dtype=np.uint8)
    tags = {
        FORMAT_TAG: RAW_FORMAT,
        FINGERPRINT_TAG: fingerprint_,
        PIXELS_TAG: hashlib.sha256(probability.tobytes()).hexdigest(),
        GEOMETRY_TAG: json.dumps(_geometry_record(geometry)),
        "grid": geometry.grid,
        "year": str(geometry.year),
    }
    return encode_cog([probability], geometry.crs, Affine(*geometry.transform[:6]), tags, [BAND])


def decode_raw(data: bytes, source: str, grid: str, year: int, expected: str) -> tuple[ExportGeometry, np.ndarray]:
    """(geometry, probability) of a raw result's bytes; RawMismatch saying why when it is not the raw result
    of this (grid, year) with fingerprint `expected`, or is truncated or altered."""
    import rasterio
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(data) as memory, memory.open() as dataset:
            tags = dataset.tags()
            if tags.get(FORMAT_TAG) != RAW_FORMAT:
                raise RawMismatch(f"{source}: not a raw result of format {RAW_FORMAT}")
            if (tags.get("grid"), tags.get("year")) != (str(grid), str(year)):
                raise RawMismatch(f"{source}: holds grid {tags.get('grid')} year {tags.get('year')}, not {grid} {year}")
            if tags.get(FINGERPRINT_TAG) != expected:
                raise RawMismatch(f"{source}: fingerprint differs (model, band preset, export or inference precision changed)")
            record = json.loads(tags[GEOMETRY_TAG])
            probability = dataset.read(1)
    except RawMismatch:
        raise
    except (rasterio.errors.RasterioError, KeyError, ValueError, TypeError) as error:
        raise RawMismatch(f"{source}: unreadable, truncated or foreign ({error})") from None
    if hashlib.sha256(np.ascontiguousarray(probability).tobytes()).hexdigest() != tags.get(PIXELS_TAG):
        raise RawMismatch(f"{source}: pixels do not match their hash (truncated or altered)")
    geometry = ExportGeometry(str(grid), int(year), record["crs"], tuple(float(v) for v in record["transform"]),
                              int(record["patch_size"]), int(record["patches_per_row"]), int(record["total_patches"]),
                              int(record["kernel"]))
    if probability.shape != (geometry.height, geometry.width):
        raise RawMismatch(f"{source}: {probability.shape} pixels, its geometry says {(geometry.height, geometry.width)}")
    return geometry, probability


def find_raw(sources: Iterable[str | None], grid: str, year: int, expected: str,
             keep_in: str | None = None) -> tuple[tuple[ExportGeometry, np.ndarray] | None, str]:
    """The first of `sources` holding this grid-year's raw result with fingerprint `expected`:
    ((geometry, probability), "") — copied to `keep_in` when it lies elsewhere, so an output keeps its raw
    results — or (None, why none could be trusted: absent, truncated, foreign, another fingerprint)."""
    reason = "re-use turned off"
    for source in dict.fromkeys(s for s in sources if s):
        reason = f"no raw result at {source}"
        if not exists(source):
            continue
        try:
            data = read_bytes(source)
            decoded = decode_raw(data, source, grid, year, expected)
        except RawMismatch as mismatch:
            reason = str(mismatch)
            continue
        except Exception as error:  # noqa: BLE001 - an unreadable file is re-inferred, not fatal
            reason = f"{source}: cannot read ({error})"
            continue
        if keep_in and source != keep_in:
            write_atomically(keep_in, data)
        return decoded, ""
    return None, reason
