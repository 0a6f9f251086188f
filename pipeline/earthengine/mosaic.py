"""Annual Landsat mosaics in Earth Engine (DESIGN.md §1.1–1.2).

Landsat Collection 2 Tier 1 TOA; before 2014 Landsat 5 + 7 + 8, from 2014 Landsat 8 + 9. Pixels whose
QA_PIXEL has bit 1 (dilated cloud), 3 (cloud) or 4 (cloud shadow) set are masked. Bands are renamed blue,
green, red, nir, swir1, swir2; the indices are computed on every image (as the published C9 code does:
`collection.map(createIndexs)`) and the median of every image from 1 January to 31 December (end exclusive,
1 January of the next year) is taken per band. Stored scaling, as published: reflectance × 255,
index (x + 1) × 127, clamped to 0–255 and cast to bytes; bands in the preset's order (the model's input).

  NDVI  = (nir − red) / (nir + red)
  MNDWI = (green − swir1) / (green + swir1)
  NDSI  = (swir1 − nir) / (swir1 + nir)   (the soil/built-up index of the published code, not the snow index)

each computed as the published code does, with `image.expression` (the published strings, verbatim), not
`normalizedDifference`, which masks pixels where an input is negative.

Every function returns an `ee` object (a lazy graph); nothing here talks to the server.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from pipeline.contract import BAND_PRESETS, EXPORT_MAX, INDEX_OFFSET, INDEX_SCALE, REFLECTANCE_SCALE
from pipeline.errors import UserError

COLLECTIONS = {
    "L5": "LANDSAT/LT05/C02/T1_TOA",
    "L7": "LANDSAT/LE07/C02/T1_TOA",
    "L8": "LANDSAT/LC08/C02/T1_TOA",
    "L9": "LANDSAT/LC09/C02/T1_TOA",
}
# The sensor bands that become blue, green, red, nir, swir1, swir2 (Collection 2 names).
SENSOR_BANDS = {
    "L5": ("B1", "B2", "B3", "B4", "B5", "B7"),
    "L7": ("B1", "B2", "B3", "B4", "B5", "B7"),
    "L8": ("B2", "B3", "B4", "B5", "B6", "B7"),
    "L9": ("B2", "B3", "B4", "B5", "B6", "B7"),
}
REFLECTANCE_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
QA_BAND = "QA_PIXEL"
QA_MASK_BITS = (1, 3, 4)  # dilated cloud, cloud, cloud shadow
QA_MASK = sum(1 << bit for bit in QA_MASK_BITS)
# index name -> (expression, {variable: band}), verbatim from the published `createIndexs`
# (mapbiomas/brazil-mining Mapbiomas09/0-Mosaic.js @ 5a05cecc). An expression, not normalizedDifference:
# normalizedDifference masks pixels where an input is negative, the published expression does not.
INDICES = {
    "ndvi": ("(((banda4 - banda3)/(banda4 + banda3)))", {"banda4": "nir", "banda3": "red"}),
    "mndwi": ("((( banda2 - banda5) / (banda2 + banda5)))", {"banda2": "green", "banda5": "swir1"}),
    "ndsi": ("(((banda5 - banda4)/(banda4 + banda5)))", {"banda5": "swir1", "banda4": "nir"}),
}
PRESETS = BAND_PRESETS  # the model's input order is the one table of presets
FIRST_YEAR = 1985
SENSOR_SWITCH_YEAR = 2014


def preset_bands(preset: str) -> tuple[str, ...]:
    """The band names of a preset, in the model's input order; ValueError for an unknown preset."""
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown band preset {preset!r}; choose one of {', '.join(PRESETS)}") from None


def sensors_for_year(year: int) -> tuple[str, ...]:
    """The Landsat sensors merged for `year`: L5, L7, L8 before 2014; L8, L9 from 2014."""
    if int(year) != year or year < FIRST_YEAR:
        raise ValueError(f"year {year!r}: mosaics start in {FIRST_YEAR}")
    return ("L5", "L7", "L8") if year < SENSOR_SWITCH_YEAR else ("L8", "L9")


def last_year(today: datetime.date | None = None) -> int:
    """The last year a mosaic can be made for: the current UTC year (Landsat 8 and 9 are still acquiring).

    The running year's mosaic holds only the scenes acquired so far; later years hold no image at all.
    """
    today = today or datetime.datetime.now(datetime.UTC).date()
    return today.year


