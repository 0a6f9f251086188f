"""Annual classification rasters in and out: finding the years, checking they agree, writing COGs.

Reading turns any categorical map (our own 30/0/255 COGs, MapBiomas land-cover maps) into the
pipeline's 0 / 1 / 255 classes; writing makes the output COGs of DESIGN.md §2 through rasterio's
COG driver, and publishes them atomically through Beam's FileSystems (local paths and gs:// alike).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.filters import MINING, NOT_MINING, NOT_OBSERVED

OUTPUT_MINING = 30
OUTPUT_NOT_MINING = 0
OUTPUT_NODATA = 255
ORIGIN_YEAR_OFFSET = 1900
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


def _year_from_tags(path: str) -> int | None:
    with rasterio.open(path) as src:
        tags = src.tags()
    for key in ("year", "YEAR", "Year"):
        if key in tags:
            try:
                return int(str(tags[key]).strip())
            except ValueError:
                raise UserError(f"{path}: tag {key}={tags[key]!r} is not a year") from None
    return None


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Expand folders (their GeoTIFFs) and glob patterns into a sorted list of files."""
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.endswith(RASTER_SUFFIXES))
            if not found:
                raise UserError(f"{item}: folder holds no GeoTIFF (*.tif, *.tiff)")
            files.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
            if not found:
                raise UserError(f"{item}: pattern matches no file")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    return files


def find_annual_rasters(inputs: Sequence[str], years: Sequence[int] | None = None) -> dict[int, str]:
    """Map each year to its raster: year from the file name, else from a `year` tag.

    Refuses a file with no year, two files for one year, and (when `years` is given, or always
    for the span found) a year missing from the range.
    """
    by_year: dict[int, str] = {}
    for path in expand_inputs(inputs):
        year = year_from_name(path)
        if year is None:
            try:
                year = _year_from_tags(path)
            except rasterio.errors.RasterioIOError as error:
                raise UserError(f"{path}: not a readable raster ({error})") from None
        if year is None:
            raise UserError(f"{path}: no year in the file name and no 'year' tag")
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
        try:
            with rasterio.open(path) as src:
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
        except rasterio.errors.RasterioIOError as error:
            raise UserError(f"{path}: not a readable raster ({error})") from None
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


def classes_to_output(classes: np.ndarray) -> np.ndarray:
    """Pipeline classes 0 / 1 / 255 → output values 0 / 30 / 255 (DESIGN.md §2)."""
    out = np.full(classes.shape, OUTPUT_NODATA, dtype=np.uint8)
    out[classes == NOT_MINING] = OUTPUT_NOT_MINING
    out[classes == MINING] = OUTPUT_MINING
    return out


def origin_to_band(origin: np.ndarray, years: Sequence[int]) -> np.ndarray:
    """Gap-fill origin indices (255 = none) → a uint8 band of origin year − 1900 (255 = none)."""
    lookup = np.full(256, OUTPUT_NODATA, dtype=np.uint8)
    for index, year in enumerate(years):
        offset = year - ORIGIN_YEAR_OFFSET
        if not 0 <= offset < 255:
            raise ValueError(f"year {year} does not fit the origin band (1900–2154)")
        lookup[index] = offset
    return lookup[origin]


def encode_cog(
    bands: Sequence[np.ndarray],
    crs,
    transform: Affine,
    tags: Mapping[str, str],
    descriptions: Sequence[str],
    offsets: Sequence[float] | None = None,
    blocksize: int = 256,
    compress: str = "DEFLATE",
) -> bytes:
    """A Cloud-Optimized GeoTIFF (uint8, nodata 255, NEAREST overviews) of the bands, as bytes.

    rasterio's COG driver stages the pixels itself and builds the COG layout on close.
    """
    with MemoryFile() as cog:
        with rasterio.open(
            cog.name,
            "w",
            driver="COG",
            dtype="uint8",
            count=len(bands),
            height=bands[0].shape[0],
            width=bands[0].shape[1],
            crs=crs,
            transform=transform,
            nodata=OUTPUT_NODATA,
            blocksize=blocksize,
            compress=compress,
            overview_resampling="nearest",
            resampling="nearest",
            bigtiff="IF_SAFER",
        ) as dst:
            for index, band in enumerate(bands, start=1):
                dst.write(band.astype(np.uint8, copy=False), index)
                dst.set_band_description(index, descriptions[index - 1])
            if offsets is not None:
                dst.offsets = tuple(offsets)
            dst.update_tags(**{"software": "mining-mapper", "software_version": __version__, **{k: str(v) for k, v in tags.items()}})
        return cog.read()


def write_atomically(path: str, data: bytes) -> None:
    """Write bytes to `path` (local or any Beam filesystem) under a temporary name, then rename.

    A reader never sees a partial file, and a retried or repeated write leaves one complete file.
    """
    publish_atomically({path: data})


def publish_atomically(files: Mapping[str, bytes | os.PathLike]) -> None:
    """Write several files as one step: all under temporary names first, then each renamed into place.

    A value is the file's bytes, or a local file to stream (large COGs need not be held in memory).
    If any write fails, every temporary is removed and no final name is touched, so a failed run
    never leaves a half-written output set. Works for local paths and gs:// through Beam's FileSystems
    (a rename onto an existing object replaces it, locally and on Cloud Storage).
    """
    from apache_beam.io.filesystems import FileSystems

    staged: dict[str, str] = {}
    try:
        for path, data in files.items():
            directory, name = path.rsplit("/", 1) if "://" in path else os.path.split(path)
            temporary = f"{directory}/.{name}.partial-{uuid.uuid4().hex}" if "://" in path else os.path.join(directory, f".{name}.partial-{uuid.uuid4().hex}")
            staged[temporary] = path
            try:
                with FileSystems.create(temporary) as handle:
                    if isinstance(data, (bytes, bytearray)):
                        handle.write(data)
                    else:
                        with open(data, "rb") as source:
                            shutil.copyfileobj(source, handle, 8 << 20)
            except OSError as error:
                if error.filename is None and error.errno is not None:  # a failed write (full disk) names no file
                    raise OSError(error.errno, error.strerror, path) from error
                raise
    except BaseException:
        leftovers = [t for t in staged if FileSystems.exists(t)]
        if leftovers:
            FileSystems.delete(leftovers)
        raise
    FileSystems.rename(list(staged), list(staged.values()))
