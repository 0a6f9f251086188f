"""Post-steps in Earth Engine on the ingested classification (DESIGN.md §3 spatial, §5, §6), as asset exports.

Input: the ImageCollection that `ingest` fills (one image per (grid, year), band `classification`, 30 mining,
0 not mining, 255 masked as never observed); a year is the mosaic of that year's images, so a component that
straddles two grid cells is one component.

* Spatial filter, 8-connected (`connectedPixelCount(min_size, eightConnected=True)`), both modes of §3:
  `appendix` — mining pixels in components of fewer than `min_size` pixels become not mining (0);
  `c9-code`  — they take the mode of their `window` × `window` neighbourhood, themselves included (the
  published `majorityFilter`: `neighborhoodToBands(square).reduce(mode)`), literally: not-observed pixels
  inside the year's images vote as 255 (the script's 50), pixels outside every image are ignored; ties are
  resolved by Earth Engine's `Reducer.mode`.
* Integration by prevalence (§5) with a land-cover asset: every layer's class is ranked through the table in
  `pipeline/data/prevalence.json`; per pixel the class of the best (lowest) rank among the layers that claim
  the pixel wins (`Reducer.min(2)` over (rank, class) pairs). The mining layer claims only its mining pixels.
* class_id (§6): per year, each 8-connected mining component (`reduceToVectors`, eightConnected) takes the
  most frequent class_id of the occurrence features that intersect it (ties by the table's order); failing
  that, that of the nearest feature within `buffer_m` (`Join.saveBest` on `Filter.withinDistance`); none → 301.
  Occurrence codes come from `pipeline/data/class_id.json` (type field + substance name), the same table the
  local classifier reads, or from a ready `class_id` property.

Each result is started as an `Export.image.toAsset` task (pyramiding MODE, 30 m, EPSG:4326).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pipeline.contract import OUTPUT_MINING as MINING
from pipeline.contract import OUTPUT_NODATA as NOT_OBSERVED  # where a not-observed pixel votes (c9-code), as in the COGs
from pipeline.contract import OUTPUT_NOT_MINING as NOT_MINING
from pipeline.earthengine.retry import Backoff, RateLimiter, call_with_backoff
from pipeline.io.tables import ClassIdTable
from pipeline.method.filters import MODES
CRS = "EPSG:4326"
MAX_CONNECTED = 1024  # Earth Engine's limit on connectedPixelCount's maxSize


def year_classification(collection: str, year: int, band: str = "classification", not_observed: int | None = None):
    """The classification of `year`: the mosaic of the collection's images whose `year` property matches.

    Not-observed pixels are masked; with `not_observed` (e.g. 255) they hold that value instead wherever an
    image of the year covers them (each image unmasked within its own footprint, observed values first), and
    only pixels outside every image stay masked: what the literal `c9-code` mode needs, where not observed
    is a value that votes (the published script's 50) and the outside of the raster is not.
    """
    import ee

    images = ee.ImageCollection(collection).filter(ee.Filter.eq("year", year)).select([band], ["classification"])
    observed = images.mosaic()
    if not_observed is None:
        return observed
    inside = images.map(lambda image: ee.Image(image).unmask(not_observed, True)).mosaic()
    return observed.unmask(inside)


def small_mining_components(classification, min_size: int = 10):
    """1 on mining pixels of 8-connected mining components smaller than `min_size` pixels, 0 elsewhere."""
    import ee

    if not 1 <= min_size <= MAX_CONNECTED:
        raise ValueError(f"min_size {min_size}: Earth Engine counts components up to {MAX_CONNECTED} pixels")
    classification = ee.Image(classification)
    mining = classification.eq(MINING)
    count = mining.selfMask().connectedPixelCount(min_size, True)
    return count.lt(min_size).unmask(0)


def spatial_filter(classification, mode: str = "appendix", min_size: int = 10, window: int = 3):
    """The §3 spatial filter of one year's classification (30 / 0, masked = not observed), either mode.

    For the literal `c9-code` mode give it `year_classification(..., not_observed=NOT_OBSERVED)`: not-observed
    pixels then vote in the mode like a class (pixels outside every image stay masked and do not). The
    result is masked where it is not observed, in both cases.
    """
    import ee

    if mode not in MODES:
        raise ValueError(f"unknown filter mode {mode!r}; choose one of {', '.join(MODES)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window {window}: must be an odd number of pixels")
    classification = ee.Image(classification)
    small = small_mining_components(classification, min_size)
    if mode == "appendix":
        filtered = classification.where(small, NOT_MINING)
    else:
        kernel = ee.Kernel.square(window // 2, "pixels")
        majority = classification.neighborhoodToBands(kernel).reduce(ee.Reducer.mode())
        filtered = classification.where(small, majority)
        filtered = filtered.updateMask(filtered.neq(NOT_OBSERVED))
    return filtered.toByte().rename("classification")


def integrate_layers(layers: Sequence, ranks: dict[int, int]):
    """Per pixel, the class of the layer with the lowest prevalence rank among the layers that claim it.

    Each layer is a one-band image of class codes, masked where it does not claim the pixel; classes missing
    from `ranks` rank after every listed class.
    """
    import ee

    codes = list(ranks)
    values = [ranks[code] for code in codes]
    unlisted = max(values) + 1
    pairs = []
    for layer in layers:
        layer = ee.Image(layer).toInt16()
        rank = layer.remap(codes, values, unlisted).rename("rank")
        pairs.append(ee.Image.cat([rank, layer.rename("class")]))
    reduced = ee.ImageCollection(pairs).reduce(ee.Reducer.min(2))
    return reduced.select([1], ["classification"]).toByte()


def integrate_mining(classification, landcover, ranks: dict[int, int]):
    """The land-cover map with the mining layer (its mining pixels only) integrated by prevalence."""
    import ee

    classification = ee.Image(classification)
    mining_layer = classification.updateMask(classification.eq(MINING))
    return integrate_layers([mining_layer, ee.Image(landcover)], ranks)


def occurrences_with_class_id(occurrences, table: ClassIdTable, type_field: str = "FASE",
                              substance_field: str = "SUBS", class_property: str | None = None):
    """The occurrence features with integer `class_id` and string `class_key`, unusable ones dropped.

    With `class_property` the features already carry their code; otherwise it is looked up from the type field
    and substance name through the table (upper-cased, trimmed, single-spaced on the server as locally).
    """
    import ee

    occurrences = ee.FeatureCollection(occurrences)
    if class_property is not None:
        def with_code(feature):
            code = ee.Number(feature.get(class_property))
            return feature.set({"class_id": code, "class_key": code.format("%d")})

        return occurrences.filter(ee.Filter.notNull([class_property])).map(with_code)

    lookup = ee.Dictionary(
        {f"{type_value}|{name}": code for (type_value, name), code in sorted(table.name_code_pairs(type_field).items())}
    )

    def normal(feature, name):
        value = ee.String(ee.Algorithms.If(feature.get(name), feature.get(name), ""))
        return value.trim().replace("\\s+", " ", "g").toUpperCase()

    def with_code(feature):
        key = normal(feature, type_field).cat("|").cat(normal(feature, substance_field))
        code = ee.Number(lookup.get(key, -1))
        return feature.set({"class_id": code, "class_key": code.format("%d")})

    return occurrences.map(with_code).filter(ee.Filter.neq("class_id", -1))


def class_id_image(classification, occurrences, table: ClassIdTable, region, buffer_m: float = 1000.0,
                   scale: float = 30.0):
    """Per mining component of one year: the class_id from the occurrences (§6), as an int16 image."""
    import ee

    classification = ee.Image(classification)
    mining = classification.eq(MINING).selfMask()
    components = mining.reduceToVectors(
        geometry=region,
        scale=scale,
        crs=CRS,
        geometryType="polygon",
        eightConnected=True,
        labelProperty="mining",
        maxPixels=int(1e13),
    )
    nearest = ee.Join.saveBest(matchKey="nearest", measureKey="distance", outer=True)
    within = ee.Filter.withinDistance(distance=buffer_m, leftField=".geo", rightField=".geo", maxError=1)
    components = ee.FeatureCollection(nearest.apply(components, occurrences, within))
    order = ee.Dictionary({str(code): position for code, position in table.order.items()})
    last = len(table.codes)

    def assign(component):
        component = ee.Feature(component)
        hits = ee.FeatureCollection(occurrences).filterBounds(component.geometry())
        histogram = ee.Dictionary(hits.aggregate_histogram("class_key"))
        keys = histogram.keys()
        scores = keys.map(
            lambda key: ee.Number(histogram.get(key)).multiply(100000).subtract(ee.Number(order.get(key, last)))
        )
        best = ee.Number.parse(keys.get(ee.List(scores).indexOf(ee.List(scores).reduce(ee.Reducer.max()))))
        near = component.get("nearest")
        fallback = ee.Algorithms.If(near, ee.Feature(near).get("class_id"), table.unidentified)
        return component.set("class_id", ee.Algorithms.If(keys.size().gt(0), best, fallback))

    labelled = components.map(assign)
    image = labelled.reduceToImage(["class_id"], ee.Reducer.first())
    return image.updateMask(mining).toInt16().rename("class_id")


def grid_region(grid_ids: Sequence[int]):
    """A planar EPSG:4326 rectangle covering the given grid cells."""
    import ee

    from pipeline.earthengine.grid import C9_GRID

    bounds = [C9_GRID.bounds(g) for g in grid_ids]
    box = [min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds)]
    return ee.Geometry.Rectangle(box, CRS, False)


@dataclass
class AssetTask:
    """One post-step export: its destination asset, the step and year, and the unstarted Task."""

    step: str
    year: int
    asset: str
    description: str
    task: Any = field(repr=False)

    def request(self) -> dict[str, Any]:
        """The ExportImageRequest body as sent (expression serialized), minus requestId and workloadTag."""
        import ee

        body = dict(self.task.config)
        body["expression"] = ee.serializer.encode(body["expression"], for_cloud_api=True)
        return body


def asset_export(image, step: str, year: int, asset: str, region, scale: float = 30.0,
                 overwrite: bool = False, max_pixels: int = 10**13) -> AssetTask:
    """The Export.image.toAsset task of a post-step result: pyramiding MODE, `scale` m in EPSG:4326."""
    import ee

    description = f"mining_{step.replace('-', '_')}_{year}"
    task = ee.batch.Export.image.toAsset(
        image=ee.Image(image).set({"year": year, "step": step}),
        description=description,
        assetId=asset,
        pyramidingPolicy={".default": "mode"},
        region=region,
        scale=scale,
        crs=CRS,
        maxPixels=int(max_pixels),
        overwrite=overwrite,
    )
    return AssetTask(step, year, asset, description, task)


@dataclass
class StartOutcome:
    """What happened to one post-step task: 'started' (operation name) or 'skipped-existing'."""

    task: AssetTask
    status: str
    operation: str | None = None


def start_tasks(
    tasks: Sequence[AssetTask],
    *,
    overwrite: bool = False,
    per_second: float = 1.0,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    report: Callable[[str], None] = print,
) -> list[StartOutcome]:
    """Start the tasks whose destination asset does not exist yet (all when `overwrite`), rate-limited."""
    from pipeline.earthengine.ingest import get_asset

    limiter = RateLimiter(per_second, clock=clock, sleep=sleep)
    outcomes = []
    for number, item in enumerate(tasks, 1):
        if not overwrite:
            existing = call_with_backoff(
                lambda item=item: get_asset(item.asset), backoff, what=f"get {item.asset}", sleep=sleep
            )
            if existing is not None:
                outcomes.append(StartOutcome(item, "skipped-existing"))
                report(f"[{number}/{len(tasks)}] {item.asset}: exists, skipped")
                continue
        limiter.wait()
        call_with_backoff(item.task.start, backoff, what=f"start {item.description}", sleep=sleep)
        outcomes.append(StartOutcome(item, "started", item.task.name))
        report(f"[{number}/{len(tasks)}] {item.description}: started {item.task.name}")
    return outcomes
