"""Accuracy assessment and area estimation for a rare class (Olofsson et al. 2014, RSE 148:42–57).

Design. Stratified random sampling of pixels with three strata: `mining` (the mapped class), `ring`
(not-mining pixels within a distance of mapped mining, where omission of expanding or missed mining
hides) and `rest`. Allocation: proportional, equal, or `olofsson` (a fixed number for the rare strata,
the rest proportional, as Olofsson et al. 2014 §5.1.3 recommend). The total can come from a target
standard error of overall accuracy (their eq. 13).

Estimation. The stratified estimators of Stehman (2014, IJRS 35:4923–4939) for strata that need not be
the map classes (here ring and rest are both mapped "not mining"): every quantity is a stratified
total Ŷ = Σ_h N_h ȳ_h or a ratio Ŷ/X̂ with its linearised variance. When the strata are the map
classes they reduce exactly to Olofsson et al. (2014) eqs. 4–11 (the area-proportion error matrix,
user's, producer's and overall accuracy, the error-adjusted area and their standard errors). The finite
population correction is off by default, as in Olofsson et al.; 95 % intervals are ±1.96 SE.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from pipeline.errors import UserError

STRATA = ("mining", "ring", "rest")
MAP_CLASSES = ("mining", "not_mining")
STRATUM_CODES = {"mining": 1, "ring": 2, "rest": 3}
Z_95 = 1.96
ALLOCATIONS = ("proportional", "equal", "olofsson")

_CLASS_ALIASES = {
    "mining": "mining",
    "1": "mining",
    "30": "mining",
    "mine": "mining",
    "not_mining": "not_mining",
    "not mining": "not_mining",
    "not-mining": "not_mining",
    "non_mining": "not_mining",
    "non-mining": "not_mining",
    "nonmining": "not_mining",
    "0": "not_mining",
}


def canonical_class(value: object, accepted: Mapping[str, str] = _CLASS_ALIASES) -> str | None:
    """'mining' / 'not_mining' from an interpreter's label (case-insensitive, a few aliases); None when unknown."""
    if value is None:
        return None
    return accepted.get(str(value).strip().lower())


# ----------------------------------------------------------------------------------------------
# Design
# ----------------------------------------------------------------------------------------------
def pixel_size_m(crs, transform, shape: tuple[int, int]) -> tuple[float, float]:
    """(row height, column width) of a pixel in metres at the raster's centre, for distance-based rings."""
    from pipeline.method.areas import pyproj_crs

    crs = pyproj_crs(crs)
    if crs.is_projected:
        unit = crs.axis_info[0].unit_conversion_factor
        return abs(transform.e) * unit, abs(transform.a) * unit
    ellipsoid = crs.ellipsoid
    a, b = ellipsoid.semi_major_metre, ellipsoid.semi_minor_metre
    e2 = 1.0 - (b * b) / (a * a)
    _, lat = transform @ (shape[1] / 2.0, shape[0] / 2.0)
    phi = math.radians(lat)
    w = math.sqrt(1.0 - e2 * math.sin(phi) ** 2)
    meridian = a * (1.0 - e2) / w**3
    prime_vertical = a / w
    return abs(transform.e) * math.radians(1.0) * meridian, abs(transform.a) * math.radians(1.0) * prime_vertical * math.cos(phi)


def strata_map(mining: np.ndarray, observed: np.ndarray, ring_width_m: float, pixel_m: tuple[float, float]) -> np.ndarray:
    """Stratum codes per pixel: 1 mining, 2 ring (not mining, within `ring_width_m` of mining), 3 rest, 0 not observed.

    Distances are Euclidean between pixel centres in metres (exact distance transform).
    """
    strata = np.zeros(mining.shape, dtype=np.uint8)
    strata[observed] = STRATUM_CODES["rest"]
    if mining.any() and ring_width_m > 0:
        distance = ndimage.distance_transform_edt(~mining, sampling=pixel_m)
        strata[observed & ~mining & (distance <= ring_width_m)] = STRATUM_CODES["ring"]
    strata[observed & mining] = STRATUM_CODES["mining"]
    return strata


def largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    """Integers proportional to `shares` summing to `total` (Hamilton's largest-remainder method)."""
    shares = np.asarray(shares, dtype=np.float64)
    if total <= 0 or shares.sum() <= 0:
        return [0] * len(shares)
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def allocate(sizes: Mapping[str, int], n: int, method: str = "olofsson", rare_n: int = 100) -> dict[str, int]:
    """Sample size per stratum, never more than the stratum holds.

    - proportional: n_h ∝ N_h (largest remainder);
    - equal: n / H each;
    - olofsson: every stratum whose proportional share is below `rare_n` gets `rare_n`; the others
      share the rest proportionally (Olofsson et al. 2014 §5.1.3).
    """
    names = list(sizes)
    counts = np.array([int(sizes[s]) for s in names], dtype=np.int64)
    if n < 1:
        raise UserError(f"sample size must be at least 1, not {n}")
    if method not in ALLOCATIONS:
        raise UserError(f"allocation must be one of {', '.join(ALLOCATIONS)}, not {method!r}")
    present = counts > 0
    if not present.any():
        raise UserError("every stratum is empty: nothing to sample")
    if method == "proportional":
        alloc = np.array(largest_remainder(counts, n))
    elif method == "equal":
        alloc = np.zeros(len(names), dtype=np.int64)
        alloc[present] = largest_remainder([1.0] * int(present.sum()), n)
    else:
        fixed = np.zeros(len(names), dtype=bool)
        while True:
            rest = n - rare_n * int(fixed.sum())
            if rest < 0:
                raise UserError(f"--n {n} cannot give {rare_n} samples to each of {int(fixed.sum())} rare strata")
            free = present & ~fixed
            shares = np.where(free, counts, 0)
            proportional = np.array(largest_remainder(shares, rest))
            newly = free & (proportional < rare_n)
            if not newly.any():
                break
            fixed |= newly
        alloc = np.where(fixed, rare_n, proportional)
    alloc = np.minimum(alloc, counts)
    return {s: int(a) for s, a in zip(names, alloc)}


def sample_size_for_overall_accuracy(weights: Sequence[float], expected_users: Sequence[float], target_se: float) -> int:
    """n ≈ (Σ W_i S_i / S(Ô))², S_i = √(U_i(1−U_i)) (Olofsson et al. 2014 eq. 13; Cochran 1977 eq. 5.25)."""
    if target_se <= 0:
        raise UserError(f"target standard error must be positive, not {target_se}")
    w = np.asarray(weights, dtype=np.float64)
    u = np.asarray(expected_users, dtype=np.float64)
    if w.shape != u.shape or np.any((u < 0) | (u > 1)):
        raise UserError("expected user's accuracies must be one per stratum, each between 0 and 1")
    return int(math.ceil((np.sum(w * np.sqrt(u * (1 - u))) / target_se) ** 2))


def draw_sample(strata: np.ndarray, allocation: Mapping[str, int], seed: int) -> list[tuple[str, int, int]]:
    """Stratified random pixels without replacement: (stratum, row, col), strata in order, rows ascending in each."""
    rng = np.random.default_rng(seed)
    picked = []
    for name in STRATA:
        n = allocation.get(name, 0)
        if n <= 0:
            continue
        pool = np.flatnonzero(strata.ravel() == STRATUM_CODES[name])
        chosen = np.sort(rng.choice(pool, size=n, replace=False))
        rows, cols = np.divmod(chosen, strata.shape[1])
        picked.extend((name, int(r), int(c)) for r, c in zip(rows, cols))
    return picked


# ----------------------------------------------------------------------------------------------
# Estimation
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Estimates:
    """Everything estimated from a labelled stratified sample (proportions of the mapped population)."""

    classes: list[str]
    error_matrix: np.ndarray
    error_matrix_se: np.ndarray
    users: dict[str, float]
    users_se: dict[str, float]
    producers: dict[str, float]
    producers_se: dict[str, float]
    overall: float
    overall_se: float
    proportion: dict[str, float]
    proportion_se: dict[str, float]
    mapped_proportion: dict[str, float]
    total_area: float
    z: float = Z_95

    def area(self, cls: str) -> float:
        """Error-adjusted area of a class, in the units of `total_area`."""
        return self.proportion[cls] * self.total_area

    def area_se(self, cls: str) -> float:
        """Standard error of the error-adjusted area."""
        return self.proportion_se[cls] * self.total_area

    def area_ci(self, cls: str) -> tuple[float, float]:
        """The z-interval (95 % by default) of the error-adjusted area."""
        half = self.z * self.area_se(cls)
        return self.area(cls) - half, self.area(cls) + half


def _stratum_moments(y: np.ndarray, x: np.ndarray, idx: np.ndarray) -> tuple[float, float, float, float, float]:
    yy, xx = y[idx], x[idx]
    n = len(idx)
    if n < 2:
        return yy.mean(), xx.mean(), math.nan, math.nan, math.nan
    return yy.mean(), xx.mean(), yy.var(ddof=1), xx.var(ddof=1), float(np.cov(yy, xx, ddof=1)[0, 1])


