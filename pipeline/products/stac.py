"""A STAC catalog (pystac) describing output COGs: one Item per COG, with its footprint, year and projection.

Each Item covers its calendar year (start/end datetime), carries the grid, year and product
(classification, class_id, integrated) as properties, the projection extension (code when the CRS
has an EPSG code, WKT2 always, shape and transform) and one `data` asset pointing at the COG. The
catalog is written self-contained into a local folder; the caller publishes it (local or gs://).
"""
from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence

import pystac
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_bounds

from pipeline.io import filesystem as fs
from pipeline.io import rasters as annual_rasters
from pipeline.io.cog import COG_MEDIA_TYPE


def product_of(tags: dict) -> str:
    """The product a COG holds, from its 'product' tag (classification when absent)."""
    return str(tags.get("product") or "classification")


def item_for(ref: annual_rasters.RasterRef, href: str) -> pystac.Item:
    """A STAC Item for one annual COG; `href` is where the asset will be linked from."""
    with annual_rasters.open_raster(ref.path) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        epsg = src.crs.to_epsg() if src.crs else None
        wkt = src.crs.to_wkt() if src.crs else None
        shape = [src.height, src.width]
        transform = list(src.transform)[:6]
        descriptions = [d or f"band {i + 1}" for i, d in enumerate(src.descriptions)]
        dtype = src.dtypes[0]
        nodata = src.nodata
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
    start = dt.datetime(ref.year, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(ref.year, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    properties = {
        "mining_mapper:year": ref.year,
        "mining_mapper:product": product,
        "mining_mapper:bands": descriptions,
        "mining_mapper:dtype": dtype,
        "mining_mapper:nodata": nodata,
    }
    if ref.grid:
        properties["mining_mapper:grid"] = ref.grid
    for key in ("filter_mode", "model", "threshold", "software_version"):
        if key in ref.tags:
            properties[f"mining_mapper:{key}"] = ref.tags[key]
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
    projection.wkt2 = wkt
    projection.shape = shape
    projection.transform = transform
    item.add_asset("data", pystac.Asset(href=href, media_type=COG_MEDIA_TYPE, roles=["data"], title=f"{product} {ref.year}"))
    return item


def build_catalog(refs: Sequence[annual_rasters.RasterRef], folder: str, title: str = "mining-mapper outputs") -> dict[str, bytes]:
    """A self-contained catalog of the COGs, as files (path → JSON bytes) to publish under `folder`.

    Links are relative (the catalog moves with its folder); asset links are relative to the item
    when COG and catalog share a filesystem, absolute (gs://…) otherwise.
    """
    catalog = pystac.Catalog(id="mining-mapper", description=f"{title}: {len(refs)} COG(s)", title=title)
    used: dict[str, int] = {}
    for ref in refs:
        href = ref.path if fs.is_remote(ref.path) else os.path.abspath(ref.path)
        item = item_for(ref, href)
        used[item.id] = used.get(item.id, 0) + 1
        if used[item.id] > 1:
            item.id = f"{item.id}-{used[item.id]}"
        catalog.add_item(item)
    root = str(folder) if fs.is_remote(folder) else os.path.abspath(folder)
    catalog.normalize_hrefs(root)
    catalog.make_all_asset_hrefs_relative()
    catalog.catalog_type = pystac.CatalogType.SELF_CONTAINED
    files = {catalog.self_href: _json(catalog.to_dict(include_self_link=False, transform_hrefs=True))}
    for item in catalog.get_items(recursive=True):
        files[item.self_href] = _json(item.to_dict(include_self_link=False, transform_hrefs=True))
    return files


def _json(document: dict) -> bytes:
    return json.dumps(document, indent=2).encode()
