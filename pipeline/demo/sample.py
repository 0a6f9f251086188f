"""Sample data: synthetic Earth Engine exports of annual Landsat mosaics over real Collection 9 grid cells.

No public Earth Engine export of the mining mosaic exists (../shared/data/README.md), so the demo and the
end-to-end tests run on generated exports that look like the real thing to the pipeline:

- the layout, names and formats of DESIGN §2: `{out}/exports/{grid}/{year}/{grid}_{year}-NNNNN.tfrecord.gz`
  (gzipped `tf.train.Example` records of packed float lists, (P + K)^2 values per band, row-major) and
  `{grid}_{year}-mixer.json` (EPSG:4326, 30 m pixels as Earth Engine converts them, the cell's real
  position on the Collection 9 lattice of DESIGN §1.3);
- the preset's bands in the stored scaling of the published code (reflectance x 255, index (x + 1) x 127,
  truncated to 0–255 like `toByte()`); masked pixels carry Earth Engine's default value 0 in every band;
- a landscape per grid: forest, savanna, a meandering river with sand bars, roads and pasture clearings
  that spread over the years, and mining pits (exposed tailings and turbid ponds) that open in given years
  and grow, turning the river turbid downstream; sensor eras (L5, L5+L7, 2012 L7-only with SLC-off
  stripes, L8/L9) with slightly different gains; cloud gaps more frequent in the early years; one fully
  masked patch;
- training patches `{out}/training/{grid}/{year}/training_{grid}_{year}-00000.tfrecord.gz` (the preset's
  bands plus `label` 0/1 and the patch centre `lon`/`lat`, P x P, no buffer) over other grid cells;
- the truth: `{out}/truth/{grid}/{year}_classes.npy` (uint8 0 not mining / 1 mining / 255 not observed,
  the unbuffered block) and `{year}_landcover.npy` (LANDCOVER codes, clouds ignored), and `{out}/sample.json`
  describing everything (no timestamps: the same seed gives the same bytes).

Pure numpy (+ scipy.ndimage); files are written through Beam's FileSystems, so `--output gs://…` works.
"""
from __future__ import annotations

import gzip
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from pipeline.earthengine.grid import C9_GRID
from pipeline.errors import UserError
from pipeline.contract import BAND_PRESETS, INDEX_FORMULAS, export_scaled
from pipeline.io.example import encode_example
from pipeline.io.tfrecord import frame_record

# ----------------------------------------------------------------------------------------------------
# Constants: the Collection 9 lattice, the export grid, land cover and its reflectances

C9_ORIGIN_LON = C9_GRID.origin_lon
C9_ORIGIN_LAT = C9_GRID.origin_lat
C9_STRIDE = C9_GRID.stride
PIXEL_DEGREES = 30.0 / (6378137.0 * 2 * math.pi / 360)  # a 30 m export in EPSG:4326, as Earth Engine converts it
CRS = "EPSG:4326"

FOREST, SAVANNA, WATER, BARE, PASTURE, MINING_SOIL, MINING_POND = 1, 2, 3, 4, 5, 6, 7
LANDCOVER = {
    FOREST: "forest",
    SAVANNA: "savanna",
    WATER: "water",
    BARE: "bare soil (sand bars, roads)",
    PASTURE: "pasture (cleared forest)",
    MINING_SOIL: "mining: exposed soil and tailings",
    MINING_POND: "mining: turbid pit water",
}
MINING_CODES = (MINING_SOIL, MINING_POND)

# Annual median TOA reflectance (green, red, nir, swir1) of each class: typical Landsat values over the Amazon.
REFLECTANCE_BANDS = ("green", "red", "nir", "swir1")
SIGNATURES = {
    FOREST: (0.045, 0.030, 0.290, 0.130),
    SAVANNA: (0.070, 0.075, 0.240, 0.230),
    WATER: (0.055, 0.040, 0.025, 0.012),
    BARE: (0.140, 0.190, 0.240, 0.310),
    PASTURE: (0.080, 0.090, 0.270, 0.250),
    MINING_SOIL: (0.160, 0.210, 0.250, 0.290),
    MINING_POND: (0.120, 0.135, 0.075, 0.040),
}
MIN_REFLECTANCE = 1.5 / 255  # every observed pixel stores >= 1 in every reflectance band (0 means masked)


