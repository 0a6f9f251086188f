"""TFRecord exports from Earth Engine to Cloud Storage (DESIGN.md §1.4 and §2).

One `Export.image.toCloudStorage` task per (grid, year): fileFormat TFRecord, formatOptions
{patchDimensions [256, 256], kernelSize [K, K], compressed, maxFileSize, defaultValue}, pixels of 30 m in
EPSG:4326. Earth Engine drops partial patches at the right and bottom edges, so the export is an exact pixel
rectangle of whole patches: its origin is the cell's north-west corner snapped outward to a global 30 m pixel
lattice (so every cell's pixels line up with its neighbours'), its size the cell's extent rounded *up* to whole
patches (a small pad, never a crop). The file prefix follows the §2 layout: `{exports}/{grid}/{year}/{grid}_{year}`.

Training patches come from sample polygons: the same mosaic plus a `label` band (1 inside mining sample
polygons, 0 elsewhere), restricted to the patches of the cell that the samples touch; the others are masked
and dropped by the export's `maskedThreshold`.

Submission is resumable (an export whose mixer is already in the bucket, or whose task is still queued or
running, is skipped), rate-limited, and retried on 429/5xx with the same request id (idempotent).
`wait_for_operations` polls the submitted tasks and reports failures with Earth Engine's own error text.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pipeline.earthengine import mosaic as mosaic_lib
from pipeline.earthengine import storage
from pipeline.earthengine.grid import C9_GRID, Grid
from pipeline.earthengine.retry import Backoff, RateLimiter, call_with_backoff
from pipeline.errors import UserError

log = logging.getLogger(__name__)

EQUATOR_METRES_PER_DEGREE = 6378137.0 * 2 * math.pi / 360  # what Earth Engine uses for `scale` in EPSG:4326
CRS = "EPSG:4326"
ACTIVE_STATES = ("PENDING", "RUNNING", "CANCELLING")
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


def pixel_degrees(scale_m: float) -> float:
    """The EPSG:4326 pixel size, in degrees, of a `scale_m` metre export (as Earth Engine converts it)."""
    return scale_m / EQUATOR_METRES_PER_DEGREE


@dataclass(frozen=True)
class PatchWindow:
    """An exact pixel rectangle of whole patches: origin column/row on the global lattice, size in patches."""

    pixel: float  # degrees
    col0: int  # global pixel column of the west edge (lon = col0 * pixel)
    row0: int  # global pixel row of the north edge (lat = row0 * pixel)
    patches_x: int
    patches_y: int
    patch: int

    @property
    def width(self) -> int:
        """Width in pixels (a multiple of the patch size)."""
        return self.patches_x * self.patch

    @property
    def height(self) -> int:
        """Height in pixels (a multiple of the patch size)."""
        return self.patches_y * self.patch

    @property
    def west(self) -> float:
        """Longitude of the west edge."""
        return self.col0 * self.pixel

    @property
    def north(self) -> float:
        """Latitude of the north edge."""
        return self.row0 * self.pixel

    @property
    def crs_transform(self) -> list[float]:
        """[xScale, xShear, xTranslation, yShear, yScale, yTranslation] of the export (north-up)."""
        return [self.pixel, 0.0, self.west, 0.0, -self.pixel, self.north]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the whole window."""
        return (
            self.west,
            self.north - self.height * self.pixel,
            self.west + self.width * self.pixel,
            self.north,
        )

    def patch_bounds(self, prow: int, pcol: int) -> tuple[float, float, float, float]:
        """(west, south, east, north) of patch (row, column) of the window."""
        step = self.patch * self.pixel
        west = self.west + pcol * step
        north = self.north - prow * step
        return (west, north - step, west + step, north)

    def sub_window(self, prow0: int, pcol0: int, prow1: int, pcol1: int) -> PatchWindow:
        """The window of patches rows prow0…prow1 and columns pcol0…pcol1 (inclusive) of this one."""
        return PatchWindow(
            self.pixel,
            self.col0 + pcol0 * self.patch,
            self.row0 - prow0 * self.patch,
            pcol1 - pcol0 + 1,
            prow1 - prow0 + 1,
            self.patch,
        )


def cell_window(grid_id: int, grid: Grid = C9_GRID, scale_m: float = 30.0, patch: int = 256) -> PatchWindow:
    """The whole-patch window covering grid cell `grid_id`, its origin on the global `scale_m` pixel lattice."""
    pixel = pixel_degrees(scale_m)
    west, south, east, north = grid.bounds(grid_id)
    col0 = math.floor(west / pixel + 1e-9)
    row0 = math.ceil(north / pixel - 1e-9)
    columns = math.ceil((east - col0 * pixel) / pixel - 1e-9)
    rows = math.ceil((row0 * pixel - south) / pixel - 1e-9)
    return PatchWindow(pixel, col0, row0, math.ceil(columns / patch), math.ceil(rows / patch), patch)


