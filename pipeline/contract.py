"""The data contracts of DESIGN.md §1.2 and §2, defined once for every layer (training, export, pipeline).

- Band presets: the ordered bands a model takes (the last axis of every input tensor, the features read
  from training TFRecords, the serving signature, the Earth Engine mosaics' band order).
- Export scaling: how Earth Engine stores the bands (reflectance × 255, index (x + 1) × 127, clamped
  to 0–255 and truncated to bytes), used by the sample generator and the synthetic training patches.
- What "observed" means for an exported pixel.
- The pipeline's pixel classes and the output COG's values and band layout.

This module is the bottom of the package: it imports nothing of the project but `pipeline.errors`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.errors import UserError

# --- Band presets (DESIGN §1.2) -------------------------------------------------------------------

BAND_PRESETS: dict[str, tuple[str, ...]] = {
    "appendix": ("swir1", "nir", "red", "mndwi", "ndvi", "ndsi"),
    "c9-code": ("swir1", "nir", "red", "green", "mndwi", "ndvi"),
}
DEFAULT_PRESET = "appendix"
LABEL_FEATURE = "label"
DEFAULT_PATCH_SIZE = 256

# Normalisations inside the transform graph: z-score from tf.Transform analyzers (default), or `c9-code`,
# the published notebooks' input: the stored byte values (0-255 as float), no normalisation (DESIGN §1.5).
NORMALIZATIONS = ("zscore", "c9-code")
DEFAULT_NORMALIZATION = "zscore"


def preset_bands(preset: str) -> tuple[str, ...]:
    """The ordered bands of a preset; a clear error naming the known presets for an unknown one."""
    try:
        return BAND_PRESETS[preset]
    except KeyError:
        raise UserError(f"unknown band preset {preset!r}: choose one of {', '.join(sorted(BAND_PRESETS))}") from None


def check_normalization(name: str) -> str:
    """Validate a normalisation name (zscore or c9-code) and return it."""
    if name not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {name!r}: choose one of {', '.join(NORMALIZATIONS)}")
    return name


# --- Export scaling (DESIGN §1.2: the published code's stored values) -----------------------------

REFLECTANCE_SCALE = 255.0
INDEX_OFFSET = 1.0
INDEX_SCALE = 127.0
EXPORT_MAX = 255.0
REFLECTANCE_BANDS = frozenset({"blue", "green", "red", "nir", "swir1", "swir2"})
INDEX_FORMULAS: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "mndwi": ("green", "swir1"),
    "ndsi": ("swir1", "nir"),
}
"""Normalized differences (a − b) / (a + b) by index name: (a, b) (DESIGN §1.2; NDSI is the soil index)."""
INDEX_BANDS = frozenset(INDEX_FORMULAS)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a − b) / (a + b), 0 where a + b = 0 (as the published expression, not `normalizedDifference`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a + b != 0, (a - b) / (a + b), 0.0)


def export_scaled(reflectance: Mapping[str, np.ndarray], bands: Sequence[str]) -> np.ndarray:
    """Bands (…, B) float32 as Earth Engine stores them, from reflectances by band name.

    Reflectance × 255, index (x + 1) × 127, clamped to 0–255 and truncated like `toByte()`.
    """
    out = []
    for band in bands:
        if band in INDEX_FORMULAS:
            a, b = INDEX_FORMULAS[band]
            value = (normalized_difference(reflectance[a], reflectance[b]) + INDEX_OFFSET) * INDEX_SCALE
        elif band in REFLECTANCE_BANDS:
            if band not in reflectance:
                raise UserError(f"no reflectance given for band {band!r} (have {', '.join(sorted(reflectance))})")
            value = reflectance[band] * REFLECTANCE_SCALE
        else:
            raise UserError(f"unknown band {band!r}: not a reflectance ({', '.join(sorted(REFLECTANCE_BANDS))}) "
                            f"nor an index ({', '.join(sorted(INDEX_BANDS))})")
        out.append(np.floor(np.clip(value, 0.0, EXPORT_MAX)))
    return np.stack(out, axis=-1).astype(np.float32)


# --- Observed pixels (DESIGN §2) ------------------------------------------------------------------

DEFAULT_NODATA: tuple[float, ...] = (-9999.0,)
"""Values read as 'not observed' besides NaN and a first band of 0 (Earth Engine's default fill)."""


STORED_RANGE: tuple[float, float] = (0.0, EXPORT_MAX)
"""The values a band of the presets (a reflectance or an index) can hold as exported (bytes, `export_scaled`)."""


def stored_range(band: str | None) -> tuple[float, float] | None:
    """The stored range of a preset band (`STORED_RANGE`); None for a band of no preset (e.g. phenology
    exports read by the generic reader), whose values are not ours to bound."""
    return STORED_RANGE if band in REFLECTANCE_BANDS or band in INDEX_BANDS else None


def outside_stored_range(values: np.ndarray, band: str | None, nodata_values: Sequence[float] = DEFAULT_NODATA) -> np.ndarray:
    """Where a preset band holds a finite value, not a no-data value, outside its stored range (e.g. 3e38).

    Such a pixel is not observed (`band_observed`) and is counted apart (the read's
    `out_of_range_pixels`), because it means a broken export rather than a cloud.
    """
    limits = stored_range(band)
    if limits is None:
        return np.zeros(np.shape(values), dtype=bool)
    bad = np.isfinite(values) & ((values < limits[0]) | (values > limits[1]))
    for value in nodata_values:
        bad &= values != np.float32(value)
    return bad


def band_observed(values: np.ndarray, *, first_band: bool, nodata_values: Sequence[float] = DEFAULT_NODATA,
                  band: str | None = None) -> np.ndarray:
    """Where one band allows a pixel to be observed: finite, not a no-data value, inside the stored range
    of a preset band (`stored_range`; `band` None or another band: no range), and not 0 in the first band."""
    ok = np.isfinite(values)
    limits = stored_range(band)
    if limits is not None:
        ok &= (values >= limits[0]) & (values <= limits[1])
    if first_band:
        ok &= values != 0
    for value in nodata_values:
        ok &= values != np.float32(value)
    return ok


def observed_pixels(array: np.ndarray, nodata_values: Sequence[float] = DEFAULT_NODATA) -> np.ndarray:
    """Where a (…, bands) stack holds a valid mosaic pixel (DESIGN §2).

    Not observed: any band NaN or infinite, any band equal to a no-data value, or the first band 0 (Earth
    Engine fills masked pixels with the export's default value, 0 unless set). Training and inference both
    mask with this one rule; the preset bands' stored range 0–255 (`STORED_RANGE`) is added on top by the
    reader (`band_observed`, `outside_stored_range`) and by training (`model.data.observed_mask`).
    """
    ok = np.ones(array.shape[:-1], dtype=bool)
    for i in range(array.shape[-1]):
        ok &= band_observed(array[..., i], first_band=i == 0, nodata_values=nodata_values)
    return ok


def core_pixels_cost(patch_size: int, kernel: int) -> dict[str, float]:
    """What an export geometry costs per core pixel: pixels inferred record-wise and bytes exported.

    Record-wise the model sees (P + K)² pixels per P² core; the export stores (P + K)² float32 values
    per band per P² core (before gzip). Per band; multiply the bytes by the band count.
    """
    ratio = (patch_size + kernel) ** 2 / patch_size**2
    return {"inferred_per_core_pixel": ratio, "bytes_per_core_pixel_per_band": 4 * ratio}


def crop_buffer(array: np.ndarray, kernel: int) -> np.ndarray:
    """The centre patch of a record: drop kernel // 2 pixels on each side of the first two axes (a view)."""
    if kernel < 0 or kernel % 2:
        raise ValueError(f"kernel must be even and >= 0, got {kernel}")
    half = kernel // 2
    if 2 * half >= min(array.shape[0], array.shape[1]):
        raise ValueError(f"kernel {kernel} leaves nothing of a {array.shape[0]}x{array.shape[1]} record")
    return array[half : array.shape[0] - half, half : array.shape[1] - half]


# --- Classes inside the pipeline and in the output COGs (DESIGN §2) ---------------------------------

NOT_MINING = 0
MINING = 1
NOT_OBSERVED = 255
NO_ORIGIN = 255

OUTPUT_MINING = 30
OUTPUT_NOT_MINING = 0
OUTPUT_NODATA = 255
ORIGIN_YEAR_OFFSET = 1900
PROBABILITY_MAX = 254
"""The probability band stores p × 255 capped at 254, so that 255 stays its no-data value."""


def origin_year_lookup(years: Sequence[int]) -> np.ndarray:
    """uint8[256]: gap-fill origin index → origin year − 1900 (255, none, for indices past the years)."""
    lookup = np.full(256, NO_ORIGIN, dtype=np.uint8)
    for index, year in enumerate(years):
        offset = year - ORIGIN_YEAR_OFFSET
        if not 0 <= offset < 255:
            raise ValueError(f"year {year} does not fit the origin band (1900–2154)")
        lookup[index] = offset
    return lookup


def origin_to_band(origin: np.ndarray, years: Sequence[int]) -> np.ndarray:
    """Gap-fill origin indices (255 = none) → a uint8 band of origin year − 1900 (255 = none)."""
    return origin_year_lookup(years)[origin]