@dataclass(frozen=True)
class Site:
    """A real mining region that a sample grid is placed on (approximate coordinates)."""

    name: str
    lon: float
    lat: float
    style: str  # "garimpo" (pits along a river) or "industrial" (large open pits)
    savanna: float  # share of savanna in the natural cover


SITES: tuple[Site, ...] = (
    Site("Tapajós garimpos near Itaituba (PA)", -56.4252, -5.9366, "garimpo", 0.10),
    Site("Quadrilátero Ferrífero, Itabira (MG)", -43.2300, -19.6300, "industrial", 0.60),
    Site("Garimpo do Lourenço, Calçoene (AP)", -51.6300, 2.3200, "garimpo", 0.15),
    Site("Carajás iron mines, Parauapebas (PA)", -50.1700, -6.0500, "industrial", 0.20),
    Site("Rio Crepori garimpos, Tapajós (PA)", -56.4870, -6.9670, "garimpo", 0.10),
    Site("Serra Pelada, Curionópolis (PA)", -49.6600, -5.9500, "garimpo", 0.30),
)
"""Sample grids use these sites in order (by default an Amazon garimpo and a Minas Gerais open-pit grid, so
the Minas Gerais model routing has a grid to route); training grids take the next ones. Positions from Amazon Mining
Watch polygons (../shared/data/labels) and the MapBiomas Lourenço rasters, or public maps (approximate)."""


def c9_grid_id(lon: float, lat: float) -> int:
    """Id of the Collection 9 cell whose stride square holds (lon, lat): col * 51 + row + 1 (DESIGN §1.3)."""
    try:
        return C9_GRID.cell_at(lon, lat)
    except ValueError:
        raise UserError(f"({lon}, {lat}) is outside the Collection 9 grid") from None


