"""Small synthetic Earth Engine exports: records whose values say which patch they are, mixers, shards.

Used by tests/test_exports.py (the reader) and tests/test_read_transform.py (the Beam transform).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from pipeline.io.example import encode_example
from pipeline.io.tfrecord import frame_record

SERVIR_BANDS = ("red_before", "green_before", "blue_before", "nir_before",
                "red_during", "green_during", "blue_during", "nir_during")
PHEN_BANDS = ("constant", "sin_1", "cos_1", "sin_2", "cos_2")
BANDS = ("swir1", "nir", "red")


def record_values(index: int, side: int, nbands: int) -> np.ndarray:
    """(side, side, nbands): band b of patch i holds 10 * (i + 1) + b; pixel (0, 0) of band 0 is 0 (masked)."""
    values = np.empty((side, side, nbands), dtype=np.float32)
    for b in range(nbands):
        values[..., b] = 10 * (index + 1) + b
    values[0, 0, 0] = 0.0
    return values


def record_bytes(index: int, side: int, bands=BANDS) -> bytes:
    """A serialized Example of `record_values`."""
    values = record_values(index, side, len(bands))
    return encode_example({band: values[..., b] for b, band in enumerate(bands)})


def mixer_bytes(patch: int, per_row: int, total: int) -> bytes:
    """An Earth Engine mixer for a toy grid: 1-unit pixels, top-left (100, 50)."""
    return json.dumps({
        "projection": {"crs": "EPSG:4326", "affine": {"doubleMatrix": [1.0, 0.0, 100.0, 0.0, -1.0, 50.0]}},
        "patchDimensions": [patch, patch], "patchesPerRow": per_row, "totalPatches": total,
    }).encode()


def shard_bytes(records, gz: bool = True) -> bytes:
    """TFRecord file content of the records (gzipped like Earth Engine when `gz`)."""
    raw = b"".join(frame_record(r) for r in records)
    return gzip.compress(raw, mtime=0) if gz else raw


def write_export(folder: Path, n: int, *, patch: int = 8, kernel: int = 4, per_row: int = 2, per_shard: int = 2,
                 total: int | None = None, gz: bool = True, prefix: str = "g_2000", records=None) -> list[Path]:
    """An export of n records in shards of `per_shard`; returns the shard paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    side = patch + kernel
    records = records if records is not None else [record_bytes(i, side) for i in range(n)]
    (folder / f"{prefix}-mixer.json").write_bytes(mixer_bytes(patch, per_row, total if total is not None else n))
    paths = []
    for s, start in enumerate(range(0, len(records), per_shard)):
        path = folder / f"{prefix}-{s:05d}.tfrecord{'.gz' if gz else ''}"
        path.write_bytes(shard_bytes(records[start : start + per_shard], gz))
        paths.append(path)
    return paths