def stratified_ratio(
    y: np.ndarray,
    x: np.ndarray,
    strata: np.ndarray,
    sizes: Mapping[str, float],
    fpc: bool = False,
    counts: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """R̂ = Ŷ/X̂ and its standard error under stratified random sampling (Stehman 2014 eqs. 26–28).

    `sizes` weigh the strata (pixels, or areas); `x` = 1 everywhere gives a proportion of the
    population (then the variance is Σ N_h² s²_yh/n_h / N²). The finite population correction, when
    asked, uses `counts` (pixels per stratum; default `sizes`).
    """
    totals_y = totals_x = 0.0
    pieces = []
    for name, size in sizes.items():
        idx = np.flatnonzero(strata == name)
        if size <= 0:
            continue
        if len(idx) == 0:
            raise UserError(f"stratum {name!r} has {size:g} pixels but no sample unit")
        my, mx, vy, vx, cxy = _stratum_moments(y, x, idx)
        totals_y += size * my
        totals_x += size * mx
        f = len(idx) / float((counts or sizes)[name]) if fpc else 0.0
        pieces.append((size, len(idx), f, vy, vx, cxy))
    if totals_x == 0:
        return math.nan, math.nan
    ratio = totals_y / totals_x
    variance = sum(
        size**2 * (1 - f) * (vy + ratio**2 * vx - 2 * ratio * cxy) / n for size, n, f, vy, vx, cxy in pieces
    ) / totals_x**2
    return ratio, math.sqrt(variance) if variance >= 0 else math.nan


def estimate(
    strata: Sequence[str],
    map_classes: Sequence[str],
    reference: Sequence[str],
    sizes: Mapping[str, float],
    total_area: float,
    classes: Sequence[str] | None = None,
    fpc: bool = False,
    z: float = Z_95,
    counts: Mapping[str, float] | None = None,
) -> Estimates:
    """The Olofsson et al. (2014) / Stehman (2014) estimates from a labelled stratified random sample.

    `strata`, `map_classes`, `reference`: one entry per sample unit. `sizes`: pixels (or area) per
    stratum, every stratum of the sample included. `total_area`: the area the proportions refer to
    (e.g. hectares of all strata), used for the error-adjusted areas. `counts`: pixels per stratum
    for the finite population correction when `sizes` are areas.
    """
    strata = np.asarray([str(s) for s in strata])
    mapped = np.asarray([str(s) for s in map_classes])
    ref = np.asarray([str(s) for s in reference])
    if not (len(strata) == len(mapped) == len(ref)):
        raise ValueError("strata, map classes and reference labels need one entry per sample unit")
    unknown = sorted(set(strata) - set(sizes))
    if unknown:
        raise UserError(f"sample strata {unknown} are not in the design (strata: {', '.join(sizes)})")
    if classes is None:
        classes = list(dict.fromkeys([*sorted(set(mapped)), *sorted(set(ref))]))
    classes = list(classes)
    ones = np.ones(len(ref))
    k = len(classes)
    matrix = np.zeros((k, k))
    matrix_se = np.zeros((k, k))
    for i, ci in enumerate(classes):
        for j, cj in enumerate(classes):
            p, se = stratified_ratio(((mapped == ci) & (ref == cj)).astype(float), ones, strata, sizes, fpc, counts)
            matrix[i, j], matrix_se[i, j] = p, se
    users, users_se, producers, producers_se, proportion, proportion_se, mapped_prop = {}, {}, {}, {}, {}, {}, {}
    for c in classes:
        users[c], users_se[c] = stratified_ratio(((mapped == c) & (ref == c)).astype(float), (mapped == c).astype(float), strata, sizes, fpc, counts)
        producers[c], producers_se[c] = stratified_ratio(((mapped == c) & (ref == c)).astype(float), (ref == c).astype(float), strata, sizes, fpc, counts)
        proportion[c], proportion_se[c] = stratified_ratio((ref == c).astype(float), ones, strata, sizes, fpc, counts)
        mapped_prop[c], _ = stratified_ratio((mapped == c).astype(float), ones, strata, sizes, fpc, counts)
    overall, overall_se = stratified_ratio((mapped == ref).astype(float), ones, strata, sizes, fpc, counts)
    return Estimates(
        classes=classes,
        error_matrix=matrix,
        error_matrix_se=matrix_se,
        users=users,
        users_se=users_se,
        producers=producers,
        producers_se=producers_se,
        overall=overall,
        overall_se=overall_se,
        proportion=proportion,
        proportion_se=proportion_se,
        mapped_proportion=mapped_prop,
        total_area=float(total_area),
        z=z,
    )


# ----------------------------------------------------------------------------------------------
# Files: the design for interpreters, the labelled sample, the estimates
# ----------------------------------------------------------------------------------------------
def make_design(
    path: str,
    class_value: int = 30,
    extra_nodata: Sequence[float] = (),
    ring_width_m: float = 300.0,
    n: int | None = None,
    target_se: float | None = None,
    expected_users: Mapping[str, float] | None = None,
    allocation: str = "olofsson",
    rare_n: int = 100,
    seed: int = 0,
) -> dict[str, bytes]:
    """Strata, allocation and a stratified random sample of one mining map: sample.geojson, sample.csv, design.json.

    The total sample size is `n`, or (when `target_se` is given) the eq. 13 size for that standard
    error of overall accuracy with `expected_users` per stratum.
    """
    import json

    from pyproj import Transformer

    from pipeline.method.areas import PixelAreas, pyproj_crs
    from pipeline.io import rasters as annual_rasters
    from pipeline.products.stats import nodata_mask

    if ring_width_m < 0:
        raise UserError(f"ring width must be 0 or more metres, not {ring_width_m}")
    with annual_rasters.open_raster(path) as src:
        if src.crs is None:
            raise UserError(f"{path}: raster has no CRS")
        values = src.read(1)
        crs, transform, nodata, tags = src.crs, src.transform, src.nodata, src.tags()
    observed = ~nodata_mask(values, [nodata, *extra_nodata])
    mining = observed & (values == class_value)
    strata = strata_map(mining, observed, ring_width_m, pixel_size_m(crs, transform, values.shape))
    areas = PixelAreas(crs, transform, values.shape)
    sizes = {name: int(np.count_nonzero(strata == STRATUM_CODES[name])) for name in STRATA}
    area_ha = {name: areas.hectares(strata == STRATUM_CODES[name]) for name in STRATA}
    total = sum(sizes.values())
    if sizes["mining"] == 0:
        raise UserError(f"{path}: no pixel equals the mining value {class_value}; there is no mining stratum to sample")
    if target_se is not None:
        expected = {"mining": 0.8, "ring": 0.9, "rest": 0.99, **(expected_users or {})}
        n = sample_size_for_overall_accuracy([sizes[s] / total for s in STRATA], [expected[s] for s in STRATA], target_se)
    if n is None:
        raise UserError("give the sample size (--n) or a target standard error of overall accuracy (--target-se)")
    plan = allocate(sizes, n, allocation, rare_n)
    picked = draw_sample(strata, plan, seed)
    rows = np.array([r for _, r, _ in picked], dtype=np.float64)
    cols = np.array([c for _, _, c in picked], dtype=np.float64)
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    to_lonlat = Transformer.from_crs(pyproj_crs(crs), "EPSG:4326", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys)
    features, csv_rows = [], []
    for i, ((stratum, row, col), x, y, lon, lat) in enumerate(zip(picked, np.atleast_1d(xs), np.atleast_1d(ys), np.atleast_1d(lons), np.atleast_1d(lats)), start=1):
        map_class = "mining" if stratum == "mining" else "not_mining"
        props = {"id": i, "stratum": stratum, "map_class": map_class, "row": row, "col": col, "x": round(float(x), 3), "y": round(float(y), 3), "reference": None}
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [round(float(lon), 7), round(float(lat), 7)]}, "properties": props})
        csv_rows.append([i, stratum, map_class, f"{lon:.7f}", f"{lat:.7f}", f"{x:.3f}", f"{y:.3f}", row, col, ""])
    from pipeline.products.stats import csv_bytes

    design = {
        "raster": str(path),
        "year": tags.get("year"),
        "grid": tags.get("grid"),
        "crs": crs.to_wkt(),
        "mining_value": class_value,
        "ring_width_m": ring_width_m,
        "allocation": allocation,
        "rare_n": rare_n if allocation == "olofsson" else None,
        "seed": seed,
        "sample_size": int(sum(plan.values())),
        "strata": {
            name: {"map_class": "mining" if name == "mining" else "not_mining", "pixels": sizes[name], "area_ha": round(area_ha[name], 4), "n": plan[name]}
            for name in STRATA
        },
        # Every unit as drawn: lets `estimate` refuse a sample that was drawn for another map or design.
        "units": [[i, stratum, row, col] for i, (stratum, row, col) in enumerate(picked, start=1)],
        "instructions": "Label each point's 'reference' as mining or not_mining from imagery of the map's year; "
        "keep 'stratum' and 'map_class' unchanged; then run `mining-mapper accuracy estimate`.",
    }
    return {
        "sample.geojson": json.dumps({"type": "FeatureCollection", "features": features}, indent=1).encode(),
        "sample.csv": csv_bytes(csv_rows, ["id", "stratum", "map_class", "lon", "lat", "x", "y", "row", "col", "reference"]),
        "design.json": json.dumps(design, indent=2).encode(),
    }


