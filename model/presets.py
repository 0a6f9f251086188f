"""Band presets, the Earth Engine export scaling and the names shared by training and serving (DESIGN §1.2).

A preset is the ordered list of bands the model takes: the order of the last axis of every input tensor,
of the features read from training TFRecords and of the serving signature.
"""
from __future__ import annotations

from pipeline.errors import UserError

BAND_PRESETS: dict[str, tuple[str, ...]] = {
    "appendix": ("swir1", "nir", "red", "mndwi", "ndvi", "ndsi"),
    "c9-code": ("swir1", "nir", "red", "green", "mndwi", "ndvi"),
}
DEFAULT_PRESET = "appendix"

LABEL_FEATURE = "label"

# How Earth Engine stores the bands (published code): reflectance x 255, index (x + 1) x 127, clamped to 0-255.
REFLECTANCE_SCALE = 255.0
INDEX_OFFSET = 1.0
INDEX_SCALE = 127.0
EXPORT_MAX = 255.0
INDEX_BANDS = frozenset({"ndvi", "mndwi", "ndsi"})
REFLECTANCE_BANDS = frozenset({"blue", "green", "red", "nir", "swir1", "swir2"})

# Normalisations inside the transform graph: z-score from tf.Transform analyzers (default), or `c9-code`,
# the published notebooks' input: the stored byte values (0-255 as float), no normalisation (DESIGN §1.5).
NORMALIZATIONS = ("zscore", "c9-code")
DEFAULT_NORMALIZATION = "zscore"

DEFAULT_PATCH_SIZE = 256


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
