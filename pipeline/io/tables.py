"""The method's lookup tables, kept as data in `pipeline/data/` and read here (no Earth Engine import).

* `prevalence.json`: class code → prevalence rank (DESIGN.md §5, appendix Table 5).
* `class_id.json`: mining type and substance codes (DESIGN.md §6, appendix Table 3), the substance names of
  the occurrence sources and the fields that give the mining type. The Earth Engine aggregation
  (`pipeline.earthengine.poststeps`) and the local class_id classifier both read it through
  `load_class_id_table`, so both resolve an occurrence to the same code.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
PREVALENCE_PATH = DATA_DIR / "prevalence.json"
CLASS_ID_PATH = DATA_DIR / "class_id.json"


def _read_json(path: Path) -> dict:
    """Read a JSON object from `path`, naming the file in any error."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object at the top level")
    return document


def load_prevalence_table(path: str | Path | None = None) -> dict[int, int]:
    """Class code → prevalence rank (1 = strongest), in the table's order; validated for duplicates."""
    path = Path(path) if path is not None else PREVALENCE_PATH
    document = _read_json(path)
    entries = document.get("classes")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: 'classes' must be a non-empty list of {{class, rank}} objects")
    ranks: dict[int, int] = {}
    for position, entry in enumerate(entries):
        try:
            code, rank = int(entry["class"]), int(entry["rank"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{path}: classes[{position}] needs integer 'class' and 'rank'") from error
        if code in ranks:
            raise UserError(f"{path}: class {code} is listed twice")
        ranks[code] = rank
    if len(set(ranks.values())) != len(ranks):
        raise UserError(f"{path}: two classes share a rank; ranks must be distinct")
    return ranks


def normalize_name(value: object) -> str:
    """Upper-case, trimmed, single-spaced form of a source's text value, used for every table lookup."""
    return re.sub(r"\s+", " ", str(value)).strip().upper()


@dataclass(frozen=True)
class ClassIdTable:
    """Appendix Table 3 as data: ordered codes, substance names and the fields that give the mining type."""

    codes: tuple[dict, ...]
    unidentified: int
    substances: dict[str, dict]
    type_fields: dict[str, dict[str, str]]
    _by_name: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def order(self) -> dict[int, int]:
        """Code → position in the table (ties between equally frequent occurrences go to the smaller)."""
        return {entry["code"]: position for position, entry in enumerate(self.codes)}

    def substance_of(self, name: object) -> str | None:
        """The substance key (e.g. 'gold') of a source's substance name (e.g. 'MINÉRIO DE OURO'), or None."""
        return self._by_name.get(normalize_name(name))

    def type_of(self, field_name: str, value: object) -> str | None:
        """'industrial' or 'garimpo' from a source's type field (e.g. FASE='LAVRA GARIMPEIRA'), or None."""
        mapping = self.type_fields.get(field_name, {})
        return mapping.get(normalize_name(value))

    def code_for(self, mining_type: str | None, substance: str | None) -> int | None:
        """The class_id of one occurrence: exact (type, substance), else the type's group code, else 301.

        Returns None when the type or the substance is unknown (the occurrence is not usable).
        """
        if mining_type is None or substance is None:
            return None
        group = self.substances.get(substance, {}).get("group")
        for entry in self.codes:
            if entry["type"] == mining_type and entry["substance"] == substance:
                return entry["code"]
        for entry in self.codes:
            if entry["type"] == mining_type and entry["substance"] is None and entry["group"] == group:
                return entry["code"]
        return self.unidentified

    def name_code_pairs(self, type_field: str) -> dict[tuple[str, str], int]:
        """(type value, substance name) → code for every pair the table resolves, for server-side lookups."""
        pairs = {}
        for type_value, mining_type in self.type_fields.get(type_field, {}).items():
            for name, substance in self._by_name.items():
                code = self.code_for(mining_type, substance)
                if code is not None:
                    pairs[(type_value, name)] = code
        return pairs


def load_class_id_table(path: str | Path | None = None) -> ClassIdTable:
    """Read and validate `class_id.json` (codes unique, types known, every substance has a group)."""
    path = Path(path) if path is not None else CLASS_ID_PATH
    document = _read_json(path)
    try:
        codes = tuple(
            {
                "code": int(entry["code"]),
                "type": entry["type"],
                "group": entry["group"],
                "substance": entry["substance"],
                "name": str(entry["name"]),
                # Table 3's three levels, in Portuguese as published (null for 301, not in Table 3).
                "level_1": entry.get("level_1"),
                "level_2": entry.get("level_2"),
                "level_3": entry.get("level_3"),
            }
            for entry in document["codes"]
        )
        unidentified = int(document["unidentified"])
        substances = dict(document["substances"])
        type_fields = {name: dict(values) for name, values in document["type_fields"].items()}
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{path}: malformed class_id table ({error!r})") from error
    seen = [entry["code"] for entry in codes]
    if len(set(seen)) != len(seen):
        raise UserError(f"{path}: a code is listed twice in 'codes'")
    if unidentified not in seen:
        raise UserError(f"{path}: the 'unidentified' code {unidentified} is not in 'codes'")
    for entry in codes:
        if entry["type"] not in ("industrial", "garimpo", None):
            raise UserError(f"{path}: code {entry['code']}: type must be industrial, garimpo or null")
    for entry in codes:
        if entry["substance"] is not None and entry["substance"] not in substances:
            raise UserError(f"{path}: code {entry['code']} names substance {entry['substance']!r}, which 'substances' does not define")
    by_name: dict[str, str] = {}
    for substance, spec in substances.items():
        if "group" not in spec or not isinstance(spec.get("names"), list):
            raise UserError(f"{path}: substance {substance!r} needs a 'group' and a list of 'names'")
        for name in spec["names"]:
            key = normalize_name(name)
            if key in by_name and by_name[key] != substance:
                raise UserError(f"{path}: name {name!r} maps to both {by_name[key]!r} and {substance!r}")
            by_name[key] = substance
    for field_name, mapping in type_fields.items():
        for value, mining_type in mapping.items():
            if mining_type not in ("industrial", "garimpo"):
                raise UserError(f"{path}: type_fields.{field_name}.{value}: must be industrial or garimpo")
    normalized_types = {
        field_name: {normalize_name(value): mining_type for value, mining_type in mapping.items()}
        for field_name, mapping in type_fields.items()
    }
    return ClassIdTable(codes, unidentified, substances, normalized_types, by_name)
