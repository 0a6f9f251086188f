"""A STAC Collection (pystac) describing output COGs: one Item per COG, band metadata other tools can read.

The Collection has the spatial extent (the union of the COGs' footprints), the temporal extent (first
1 January to last 31 December), a licence and summaries (products, grids, years, projections, filter
modes, thresholds and the classes). Each Item covers its calendar year (start/end datetime), carries grid,
year, product and the run's parameters as properties (numbers as JSON numbers), the projection extension
(`proj:code` when the CRS has an EPSG code, and always real WKT2, shape and transform) and one `data` asset
pointing at the COG with the raster extension's `raster:bands` (nodata, data type, scale 1/255 for the
probability band, offset 1900 for the gap-fill origin year) and, on the class band, the classification
extension's `classification:classes` (30 mining, 0 not mining, 255 not observed). Band meanings are read
from the COG itself (written by `pipeline.io.cog.describe_cog`), so the file and its STAC agree.

The collection is written self-contained into a folder; the caller publishes it (local or gs://).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Mapping, Sequence

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform_bounds

from pipeline.io import filesystem as fs
from pipeline.io import rasters as annual_rasters
from pipeline.io.cog import COG_MEDIA_TYPE, band_classes

CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
DEFAULT_LICENSE = "CC-BY-4.0"  # MapBiomas' licence for its maps; the method's outputs follow it
# Tags copied into each Item's properties (prefixed mining_mapper:), as JSON numbers when they are numbers.
RUN_TAGS = ("filter_mode", "model", "threshold", "band_preset", "spatial_filter", "software_version",
            "filter_min_component_size", "filter_window", "filter_backfill_limit", "filter_frequency_cut")


def product_of(tags: dict) -> str:
    """The product a COG holds, from its 'product' tag (classification when absent)."""
    return str(tags.get("product") or "classification")


def typed(value: object) -> object:
    """A tag's text as the JSON value it stands for: an int or a finite float when it is one, else the text.

    GeoTIFF tags are strings; STAC readers compare numbers, so '0.5' becomes 0.5 and '1010' 1010 ('0012'
    stays text, so that no identifier loses its leading zeros).
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        number = int(text)
        return number if str(number) == text else value
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def _number(value: float | None) -> int | float | None:
    """Nodata, scale and offset as JSON numbers: integral values as ints (255, not 255.0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value) if float(value).is_integer() else float(value)


def raster_bands(src) -> list[RasterBand]:
    """The raster extension's band objects of an open raster, with its classes on categorical bands."""
    bands = []
    for index in range(1, src.count + 1):
        scale, offset = src.scales[index - 1], src.offsets[index - 1]
        band = RasterBand.create(
            nodata=_number(src.nodata),
            data_type=DataType(src.dtypes[index - 1]),
            spatial_resolution=_number(abs(src.res[0])) if src.res[0] == src.res[1] else None,
            scale=_number(scale) if scale != 1 else None,
            offset=_number(offset) if offset != 0 else None,
        )
        description = src.descriptions[index - 1]
        if description:
            band.properties["description"] = description
        classes = band_classes(src.tags(index))
        if classes:
            band.properties["classification:classes"] = classes
        bands.append(band)
    return bands


