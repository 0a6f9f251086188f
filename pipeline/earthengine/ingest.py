"""Register the classification COGs as images of an Earth Engine ImageCollection (DESIGN.md §1.7, §2).

Each (grid, year) Cloud-Optimized GeoTIFF in Cloud Storage becomes one image asset
`{collection}/mining_{grid}_{year}` through `ee.data.startIngestion` with a manifest: the COG as the only
tileset, named bands, pyramiding MODE (classes are never averaged), missing data 255 (never observed),
properties grid / year / model / threshold / filter_mode / version, and the calendar year as start/end time.

Existing assets are skipped unless `overwrite`; every call is retried with exponential backoff on HTTP 429 and
5xx only (the same request id each time, so a retried ingestion is not duplicated); `write_dry_run` writes the
manifests instead of sending them.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.earthengine.retry import Backoff, RateLimiter, call_with_backoff
from pipeline.errors import UserError

log = logging.getLogger(__name__)

PROPERTY_KEYS = ("grid", "year", "model", "threshold", "filter_mode", "version")
_LAYOUT = re.compile(r"/(?P<grid>\d{1,4})/(?P<year>\d{4})/[^/]+$")
_NAME = re.compile(r"(?:^|[^0-9])(?P<grid>\d{1,4})[_-](?P<year>\d{4})(?=[^0-9]|$)")
# A Cloud asset name: a Cloud project id (6-30 characters: a lowercase letter, then lowercase letters, digits
# or hyphens, not ending in a hyphen; optionally behind a 'domain:' prefix), then path segments of letters,
# digits, '_' and '-' (Earth Engine's rule for asset ids).
_ASSET_NAME = re.compile(
    r"projects/(?:[a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]/assets/[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*"
)


def collection_name(collection: str) -> str:
    """The Cloud API name (projects/P/assets/…) of an ImageCollection id; user assets only."""
    from ee import _cloud_api_utils

    if not collection or collection.endswith("/"):
        raise UserError(f"--collection {collection!r}: give the ImageCollection asset id, projects/P/assets/PATH")
    name = _cloud_api_utils.convert_asset_id_to_asset_name(collection)
    if name.startswith("projects/earthengine-public/"):
        raise UserError(f"--collection {collection!r}: not a user asset; use projects/P/assets/PATH")
    if not _ASSET_NAME.fullmatch(name) or (collection.startswith("projects/") and name != collection):
        raise UserError(
            f"--collection {collection!r}: not a valid asset id (projects/PROJECT/assets/PATH: a Cloud project id, "
            "then folders and a name of letters, digits, '_' and '-')"
        )
    return name


def parse_grid_year(uri: str) -> tuple[int, int]:
    """(grid, year) of a COG from the `.../{grid}/{year}/file.tif` layout or a `{grid}_{year}` file name."""
    match = _LAYOUT.search(uri)
    if match is None:
        match = _NAME.search(uri.rsplit("/", 1)[-1])
    if match is None:
        raise UserError(f"{uri}: cannot tell grid and year (expected .../GRID/YEAR/NAME.tif or GRID_YEAR in the name)")
    grid, year = int(match["grid"]), int(match["year"])
    if not (1 <= grid <= 51 * 51) or not (1984 <= year <= 2100):
        raise UserError(f"{uri}: grid {grid} / year {year} out of range")
    return grid, year


@dataclass(frozen=True)
class IngestOptions:
    """Destination collection and the metadata every image carries."""

    collection: str
    model: str | None = None
    threshold: float | None = None
    filter_mode: str | None = None
    version: str | None = None
    bands: tuple[str, ...] = ("classification",)
    missing_data: int = 255
    pyramiding: str = "MODE"


@dataclass(frozen=True)
class CogItem:
    """One COG to ingest, with its properties (grid, year, model, threshold, filter_mode, version)."""

    uri: str
    properties: dict = field(hash=False)

    @property
    def grid(self) -> int:
        """The grid cell id."""
        return int(self.properties["grid"])

    @property
    def year(self) -> int:
        """The calendar year."""
        return int(self.properties["year"])


def _normal_key(key: str) -> str:
    """'Filter-Mode' → 'filter_mode': the form tag keys are compared in."""
    return re.sub(r"[\s\-]+", "_", key.strip()).lower()


def read_cog_tags(uri: str) -> dict[str, str]:
    """The dataset tags of a GeoTIFF (local path or gs:// through GDAL's /vsigs/), keys normalised."""
    import rasterio

    path = "/vsigs/" + uri[len("gs://") :] if uri.startswith("gs://") else uri
    try:
        with rasterio.open(path) as dataset:
            tags = dataset.tags()
    except rasterio.errors.RasterioIOError as error:
        raise UserError(f"{uri}: cannot read the GeoTIFF tags: {error}") from error
    return {_normal_key(key): value for key, value in tags.items()}


def _coerce(key: str, value: Any, uri: str) -> Any:
    """The property's value in its type (grid, year int; threshold float; the rest str)."""
    try:
        if key in ("grid", "year"):
            return int(value)
        if key == "threshold":
            return float(value)
    except (TypeError, ValueError) as error:
        raise UserError(f"{uri}: {key}={value!r} is not a number") from error
    return str(value)


def make_item(uri: str, options: IngestOptions, tags: dict[str, str] | None = None) -> CogItem:
    """Gather one COG's properties from its path, the tags (when read) and the options; conflicts are errors."""
    grid, year = parse_grid_year(uri)
    given = {"grid": grid, "year": year, "model": options.model, "threshold": options.threshold,
             "filter_mode": options.filter_mode, "version": options.version}
    properties = {}
    for key in PROPERTY_KEYS:
        value = given[key]
        if tags and key in tags:
            tagged = _coerce(key, tags[key], uri)
            if value is not None and _coerce(key, value, uri) != tagged:
                raise UserError(f"{uri}: tag {key}={tags[key]!r} disagrees with {value!r}")
            value = tagged
        if value is None:
            flag = "--software-version" if key == "version" else "--" + key.replace("_", "-")
            raise UserError(f"{uri}: no {key} (not in the tags; give {flag})")
        properties[key] = _coerce(key, value, uri)
    check_threshold(properties["threshold"], uri)
    return CogItem(uri, properties)


def check_threshold(threshold: float | None, where: str = "--threshold") -> None:
    """Refuse a probability threshold outside [0, 1] (or NaN): the image would record a meaningless value."""
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"{where}: threshold {threshold!r} is not a probability in [0, 1]")


