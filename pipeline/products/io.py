"""Paths, discovery and publishing for the products: one place that knows local paths from ``gs://``.

Rasters are opened through GDAL, which reads ``gs://bucket/key`` as ``/vsigs/bucket/key``; listings and
writes go through Beam's FileSystems, which handle both schemes. Outputs are published atomically: each
file is written under a temporary name and renamed only once every file of the set is complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import rasterio

from pipeline.errors import UserError
from pipeline.rasters import RASTER_SUFFIXES, year_from_name

REMOTE_PREFIXES = ("gs://",)


def is_remote(path: str) -> bool:
    """True for a path that GDAL and Beam reach over the network (``gs://``)."""
    return str(path).startswith(REMOTE_PREFIXES)


def gdal_path(path: str) -> str:
    """The name GDAL opens: ``gs://b/k`` → ``/vsigs/b/k``; local paths unchanged."""
    path = str(path)
    if path.startswith("gs://"):
        return "/vsigs/" + path[len("gs://"):]
    return path


def join(directory: str, *names: str) -> str:
    """Join path parts with '/' for remote paths and os.path.join for local ones."""
    directory = str(directory)
    if is_remote(directory):
        return "/".join([directory.rstrip("/"), *[n.strip("/") for n in names]])
    return os.path.join(directory, *names)


def basename(path: str) -> str:
    """The last component of a local or remote path."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(str(path))


def parent_name(path: str) -> str:
    """The name of the folder holding `path` (local or remote)."""
    path = str(path)
    if is_remote(path):
        parts = path.rstrip("/").split("/")
        return parts[-2] if len(parts) > 3 else ""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


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
    from apache_beam.io.filesystems import FileSystems

    try:
        results = FileSystems.match([pattern])
    except Exception as error:  # Beam raises BeamIOError with per-pattern causes
        raise UserError(f"{pattern}: cannot list ({error})") from None
    return sorted(m.path for r in results for m in r.metadata_list)


def list_rasters(inputs: Sequence[str]) -> list[str]:
    """Expand files, folders (searched recursively) and glob patterns, local or gs://, into GeoTIFF paths.

    Hidden files (a leading '.', e.g. the temporaries of an interrupted publish) are skipped.
    """
    found: list[str] = []
    for item in inputs:
        item = str(item)
        if is_remote(item):
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
    """Every annual raster among the inputs, sorted by (grid, year); refuses two rasters for one grid-year."""
    refs = [describe_raster(p) for p in list_rasters(inputs)]
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


def read_bytes(path: str) -> bytes:
    """The bytes of a local or remote file, with a UserError naming it when it cannot be read."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        try:
            with FileSystems.open(path) as handle:
                return handle.read()
        except Exception as error:
            raise UserError(f"{path}: cannot read ({error})") from None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None


def exists(path: str) -> bool:
    """Whether a local or remote file exists."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.exists(path)


def read_json(path: str):
    """A JSON document from a local or remote file; a UserError names the file when it is not JSON."""
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def publish(files: Mapping[str, bytes | os.PathLike]) -> None:
    """Write a set of outputs atomically (see `pipeline.rasters.publish_atomically`)."""
    from pipeline.rasters import publish_atomically

    publish_atomically({str(path): data for path, data in files.items()})


def relative_href(target: str, start_dir: str) -> str:
    """A link from a page in `start_dir` to `target`: relative for local files, the URL for gs:// ones."""
    if is_remote(target):
        return "https://storage.cloud.google.com/" + str(target)[len("gs://"):]
    if is_remote(start_dir):
        return os.path.abspath(target)
    return os.path.relpath(os.path.abspath(target), os.path.abspath(start_dir)).replace(os.sep, "/")