def c9_grid_bounds(grid_id: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of Collection 9 cell `grid_id`."""
    try:
        return C9_GRID.bounds(grid_id)
    except ValueError as error:
        raise UserError(str(error)) from None


# ----------------------------------------------------------------------------------------------------
# Options and layout


@dataclass(frozen=True)
class SampleSpec:
    """What to generate. `patches` is (patch columns, patch rows) per grid; sizes in pixels."""

    preset: str = "appendix"
    grids: int = 2
    years: tuple[int, int] = (1985, 2023)
    patch_size: int = 256
    kernel: int = 32
    patches: tuple[int, int] = (2, 2)
    records_per_shard: int = 2
    seed: int = 0
    training_grids: int = 2
    training_year_step: int = 6
    grid_ids: tuple[int, ...] = ()
    compress_level: int = 6

    def validate(self) -> None:
        """UserError for options the pipeline could not use (sizes, years, counts)."""
        if self.preset not in BAND_PRESETS:
            raise UserError(f"--band-preset {self.preset!r}: choose one of {', '.join(sorted(BAND_PRESETS))}")
        start, end = self.years
        if not 1984 <= start <= end <= 2100:
            raise UserError(f"--years {start}-{end}: expected START-END with 1984 <= START <= END")
        if self.patch_size < 16 or self.patch_size % 16:
            raise UserError(f"--patch-size {self.patch_size}: must be a multiple of 16 (U-Net depth 4), >= 16")
        if self.kernel < 0 or self.kernel % 2:
            raise UserError(f"--kernel {self.kernel}: must be even and >= 0 (K/2 pixels on each side)")
        if (self.patch_size + self.kernel) % 16:
            raise UserError(
                f"--patch-size {self.patch_size} + --kernel {self.kernel} = {self.patch_size + self.kernel}: "
                "records must be a multiple of 16 pixels for a depth-4 U-Net"
            )
        cols, rows = self.patches
        if cols < 1 or rows < 1 or cols * rows > 64:
            raise UserError(f"--patches {cols}x{rows}: between 1x1 and 64 patches per grid")
        if self.records_per_shard < 1:
            raise UserError(f"--records-per-shard {self.records_per_shard}: must be >= 1")
        if self.training_year_step < 1:
            raise UserError(f"--training-year-step {self.training_year_step}: must be >= 1")
        if self.grid_ids:
            for gid in self.grid_ids:
                c9_grid_bounds(gid)
            if len(set(self.grid_ids)) != len(self.grid_ids):
                raise UserError("--grid-ids: duplicate ids")
        else:
            if self.grids < 1:
                raise UserError(f"--grid-count {self.grids}: must be >= 1")
        if self.training_grids < 0:
            raise UserError(f"--training-grids {self.training_grids}: must be >= 0")
        if self._site_count() > len(SITES):
            raise UserError(
                f"--grid-count {self.grids} + --training-grids {self.training_grids}: at most {len(SITES)} sites "
                f"in all (or name grids with --grid-ids)"
            )
        if not 0 <= self.compress_level <= 9:
            raise UserError(f"compression level {self.compress_level}: 0-9")

    def _site_count(self) -> int:
        return (0 if self.grid_ids else self.grids) + self.training_grids

    @property
    def bands(self) -> tuple[str, ...]:
        """The preset's bands, in model order."""
        return BAND_PRESETS[self.preset]

    @property
    def year_list(self) -> list[int]:
        """Every exported year."""
        return list(range(self.years[0], self.years[1] + 1))

    @property
    def training_years(self) -> list[int]:
        """Years of the training patches: every `training_year_step`-th year and the last one."""
        years = self.year_list[:: self.training_year_step]
        if years[-1] != self.years[1]:
            years.append(self.years[1])
        return years


@dataclass(frozen=True)
class SampleGrid:
    """One generated grid: its id, the site, the block's georeference and the pits it holds."""

    grid: str
    site: str
    style: str
    savanna: float
    transform: tuple[float, float, float, float, float, float]
    patches_per_row: int
    patch_rows: int
    patch_size: int
    pits: tuple[dict, ...] = field(default=())

    @property
    def height(self) -> int:
        """Rows of the unbuffered block."""
        return self.patch_rows * self.patch_size

    @property
    def width(self) -> int:
        """Columns of the unbuffered block."""
        return self.patches_per_row * self.patch_size


def place_block(grid_id: int, lon: float, lat: float, width_px: int, height_px: int) -> tuple[float, float]:
    """(west, north) of a block centred near (lon, lat), on the global 30 m pixel lattice, inside the cell."""
    west_c, south_c, east_c, north_c = c9_grid_bounds(grid_id)
    w = width_px * PIXEL_DEGREES
    h = height_px * PIXEL_DEGREES
    west = min(max(lon - w / 2, west_c), east_c - w)
    north = max(min(lat + h / 2, north_c), south_c + h)
    col0 = math.ceil(west / PIXEL_DEGREES - 1e-9)
    row0 = math.floor(north / PIXEL_DEGREES + 1e-9)
    return col0 * PIXEL_DEGREES, row0 * PIXEL_DEGREES


# ----------------------------------------------------------------------------------------------------
# The landscape (pure numpy)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation (a random smooth field)."""
    from scipy.ndimage import gaussian_filter

    field_ = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    std = float(field_.std())
    return field_ / std if std > 0 else field_


@dataclass
class Landscape:
    """The static parts of one grid's scene on the buffered canvas, and its pits."""

    shape: tuple[int, int]
    river_distance: np.ndarray  # pixels from the river centre line
    river_halfwidth: float
    savanna: np.ndarray  # bool
    clearing: np.ndarray  # float rank in 0..1: pixels below the year's cleared share are pasture
    road: np.ndarray  # bool
    road_year: int
    sandbar: np.ndarray  # float field; sand where high, near the banks
    texture: np.ndarray  # (rows, cols, 4) relative texture per reflectance band
    pond: np.ndarray  # float field; pit water where high
    pits: list[dict]
    edge_noise: np.ndarray


def make_landscape(rng: np.random.Generator, shape: tuple[int, int], years: tuple[int, int], style: str, savanna_share: float) -> Landscape:
    """Draw one grid's landscape on a canvas of `shape` pixels for the years [start, end]."""
    rows, cols = shape
    scale = min(rows, cols)
    start, end = years
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    # a meandering river crossing the canvas (west-east or north-south)
    vertical = bool(rng.integers(0, 2))
    along, across = (yy, xx) if vertical else (xx, yy)
    length = rows if vertical else cols
    breadth = cols if vertical else rows
    wavelength = rng.uniform(0.6, 1.2) * length
    amplitude = rng.uniform(0.05, 0.12) * breadth
    phase = rng.uniform(0, 2 * np.pi)
    centre0 = rng.uniform(0.35, 0.65) * breadth
    wiggle = _smooth_noise(rng, (length,), max(length / 12, 2.0)) * 0.03 * breadth
    t = np.arange(length, dtype=np.float32)
    centre = centre0 + amplitude * np.sin(2 * np.pi * t / wavelength + phase) + wiggle
    centre_map = centre[along.astype(int)]
    river_distance = np.abs(across - centre_map)
    halfwidth = float(np.clip(scale * rng.uniform(0.010, 0.016), 1.5, 8.0))
    savanna_field = _smooth_noise(rng, shape, scale / 10)
    savanna = savanna_field > np.quantile(savanna_field, 1 - savanna_share)
    clearing_field = _smooth_noise(rng, shape, scale / 14)
    clearing = (np.argsort(np.argsort(clearing_field.ravel())).reshape(shape) / clearing_field.size).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.3, 0.3) * scale
    cy, cx = rows / 2, cols / 2
    road = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle) - offset) < max(1.0, scale / 400)
    road_year = int(rng.integers(start, end + 1))
    sandbar = _smooth_noise(rng, shape, 3.0)
    texture = np.stack([_smooth_noise(rng, shape, 1.2) for _ in REFLECTANCE_BANDS], axis=-1) * 0.06
    pond = _smooth_noise(rng, shape, max(scale / 60, 1.5))
    edge_noise = _smooth_noise(rng, shape, max(scale / 50, 1.5))

    pits = []
    if style == "industrial":
        n_pits = int(rng.integers(1, 3))
    else:
        n_pits = int(rng.integers(3, 6))
    for _ in range(n_pits):
        if style == "industrial":
            py, px = rng.uniform(0.25, 0.75, 2) * (rows, cols)
            r_max = rng.uniform(0.10, 0.16) * scale
            onset = int(rng.integers(start - 8, start + (end - start) // 2 + 1))
            elong = rng.uniform(1.0, 1.5)
            orient = rng.uniform(0, np.pi)
        else:
            pos = int(rng.integers(int(0.1 * length), int(0.9 * length)))
            side = rng.choice([-1.0, 1.0])
            off = side * (halfwidth + rng.uniform(0.0, 0.04) * scale)
            a, b = pos, centre[pos] + off
            py, px = (a, b) if vertical else (b, a)
            r_max = rng.uniform(0.045, 0.09) * scale
            onset = int(rng.integers(start - 5, end - 2))
            elong = rng.uniform(1.4, 2.2)
            orient = (np.pi / 2 if vertical else 0.0) + rng.uniform(-0.3, 0.3)
        pits.append({
            "row": float(py), "col": float(px), "radius_max": float(r_max), "onset": onset,
            "years_to_full": int(rng.integers(6, 20)), "elongation": float(elong), "orientation": float(orient),
        })
    return Landscape(shape, river_distance, halfwidth, savanna, clearing, road, road_year, sandbar, texture, pond, pits, edge_noise)


def pit_mask(land: Landscape, year: int) -> np.ndarray:
    """Where the pits have reached by `year` (bool on the canvas): each grows from a quarter to full size."""
    rows, cols = land.shape
    mask = np.zeros(land.shape, dtype=bool)
    for pit in land.pits:
        age = year - pit["onset"]
        if age < 0:
            continue
        grown = min(1.0, 0.25 + 0.75 * age / pit["years_to_full"])
        r = pit["radius_max"] * grown
        reach = int(math.ceil(r * pit["elongation"] * 1.4)) + 2
        r0, r1 = max(0, int(pit["row"]) - reach), min(rows, int(pit["row"]) + reach + 1)
        c0, c1 = max(0, int(pit["col"]) - reach), min(cols, int(pit["col"]) + reach + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        dy, dx = yy - pit["row"], xx - pit["col"]
        cos, sin = math.cos(pit["orientation"]), math.sin(pit["orientation"])
        u = (dx * cos + dy * sin) / (r * pit["elongation"])
        v = (-dx * sin + dy * cos) / r
        inside = np.sqrt(u * u + v * v) + 0.22 * land.edge_noise[r0:r1, c0:c1] < 1.0
        mask[r0:r1, c0:c1] |= inside
    return mask


def landcover(land: Landscape, year: int, years: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Land-cover codes (uint8) of the canvas in `year` (clouds ignored)."""
    start, end = years
    span = max(end - start, 1)
    lc = np.full(land.shape, FOREST, dtype=np.uint8)
    lc[land.savanna] = SAVANNA
    cleared_share = 0.18 * (year - start) / span
    lc[(land.clearing < cleared_share) & ~land.savanna] = PASTURE
    if year >= land.road_year:
        lc[land.road] = BARE
    halfwidth = land.river_halfwidth * rng.uniform(0.85, 1.15)  # the river's level varies from year to year
    banks = (land.river_distance >= halfwidth) & (land.river_distance < halfwidth + 3)
    lc[banks & (land.sandbar > 1.0)] = BARE
    lc[land.river_distance < halfwidth] = WATER
    pits = pit_mask(land, year)
    lc[pits & (land.pond > 0.4)] = MINING_POND
    lc[pits & (land.pond <= 0.4)] = MINING_SOIL
    return lc


def era_gains(year: int) -> np.ndarray:
    """Relative gains of (green, red, nir, swir1) by sensor era: TM, TM+ETM+, ETM+ only (2012), OLI."""
    if year >= 2013:
        return np.array([1.02, 0.97, 1.05, 1.02], dtype=np.float32)
    if year == 2012:
        return np.array([0.98, 1.01, 0.97, 0.99], dtype=np.float32)
    return np.ones(4, dtype=np.float32)


def reflectance(lc: np.ndarray, land: Landscape, year: int, rng: np.random.Generator, turbidity: float) -> np.ndarray:
    """Annual median TOA reflectance (rows, cols, 4: green, red, nir, swir1) of a land-cover map."""
    from scipy.ndimage import gaussian_filter

    table = np.zeros((max(SIGNATURES) + 1, 4), dtype=np.float32)
    for code, values in SIGNATURES.items():
        table[code] = values
    # mining turns the river turbid: river water drifts toward pit water
    table[WATER] = (1 - turbidity) * table[WATER] + turbidity * table[MINING_POND]
    refl = table[lc]
    refl *= 1.0 + land.texture
    refl *= era_gains(year) * (1.0 + rng.normal(0.0, 0.02, size=4)).astype(np.float32)  # phenology, atmosphere
    refl *= 1.0 + rng.normal(0.0, 0.015, size=refl.shape).astype(np.float32)  # per-pixel noise
    for b in range(refl.shape[-1]):  # the sensor's point spread: mixed pixels on class edges
        refl[..., b] = gaussian_filter(refl[..., b], 0.6, mode="nearest")
    return np.clip(refl, MIN_REFLECTANCE, 1.0)


def export_values(refl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Stored band values (rows, cols, B) float32 from (green, red, nir, swir1) reflectance, DESIGN §1.2
    (`pipeline.contract.export_scaled`: the one definition of Earth Engine's stored scaling)."""
    by_name = {name: refl[..., i] for i, name in enumerate(("green", "red", "nir", "swir1"))}
    unknown = [b for b in bands if b not in by_name and b not in INDEX_FORMULAS]
    if unknown:
        raise UserError(f"the sample cannot make band {unknown[0]!r} (known: green, red, nir, swir1, ndvi, mndwi, ndsi)")
    return export_scaled(by_name, bands)


def gap_mask(rng: np.random.Generator, shape: tuple[int, int], year: int) -> np.ndarray:
    """Pixels with no valid observation in the year's median (bool): cloud gaps, 2012 SLC-off stripes."""
    mean = 0.07 if year < 2000 else 0.03 if year < 2013 else 0.02
    share = float(np.clip(rng.beta(1.2, 1.2 / mean - 1.2), 0.0, 0.45))
    clouds = _smooth_noise(rng, shape, max(min(shape) / 40, 2.0))
    gaps = clouds > np.quantile(clouds, 1 - share) if share > 0 else np.zeros(shape, dtype=bool)
    if year == 2012:  # Landsat 7 alone, scan-line corrector off: the same stripes in every scene of the year
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        gaps |= ((yy + 0.18 * xx) % 31) < 2
    return gaps


# ----------------------------------------------------------------------------------------------------
# One grid, year by year


@dataclass
class YearScene:
    """One (grid, year) on the buffered canvas: stored bands (0 where masked), land cover, gaps."""

    values: np.ndarray  # float32 (rows, cols, B), 0 in every band where not observed
    landcover: np.ndarray  # uint8 codes
    gaps: np.ndarray  # bool


def year_scenes(spec: SampleSpec, land: Landscape, grid_seed: Sequence[int], bands: Sequence[str],
                masked_patch: tuple[int, int] | None, years: Iterable[int]) -> Iterable[tuple[int, YearScene]]:
    """(year, scene) for the given years of one grid; each year's randomness depends only on (seed, grid, year)."""
    half = spec.kernel // 2
    p = spec.patch_size
    first_pit = min((pit["onset"] for pit in land.pits), default=spec.years[1] + 1)
    for year in years:
        rng = np.random.default_rng([*grid_seed, year])
        lc = landcover(land, year, spec.years, rng)
        mined = float(np.isin(lc, MINING_CODES).mean())
        turbidity = float(np.clip(mined * 8.0, 0.0, 0.6)) if year >= first_pit else 0.0
        values = export_values(reflectance(lc, land, year, rng, turbidity), bands)
        gaps = gap_mask(rng, land.shape, year)
        if masked_patch is not None and masked_patch[0] == year:
            row, col = divmod(masked_patch[1], spec.patches[0])
            gaps[row * p : row * p + p + 2 * half, col * p : col * p + p + 2 * half] = True
        values[gaps] = 0.0
        yield year, YearScene(values, lc, gaps)


def truth_classes(scene: YearScene, kernel: int) -> np.ndarray:
    """Classes of the unbuffered block as the pipeline should see them: 0 / 1 mining / 255 not observed.

    Not observed follows the pipeline's rule (DESIGN §2: the first band is 0), which here is exactly the
    year's gaps, since every observed pixel stores at least 1 in every reflectance band.
    """
    half = kernel // 2
    core = (slice(half, scene.values.shape[0] - half), slice(half, scene.values.shape[1] - half))
    mining = np.isin(scene.landcover[core], MINING_CODES).astype(np.uint8)
    observed = scene.values[core][..., 0] != 0
    return np.where(observed, mining, np.uint8(255)).astype(np.uint8)


def patch_records(scene: YearScene, spec: SampleSpec, bands: Sequence[str]) -> list[bytes]:
    """The serialized Examples of every patch of a scene, in Earth Engine's patch order, buffer included."""
    p, k = spec.patch_size, spec.kernel
    cols, rows = spec.patches
    out = []
    for i in range(cols * rows):
        r, c = divmod(i, cols)
        record = scene.values[r * p : r * p + p + k, c * p : c * p + p + k]
        out.append(encode_example({band: record[..., b] for b, band in enumerate(bands)}))
    return out


# ----------------------------------------------------------------------------------------------------
# Writing


def _write(path: str, data: bytes) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    parent = path.rsplit("/", 1)[0]
    if "://" not in path:
        import os

        os.makedirs(parent, exist_ok=True)
    with FileSystems.create(path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def _join(*parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(*parts)


def gzip_bytes(data: bytes, level: int) -> bytes:
    """Deterministic gzip (no file name, mtime 0), as Earth Engine's compressed exports."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def write_tfrecord_gz(path: str, records: Sequence[bytes], level: int) -> None:
    """One gzipped TFRecord file of the given serialized records."""
    _write(path, gzip_bytes(b"".join(frame_record(r) for r in records), level))


def mixer_json(transform: Sequence[float], patch_size: int, patches_per_row: int, total: int) -> bytes:
    """An Earth Engine export mixer (the keys and nesting Earth Engine writes)."""
    mixer = {
        "projection": {"crs": CRS, "affine": {"doubleMatrix": [float(v) for v in transform]}},
        "patchDimensions": [patch_size, patch_size],
        "patchesPerRow": patches_per_row,
        "totalPatches": total,
    }
    return json.dumps(mixer, indent=2).encode("utf-8") + b"\n"


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _grid_for(spec: SampleSpec, grid_id: int, site: Site | None, rng: np.random.Generator) -> SampleGrid:
    cols, rows = spec.patches
    width, height = cols * spec.patch_size, rows * spec.patch_size
    if site is None:
        west, south, east, north = c9_grid_bounds(grid_id)
        site = Site(f"Collection 9 cell {grid_id}", (west + east) / 2, (south + north) / 2, "garimpo", float(rng.uniform(0.1, 0.4)))
    x0, y0 = place_block(grid_id, site.lon, site.lat, width, height)
    transform = (PIXEL_DEGREES, 0.0, x0, 0.0, -PIXEL_DEGREES, y0)
    return SampleGrid(str(grid_id), site.name, site.style, site.savanna, transform, cols, rows, spec.patch_size)


def plan_grids(spec: SampleSpec) -> tuple[list[tuple[SampleGrid, int]], list[tuple[SampleGrid, int]]]:
    """(sample grids, training grids), each with its numeric id, from the sites (or the given ids)."""
    sites = list(SITES)
    if spec.grid_ids:
        by_id = {c9_grid_id(s.lon, s.lat): s for s in sites}
        sample = [(gid, by_id.get(gid)) for gid in spec.grid_ids]
        training_sites = [s for s in sites if c9_grid_id(s.lon, s.lat) not in set(spec.grid_ids)]
    else:
        sample = [(c9_grid_id(s.lon, s.lat), s) for s in sites[: spec.grids]]
        training_sites = sites[spec.grids :]
    training = [(c9_grid_id(s.lon, s.lat), s) for s in training_sites[: spec.training_grids]]
    if len(training) < spec.training_grids:
        raise UserError(f"--training-grids {spec.training_grids}: only {len(training)} sites left for training")
    out_sample, out_training = [], []
    for gid, site in sample:
        rng = np.random.default_rng([spec.seed, gid, 0])
        out_sample.append((_grid_for(spec, gid, site, rng), gid))
    for gid, site in training:
        rng = np.random.default_rng([spec.seed, gid, 0])
        out_training.append((_grid_for(spec, gid, site, rng), gid))
    return out_sample, out_training


@dataclass(frozen=True)
class GeneratedSample:
    """Where a generated sample is and what it holds; `manifest` is the content of sample.json."""

    output: str
    exports: str
    training: str
    truth: str
    grids: tuple[str, ...]
    training_grids: tuple[str, ...]
    years: tuple[int, ...]
    bands: tuple[str, ...]
    manifest: dict = field(repr=False, compare=False)

    def truth_path(self, grid: str, year: int, kind: str = "classes") -> str:
        """Path of a truth raster: kind 'classes' (0/1/255) or 'landcover' (codes)."""
        return _join(self.truth, str(grid), f"{year}_{kind}.npy")


def generate_sample(output: str, spec: SampleSpec | None = None, progress=None) -> GeneratedSample:
    """Write the sample under `output` (local or gs://); sample.json holds the manifest (also returned).

    `spec` defaults to SampleSpec() (the demo: 2 grids, 1985-2023, 2 x 2 patches of 256 px, kernel 32).
    `progress`, if given, is called with one line per written (grid, year).
    """
    spec = spec or SampleSpec()
    spec.validate()
    bands = spec.bands
    say = progress or (lambda message: None)
    cols, rows = spec.patches
    total = cols * rows
    sample_grids, training_grids = plan_grids(spec)
    years = spec.year_list
    # the fully masked patch: the first grid, the second year, the last patch
    masked = (sample_grids[0][0].grid, years[min(1, len(years) - 1)], total - 1)
    manifest_grids = []
    for kind, grids in (("sample", sample_grids), ("training", training_grids)):
        for grid, gid in grids:
            grid_seed = (spec.seed, gid)
            canvas = (grid.height + spec.kernel, grid.width + spec.kernel)
            land = make_landscape(np.random.default_rng([*grid_seed, 1]), canvas, spec.years, grid.style, grid.savanna)
            half = spec.kernel // 2
            pits = tuple(
                {**pit, "row": round(pit["row"] - half, 2), "col": round(pit["col"] - half, 2),
                 "radius_max": round(pit["radius_max"], 2), "elongation": round(pit["elongation"], 3),
                 "orientation": round(pit["orientation"], 3)}
                for pit in land.pits
            )
            grid = SampleGrid(**{**asdict(grid), "pits": pits})
            if kind == "sample":
                mask = (masked[1], masked[2]) if grid.grid == masked[0] else None
                _write_sample_grid(output, spec, grid, land, grid_seed, bands, mask, say)
            else:
                _write_training_grid(output, spec, grid, land, grid_seed, bands, say)
            manifest_grids.append({"kind": kind, **asdict(grid)})
    manifest = {
        "generator": "mining-mapper sample",
        "format": 1,
        "seed": spec.seed,
        "preset": spec.preset,
        "bands": list(bands),
        "patch_size": spec.patch_size,
        "kernel": spec.kernel,
        "record_side": spec.patch_size + spec.kernel,
        "patches_per_row": cols,
        "patch_rows": rows,
        "records_per_shard": spec.records_per_shard,
        "years": years,
        "training_years": spec.training_years if training_grids else [],
        "crs": CRS,
        "pixel_degrees": PIXEL_DEGREES,
        "masked_value": 0.0,
        "fully_masked_patch": {"grid": masked[0], "year": masked[1], "patch": masked[2]},
        "grids": manifest_grids,
        "landcover_codes": {str(k): v for k, v in LANDCOVER.items()},
        "mining_codes": list(MINING_CODES),
        "scaling": "reflectance x 255, index (x + 1) x 127, clamped to 0-255, truncated (toByte)",
        "layout": {
            "exports": "exports/{grid}/{year}/{grid}_{year}-NNNNN.tfrecord.gz + {grid}_{year}-mixer.json",
            "training": "training/{grid}/{year}/training_{grid}_{year}-00000.tfrecord.gz (bands, label, lon, lat)",
            "truth": "truth/{grid}/{year}_classes.npy (0/1/255) and {year}_landcover.npy (codes)",
        },
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False)
    _write(_join(output, "sample.json"), text.encode("utf-8") + b"\n")
    manifest = json.loads(text)  # what a reader of sample.json gets (lists, not tuples)
    return GeneratedSample(
        output=output,
        exports=_join(output, "exports"),
        training=_join(output, "training"),
        truth=_join(output, "truth"),
        grids=tuple(g.grid for g, _ in sample_grids),
        training_grids=tuple(g.grid for g, _ in training_grids),
        years=tuple(years),
        bands=tuple(bands),
        manifest=manifest,
    )


def _write_sample_grid(output, spec, grid: SampleGrid, land, grid_seed, bands, masked, say) -> None:
    total = grid.patches_per_row * grid.patch_rows
    for year, scene in year_scenes(spec, land, grid_seed, bands, masked, spec.year_list):
        folder = _join(output, "exports", grid.grid, str(year))
        prefix = f"{grid.grid}_{year}"
        records = patch_records(scene, spec, bands)
        for shard, start in enumerate(range(0, total, spec.records_per_shard)):
            write_tfrecord_gz(
                _join(folder, f"{prefix}-{shard:05d}.tfrecord.gz"),
                records[start : start + spec.records_per_shard],
                spec.compress_level,
            )
        _write(_join(folder, f"{prefix}-mixer.json"), mixer_json(grid.transform, spec.patch_size, grid.patches_per_row, total))
        half = spec.kernel // 2
        core = (slice(half, half + grid.height), slice(half, half + grid.width))
        truth = _join(output, "truth", grid.grid)
        _write(_join(truth, f"{year}_classes.npy"), _npy_bytes(truth_classes(scene, spec.kernel)))
        _write(_join(truth, f"{year}_landcover.npy"), _npy_bytes(np.ascontiguousarray(scene.landcover[core])))
        say(f"exports/{grid.grid}/{year}: {total} patches")


def _write_training_grid(output, spec, grid: SampleGrid, land, grid_seed, bands, say) -> None:
    p, half = spec.patch_size, spec.kernel // 2
    a, _, c, _, e, f = grid.transform
    for year, scene in year_scenes(spec, land, grid_seed, bands, None, spec.training_years):
        records = []
        for i in range(grid.patches_per_row * grid.patch_rows):
            r, col = divmod(i, grid.patches_per_row)
            window = (slice(half + r * p, half + r * p + p), slice(half + col * p, half + col * p + p))
            values = scene.values[window]
            observed = values[..., 0] != 0
            if not observed.any():
                continue
            label = (np.isin(scene.landcover[window], MINING_CODES) & observed).astype(np.float32)
            features = {band: values[..., b] for b, band in enumerate(bands)}
            features["label"] = label
            features["lon"] = np.array([c + a * (col * p + p / 2)], dtype=np.float32)
            features["lat"] = np.array([f + e * (r * p + p / 2)], dtype=np.float32)
            records.append(encode_example(features))
        folder = _join(output, "training", grid.grid, str(year))
        write_tfrecord_gz(_join(folder, f"training_{grid.grid}_{year}-00000.tfrecord.gz"), records, spec.compress_level)
        say(f"training/{grid.grid}/{year}: {len(records)} patches")