def check_items(items: Sequence[CogItem], real: bool) -> None:
    """Refuse COG lists that would ingest something twice or that Earth Engine cannot read.

    Two entries with the same URI, or two COGs of the same (grid, year) (they would become the same
    image asset), are refused naming both. For a real ingestion (`real`), every source must be a gs://
    URI: Earth Engine reads the COG from Cloud Storage, never from this machine.
    """
    seen: dict[tuple[int, int], str] = {}
    for item in items:
        if real and not item.uri.startswith("gs://"):
            raise UserError(f"{item.uri}: not a gs:// URI; Earth Engine ingests COGs from Cloud Storage only "
                            "(copy it to a bucket, or use --dry-run)")
        key = (item.grid, item.year)
        if key in seen:
            what = "listed twice" if seen[key] == item.uri else f"same grid {item.grid} and year {item.year} as {seen[key]}"
            raise UserError(f"{item.uri}: duplicated COG ({what}); each (grid, year) becomes one image")
        seen[key] = item.uri


def asset_id(options: IngestOptions, grid: int, year: int) -> str:
    """The image asset name of one (grid, year) in the collection."""
    return f"{collection_name(options.collection)}/mining_{grid}_{year}"


def build_manifest(item: CogItem, options: IngestOptions) -> dict[str, Any]:
    """The ImageManifest that registers `item`'s COG: bands, MODE pyramids, missing data, properties, times."""
    year = item.year
    return {
        "name": asset_id(options, item.grid, year),
        "tilesets": [{"id": "cog", "sources": [{"uris": [item.uri]}]}],
        "bands": [
            {"id": band, "tilesetId": "cog", "tilesetBandIndex": index}
            for index, band in enumerate(options.bands)
        ],
        "pyramidingPolicy": options.pyramiding,
        "missingData": {"values": [options.missing_data]},
        "properties": dict(item.properties),
        "startTime": f"{year:04d}-01-01T00:00:00Z",
        "endTime": f"{year + 1:04d}-01-01T00:00:00Z",
    }