@dataclasses.dataclass
class LabelledSample:
    """The labelled sample as read: one stratum, map class and reference class per unit."""

    strata: list[str]
    map_classes: list[str]
    reference: list[str]
    ids: list[str] = dataclasses.field(default_factory=list)
    positions: list[tuple[int, int] | None] = dataclasses.field(default_factory=list)


def read_labelled_sample(path: str, strata_names: Sequence[str], drop_unlabelled: bool = False) -> LabelledSample:
    """Read sample.csv or sample.geojson after interpretation; every bad row is named in one error."""
    import csv
    import io as _io
    import json

    from pipeline.io import filesystem as fs

    raw = fs.read_bytes(path)
    if str(path).lower().endswith((".geojson", ".json")):
        try:
            document = json.loads(raw.decode("utf-8"))
            records = [dict(f["properties"], id=f["properties"].get("id", i + 1)) for i, f in enumerate(document["features"])]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"{path}: not a GeoJSON FeatureCollection with properties ({error})") from None
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text ({error})") from None
        records = list(csv.DictReader(_io.StringIO(text)))
    if not records:
        raise UserError(f"{path}: holds no sample unit")
    missing = [c for c in ("stratum", "map_class", "reference") if c not in records[0]]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (needs stratum, map_class, reference)")
    problems: list[str] = []
    out = LabelledSample([], [], [])
    first_of_id: dict[str, int] = {}
    first_at: dict[tuple[int, int], str] = {}
    for number, record in enumerate(records, start=1):
        unit_id = str(record.get("id") or number).strip()
        where = f"unit {unit_id}"
        position = _position(record)
        if unit_id in first_of_id:
            problems.append(f"{where}: duplicated (the id is used twice)")
            continue
        if position is not None and position in first_at:
            problems.append(f"{where}: duplicated (same pixel row {position[0]}, col {position[1]} as unit {first_at[position]})")
            continue
        first_of_id[unit_id] = number
        if position is not None:
            first_at[position] = unit_id
        stratum = str(record["stratum"]).strip()
        reference_raw = record["reference"]
        if stratum not in strata_names:
            problems.append(f"{where}: unknown stratum {stratum!r}")
            continue
        map_class = canonical_class(record["map_class"])
        if map_class is None:
            problems.append(f"{where}: unknown map class {record['map_class']!r}")
            continue
        if reference_raw is None or str(reference_raw).strip() == "":
            if drop_unlabelled:
                continue
            problems.append(f"{where}: no reference label")
            continue
        reference = canonical_class(reference_raw)
        if reference is None:
            problems.append(f"{where}: unknown reference class {reference_raw!r}")
            continue
        out.strata.append(stratum)
        out.map_classes.append(map_class)
        out.reference.append(reference)
        out.ids.append(unit_id)
        out.positions.append(position)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UserError(f"{path}: {len(problems)} bad sample unit(s): {shown} (classes: mining, not_mining)")
    if not out.strata:
        raise UserError(f"{path}: no labelled sample unit left")
    return out


