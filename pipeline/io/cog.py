"""Cloud-Optimized GeoTIFFs: the one definition of the outputs' format and band layout (DESIGN.md §2).

Every COG of the project has internal tiles, DEFLATE, NEAREST overviews (categories are never
averaged) and the software's tags. Two ways in, one format:
- `encode_cog`: whole uint8 arrays (a (grid, year) classification) straight through rasterio's COG
  driver into bytes, ready for `filesystem.publish_atomically`;
- `CogWriter`: any integer type (class_id codes reach 301, land-cover maps are often uint16) written
  window by window into a tiled temporary GeoTIFF that GDAL's COG driver copies into a COG, so memory
  stays bounded for outputs as large as their inputs.
`classification_bands` assembles the classification COG's bands (classes, probability, origin year)
for both `mining-mapper run` and `mining-mapper filter`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.windows import Window

from pipeline import __version__
from pipeline.contract import (
    MINING,
    NOT_MINING,
    OUTPUT_MINING,
    OUTPUT_NODATA,
    OUTPUT_NOT_MINING,
)

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
BLOCKSIZE = 256
COMPRESS = "DEFLATE"
OVERVIEW_RESAMPLING = "nearest"


# The output classification's classes (DESIGN.md §2): value, name (STAC classification's pattern: no spaces),
# title, RGBA. Mining in MapBiomas' legend colour for mining (#9C0027); not mining pale grey; not observed
# transparent (it is the nodata value).
MINING_CLASSES = (
    (30, "mining", "mining", (156, 0, 39, 255)),
    (0, "not_mining", "not mining", (236, 236, 236, 255)),
    (255, "not_observed", "not observed (no valid mosaic pixel)", (0, 0, 0, 0)),
)
NODATA_CLASS = 255
# Mining types (class_id hundreds), one colour each: the class_id COGs' classes and the report's charts.
MINING_TYPE_COLOURS = {"industrial": "#2c7fb8", "garimpo": "#e6a800", "unidentified": "#8c8c8c"}
CLASS_ID_NODATA = 65535


def class_id_classes() -> tuple:
    """The class_id COGs' classes from the project's class_id table (appendix Table 3): value, name, title, RGBA.

    0 is not mining and 65535 not observed (the classify-type encoding); a code's name is its type and
    substance (or group), e.g. 'garimpo-gold', as STAC's classification extension allows (no spaces).
    """
    import re

    from pipeline.io.tables import load_class_id_table

    def rgba(colour: str) -> tuple:
        return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) + (255,)

    classes = [(0, "not_mining", "not mining", (236, 236, 236, 255))]
    for entry in load_class_id_table().codes:
        kind = entry["type"] or "unidentified"
        what = entry["substance"] or entry["group"] or "other"
        name = re.sub(r"[^0-9A-Za-z-]+", "_", f"{kind}-{what}")
        title = f"{entry['code']} {entry['name']}" + ("" if kind in entry["name"] else f" ({kind})")
        classes.append((entry["code"], name, title, rgba(MINING_TYPE_COLOURS[kind])))
    classes.append((CLASS_ID_NODATA, "not_observed", "not observed", (0, 0, 0, 0)))
    return tuple(classes)


CLASSES_TAG = "classes"  # band tag: JSON list of class objects, as STAC's classification extension writes them


@dataclass(frozen=True)
class BandMeaning:
    """What a known band holds: a readable description, its scale/offset, and its classes when categorical."""

    description: str
    scale: float = 1.0
    offset: float = 0.0
    classes: tuple | Callable[[], tuple] = ()  # a function when the classes come from a table kept as data
    nodata_class: int = NODATA_CLASS


# Bands by their short name (the name the writers pass). Unknown names are written as given, unscaled.
KNOWN_BANDS = {
    "mining_classification": BandMeaning(
        "mining_classification: 30 mining, 0 not mining, 255 not observed", classes=MINING_CLASSES
    ),
    "probability_x255": BandMeaning("probability_x255: probability of mining = value / 255, 255 nodata", scale=1 / 255),
    "gapfill_origin_year": BandMeaning(
        "gapfill_origin_year: year a gap-filled value came from = value + 1900, 255 none", offset=1900.0
    ),
    # The description stays the bare name: pipeline.products.stats recognises class_id rasters by it.
    "class_id": BandMeaning("class_id", classes=class_id_classes, nodata_class=CLASS_ID_NODATA),
}


def describe_cog(dataset, names: Sequence[str], tags: Mapping[str, object]) -> None:
    """Write the project's metadata into an open, writable raster: the one place both COG writers use.

    Per band (by short name, see KNOWN_BANDS): a description saying what the values mean, scale and offset
    (probability 1/255, origin year +1900), and on a categorical band its class names and colours as a
    JSON band tag plus, when it is the file's only band and 8-bit, a colour table (a TIFF palette holds one
    band; a 16-bit one would hold 65,536 entries).
    Dataset tags: software, software_version and `tags` (values as text). Deterministic: same input, same bytes.
    """
    meanings = [KNOWN_BANDS.get(name) for name in names]
    for index, (name, meaning) in enumerate(zip(names, meanings), start=1):
        dataset.set_band_description(index, meaning.description if meaning else name)
        table = (meaning.classes() if callable(meaning.classes) else meaning.classes) if meaning else ()
        if table:
            classes = [
                {"value": value, "name": label, "title": title, "color_hint": "%02X%02X%02X" % rgba[:3],
                 **({"nodata": True} if value == meaning.nodata_class else {})}
                for value, label, title, rgba in table
            ]
            dataset.update_tags(index, **{CLASSES_TAG: json.dumps(classes)})
            if dataset.count == 1 and dataset.dtypes[0] == "uint8":
                dataset.write_colormap(index, {value: rgba for value, _, _, rgba in table})
    if any(meanings):
        dataset.scales = tuple(m.scale if m else 1.0 for m in meanings)
        dataset.offsets = tuple(m.offset if m else 0.0 for m in meanings)
    dataset.update_tags(**software_tags(tags))


def band_classes(tags: Mapping[str, str]) -> list[dict]:
    """The classes a band's tags declare (written by `describe_cog`), or [] for a non-categorical band."""
    text = tags.get(CLASSES_TAG)
    return json.loads(text) if text else []


