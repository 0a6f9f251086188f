"""The layout of one Earth Engine TFRecord image export on disk: its folder, mixer and shards (DESIGN §2).

One export per (grid, year) lies in `{exports}/{grid}/{year}/`: shards `{prefix}-NNNNN.tfrecord.gz`
(or plain `.tfrecord`, or a single un-numbered `{prefix}.tfrecord[.gz]`) and `{prefix}-mixer.json`.
The mixer gives the export's geometry (`parse_mixer` → `ExportGeometry`); the kernel buffer is not in
the mixer and is learnt from the records' size by the reader. Files are reached through
`pipeline.io.filesystem`, so `gs://` paths work the same as local ones.
"""
from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re

from pipeline.elements import ExportGeometry
from pipeline.errors import ExportError, ExportFormatError, MissingExportError, UserError
from pipeline.io import filesystem
from pipeline.io.filesystem import join as _join

log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^(?P<prefix>.*?)(?:-(?P<number>\d+))?\.tfrecord(?P<gz>\.gz)?$")
_MIXER_RE = re.compile(r"^(?P<prefix>.*?)-?mixer\.json$")


def _read_bytes(path: str) -> bytes:
    """A file of an export; ExportError (so the reader dead-letters it) when it cannot be read."""
    try:
        return filesystem.read_bytes(path)
    except UserError as error:
        raise ExportError(str(error)) from None


def _list_sizes(folder: str) -> dict[str, int]:
    """name -> size of the files in an export folder; ExportError when it cannot be listed."""
    try:
        return filesystem.list_sizes(folder)
    except UserError as error:
        raise ExportError(str(error)) from None


def export_dir_of(exports_root: str, grid: str, year: int) -> str:
    """`{exports_root}/{grid}/{year}` (local or gs://)."""
    return _join(exports_root, str(grid), str(year))


def _mixer_name(source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<mixer bytes>"


def parse_mixer(source: str | os.PathLike | bytes, grid: str, year: int, *, name: str | None = None) -> ExportGeometry:
    """Read an Earth Engine export mixer (a path, local or gs://, or its bytes) into an ExportGeometry.

    Checks `projection.crs` (or `projection.wkt`), `projection.affine.doubleMatrix` (6 finite numbers,
    not degenerate), square `patchDimensions`, `patchesPerRow` and `totalPatches` (positive integers).
    Errors are ExportFormatError naming the file and the key. The kernel is not in the mixer: it is
    0 here and set from the records' size by the reader (`ExportGeometry.with_kernel`).
    """
    label = name or _mixer_name(source)
    if isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
    else:
        raw = _read_bytes(os.fspath(source))
    try:
        mixer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportFormatError(f"{label}: not a JSON mixer ({error})") from None
    if not isinstance(mixer, dict):
        raise ExportFormatError(f"{label}: the mixer is not a JSON object")

    def get(*keys):
        node = mixer
        for i, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                raise ExportFormatError(f"{label}: mixer has no '{'.'.join(keys[: i + 1])}'")
            node = node[key]
        return node

    projection = get("projection")
    crs = projection.get("crs") if isinstance(projection, dict) else None
    if crs is None and isinstance(projection, dict):
        crs = projection.get("wkt")
    if not isinstance(crs, str) or not crs:
        raise ExportFormatError(f"{label}: mixer has no 'projection.crs' (nor 'projection.wkt')")
    matrix = get("projection", "affine", "doubleMatrix")
    if (
        not isinstance(matrix, list)
        or len(matrix) != 6
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in matrix)
    ):
        raise ExportFormatError(f"{label}: 'projection.affine.doubleMatrix' must be 6 finite numbers, got {matrix!r}")
    a, b, _, d, e, _ = matrix
    if a * e - b * d == 0:
        raise ExportFormatError(f"{label}: 'projection.affine.doubleMatrix' {matrix!r} is degenerate (zero pixel size)")
    dims = get("patchDimensions")
    if not (isinstance(dims, list) and len(dims) == 2 and all(_positive_int(v) for v in dims)):
        raise ExportFormatError(f"{label}: 'patchDimensions' must be two positive integers, got {dims!r}")
    if dims[0] != dims[1]:
        raise ExportFormatError(f"{label}: patchDimensions {dims} are not square; the pipeline needs square patches")
    per_row = get("patchesPerRow")
    total = get("totalPatches")
    for key, value in (("patchesPerRow", per_row), ("totalPatches", total)):
        if not _positive_int(value):
            raise ExportFormatError(f"{label}: '{key}' must be a positive integer, got {value!r}")
    return ExportGeometry(
        grid=str(grid),
        year=int(year),
        crs=crs,
        transform=tuple(float(v) for v in matrix),
        patch_size=int(dims[0]),
        patches_per_row=int(per_row),
        total_patches=int(total),
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0



def shard_number(path: str) -> int | None:
    """The shard number of `prefix-NNNNN.tfrecord[.gz]`, or None for an un-numbered single file."""
    match = _SHARD_RE.match(posixpath.basename(path))
    if not match:
        raise ValueError(f"{path}: not a TFRecord shard name")
    return int(match.group("number")) if match.group("number") is not None else None


def _looks_like_mixer(folder: str, name: str) -> bool:
    try:
        mixer = json.loads(_read_bytes(_join(folder, name)).decode("utf-8"))
    except (ExportError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(mixer, dict) and {"projection", "patchDimensions", "patchesPerRow", "totalPatches"} <= set(mixer)


def list_export(export_dir: str) -> tuple[str, list[str]]:
    """(mixer path, shard paths sorted by shard number) of the export in `export_dir`.

    The mixer is the folder's `*mixer.json`; failing that, its only `.json` file when that file has
    the mixer's keys (e.g. servir-aces' `image_2021.json`). Shards are the `.tfrecord[.gz]` files
    with the mixer's prefix (`{prefix}-NNNNN.tfrecord[.gz]` or a single `{prefix}.tfrecord[.gz]`), so
    other TFRecords lying beside it (table exports) are ignored. MissingExportError when the folder
    is empty or absent or has no mixer; ExportFormatError when several mixers or an un-numbered file
    beside numbered shards make the export ambiguous. An empty shard list is returned as such (the
    reader reports it).
    """
    files = _list_sizes(export_dir)
    if not files:
        raise MissingExportError(f"{export_dir}: no such export folder (or it is empty)")
    mixers = sorted(n for n in files if _MIXER_RE.match(n))
    if len(mixers) > 1:
        raise ExportFormatError(f"{export_dir}: several mixers ({', '.join(mixers)}); one export per folder")
    if mixers:
        mixer = mixers[0]
        prefix = _MIXER_RE.match(mixer).group("prefix")
    else:
        jsons = sorted(n for n in files if n.endswith(".json"))
        if len(jsons) == 1 and _looks_like_mixer(export_dir, jsons[0]):
            mixer = jsons[0]
            prefix = mixer[: -len(".json")]
        else:
            raise MissingExportError(
                f"{export_dir}: no mixer (*mixer.json) in the export folder"
                + (f" (found {', '.join(jsons)}, not a single mixer)" if jsons else "")
            )
    shards: list[tuple[int, str]] = []
    unnumbered: list[str] = []
    others: list[str] = []
    for name in sorted(files):
        match = _SHARD_RE.match(name)
        if not match:
            continue
        if prefix and match.group("prefix") != prefix:
            others.append(name)
            continue
        if match.group("number") is None:
            unnumbered.append(name)
        else:
            shards.append((int(match.group("number")), name))
    if unnumbered and (shards or len(unnumbered) > 1):
        raise ExportFormatError(
            f"{export_dir}: ambiguous shards: {', '.join(unnumbered + [n for _, n in shards])} "
            "(a single un-numbered file or numbered shards, not both)"
        )
    numbers = [n for n, _ in shards]
    if len(set(numbers)) != len(numbers):
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})
        raise ExportFormatError(f"{export_dir}: shard number(s) {dupes} appear twice (.tfrecord and .tfrecord.gz?)")
    if not shards and not unnumbered and others:
        log.warning("%s: no shard named after the mixer prefix %r; ignoring %s", export_dir, prefix, ", ".join(others))
    names = [n for _, n in sorted(shards)] + unnumbered
    return _join(export_dir, mixer), [_join(export_dir, n) for n in names]



