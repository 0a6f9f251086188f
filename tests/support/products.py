"""Helpers shared by the tests of `pipeline.products` (issue 8): small rasters and running the CLI."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pipeline.cli import main


def write_raster(path, array: np.ndarray, crs="EPSG:4326", transform=None, nodata=None, tags=None, descriptions=None) -> Path:
    """A small GeoTIFF (one band, or several for a 3-D array) for tests."""
    array = np.asarray(array)
    bands = array[None] if array.ndim == 2 else array
    transform = transform or Affine(0.01, 0, -50.0, 0, -0.01, 0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
        dtype=bands.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:
        dst.write(bands)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run `mining-mapper ARGV…` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def read(path, band: int = 1) -> np.ndarray:
    """Band `band` of a raster."""
    with rasterio.open(path) as src:
        return src.read(band)
