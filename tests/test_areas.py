"""True pixel areas (DESIGN.md §4) against independent geodesic computations."""
from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS, Geod, Transformer

from pipeline.method.areas import hectares, hectares_per_year, pixel_areas_m2

WGS84 = Geod(ellps="WGS84")


def geodesic_cell_area(lon0: float, lat0: float, lon1: float, lat1: float, geod: Geod = WGS84) -> float:
    """Area of a lon/lat rectangle on the ellipsoid, by pyproj's geodesic polygon area (a different method)."""
    lons = [lon0, lon1, lon1, lon0]
    lats = [lat0, lat0, lat1, lat1]
    area, _ = geod.polygon_area_perimeter(lons, lats)
    return abs(area)


@pytest.mark.parametrize("lat", [0.0, -10.0, 5.27, -33.7])
def test_geographic_rows_match_geodesic_area(lat):
    res = 0.00026949458523585647  # 30 m at the equator, as Earth Engine exports at scale 30
    transform = Affine(res, 0, -54.0, 0, -res, lat)
    areas = pixel_areas_m2(CRS.from_epsg(4326), transform, (4, 3))
    assert areas.shape == (4, 1)
    for row in range(4):
        top = lat - row * res
        expected = geodesic_cell_area(-54.0, top - res, -54.0 + res, top)
        assert areas[row, 0] == pytest.approx(expected, rel=1e-6)


def ellipsoid_band_area(lat0: float, lat1: float, dlon: float) -> float:
    """∫ M(φ)·N(φ)·cos φ dφ dλ on WGS84 by numerical quadrature (meridian × prime-vertical radii)."""
    from scipy.integrate import quad

    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)

    def integrand(phi):
        w = 1 - e2 * np.sin(phi) ** 2
        return a * (1 - e2) / w ** 1.5 * a / w ** 0.5 * np.cos(phi)

    value, _ = quad(integrand, np.radians(lat0), np.radians(lat1), epsabs=0, epsrel=1e-13)
    return value * np.radians(dlon)


@pytest.mark.parametrize("top", [1.0, -20.0, 60.0])
def test_one_degree_cells_match_the_integral_over_the_ellipsoid(top):
    transform = Affine(1.0, 0, 0.0, 0, -1.0, top)
    area = pixel_areas_m2(CRS.from_epsg(4326), transform, (1, 1))[0, 0]
    assert area == pytest.approx(ellipsoid_band_area(top - 1.0, top, 1.0), rel=1e-10)
    if top == 1.0:
        assert area / 1e6 == pytest.approx(12308.46, abs=0.01)  # km², not the 111.3² = 12,391 of a square


def test_projected_areas_follow_the_areal_scale_in_utm():
    crs = CRS.from_epsg(31976)  # SIRGAS 2000 / UTM 22N, the Lourenço rasters
    transform = Affine(30.0, 0, 409_830.0, 0, -30.0, 276_306.0)
    areas = pixel_areas_m2(crs, transform, (3, 3))
    assert areas.shape == (3, 3)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4674", always_xy=True)
    x0, y0 = transform.c + 30.0, transform.f - 30.0  # pixel (1, 1)'s top-left corner
    x1, y1 = x0 + 30.0, y0 - 30.0
    corners = [to_lonlat.transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    expected, _ = Geod(ellps="GRS80").polygon_area_perimeter([c[0] for c in corners], [c[1] for c in corners])
    assert areas[1, 1] == pytest.approx(abs(expected), rel=1e-5)
    assert areas[1, 1] > 900.0  # the UTM scale factor 0.9996 shrinks ground distances near the meridian


def test_equal_area_projection_gives_the_nominal_area():
    crs = CRS.from_proj4("+proj=aea +lat_1=-2 +lat_2=-22 +lat_0=-12 +lon_0=-54 +ellps=GRS80 +units=m")
    areas = pixel_areas_m2(crs, Affine(30, 0, 0, 0, -30, 0), (2, 2))
    assert np.allclose(areas, 900.0, rtol=1e-9)


def test_hectares_per_year_sums_true_areas():
    stack = np.zeros((2, 3, 2), dtype=np.uint8)
    stack[0, 0, :] = 1
    stack[1, 2, 1] = 1
    areas = np.array([[100.0], [200.0], [300.0]])
    assert hectares_per_year(stack, 1, areas).tolist() == pytest.approx([0.02, 0.03])
    full = np.repeat(areas, 2, axis=1)
    assert hectares_per_year(stack, 1, full).tolist() == pytest.approx([0.02, 0.03])
    assert hectares(stack[0] == 1, areas) == pytest.approx(0.02)
