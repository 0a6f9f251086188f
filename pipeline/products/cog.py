"""Cloud-Optimized GeoTIFFs of any integer type, written window by window (bounded memory).

`pipeline.rasters.encode_cog` makes the uint8 classification COGs from whole arrays. The products need
other types (class_id codes reach 301, land-cover maps are often uint16) and outputs as large as their
inputs, so here the windows go into a tiled temporary GeoTIFF and GDAL's COG driver copies it into a
COG (internal tiles, DEFLATE, NEAREST overviews: categories are never averaged).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from pipeline import __version__

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


class CogWriter:
    """Collects windows of a raster into a temporary tiled GeoTIFF and turns it into a local COG file.

    Use as a context manager; `finish()` returns the path of the COG (inside a temporary folder that
    is removed on exit), ready for `pipeline.products.io.publish`.
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
        blocksize: int = 256,
        compress: str = "DEFLATE",
        overview_resampling: str = "nearest",
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
        self._dataset.update_tags(
            software="mining-mapper", software_version=__version__, **{k: str(v) for k, v in tags.items()}
        )

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
