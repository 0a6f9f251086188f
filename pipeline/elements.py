"""The keys and elements that flow between the pipeline's PTransforms, in stage order.

    (grid, year) asked for                                  GridYearKey
      │ ReadEarthEngineExports (transforms/read.py)
      ├─► (PatchKey, ExportPatch)          one record: bands with the kernel buffer, observed mask
      │   or (GridYearKey, GridYearRecords) every record of the export, for large-tile inference
      ├─► (GridYearKey, ExportGeometry)    the export's mixer geometry and kernel
      ├─► (GridYearKey, MissingExport)     no export folder or mixer
      └─► (GridYearKey, DeadLetter)        a record, shard or mixer that could not be read, and why
      │ DecideRawReuse (transforms/raw.py), before reading: a grid-year with a matching raw result
      │   becomes its (PatchKey, ClassifiedPatch) and (GridYearKey, ExportGeometry) directly; every
      │   grid-year gets a (GridYearKey, RawDecision); the others are read and classified
      │ ClassifyPatches (transforms/inference.py)
      └─► (PatchKey, ClassifiedPatch)      classes 0 / 1 / 255 and probability × 255 of the core
      │ TemporalFilterTiles (transforms/filtering.py): grouped by TileKey across years
      └─► TileSeries                       one tile, every year, after gap fill and temporal filter
      │ SpatialFrequencyTiles: each tile joined with the HaloStrips its neighbours send it (TileKey)
      └─► (GridYearKey, YearTile)          one tile of one year after every filter
      │ WriteGridYears (transforms/write.py): joined per GridYearKey with geometry, missing, dead letters
      └─► GridYearStatus                   written / skipped / failed, with areas (into summary.json)

Every key is built here, by the constructors below (`ExportPatch.key`, `ClassifiedPatch.key`,
`TileKey.of`, `GridYearKey.of`). Keys are NamedTuples of str and int with a deterministic Beam coder
each (registered at import when Beam is installed), so GroupByKey and CoGroupByKey group them the same
on every worker. Elements are frozen dataclasses: Beam pickles them (a non-frozen dataclass would be
turned into a schema row), and their serialisation methods are not called `as_dict` for the same reason.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np

try:
    from apache_beam import coders
except ImportError:  # the inference code (model/tiling.py) also runs where Beam is not installed
    coders = None

from pipeline.contract import crop_buffer

# ----------------------------------------------------------------------------------------------------
# Keys


class GridYearKey(NamedTuple):
    """One export and one output raster: a grid cell in one year."""

    grid: str
    year: int

    @classmethod
    def of(cls, element) -> GridYearKey:
        """The (grid, year) of any element that has `grid` and `year` attributes."""
        return cls(str(element.grid), int(element.year))


class PatchKey(NamedTuple):
    """One patch of one export: (grid, year, patch index in the export's record order)."""

    grid: str
    year: int
    index: int

    @property
    def grid_year(self) -> GridYearKey:
        """The (grid, year) this patch belongs to."""
        return GridYearKey(self.grid, self.year)


class TileKey(NamedTuple):
    """One tile across the years: (grid, patch row, patch column)."""

    grid: str
    row: int
    col: int

    @classmethod
    def of(cls, element) -> TileKey:
        """The tile of any element that has `grid`, `row` and `col` attributes."""
        return cls(str(element.grid), int(element.row), int(element.col))


if coders is not None:  # Beam is there (everywhere but a bare inference machine): deterministic key coders

    class _KeyCoder(coders.Coder):
        """A deterministic coder for a NamedTuple key: its fields in order, with Beam's str and varint coders."""

        def __init__(self, key_type: type, field_coders: list[coders.Coder]):
            self._key_type = key_type
            self._tuple = coders.TupleCoder(field_coders)

        def encode(self, value) -> bytes:
            """The key's fields as bytes (equal keys, equal bytes)."""
            return self._tuple.encode(tuple(value))

        def decode(self, encoded: bytes):
            """The key back from its bytes."""
            return self._key_type(*self._tuple.decode(encoded))

        def is_deterministic(self) -> bool:
            """Equal keys always encode to equal bytes (required for grouping)."""
            return True

        def to_type_hint(self):
            """The key type this coder encodes."""
            return self._key_type

        def __eq__(self, other) -> bool:
            return type(self) is type(other)

        def __hash__(self) -> int:
            return hash(type(self))


    class GridYearKeyCoder(_KeyCoder):
        """Deterministic coder of GridYearKey."""

        def __init__(self):
            super().__init__(GridYearKey, [coders.StrUtf8Coder(), coders.VarIntCoder()])


    class PatchKeyCoder(_KeyCoder):
        """Deterministic coder of PatchKey."""

        def __init__(self):
            super().__init__(PatchKey, [coders.StrUtf8Coder(), coders.VarIntCoder(), coders.VarIntCoder()])


    class TileKeyCoder(_KeyCoder):
        """Deterministic coder of TileKey."""

        def __init__(self):
            super().__init__(TileKey, [coders.StrUtf8Coder(), coders.VarIntCoder(), coders.VarIntCoder()])


    for _key, _coder in ((GridYearKey, GridYearKeyCoder), (PatchKey, PatchKeyCoder), (TileKey, TileKeyCoder)):
        coders.registry.register_coder(_key, _coder)


# ----------------------------------------------------------------------------------------------------
# Read: geometry, patches, what could not be read


@dataclass(frozen=True)
class ExportGeometry:
    """Where an export's patches lie: the mixer's projection and patch layout, plus the kernel buffer.

    `transform` is the mixer's `projection.affine.doubleMatrix` in affine order (a, b, c, d, e, f):
    x = a * col + b * row + c, y = d * col + e * row + f, for the top-left corner of the unbuffered
    patch grid (so `affine.Affine(*transform)` and rasterio accept it as is). `kernel` is K, the total
    buffer (K/2 pixels on each side of a patch), so records are (patch_size + kernel) pixels square.
    """

    grid: str
    year: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    patch_size: int
    patches_per_row: int
    total_patches: int
    kernel: int = 0

    @property
    def rows(self) -> int:
        """Number of patch rows: ceil(total_patches / patches_per_row)."""
        return -(-self.total_patches // self.patches_per_row)

    @property
    def record_side(self) -> int:
        """Pixels along one side of a record: patch_size + kernel."""
        return self.patch_size + self.kernel

    @property
    def width(self) -> int:
        """Width in pixels of the unbuffered patch grid."""
        return self.patches_per_row * self.patch_size

    @property
    def height(self) -> int:
        """Height in pixels of the unbuffered patch grid."""
        return self.rows * self.patch_size

    def patch_position(self, index: int) -> tuple[int, int]:
        """(patch row, patch column) of patch `index`; an IndexError outside 0 .. total_patches - 1."""
        if not 0 <= index < self.total_patches:
            raise IndexError(f"patch {index} outside 0..{self.total_patches - 1} of grid {self.grid} year {self.year}")
        return divmod(index, self.patches_per_row)

    def _shifted(self, col_px: float, row_px: float) -> tuple[float, float, float, float, float, float]:
        a, b, c, d, e, f = self.transform
        return (a, b, a * col_px + b * row_px + c, d, e, d * col_px + e * row_px + f)

    def patch_transform(self, index: int) -> tuple[float, float, float, float, float, float]:
        """Affine (a, b, c, d, e, f) of patch `index`'s unbuffered top-left pixel corner."""
        row, col = self.patch_position(index)
        return self._shifted(col * self.patch_size, row * self.patch_size)

    def record_transform(self, index: int) -> tuple[float, float, float, float, float, float]:
        """Affine of the record of patch `index`, buffer included (K/2 pixels up and left of the patch)."""
        row, col = self.patch_position(index)
        half = self.kernel // 2
        return self._shifted(col * self.patch_size - half, row * self.patch_size - half)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the unbuffered patch grid in the export's CRS."""
        a, b, c, d, e, f = self.transform
        xs, ys = [], []
        for col, row in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height)):
            xs.append(a * col + b * row + c)
            ys.append(d * col + e * row + f)
        return (min(xs), min(ys), max(xs), max(ys))

    def with_kernel(self, kernel: int) -> ExportGeometry:
        """The same geometry with the kernel buffer K (as read from the records)."""
        return replace(self, kernel=int(kernel))