def write_dry_run(items: Sequence[CogItem], options: IngestOptions, path: str | Path, overwrite: bool) -> Path:
    """Write every manifest (a JSON list, with the overwrite flag) to `path`; nothing is sent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = [
        {"uri": item.uri, "overwrite": overwrite, "imageManifest": build_manifest(item, options)} for item in items
    ]
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def get_asset(name: str) -> dict | None:
    """The asset's metadata, or None when it does not exist (HTTP 404); other errors propagate."""
    import ee

    from pipeline.earthengine.retry import http_status

    try:
        return ee.data.getAsset(name)
    except ee.EEException as error:
        if http_status(error) == 404:
            return None
        raise


def ensure_collection(options: IngestOptions, backoff: Backoff = Backoff(), sleep=time.sleep) -> bool:
    """Create the ImageCollection asset when it does not exist; True when created. Wrong asset type → error."""
    import ee

    name = collection_name(options.collection)
    info = call_with_backoff(lambda: get_asset(name), backoff, what=f"get {name}", sleep=sleep)
    if info is not None:
        if info.get("type") not in ("IMAGE_COLLECTION", "ImageCollection"):
            raise UserError(f"--collection {options.collection}: exists but is a {info.get('type')}, not an ImageCollection")
        return False
    call_with_backoff(
        lambda: ee.data.createAsset({"type": "IMAGE_COLLECTION"}, name), backoff, what=f"create {name}", sleep=sleep
    )
    return True


@dataclass
class IngestOutcome:
    """What happened to one COG: 'started' (with the operation name) or 'skipped-existing'."""

    item: CogItem
    asset: str
    status: str
    operation: str | None = None


def ingest(
    items: Sequence[CogItem],
    options: IngestOptions,
    *,
    overwrite: bool = False,
    per_second: float = 2.0,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    report: Callable[[str], None] = print,
) -> list[IngestOutcome]:
    """Start one ingestion per COG (skipping existing assets unless `overwrite`), rate-limited, with retries."""
    import ee

    limiter = RateLimiter(per_second, clock=clock, sleep=sleep)
    outcomes = []
    for number, item in enumerate(items, 1):
        name = asset_id(options, item.grid, item.year)
        if not overwrite:
            existing = call_with_backoff(lambda name=name: get_asset(name), backoff, what=f"get {name}", sleep=sleep)
            if existing is not None:
                outcomes.append(IngestOutcome(item, name, "skipped-existing"))
                report(f"[{number}/{len(items)}] {name}: exists, skipped (use --overwrite to replace)")
                continue
        manifest = build_manifest(item, options)
        request_id = ee.data.newTaskId()[0]
        limiter.wait()
        result = call_with_backoff(
            lambda request_id=request_id, manifest=manifest: ee.data.startIngestion(request_id, manifest, overwrite),
            backoff,
            what=f"ingest {name}",
            sleep=sleep,
        )
        outcomes.append(IngestOutcome(item, name, "started", result.get("name")))
        report(f"[{number}/{len(items)}] {name}: ingestion started ({result.get('name')})")
    return outcomes
