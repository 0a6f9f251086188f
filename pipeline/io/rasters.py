"""Annual rasters in: finding them and their years and grids, checking they agree, reading classes.

Reading turns any categorical map (our own 30/0/255 COGs, MapBiomas land-cover maps) into the
pipeline's 0 / 1 / 255 classes. Rasters are opened through GDAL, which reads ``gs://bucket/key`` as
``/vsigs/bucket/key``; listings go through `pipeline.io.filesystem`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine

from pipeline.contract import MINING, NOT_MINING, NOT_OBSERVED, OUTPUT_MINING
from pipeline.errors import UserError
from pipeline.io.filesystem import basename, gdal_path, is_remote, match, parent_name
from pipeline.io.raw import RAW_FOLDER

RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
_YEAR_IN_NAME = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d|2100)(?!\d)")


@dataclasses.dataclass
class ClassSeries:
    """An annual stack of 0 / 1 / 255 classes with the georeference shared by all its years."""

    years: list[int]
    stack: np.ndarray
    crs: rasterio.crs.CRS
    transform: Affine
    paths: list[str]


def year_from_name(path: str) -> int | None:
    """The year in a file name (the last 4-digit group from 1800 to 2100 not touching other digits)."""
    found = _YEAR_IN_NAME.findall(os.path.basename(path))
    return int(found[-1]) if found else None


def find_annual_rasters(inputs: Sequence[str], years: Sequence[int] | None = None) -> dict[int, str]:
    """Map each year to its raster (inputs as `list_rasters`: files, folders, patterns, local or gs://): year
    from the file name, else from a `year` tag.

    Refuses a file with no year, two files for one year, and (when `years` is given, or always
    for the span found) a year missing from the range.
    """
    by_year: dict[int, str] = {}
    for path in list_rasters(inputs):
        year = year_from_name(basename(path))
        if year is None:  # opened only when the name has no year
            year = describe_raster(path).year
        if year in by_year:
            raise UserError(f"year {year} is given twice: {by_year[year]} and {path}")
        by_year[year] = path
    if years is not None:
        wanted = sorted(set(years))
        missing = [y for y in wanted if y not in by_year]
        if missing:
            raise UserError(f"no raster for year(s) {_ranges(missing)} among the inputs")
        by_year = {y: by_year[y] for y in wanted}
    span = range(min(by_year), max(by_year) + 1)
    missing = [y for y in span if y not in by_year]
    if missing:
        raise UserError(
            f"the series {span.start}–{span.stop - 1} has no raster for {_ranges(missing)}; "
            "the temporal filters need consecutive years"
        )
    return dict(sorted(by_year.items()))


def _ranges(values: Iterable[int]) -> str:
    values = sorted(values)
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def to_mining_classes(values: np.ndarray, class_value: int, nodata_values: Iterable[float] = ()) -> np.ndarray:
    """Categorical values → 1 where `class_value`, 255 where no data (or NaN), 0 elsewhere (uint8)."""
    classes = np.where(values == class_value, MINING, NOT_MINING).astype(np.uint8)
    missing = np.zeros(values.shape, dtype=bool)
    for nodata in nodata_values:
        if nodata is None:
            continue
        missing |= np.isnan(values) if isinstance(nodata, float) and np.isnan(nodata) else values == nodata
    if np.issubdtype(values.dtype, np.floating):
        missing |= np.isnan(values)
    classes[missing] = NOT_OBSERVED
    return classes


def read_class_series(
    rasters: Mapping[int, str],
    class_value: int = OUTPUT_MINING,
    extra_nodata: Sequence[float] = (),
    progress: Callable[[int, int, str], None] | None = None,
) -> ClassSeries:
    """Read one band per year into a 0 / 1 / 255 stack, refusing rasters that do not line up."""
    years = list(rasters)
    stack: np.ndarray | None = None
    reference: tuple | None = None
    for index, year in enumerate(years):
        path = rasters[year]
        with open_raster(path) as src:
            grid = (src.crs, src.transform, (src.height, src.width))
            if reference is None:
                reference = grid + (path,)
                if src.crs is None:
                    raise UserError(f"{path}: raster has no CRS")
                stack = np.empty((len(years), src.height, src.width), dtype=np.uint8)
            else:
                _check_same_grid(path, grid, reference)
            values = src.read(1)
            nodata = [src.nodata, *extra_nodata]
        stack[index] = to_mining_classes(values, class_value, nodata)
        if progress:
            progress(index + 1, len(years), path)
    assert reference is not None and stack is not None
    return ClassSeries(years=years, stack=stack, crs=reference[0], transform=reference[1], paths=[rasters[y] for y in years])


def _check_same_grid(path: str, grid: tuple, reference: tuple) -> None:
    crs, transform, shape = grid
    ref_crs, ref_transform, ref_shape, ref_path = reference
    if shape != ref_shape:
        raise UserError(f"{path}: shape {shape[0]}×{shape[1]} differs from {ref_path} ({ref_shape[0]}×{ref_shape[1]})")
    if crs != ref_crs:
        raise UserError(f"{path}: CRS {crs} differs from {ref_path} ({ref_crs})")
    if not transform.almost_equals(ref_transform, precision=1e-9 * max(1.0, abs(ref_transform.a))):
        raise UserError(f"{path}: transform {tuple(transform)[:6]} differs from {ref_path} ({tuple(ref_transform)[:6]})")


@contextlib.contextmanager
def open_raster(path: str):
    """Open a raster for reading (local or gs://) in a `with` block; GDAL's failures become a UserError naming it.

    Both opening and reading are covered: a pixel read that fails inside the block (a truncated or
    corrupt file) names this file, unless GDAL's own message names another file (a dataset opened in
    the same block), which is then left for that dataset's block to report (GDAL gives base names only,
    so two datasets of one base name cannot be told apart: the innermost block reports).
    """
    try:
        dataset = rasterio.open(gdal_path(path))
    except rasterio.errors.RasterioIOError as error:
        raise UserError(f"{path}: not a readable raster ({error})") from None
    with dataset:
        try:
            yield dataset
        except rasterio.errors.RasterioIOError as error:
            detail = str(error.__cause__ or error)
            if error.__cause__ is not None and os.path.basename(dataset.name) not in detail:
                raise
            raise UserError(f"{path}: cannot read its pixels, the file is truncated or corrupt ({detail})") from error


def _match_remote(pattern: str) -> list[str]:
    return [path for path, _ in match(pattern)]


def list_rasters(inputs: Sequence[str]) -> list[str]:
    """Expand files, folders (searched recursively) and glob patterns, local or gs://, into GeoTIFF paths.

    Hidden files (a leading '.', e.g. the temporaries of an interrupted publish) are skipped. A folder
    that holds a run's summary.json with a manifest gives the rasters the manifest lists (an output folder
    is one run: nothing else lying there is counted), except the `raw/` inference results.
    """
    found: list[str] = []
    for item in inputs:
        item = str(item)
        listed = manifest_rasters(item)
        if listed is not None:
            matches = listed
        elif is_remote(item):
            if item.endswith(RASTER_SUFFIXES) and not any(ch in item for ch in "*?["):
                found.append(item)
                continue
            # Beam's patterns: '*' stops at '/', '**' crosses folders (the pipeline's {grid}/ layout)
            pattern = item if any(ch in item for ch in "*?[") else item.rstrip("/") + "/**"
            matches = [p for p in _match_remote(pattern) if p.endswith(RASTER_SUFFIXES)]
        elif os.path.isdir(item):
            matches = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                matches.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(RASTER_SUFFIXES))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
        elif os.path.isfile(item):
            matches = [item]
        else:
            raise UserError(f"{item}: no such file or folder")
        matches = [m for m in matches if not any(part.startswith(".") for part in str(m).split("/")[3 if is_remote(m) else 0:])]
        if not matches:
            raise UserError(f"{item}: holds no GeoTIFF (*.tif, *.tiff)")
        found.extend(matches)
    return list(dict.fromkeys(found))


def manifest_rasters(item: str) -> list[str] | None:
    """The rasters a run folder's manifest lists (raw/ excluded), or None when `item` is not such a folder.

    Why: an output folder is one run; its summary says which COGs are the run's (`stats`, `report` and
    `ingest` read those, never a stray file of an earlier run).
    """
    from pipeline.io.summary import manifest_files

    if item.endswith(RASTER_SUFFIXES) or any(ch in item for ch in "*?["):
        return None
    if not is_remote(item) and not os.path.isdir(item):
        return None
    listed = manifest_files(item)
    if listed is None:
        return None
    prefix = item.rstrip("/") + "/"
    return [p for p in listed if p.endswith(RASTER_SUFFIXES) and not p[len(prefix):].startswith(RAW_FOLDER + "/")]


@dataclasses.dataclass(frozen=True)
class RasterRef:
    """One annual raster: where it is, its year, its grid (None for a single-grid series) and its tags."""

    path: str
    year: int
    grid: str | None
    tags: Mapping[str, str]


_GRID_YEAR = re.compile(r"^(?P<grid>.+)_(?P<year>\d{4})\.tiff?$", re.IGNORECASE)


def grid_from_path(path: str) -> str | None:
    """The grid of the pipeline layout ``{output}/{grid}/{grid}_{year}.tif``, or None when the name is not of it."""
    match = _GRID_YEAR.match(basename(path))
    if match and match.group("grid") == parent_name(path):
        return match.group("grid")
    return None


def describe_raster(path: str) -> RasterRef:
    """Year (file name, else 'year' tag), grid ('grid' tag, else the pipeline layout) and tags of a raster."""
    with open_raster(path) as src:
        tags = dict(src.tags())
    year = year_from_name(basename(path))
    if year is None:
        for key in ("year", "YEAR", "Year"):
            if key in tags:
                try:
                    year = int(str(tags[key]).strip())
                except ValueError:
                    raise UserError(f"{path}: tag {key}={tags[key]!r} is not a year") from None
                break
    if year is None:
        raise UserError(f"{path}: no year in the file name and no 'year' tag")
    grid = tags.get("grid") or grid_from_path(path)
    return RasterRef(path=str(path), year=year, grid=str(grid) if grid else None, tags=tags)


def discover(inputs: Sequence[str], years: Iterable[int] | None = None) -> list[RasterRef]:
    """Every annual raster among the inputs, sorted by (grid, year); refuses two rasters for one grid-year.

    The pipeline's raw inference results (`{output}/raw`, tagged `raw_format`) are not products: they are
    left out, so a run's output folder holds one raster per grid-year for the report, stats and the rest.
    """
    from pipeline.io.raw import FORMAT_TAG

    refs = [ref for ref in (describe_raster(p) for p in list_rasters(inputs)) if FORMAT_TAG not in ref.tags]
    if years is not None:
        wanted = set(years)
        refs = [r for r in refs if r.year in wanted]
        if not refs:
            raise UserError(f"{', '.join(map(str, inputs))}: no raster for the years asked ({sorted(wanted)})")
    seen: dict[tuple, str] = {}
    for ref in refs:
        key = (ref.grid, ref.year)
        if key in seen:
            where = f"grid {ref.grid}, " if ref.grid else ""
            raise UserError(f"{where}year {ref.year} is given twice: {seen[key]} and {ref.path}")
        seen[key] = ref.path
    return sorted(refs, key=lambda r: (r.grid or "", r.year))