@dataclass(frozen=True, eq=False)
class ExportPatch:
    """One patch of an export: its key, position, and the record's bands with the kernel buffer kept.

    `bands` is float32 (S, S, B) with S = patch + kernel, in the preset's band order, not-observed
    pixels filled with 0; `observed` is bool (S, S). The model sees the whole record (context);
    `core()` crops the buffer back to the patch. `out_of_range` counts the core's pixels not observed
    because a band held a value outside the preset's stored range (a broken export, not a cloud).
    """

    grid: str
    year: int
    index: int
    row: int
    col: int
    kernel: int
    bands: np.ndarray = field(repr=False)
    observed: np.ndarray = field(repr=False)
    out_of_range: int = 0

    @property
    def key(self) -> PatchKey:
        """The patch's key in the pipeline."""
        return PatchKey(self.grid, self.year, self.index)

    def core(self) -> tuple[np.ndarray, np.ndarray]:
        """(bands, observed) of the unbuffered patch (views)."""
        return crop_buffer(self.bands, self.kernel), crop_buffer(self.observed, self.kernel)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ExportPatch):
            return NotImplemented
        return (
            (self.grid, self.year, self.index, self.row, self.col, self.kernel, self.out_of_range)
            == (other.grid, other.year, other.index, other.row, other.col, other.kernel, other.out_of_range)
            and np.array_equal(self.bands, other.bands, equal_nan=True)
            and np.array_equal(self.observed, other.observed)
        )

    __hash__ = None  # holds arrays


