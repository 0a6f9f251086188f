"""Mineral-occurrence features (points or polygons) read for the class_id join of DESIGN.md §6.

A source is read with pyogrio (any OGR vector format: GeoPackage, Shapefile, GeoJSON…), its columns
are recognised through `pipeline/data/occurrence_fields.json` (SIGMINE-like: PROCESSO / FASE / SUBS;
GeoSGB-like: ID_OCORRENCIA / STATUS_ECONOMICO / SUBSTANCIAS), and each feature is resolved to a
Table 3 code through the shared `class_id.json` (type from the source's own field, substance name →
substance → code). Features whose type or substance the tables do not know are kept aside, counted,
and never used as evidence. The CRS may come as WKT only (no EPSG code): pyproj takes it as it is.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pyproj import CRS

from pipeline.errors import UserError

FIELDS_PATH = Path(__file__).resolve().parent.parent / "data" / "occurrence_fields.json"


@dataclasses.dataclass(frozen=True)
class FieldSchema:
    """Which columns of a source hold the feature id, the mining type, the substance and a label."""

    name: str
    id: tuple[str, ...]
    type: tuple[str, ...]
    substance: tuple[str, ...]
    label: tuple[str, ...]
    substance_separators: tuple[str, ...]


def load_field_schemas(path: str | Path | None = None) -> list[FieldSchema]:
    """The field mappings of `occurrence_fields.json`, validated."""
    path = Path(path) if path is not None else FIELDS_PATH
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        schemas = [
            FieldSchema(
                name=str(s["name"]),
                id=tuple(s["id"]),
                type=tuple(s["type"]),
                substance=tuple(s["substance"]),
                label=tuple(s.get("label", ())),
                substance_separators=tuple(s.get("substance_separators", ())),
            )
            for s in document["schemas"]
        ]
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{path}: malformed field mapping ({error!r})") from None
    if not schemas:
        raise UserError(f"{path}: 'schemas' is empty")
    return schemas


def _find_column(columns: Sequence[str], candidates: Sequence[str]) -> tuple[str, str] | None:
    """(actual column, schema spelling) of the first candidate present, compared case-insensitively."""
    by_upper = {c.upper(): c for c in columns}
    for candidate in candidates:
        if candidate.upper() in by_upper:
            return by_upper[candidate.upper()], candidate
    return None


def choose_schema(columns: Sequence[str], schemas: Sequence[FieldSchema], wanted: str | None, path: str) -> FieldSchema:
    """The schema named `wanted`, or the first whose type and substance columns the source has."""
    if wanted:
        named = [s for s in schemas if s.name == wanted]
        if not named:
            raise UserError(f"--fields {wanted!r}: unknown field mapping (known: {', '.join(s.name for s in schemas)})")
        schema = named[0]
        for role in ("type", "substance"):
            if _find_column(columns, getattr(schema, role)) is None:
                raise UserError(
                    f"{path}: no {role} column for the {schema.name} mapping (looked for {', '.join(getattr(schema, role))}; "
                    f"the file has {', '.join(columns)})"
                )
        return schema
    for schema in schemas:
        if _find_column(columns, schema.type) and _find_column(columns, schema.substance):
            return schema
    expected = "; ".join(f"{s.name}: {'/'.join(s.type)} + {'/'.join(s.substance)}" for s in schemas)
    raise UserError(f"{path}: its columns ({', '.join(columns)}) match no known occurrence source ({expected})")


@dataclasses.dataclass
class Occurrences:
    """Usable occurrence features in a metric CRS, with their id, type, substance and class_id."""

    path: str
    layer: str | None
    schema: str
    crs: CRS
    geometries: np.ndarray
    ids: list[str]
    types: list[str]
    substances: list[str]
    codes: np.ndarray
    total: int
    unused: Counter

    def to_crs(self, crs: CRS) -> Occurrences:
        """The same features reprojected (geometries only)."""
        import geopandas as gpd

        series = gpd.GeoSeries(self.geometries, crs=self.crs).to_crs(crs)
        return dataclasses.replace(self, crs=CRS.from_user_input(crs), geometries=np.asarray(series.values, dtype=object))


def _substance(table, raw, separators: Sequence[str]) -> str | None:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return None
    found = table.substance_of(raw)
    if found or not separators:
        return found
    parts = [str(raw)]
    for sep in separators:
        parts = [piece for part in parts for piece in part.split(sep)]
    for part in parts:
        found = table.substance_of(part)
        if found:
            return found
    return None


def read_occurrences(path: str, table, layer: str | None = None, fields: str | None = None, schemas_path: str | None = None) -> Occurrences:
    """Read an occurrence file and resolve each feature's class_id; clear errors for every bad input.

    Refuses an unreadable file, a file with several layers when none is named, an empty layer, a
    layer with no CRS, and columns matching no known source. Features with no geometry, or whose
    type or substance the tables do not know, are counted in `unused` (by reason) and left out.
    """
    import pyogrio

    from pipeline.io import filesystem as fs

    source = fs.gdal_path(path)
    try:
        layers = pyogrio.list_layers(source)
    except Exception as error:
        raise UserError(f"{path}: not a readable vector file ({error})") from None
    names = [str(row[0]) for row in layers]
    if not names:
        raise UserError(f"{path}: holds no layer")
    if layer is None:
        if len(names) > 1:
            raise UserError(f"{path}: holds several layers ({', '.join(names)}); name one with --layer")
        layer = names[0]
    elif layer not in names:
        raise UserError(f"{path}: no layer {layer!r} (layers: {', '.join(names)})")
    try:
        frame = pyogrio.read_dataframe(source, layer=layer)
    except Exception as error:
        raise UserError(f"{path}: layer {layer!r} cannot be read ({error})") from None
    if len(frame) == 0:
        raise UserError(f"{path}: layer {layer!r} holds no features")
    if frame.crs is None:
        raise UserError(f"{path}: layer {layer!r} has no CRS; distances to the mining maps cannot be measured")
    crs = CRS.from_user_input(frame.crs)
    columns = [c for c in frame.columns if c != frame.geometry.name]
    schema = choose_schema(columns, load_field_schemas(schemas_path), fields, path)
    type_column, type_field = _find_column(columns, schema.type)
    substance_column, _ = _find_column(columns, schema.substance)
    id_found = _find_column(columns, schema.id)
    unused: Counter = Counter()
    keep, ids, types, substances, codes = [], [], [], [], []
    for index, (geometry, type_value, substance_value) in enumerate(
        zip(frame.geometry.values, frame[type_column].values, frame[substance_column].values)
    ):
        if geometry is None or geometry.is_empty:
            unused["no geometry"] += 1
            continue
        mining_type = table.type_of(type_field, type_value) if type_value is not None else None
        if mining_type is None:
            unused[f"{type_field}={type_value} is no mining type"] += 1
            continue
        substance = _substance(table, substance_value, schema.substance_separators)
        if substance is None:
            unused[f"unknown substance {substance_value}"] += 1
            continue
        code = table.code_for(mining_type, substance)
        keep.append(index)
        ids.append(str(frame[id_found[0]].values[index]) if id_found else f"feature {index}")
        types.append(mining_type)
        substances.append(substance)
        codes.append(code)
    return Occurrences(
        path=str(path),
        layer=layer,
        schema=schema.name,
        crs=crs,
        geometries=np.asarray(frame.geometry.values[keep], dtype=object) if keep else np.empty(0, dtype=object),
        ids=ids,
        types=types,
        substances=substances,
        codes=np.asarray(codes, dtype=np.int64),
        total=len(frame),
        unused=unused,
    )