@dataclass(frozen=True)
class ExportOptions:
    """Where and how to export: the exports root (gs://bucket/path) and the §1.4 TFRecord options."""

    exports: str
    preset: str = "appendix"
    kernel: int = 256
    patch: int = 256
    max_file_size: int = 100 * 2**20
    default_value: float = 0
    scale_m: float = 30.0
    max_pixels: int = 10**13
    masked_threshold: float = 0.99  # training exports only: drop patches masked beyond this ratio
    priority: int | None = None

    def __post_init__(self):
        storage.split_gcs_uri(self.exports)
        mosaic_lib.preset_bands(self.preset)
        if self.kernel < 0 or self.kernel % 2:
            raise UserError(f"--kernel {self.kernel}: must be an even number of pixels >= 0")
        if self.patch <= 0:
            raise UserError(f"--patch {self.patch}: must be positive")

    def format_options(self, training: bool = False) -> dict[str, Any]:
        """The TFRecord formatOptions of DESIGN.md §1.4 (maskedThreshold only for training exports)."""
        options = {
            "patchDimensions": [self.patch, self.patch],
            "kernelSize": [self.kernel, self.kernel],
            "compressed": True,
            "maxFileSize": int(self.max_file_size),
            "defaultValue": self.default_value,
        }
        if training:
            options["maskedThreshold"] = self.masked_threshold
        return options


@dataclass
class ExportSpec:
    """One export task to submit: what (kind, grid, year), where (bucket, directory), and the unstarted Task."""

    kind: str
    grid: int
    year: int
    description: str
    bucket: str
    directory: str
    stem: str
    task: Any = field(repr=False)

    @property
    def destination(self) -> str:
        """gs:// URI of the export's directory."""
        return f"gs://{self.bucket}/{self.directory}/"

    def request(self) -> dict[str, Any]:
        """The ExportImageRequest body as sent (expression serialized), minus requestId and workloadTag."""
        import ee

        body = dict(self.task.config)
        body["expression"] = ee.serializer.encode(body["expression"], for_cloud_api=True)
        return body


def export_directory(options: ExportOptions, grid_id: int, year: int) -> tuple[str, str]:
    """(bucket, '{path}/{grid}/{year}') of one export, per the §2 layout."""
    bucket, root = storage.split_gcs_uri(options.exports)
    return bucket, storage.join_path(root, grid_id, year)


def window_geometry(window: PatchWindow):
    """The window as a planar EPSG:4326 ee.Geometry rectangle (for filterBounds)."""
    import ee

    return ee.Geometry.Rectangle(list(window.bounds), CRS, False)


def _export_task(image, window: PatchWindow, description: str, bucket: str, prefix: str, options, training):
    """The unstarted Export.image.toCloudStorage TFRecord task of `image` over `window`."""
    import ee

    return ee.batch.Export.image.toCloudStorage(
        image=image,
        description=description,
        bucket=bucket,
        fileNamePrefix=prefix,
        dimensions=f"{window.width}x{window.height}",
        crs=CRS,
        crsTransform=window.crs_transform,
        maxPixels=int(options.max_pixels),
        fileFormat="TFRecord",
        formatOptions=options.format_options(training),
        priority=options.priority,
    )


def mosaic_export(grid_id: int, year: int, options: ExportOptions, grid: Grid = C9_GRID) -> ExportSpec:
    """The export of the annual mosaic of one (grid, year) as whole TFRecord patches."""
    window = cell_window(grid_id, grid, options.scale_m, options.patch)
    image = mosaic_lib.annual_mosaic(year, options.preset, window_geometry(window))
    bucket, directory = export_directory(options, grid_id, year)
    description = f"mining_mosaic_{grid_id}_{year}"
    stem = f"{grid_id}_{year}"
    task = _export_task(image, window, description, bucket, storage.join_path(directory, stem), options, False)
    return ExportSpec("mosaic", grid_id, year, description, bucket, directory, stem, task)


def mosaic_exports(
    grid_ids: Iterable[int], years: Iterable[int], options: ExportOptions, grid: Grid = C9_GRID
) -> list[ExportSpec]:
    """One mosaic export per (grid, year), grids outer, years inner."""
    years = list(years)
    return [mosaic_export(g, y, options, grid) for g in grid_ids for y in years]


