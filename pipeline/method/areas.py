"""True pixel areas (DESIGN.md §4): mining hectares must not assume 30 m × 30 m pixels.

- Geographic CRS (e.g. the EPSG:4326 of Earth Engine exports): the exact area of each row's
  latitude-longitude cell on the CRS's ellipsoid (it shrinks with the cosine of latitude).
- Projected CRS: the nominal cell area divided by the projection's areal scale factor at each pixel
  centre (1 for an equal-area projection, about 0.9992–1.0010 across a UTM zone).
"""
from __future__ import annotations

import math

import numpy as np
from affine import Affine
from pyproj import CRS, Proj, Transformer
from rasterio.windows import Window

SQUARE_METRES_PER_HECTARE = 10_000.0


def _authalic_q(phi: np.ndarray, e: float) -> np.ndarray:
    """q(φ) of the authalic latitude: the ellipsoidal area between the equator and φ is b²·Δλ·q/2."""
    s = np.sin(phi)
    if e == 0.0:
        return 2.0 * s
    es = e * s
    return s / (1.0 - es * es) + np.log((1.0 + es) / (1.0 - es)) / (2.0 * e)


def geographic_row_areas_m2(transform: Affine, rows: int, crs: CRS, row_offset: int = 0) -> np.ndarray:
    """Area (m²) of one pixel in each row of a north-up geographic raster, exact on the CRS's ellipsoid."""
    if transform.b != 0 or transform.d != 0:
        raise ValueError("a rotated geographic grid has no per-row pixel area; reproject it north-up first")
    ellipsoid = crs.ellipsoid
    a = ellipsoid.semi_major_metre
    b = ellipsoid.semi_minor_metre
    e = math.sqrt(max(0.0, 1.0 - (b * b) / (a * a)))
    edges = transform.f + transform.e * (np.arange(rows + 1, dtype=np.float64) + row_offset)
    phi = np.radians(np.clip(edges, -90.0, 90.0))
    q = _authalic_q(phi, e)
    dlon = math.radians(abs(transform.a))
    return np.abs(q[1:] - q[:-1]) * (b * b) * dlon / 2.0


def pixel_areas_m2(crs, transform: Affine, shape: tuple[int, int], window: Window | None = None) -> np.ndarray:
    """True area (m²) of each pixel of a raster, or of a window of it, broadcastable to (rows, cols).

    For a geographic CRS the result is (rows, 1), one value per row; for a projected CRS it is
    (rows, cols). `crs` may be a rasterio or pyproj CRS or anything pyproj accepts.
    """
    crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    rows, cols = shape
    row_off, col_off = 0, 0
    if window is not None:
        row_off, col_off = int(window.row_off), int(window.col_off)
        rows, cols = int(window.height), int(window.width)
    if crs.is_geographic:
        return geographic_row_areas_m2(transform, rows, crs, row_offset=row_off)[:, None]
    if not crs.is_projected:
        raise ValueError(f"cannot compute pixel areas in CRS {crs.name!r}: neither geographic nor projected")
    nominal = abs(transform.a * transform.e - transform.b * transform.d)
    nominal *= crs.axis_info[0].unit_conversion_factor ** 2
    cc, rr = np.meshgrid(np.arange(cols) + col_off + 0.5, np.arange(rows) + row_off + 0.5)
    x = transform.c + transform.a * cc.ravel() + transform.b * rr.ravel()
    y = transform.f + transform.d * cc.ravel() + transform.e * rr.ravel()
    to_geographic = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    lon, lat = to_geographic.transform(x, y)
    factors = Proj(crs).get_factors(lon, lat)
    return (nominal / np.asarray(factors.areal_scale)).reshape(rows, cols)


def hectares(mask: np.ndarray, areas_m2: np.ndarray) -> float:
    """Total area in hectares of the True pixels of `mask` (rows, cols), given `pixel_areas_m2`."""
    return float(np.sum(mask * areas_m2, dtype=np.float64) / SQUARE_METRES_PER_HECTARE)


def hectares_per_year(stack: np.ndarray, value: int, areas_m2: np.ndarray) -> np.ndarray:
    """Hectares of pixels equal to `value` in each year of a (years, rows, cols) stack."""
    if areas_m2.shape[1] == 1:
        # One area per row: count per row, then one dot product per year.
        row_areas = areas_m2[:, 0]
        return np.array(
            [np.count_nonzero(stack[t] == value, axis=1) @ row_areas for t in range(stack.shape[0])]
        ) / SQUARE_METRES_PER_HECTARE
    return np.array([hectares(stack[t] == value, areas_m2) for t in range(stack.shape[0])])