def _layout(geometry: ExportGeometry) -> tuple:
    """What every year of a grid must share so that its tiles line up across years (not the kernel)."""
    return (geometry.crs, tuple(geometry.transform), geometry.patch_size, geometry.patches_per_row, geometry.total_patches)


def _describe_layout(geometry: ExportGeometry) -> str:
    return (f"patchDimensions {geometry.patch_size}, patchesPerRow {geometry.patches_per_row}, "
            f"totalPatches {geometry.total_patches}, {geometry.crs} origin "
            f"({geometry.transform[2]:.6f}, {geometry.transform[5]:.6f})")


def contradicting_years(geometries) -> dict[tuple[str, int], str]:
    """(grid, year) → why, for every export whose mixer contradicts the rest of its grid.

    The temporal filters stack a tile across the years, so every year of a grid must have the same
    projection, origin, patch size and patch layout. The layout most years share is the grid's (a tie
    goes to the earliest year's); an export with another one has a mixer that contradicts the
    records of its grid (e.g. a wrong `patchDimensions`, which would otherwise crop its records to
    the wrong patch): it is refused, named in the reason, and the grid's other years go on.
    """
    by_grid: dict[str, list[ExportGeometry]] = {}
    for geometry in geometries:
        by_grid.setdefault(str(geometry.grid), []).append(geometry)
    refused: dict[tuple[str, int], str] = {}
    for grid, members in by_grid.items():
        members.sort(key=lambda g: int(g.year))
        votes: dict[tuple, list[ExportGeometry]] = {}
        for geometry in members:
            votes.setdefault(_layout(geometry), []).append(geometry)
        reference = max(votes.values(), key=lambda group: (len(group), -int(group[0].year)))[0]
        agreeing = len(votes[_layout(reference)])
        for geometry in members:
            if _layout(geometry) != _layout(reference):
                refused[(grid, int(geometry.year))] = (
                    f"the mixer ({_describe_layout(geometry)}; records {geometry.record_side}x{geometry.record_side}) "
                    f"contradicts grid {grid}'s other exports ({_describe_layout(reference)}; records "
                    f"{reference.record_side}x{reference.record_side}, in {agreeing} year(s) from {reference.year})"
                )
    return refused