@dataclass(frozen=True)
class Samples:
    """Sample polygons in lon/lat: shapely geometries, their 0/1 labels and (optional) years."""

    geometries: tuple
    labels: tuple[int, ...]
    years: tuple[int | None, ...]


def read_samples(path: str | Path, label_property: str = "label", year_property: str | None = None,
                 layer: str | None = None) -> Samples:
    """Read sample polygons whose `label_property` is 1 (mining) or 0 (not mining); optional year property."""
    from pipeline.earthengine.grid import read_reference

    frame = read_reference(path, layer)
    if len(frame) == 0:
        raise UserError(f"{path}: no sample features")
    if label_property not in frame.columns:
        raise UserError(f"{path}: no {label_property!r} property (the 0/1 label of each sample polygon)")
    labels = []
    for position, value in enumerate(frame[label_property]):
        try:
            label = int(value)
        except (TypeError, ValueError):
            label = -1
        if label not in (0, 1):
            raise UserError(f"{path}: feature {position}: {label_property}={value!r}, expected 0 or 1")
        labels.append(label)
    if year_property is not None:
        if year_property not in frame.columns:
            raise UserError(f"{path}: no {year_property!r} property")
        years = tuple(None if v is None or v != v else int(v) for v in frame[year_property])
    else:
        years = (None,) * len(frame)
    return Samples(tuple(frame.geometry), tuple(labels), years)


def touched_patches(window: PatchWindow, geometries: Sequence) -> list[tuple[int, int]]:
    """(row, col) of the window's patches that the geometries intersect, sorted."""
    from shapely.geometry import box

    step = window.patch * window.pixel
    found: set[tuple[int, int]] = set()
    for geometry in geometries:
        minx, miny, maxx, maxy = geometry.bounds
        c_lo = max(0, math.floor((minx - window.west) / step))
        c_hi = min(window.patches_x - 1, math.floor((maxx - window.west) / step))
        r_lo = max(0, math.floor((window.north - maxy) / step))
        r_hi = min(window.patches_y - 1, math.floor((window.north - miny) / step))
        for prow in range(r_lo, r_hi + 1):
            for pcol in range(c_lo, c_hi + 1):
                if (prow, pcol) not in found and geometry.intersects(box(*window.patch_bounds(prow, pcol))):
                    found.add((prow, pcol))
    return sorted(found)


def _ee_geometry(shape):
    """A shapely geometry as a planar ee.Geometry in EPSG:4326."""
    import ee
    from shapely.geometry import mapping

    return ee.Geometry(mapping(shape), CRS, False)


def training_export(grid_id: int, year: int, samples: Samples, options: ExportOptions,
                    grid: Grid = C9_GRID) -> ExportSpec | None:
    """The training export of one (grid, year): mosaic + `label` over the patches the samples touch, or None."""
    import ee
    from shapely.geometry import box
    from shapely.ops import unary_union

    cell = cell_window(grid_id, grid, options.scale_m, options.patch)
    chosen = [
        i for i, (geometry, sample_year) in enumerate(zip(samples.geometries, samples.years))
        if (sample_year is None or sample_year == year) and geometry.intersects(box(*cell.bounds))
    ]
    patches = touched_patches(cell, [samples.geometries[i] for i in chosen])
    if not patches:
        return None
    rows = [r for r, _ in patches]
    cols = [c for _, c in patches]
    window = cell.sub_window(min(rows), min(cols), max(rows), max(cols))
    footprint = unary_union([box(*cell.patch_bounds(r, c)) for r, c in patches])
    mining = [samples.geometries[i] for i in chosen if samples.labels[i] == 1]
    label = ee.Image(0).byte()
    if mining:
        label = label.paint(ee.FeatureCollection([ee.Feature(_ee_geometry(unary_union(mining)))]), 1)
    keep = ee.Image(0).byte().paint(ee.FeatureCollection([ee.Feature(_ee_geometry(footprint))]), 1)
    image = (
        mosaic_lib.annual_mosaic(year, options.preset, window_geometry(window))
        .addBands(label.rename("label"))
        .updateMask(keep)
    )
    bucket, directory = export_directory(options, grid_id, year)
    description = f"mining_training_{grid_id}_{year}"
    stem = f"training_{grid_id}_{year}"
    task = _export_task(image, window, description, bucket, storage.join_path(directory, stem), options, True)
    return ExportSpec("training", grid_id, year, description, bucket, directory, stem, task)