def item_for(ref: annual_rasters.RasterRef, href: str) -> pystac.Item:
    """A STAC Item for one annual COG; `href` is where the asset will be linked from."""
    with annual_rasters.open_raster(ref.path) as src:
        if src.crs is None:
            from pipeline.errors import UserError

            raise UserError(f"{ref.path}: raster has no CRS; it cannot be placed in a STAC catalog")
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        epsg = src.crs.to_epsg()
        wkt2 = src.crs.to_wkt(version="WKT2_2019")
        shape = [src.height, src.width]
        transform = [float(v) for v in list(src.transform)[:6]]
        bands = raster_bands(src)
    product = product_of(ref.tags)
    stem = os.path.splitext(fs.basename(ref.path))[0]
    if ref.grid:
        item_id = f"{product}-{ref.grid}-{ref.year}"
    else:
        item_id = stem if stem.startswith(product) else f"{product}-{stem}"
    geometry = {
        "type": "Polygon",
        "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
    }
    start = dt.datetime(ref.year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(ref.year, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    properties: dict[str, object] = {"mining_mapper:year": ref.year, "mining_mapper:product": product}
    if ref.grid:
        properties["mining_mapper:grid"] = typed(ref.grid)
    for key in RUN_TAGS:
        if key in ref.tags:
            properties[f"mining_mapper:{key}"] = typed(ref.tags[key])
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=[west, south, east, north],
        datetime=None,
        start_datetime=start,
        end_datetime=end,
        properties=properties,
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.code = f"EPSG:{epsg}" if epsg else None
    projection.wkt2 = wkt2
    projection.shape = shape
    projection.transform = transform
    asset = pystac.Asset(href=href, media_type=COG_MEDIA_TYPE, roles=["data"], title=f"{product} {ref.year}")
    item.add_asset("data", asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = bands
    if any("classification:classes" in b.properties for b in bands):
        item.stac_extensions.append(CLASSIFICATION_SCHEMA)
    return item


def _summaries(items: Sequence[pystac.Item]) -> dict:
    """Collection summaries: the distinct values of the Items' main properties, the year range, the classes."""
    def distinct(key: str) -> list:
        values = [i.properties[key] for i in items if key in i.properties]
        return sorted(set(values), key=lambda v: (str(type(v)), v))

    years = [i.properties["mining_mapper:year"] for i in items]
    summaries: dict[str, object] = {"mining_mapper:year": {"minimum": min(years), "maximum": max(years)}}
    for key in ("mining_mapper:product", "mining_mapper:grid", "mining_mapper:filter_mode",
                "mining_mapper:threshold", "proj:code"):
        values = [v for v in distinct(key) if v is not None]
        if values:
            summaries[key] = values
    classes: list[dict] = []
    for item in items:
        for band in RasterExtension.ext(item.assets["data"]).bands or []:
            for entry in band.properties.get("classification:classes", []):
                if entry not in classes:
                    classes.append(entry)
    if classes:
        summaries["classification:classes"] = classes
    return summaries


def build_collection(
    refs: Sequence[annual_rasters.RasterRef],
    folder: str,
    title: str = "mining-mapper outputs",
    license: str = DEFAULT_LICENSE,
) -> dict[str, bytes]:
    """A self-contained STAC Collection of the COGs, as files (path → JSON bytes) to publish under `folder`.

    Links are relative (the collection moves with its folder); asset links are relative to the item
    when COG and collection share a filesystem, absolute (gs://…) otherwise.
    """
    if not refs:
        from pipeline.errors import UserError

        raise UserError(f"{folder}: no COG to describe in a STAC collection")
    items = []
    used: dict[str, int] = {}
    for ref in refs:
        href = ref.path if fs.is_remote(ref.path) else os.path.abspath(ref.path)
        item = item_for(ref, href)
        used[item.id] = used.get(item.id, 0) + 1
        if used[item.id] > 1:
            item.id = f"{item.id}-{used[item.id]}"
        items.append(item)
    boxes = [i.bbox for i in items]
    spatial = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    temporal = [min(i.common_metadata.start_datetime for i in items), max(i.common_metadata.end_datetime for i in items)]
    summaries = _summaries(items)
    extensions = [ProjectionExtension.get_schema_uri(), RasterExtension.get_schema_uri()]
    if "classification:classes" in summaries:
        extensions.append(CLASSIFICATION_SCHEMA)
    collection = pystac.Collection(
        id="mining-mapper",
        title=title,
        description=f"{title}: {len(refs)} annual COG(s) of the MapBiomas Collection 9 mining method (mining-mapper).",
        extent=pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent([temporal])),
        license=license,
        keywords=["mining", "land use", "Landsat", "MapBiomas"],
        summaries=pystac.Summaries(summaries),
        stac_extensions=extensions,
    )
    for item in items:
        collection.add_item(item)
    root = str(folder) if fs.is_remote(folder) else os.path.abspath(folder)
    collection.normalize_hrefs(root)
    collection.make_all_asset_hrefs_relative()
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    files = {collection.self_href: _json(collection.to_dict(include_self_link=False, transform_hrefs=True))}
    for item in collection.get_items(recursive=True):
        files[item.self_href] = _json(item.to_dict(include_self_link=False, transform_hrefs=True))
    return files


def _json(document: Mapping) -> bytes:
    return json.dumps(document, indent=2).encode()