def software_tags(tags: Mapping[str, object]) -> dict[str, str]:
    """The tags every COG carries: the software and its version, then the caller's (as strings)."""
    return {"software": "mining-mapper", "software_version": __version__, **{k: str(v) for k, v in tags.items()}}


def classes_to_output(classes: np.ndarray) -> np.ndarray:
    """Pipeline classes 0 / 1 / 255 → output values 0 / 30 / 255 (DESIGN.md §2)."""
    out = np.full(classes.shape, OUTPUT_NODATA, dtype=np.uint8)
    out[classes == NOT_MINING] = OUTPUT_NOT_MINING
    out[classes == MINING] = OUTPUT_MINING
    return out


def classification_bands(
    classes: np.ndarray, probability: np.ndarray | None = None, origin_years: np.ndarray | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """(bands, short names) of a classification COG: classes 30 / 0 / 255, then the optional probability
    (p × 255, 255 not observed) and gap-fill origin (year − 1900; 255 none). `describe_cog` writes what each
    name means (classes and colours, scale 1/255, offset 1900)."""
    bands, names = [classes_to_output(classes)], ["mining_classification"]
    if probability is not None:
        bands.append(probability)
        names.append("probability_x255")
    if origin_years is not None:
        bands.append(origin_years)
        names.append("gapfill_origin_year")
    return bands, names


def encode_cog(
    bands: Sequence[np.ndarray],
    crs,
    transform,
    tags: Mapping[str, str],
    descriptions: Sequence[str],
    blocksize: int = BLOCKSIZE,
    compress: str = COMPRESS,
) -> bytes:
    """A Cloud-Optimized GeoTIFF (uint8, nodata 255, NEAREST overviews) of whole bands, as bytes.

    rasterio's COG driver stages the pixels itself and builds the COG layout on close. `descriptions` are
    the bands' short names; `describe_cog` writes what they mean (classes and colours, scale, offset) and
    the tags.
    """
    with MemoryFile() as cog:
        with rasterio.open(
            cog.name,
            "w",
            driver="COG",
            dtype="uint8",
            count=len(bands),
            height=bands[0].shape[0],
            width=bands[0].shape[1],
            crs=crs,
            transform=transform,
            nodata=OUTPUT_NODATA,
            blocksize=blocksize,
            compress=compress,
            overview_resampling=OVERVIEW_RESAMPLING,
            resampling=OVERVIEW_RESAMPLING,
            bigtiff="IF_SAFER",
        ) as dst:
            for index, band in enumerate(bands, start=1):
                dst.write(band.astype(np.uint8, copy=False), index)
            describe_cog(dst, descriptions, tags)
        return cog.read()


class CogWriter:
    """Collects windows of a raster into a temporary tiled GeoTIFF and turns it into a local COG file.

    Use as a context manager; `finish()` returns the path of the COG (inside a temporary folder that
    is removed on exit), ready for `pipeline.io.filesystem.publish_atomically`.
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        dtype: str,
        crs,
        transform,
        nodata: float | None,
        tags: Mapping[str, object],
        descriptions: Sequence[str],
        blocksize: int = BLOCKSIZE,
        compress: str = COMPRESS,
        overview_resampling: str = OVERVIEW_RESAMPLING,
    ) -> None:
        self._folder = tempfile.mkdtemp(prefix="mining-mapper-cog-")
        self._staging = os.path.join(self._folder, "staging.tif")
        self._cog = os.path.join(self._folder, "cog.tif")
        self._options = {"blocksize": blocksize, "compress": compress, "overview_resampling": overview_resampling}
        self.count = len(descriptions)
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": self.count,
            "dtype": dtype,
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": blocksize,
            "blockysize": blocksize,
            "compress": "DEFLATE",
            "predictor": 1,
            "BIGTIFF": "IF_SAFER",
        }
        self._dataset = rasterio.open(self._staging, "w", **profile)
        describe_cog(self._dataset, descriptions, tags)

    def write(self, array: np.ndarray, window: Window, band: int | None = None) -> None:
        """Write a (rows, cols) array into one band (default: all bands for a (bands, rows, cols) array)."""
        if band is None and array.ndim == 2:
            band = 1
        if band is None:
            self._dataset.write(array.astype(self._dataset.dtypes[0], copy=False), window=window)
        else:
            self._dataset.write(array.astype(self._dataset.dtypes[band - 1], copy=False), band, window=window)

    def finish(self) -> str:
        """Close the staging file and copy it into a COG; returns the COG's local path."""
        self._dataset.close()
        rasterio.shutil.copy(
            self._staging,
            self._cog,
            driver="COG",
            BLOCKSIZE=str(self._options["blocksize"]),
            COMPRESS=self._options["compress"],
            OVERVIEW_RESAMPLING=self._options["overview_resampling"].upper(),
            BIGTIFF="IF_SAFER",
        )
        os.remove(self._staging)
        return self._cog

    def close(self) -> None:
        """Remove the temporary folder (the staging file and the COG)."""
        if not self._dataset.closed:
            self._dataset.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def row_windows(height: int, width: int, rows: int = 512) -> list[Window]:
    """Full-width windows of at most `rows` rows covering a raster top to bottom."""
    rows = max(1, int(rows))
    return [Window(0, top, width, min(rows, height - top)) for top in range(0, height, rows)]