def training_exports(samples: Samples, years: Iterable[int], options: ExportOptions,
                     grid: Grid = C9_GRID, grid_ids: Iterable[int] | None = None) -> list[ExportSpec]:
    """Training exports for every (grid touched by the samples, year); `grid_ids` restricts the grids."""
    if grid_ids is None:
        grid_ids = grid.cells_for_boxes(g.bounds for g in samples.geometries)
    specs = []
    for grid_id in grid_ids:
        for year in years:
            spec = training_export(grid_id, year, samples, options, grid)
            if spec is not None:
                specs.append(spec)
    return specs


def write_dry_run(specs: Sequence[ExportSpec], path: str | Path) -> Path:
    """Write the exact request of every export (a JSON list) to `path`; nothing is sent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = [
        {
            "kind": spec.kind,
            "grid": spec.grid,
            "year": spec.year,
            "description": spec.description,
            "destination": spec.destination,
            "request": spec.request(),
        }
        for spec in specs
    ]
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


@dataclass
class Outcome:
    """What happened to one export: submitted, skipped-complete, skipped-active; operation name when known."""

    spec: ExportSpec
    status: str
    operation: str | None = None


def active_operations() -> dict[str, str]:
    """Description → operation name of this project's queued or running Earth Engine tasks."""
    import ee

    active = {}
    for operation in ee.data.listOperations():
        metadata = operation.get("metadata", {})
        if metadata.get("state") in ACTIVE_STATES and metadata.get("description"):
            active[metadata["description"]] = operation["name"]
    return active


def submit_exports(
    specs: Sequence[ExportSpec],
    storage_client=None,
    *,
    per_second: float = 1.0,
    backoff: Backoff = Backoff(),
    skip_complete: bool = True,
    skip_active: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    report: Callable[[str], None] = print,
) -> list[Outcome]:
    """Start every export not already complete (mixer in the bucket) nor active, rate-limited, with retries."""
    limiter = RateLimiter(per_second, clock=clock, sleep=sleep)
    active = call_with_backoff(active_operations, backoff, what="list tasks", sleep=sleep) if skip_active else {}
    outcomes = []
    for number, spec in enumerate(specs, 1):
        if skip_complete and storage.export_is_complete(storage_client, spec.bucket, spec.directory, spec.stem):
            outcomes.append(Outcome(spec, "skipped-complete"))
            report(f"[{number}/{len(specs)}] {spec.description}: complete in {spec.destination}, skipped")
            continue
        if spec.description in active:
            outcomes.append(Outcome(spec, "skipped-active", active[spec.description]))
            report(f"[{number}/{len(specs)}] {spec.description}: already queued or running, skipped")
            continue
        limiter.wait()
        call_with_backoff(spec.task.start, backoff, what=f"start {spec.description}", sleep=sleep)
        outcomes.append(Outcome(spec, "submitted", spec.task.name))
        report(f"[{number}/{len(specs)}] {spec.description}: started {spec.task.name}")
    return outcomes


@dataclass
class WaitResult:
    """Final state of every awaited operation and the Earth Engine error text of each failure."""

    states: dict[str, str]
    failures: dict[str, str]


def wait_for_operations(
    names: Iterable[str],
    *,
    poll_seconds: float = 30.0,
    timeout: float | None = None,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    report: Callable[[str], None] = print,
) -> WaitResult:
    """Poll the named Earth Engine operations until all finish, printing progress; failures with EE's text."""
    import ee

    pending = {name for name in names if name}
    states: dict[str, str] = {}
    failures: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    total = len(pending)
    started = clock()
    while pending:
        operations = call_with_backoff(ee.data.listOperations, backoff, what="list tasks", sleep=sleep)
        by_name = {op.get("name"): op for op in operations}
        for name in sorted(pending):
            operation = by_name.get(name)
            if operation is None:
                operation = call_with_backoff(
                    lambda n=name: ee.data.getOperation(n), backoff, what=f"status {name}", sleep=sleep
                )
            metadata = operation.get("metadata", {})
            state = metadata.get("state", "UNKNOWN")
            descriptions[name] = metadata.get("description", name)
            states[name] = state
            if state in FINAL_STATES or operation.get("done"):
                pending.discard(name)
                if state == "FAILED" or "error" in operation:
                    failures[name] = operation.get("error", {}).get("message", "failed without an error message")
                    report(f"{descriptions[name]}: FAILED: {failures[name]}")
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        summary = ", ".join(f"{counts[s]} {s.lower()}" for s in sorted(counts))
        report(f"{total - len(pending)}/{total} finished ({summary})")
        if not pending:
            break
        if timeout is not None and clock() - started >= timeout:
            report(f"stopped waiting after {timeout:.0f} s; {len(pending)} still running")
            break
        sleep(poll_seconds)
    return WaitResult(states, failures)