def _position(record: Mapping) -> tuple[int, int] | None:
    """(row, col) of a sample unit when the record carries both as integers, else None."""
    try:
        return int(str(record["row"]).strip()), int(str(record["col"]).strip())
    except (KeyError, TypeError, ValueError):
        return None


def check_sample_against_design(sample: LabelledSample, design: Mapping, sample_path: str, design_path: str) -> None:
    """Refuse a labelled sample that was not drawn by this design (a design made for another map).

    design.json lists every unit it drew (id, stratum, row, col): each labelled unit must be one of
    them, in the same stratum and, when the sample gives row and col, at the same pixel. A design.json
    without that list (an older one) is checked by its per-stratum sizes: no stratum may hold more
    labelled units than the design drew in it.
    """
    units = design.get("units")
    raster = design.get("raster", "?")
    if units is None:
        drawn = {name: int(spec.get("n", 0)) for name, spec in design["strata"].items()}
        for name in drawn:
            labelled = sample.strata.count(name)
            if labelled > drawn[name]:
                raise UserError(
                    f"{sample_path}: {labelled} units in stratum {name} but {design_path} drew {drawn[name]}; "
                    f"the sample was not drawn by this design (map {raster})"
                )
        return
    try:
        by_id = {str(u[0]): (str(u[1]), int(u[2]), int(u[3])) for u in units}
    except (TypeError, ValueError, IndexError) as error:
        raise UserError(f"{design_path}: malformed 'units' list ({error!r})") from None
    for unit_id, stratum, position in zip(sample.ids, sample.strata, sample.positions):
        drawn = by_id.get(unit_id)
        if drawn is None:
            raise UserError(f"{sample_path}: unit {unit_id} is not a unit of {design_path}; "
                            f"the sample was drawn for another map or design (design map {raster})")
        if drawn[0] != stratum or (position is not None and position != drawn[1:]):
            raise UserError(
                f"{sample_path}: unit {unit_id} ({stratum}, row {position[0] if position else '?'}, "
                f"col {position[1] if position else '?'}) is not the design's unit {unit_id} ({drawn[0]}, row {drawn[1]}, "
                f"col {drawn[2]}); the sample was drawn for another map or design (design map {raster})"
            )