@dataclass(frozen=True)
class DeadLetter:
    """Something that could not be read, and why; `record` is the patch index (or None for a file)."""

    grid: str
    year: int
    file: str
    record: int | None
    reason: str
    incomplete: bool = False
    """True when a file that may still land would answer it (no shard yet, a shard number missing, fewer
    records than the mixer says): the streaming job waits for such an export instead of failing it."""

    def to_record(self) -> dict:
        """The dead-letter line: {grid, year, file, record, reason} (not `as_dict`: Beam would infer a schema row)."""
        return {"grid": self.grid, "year": self.year, "file": self.file, "record": self.record, "reason": self.reason}

    def to_json(self) -> str:
        """The dead-letter line as one line of JSON (dead_letter.jsonl)."""
        return json.dumps(self.to_record())


def encode_dead_letters(letters: Iterable[DeadLetter]) -> bytes:
    """dead_letter.jsonl: one JSON line per dead letter, by grid, year, file and record (file-level first)."""
    ordered = sorted(letters, key=lambda d: (d.grid, d.year, d.file, -1 if d.record is None else d.record))
    return "".join(d.to_json() + "\n" for d in ordered).encode()


def decode_dead_letters(data: bytes) -> list[DeadLetter]:
    """The dead letters of a dead_letter.jsonl file (`encode_dead_letters`)."""
    return [DeadLetter(**json.loads(line)) for line in data.decode().splitlines() if line.strip()]


@dataclass(frozen=True)
class MissingExport:
    """A (grid, year) whose export folder or mixer is absent."""

    grid: str
    year: int
    reason: str

ReadEvent = ExportPatch | ExportGeometry | DeadLetter | MissingExport


@dataclass(frozen=True)
class GridYearRecords:
    """Every readable record of one export with its geometry: what large-tile inference assembles."""

    geometry: ExportGeometry
    patches: tuple[ExportPatch, ...]


# ----------------------------------------------------------------------------------------------------
# Inference and filters


@dataclass(frozen=True)
class ClassifiedPatch:
    """One patch after inference: classes 0 / 1 / 255 and the probability as uint8 (p × 255)."""

    grid: str
    year: int
    index: int
    row: int
    col: int
    classes: np.ndarray
    probability: np.ndarray

    @property
    def key(self) -> PatchKey:
        """The patch's key in the pipeline."""
        return PatchKey(self.grid, self.year, self.index)

    @classmethod
    def of(cls, patch: ExportPatch, classes: np.ndarray, probability: np.ndarray) -> ClassifiedPatch:
        """The classified patch at the same place as an export patch."""
        return cls(patch.grid, patch.year, patch.index, patch.row, patch.col, classes, probability)


@dataclass(frozen=True)
class RawDecision:
    """Where a (grid, year)'s probabilities come from in this run: `reused` from its raw result (the file's
    fingerprint matched) or `inferred` (and `reason`, why no raw result was re-used), with the fingerprint."""

    grid: str
    year: int
    source: Literal["inferred", "reused"]
    fingerprint: str
    reason: str | None = None


@dataclass(frozen=True)
class TileSeries:
    """One tile across the run's years, after some stages of the filter chain."""

    grid: str
    row: int
    col: int
    years: tuple[int, ...]
    classes: np.ndarray
    origin: np.ndarray | None
    probability: np.ndarray | None
    mining_rows: dict[str, np.ndarray]


@dataclass(frozen=True)
class HaloStrip:
    """Pixels of one tile sent to a neighbour so that its spatial filter sees across the edge."""

    source_row: int
    source_col: int
    rows: slice
    cols: slice
    classes: np.ndarray


@dataclass(frozen=True)
class YearTile:
    """One tile of one year, ready to be placed into its (grid, year) raster."""

    grid: str
    year: int
    row: int
    col: int
    classes: np.ndarray
    origin: np.ndarray | None
    probability: np.ndarray | None
    mining_rows: dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------
# Write: what became of each (grid, year)

Status = Literal["written", "skipped", "failed"]
STATUSES: tuple[str, ...] = ("written", "skipped", "failed")


@dataclass(frozen=True)
class GridYearStatus:
    """What became of one (grid, year): written (with its output and areas), skipped or failed (with why).

    A written one also says whether its probabilities were `inferred` or `reused` from a raw result, the
    raw result's fingerprint, and why an available raw result was not re-used (`inference_reason`)."""

    grid: str
    year: int
    status: Status
    reason: str | None = None
    path: str | None = None
    mining_pixels: dict[str, int] | None = None
    mining_ha: dict[str, float] | None = None
    inference: Literal["inferred", "reused"] | None = None
    fingerprint: str | None = None
    inference_reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridYearStatus:
        """A status from its JSON object (unknown keys refused, so a schema change cannot pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))} in a grid-year status")
        return cls(**{**data, "grid": str(data["grid"]), "year": int(data["year"])})

    def to_record(self) -> dict[str, Any]:
        """The JSON object, without the fields that do not apply (not `as_dict`: Beam would infer a schema row)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

