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

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.windows import Window

from pipeline import __version__
from pipeline.contract import (
    MINING,
    NOT_MINING,
    ORIGIN_YEAR_OFFSET,
    OUTPUT_MINING,
    OUTPUT_NODATA,
    OUTPUT_NOT_MINING,
)

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
BLOCKSIZE = 256
COMPRESS = "DEFLATE"
OVERVIEW_RESAMPLING = "nearest"


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
) -> tuple[list[np.ndarray], list[str], list[float]]:
    """(bands, descriptions, offsets) of a classification COG: classes 30 / 0 / 255, then the optional
    probability (p × 255, 255 not observed) and gap-fill origin (year − 1900, offset 1900; 255 none)."""
    bands, descriptions, offsets = [classes_to_output(classes)], ["mining_classification"], [0.0]
    if probability is not None:
        bands.append(probability)
        descriptions.append("probability_x255")
        offsets.append(0.0)
    if origin_years is not None:
        bands.append(origin_years)
        descriptions.append("gapfill_origin_year")
        offsets.append(float(ORIGIN_YEAR_OFFSET))
    return bands, descriptions, offsets


def encode_cog(
    bands: Sequence[np.ndarray],
    crs,
    transform,
    tags: Mapping[str, str],
    descriptions: Sequence[str],
    offsets: Sequence[float] | None = None,
    blocksize: int = BLOCKSIZE,
    compress: str = COMPRESS,
) -> bytes:
    """A Cloud-Optimized GeoTIFF (uint8, nodata 255, NEAREST overviews) of whole bands, as bytes.

    rasterio's COG driver stages the pixels itself and builds the COG layout on close.
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
                dst.set_band_description(index, descriptions[index - 1])
            if offsets is not None:
                dst.offsets = tuple(offsets)
            dst.update_tags(**software_tags(tags))
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
        for index, text in enumerate(descriptions, start=1):
            self._dataset.set_band_description(index, text)
        self._dataset.update_tags(**software_tags(tags))

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

    def __enter__(self) -> "CogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def row_windows(height: int, width: int, rows: int = 512) -> list[Window]:
    """Full-width windows of at most `rows` rows covering a raster top to bottom."""
    rows = max(1, int(rows))
    return [Window(0, top, width, min(rows, height - top)) for top in range(0, height, rows)]


def smallest_uint(max_value: int) -> str:
    """The smallest unsigned integer dtype holding 0…max_value ('uint8', 'uint16' or 'uint32')."""
    for name in ("uint8", "uint16", "uint32"):
        if max_value <= np.iinfo(name).max:
            return name
    raise ValueError(f"{max_value} does not fit a 32-bit unsigned raster")