def estimate_files(est: Estimates, mapped_area_ha: Mapping[str, float], extra: Mapping[str, object] | None = None) -> dict[str, bytes]:
    """accuracy.json, error_matrix.csv (area proportions, rows = map, columns = reference) and accuracy_by_class.csv."""
    import json

    from pipeline.products.stats import csv_bytes

    k = len(est.classes)
    matrix_rows = [
        [est.classes[i], *[f"{est.error_matrix[i, j]:.6f}" for j in range(k)], f"{est.error_matrix[i].sum():.6f}"] for i in range(k)
    ]
    matrix_rows.append(["total", *[f"{est.error_matrix[:, j].sum():.6f}" for j in range(k)], f"{est.error_matrix.sum():.6f}"])
    class_rows = []
    for c in est.classes:
        low, high = est.area_ci(c)
        class_rows.append([
            c, f"{est.users[c]:.6f}", f"{est.users_se[c]:.6f}", f"{est.z * est.users_se[c]:.6f}",
            f"{est.producers[c]:.6f}", f"{est.producers_se[c]:.6f}", f"{est.z * est.producers_se[c]:.6f}",
            f"{mapped_area_ha.get(c, float('nan')):.4f}", f"{est.area(c):.4f}", f"{est.area_se(c):.4f}", f"{low:.4f}", f"{high:.4f}",
        ])

    def _clean(value: float) -> float | None:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 8)

    document = {
        "method": "stratified estimators (Olofsson et al. 2014; Stehman 2014 for strata other than the map classes)",
        "z": est.z,
        "classes": est.classes,
        "error_matrix_area_proportions": {"rows_map": est.classes, "columns_reference": est.classes, "values": [[_clean(v) for v in row] for row in est.error_matrix]},
        "overall_accuracy": {"estimate": _clean(est.overall), "se": _clean(est.overall_se), "ci95_half_width": _clean(est.z * est.overall_se)},
        "by_class": {
            c: {
                "users_accuracy": _clean(est.users[c]), "users_se": _clean(est.users_se[c]),
                "producers_accuracy": _clean(est.producers[c]), "producers_se": _clean(est.producers_se[c]),
                "mapped_area_ha": _clean(mapped_area_ha.get(c)),
                "area_ha": _clean(est.area(c)), "area_se_ha": _clean(est.area_se(c)),
                "area_ci95_ha": [_clean(v) for v in est.area_ci(c)],
            }
            for c in est.classes
        },
        **(extra or {}),
    }
    return {
        "accuracy.json": json.dumps(document, indent=2).encode(),
        "error_matrix.csv": csv_bytes(matrix_rows, ["map \\ reference", *est.classes, "total"]),
        "accuracy_by_class.csv": csv_bytes(class_rows, [
            "class", "users_accuracy", "users_se", "users_ci95", "producers_accuracy", "producers_se", "producers_ci95",
            "mapped_area_ha", "area_ha", "area_se_ha", "area_ci95_low_ha", "area_ci95_high_ha",
        ]),
    }