def check_years(years: Iterable[int], today: datetime.date | None = None) -> None:
    """Refuse years outside the collections the mosaics use (DESIGN.md §1.1), before any request is built.

    The span is FIRST_YEAR (the first full year of Landsat 5 in the merged collections, where the series
    starts) to `last_year(today)`; a year outside it would be an empty mosaic or, before FIRST_YEAR, no
    sensor at all.
    """
    first, last = FIRST_YEAR, last_year(today)
    outside = [year for year in years if not first <= year <= last]
    if outside:
        shown = ", ".join(str(y) for y in outside[:5]) + (" …" if len(outside) > 5 else "")
        raise UserError(
            f"--years: {shown} outside the Landsat collections the mosaics use ({first}-{last}: "
            f"{', '.join(COLLECTIONS.values())})"
        )


def year_dates(year: int) -> tuple[str, str]:
    """(start, end) dates of the calendar year, end exclusive: ('YYYY-01-01', 'YYYY+1-01-01')."""
    return f"{year:04d}-01-01", f"{year + 1:04d}-01-01"


def mask_clouds(image):
    """Mask pixels whose QA_PIXEL has bit 1, 3 or 4 set (one bitwiseAnd against 0b11010)."""
    import ee

    image = ee.Image(image)
    clear = image.select(QA_BAND).bitwiseAnd(QA_MASK).eq(0)
    return image.updateMask(clear)


def add_indices(image, names: Sequence[str] = tuple(INDICES)):
    """Add the named indices (ndvi, mndwi, ndsi) to an image with renamed bands, as the published code does.

    Each is the published `image.expression(...)` of (a − b) / (a + b), not `normalizedDifference`, which
    would mask every pixel where an input is negative (TOA reflectance can be, slightly) and so change the
    annual median.
    """
    import ee

    image = ee.Image(image)
    bands = []
    for name in names:
        expression, variables = INDICES[name]
        bands.append(image.expression(expression, {var: image.select(band) for var, band in variables.items()}).rename(name))
    return image.addBands(bands)


def prepare_image(sensor: str, indices: Sequence[str] = tuple(INDICES)):
    """The per-image step for one sensor: cloud mask, band renaming, indices (a function for `map`)."""
    import ee

    sensor_bands = list(SENSOR_BANDS[sensor])

    def prepare(image):
        image = mask_clouds(ee.Image(image))
        renamed = image.select(sensor_bands, list(REFLECTANCE_BANDS))
        return add_indices(renamed, indices)

    return prepare


def landsat_collection(year: int, region=None, indices: Sequence[str] = tuple(INDICES)):
    """Every Landsat TOA image of `year` (masked, renamed, with indices) from the sensors of that year."""
    import ee

    start, end = year_dates(year)
    merged = None
    for sensor in sensors_for_year(year):
        collection = ee.ImageCollection(COLLECTIONS[sensor]).filterDate(start, end)
        if region is not None:
            collection = collection.filterBounds(region)
        collection = collection.map(prepare_image(sensor, indices))
        merged = collection if merged is None else merged.merge(collection)
    return merged


def scale_to_bytes(image, bands: Sequence[str]):
    """Stored scaling: reflectance × 255, index (x + 1) × 127, each clamped to 0–255, cast to uint8."""
    import ee

    image = ee.Image(image)
    scaled = []
    for band in bands:
        if band in INDICES:
            value = image.select(band).add(INDEX_OFFSET).multiply(INDEX_SCALE)
        elif band in REFLECTANCE_BANDS:
            value = image.select(band).multiply(REFLECTANCE_SCALE)
        else:
            raise ValueError(f"band {band!r} is neither a reflectance band nor an index")
        scaled.append(value.clamp(0, EXPORT_MAX))
    return ee.Image.cat(scaled).toByte().rename(list(bands))


def annual_mosaic(year: int, preset: str = "appendix", region=None):
    """The calendar-year median mosaic of `year`, scaled to bytes, with the preset's bands in order."""
    import ee

    bands = preset_bands(preset)
    indices = [band for band in bands if band in INDICES]
    median = landsat_collection(year, region, indices).median()
    mosaic = scale_to_bytes(median, bands)
    return ee.Image(mosaic.set({"year": year, "preset": preset}))
