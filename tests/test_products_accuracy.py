"""Accuracy assessment: the published numerical examples, the sample design on real data, bad samples."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
from scipy.spatial import cKDTree

from pipeline.errors import UserError
from pipeline.products.accuracy import (
    allocate,
    estimate,
    read_labelled_sample,
    sample_size_for_overall_accuracy,
)
from tests.conftest import shared_path
from tests.support.products import run_cli

# --------------------------------------------------------------------------------------------------
# Olofsson, Foody, Herold, Stehman, Woodcock & Wulder (2014), Remote Sensing of Environment 148:42–57,
# section 5 (the worked example). Table 8 gives the sample counts with rows = MAP class and
# columns = REFERENCE class; the strata are the map classes with 200,000 / 150,000 / 3,200,000 /
# 6,450,000 pixels of 30 m × 30 m. (A listing of the counts by reference class reads 66,0,1,2 /
# 0,55,0,1 / 5,8,153,9 / 4,12,11,313: the same table transposed.)
# Published results (section 5, p. 54), to the paper's rounding:
#   user's accuracy 0.88 ± 0.07, 0.73 ± 0.10, 0.93 ± 0.04, 0.96 ± 0.02
#   producer's accuracy 0.75 ± 0.21, 0.85 ± 0.25, 0.93 ± 0.03, 0.96 ± 0.02
#   overall accuracy 0.95 ± 0.02
#   error-adjusted area (ha) 21,158 ± 6,158; 11,686 ± 3,756; 285,770 ± 15,510; 581,386 ± 16,282
# (± = 95 % confidence interval, 1.96 × SE). The same figures are reproduced by two independent
# implementations: agcopenhaver/PyMapAccuracy tests/test_olofsson.py (test_olofsson_table8_2014) and an
# R implementation quoting "deforestation: 21,158 ha +/- 6,157" with z = 1.95996.
# Table 9 (area proportions, eq. 4 p̂_ij = W_i n_ij / n_i.) is checked to 4 decimals, from the
# counts by hand: e.g. 0.02 × 66 / 75 = 0.0176.
# --------------------------------------------------------------------------------------------------
OLOFSSON_CLASSES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
OLOFSSON_COUNTS = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]
OLOFSSON_PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]


def _sample_from_counts(classes, counts):
    strata, mapped, ref = [], [], []
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            strata += [classes[i]] * n
            mapped += [classes[i]] * n
            ref += [classes[j]] * n
    return strata, mapped, ref


@pytest.fixture(scope="module")
def olofsson():
    strata, mapped, ref = _sample_from_counts(OLOFSSON_CLASSES, OLOFSSON_COUNTS)
    sizes = dict(zip(OLOFSSON_CLASSES, OLOFSSON_PIXELS))
    total_ha = sum(OLOFSSON_PIXELS) * 0.09
    return estimate(strata, mapped, ref, sizes, total_ha, classes=OLOFSSON_CLASSES)


def test_olofsson_2014_accuracies_to_published_rounding(olofsson):
    e = olofsson
    assert [round(e.users[c], 2) for c in OLOFSSON_CLASSES] == [0.88, 0.73, 0.93, 0.96]
    assert [round(1.96 * e.users_se[c], 2) for c in OLOFSSON_CLASSES] == [0.07, 0.10, 0.04, 0.02]
    assert [round(e.producers[c], 2) for c in OLOFSSON_CLASSES] == [0.75, 0.85, 0.93, 0.96]
    assert [round(1.96 * e.producers_se[c], 2) for c in OLOFSSON_CLASSES] == [0.21, 0.25, 0.03, 0.02]
    assert round(e.overall, 2) == 0.95
    assert round(1.96 * e.overall_se, 2) == 0.02


def test_olofsson_2014_error_adjusted_areas_to_published_rounding(olofsson):
    e = olofsson
    assert [round(e.area(c)) for c in OLOFSSON_CLASSES] == [21_158, 11_686, 285_770, 581_386]
    assert [round(1.96 * e.area_se(c)) for c in OLOFSSON_CLASSES] == [6_158, 3_756, 15_510, 16_282]
    low, high = e.area_ci("deforestation")
    assert abs(low - (21_158 - 6_158)) < 1 and abs(high - (21_158 + 6_158)) < 1


def test_olofsson_2014_area_proportion_error_matrix(olofsson):
    expected = [
        [0.0176, 0.0000, 0.0013, 0.0011],
        [0.0000, 0.0110, 0.0016, 0.0024],
        [0.0019, 0.0000, 0.2967, 0.0213],
        [0.0040, 0.0020, 0.0179, 0.6212],
    ]
    np.testing.assert_allclose(np.round(olofsson.error_matrix, 4), expected, atol=1e-12)
    # rows sum to the map-class weights W_i, the whole matrix to one
    np.testing.assert_allclose(olofsson.error_matrix.sum(axis=1), np.array(OLOFSSON_PIXELS) / sum(OLOFSSON_PIXELS))
    assert olofsson.error_matrix.sum() == pytest.approx(1.0)


def test_olofsson_2014_sample_size_equation_13():
    """Their §5.1.3: U_i = 0.7, 0.6, 0.9, 0.95 and S(Ô) = 0.01 give n ≈ 641 (the paper's figure)."""
    weights = np.array(OLOFSSON_PIXELS) / sum(OLOFSSON_PIXELS)
    assert sample_size_for_overall_accuracy(weights, [0.7, 0.6, 0.9, 0.95], 0.01) == 641


# Stehman (2014), International Journal of Remote Sensing 35:4923–4939, Table 2: 40 units, strata 1–4
# (N_h = 40,000 / 30,000 / 20,000 / 10,000) that are NOT the map classes A–D. Published results: area
# proportion of A 0.35 (SE 0.082), of C 0.20 (SE 0.064); overall accuracy 0.63 (SE 0.085); user's
# accuracy of B 0.574 (SE 0.125); producer's accuracy of B 0.794; p̂_BC = 0.08. The paper prints SE 0.114
# for the producer's accuracy of B, having used s²_x = 0 in stratum 4 where its own Table 3 gives 0.1
# (checked: with 0 the formula gives 0.1142); with 0.1 the SE is 0.1165 (boothmanrylan/
# accuracyAssessmentTools tests/test_stehman.py notes the same slip and expects ≈ 0.116).
STEHMAN_UNITS = {
    "1": ("AAAAAAABBB", "AAAAACBABC"),
    "2": ("ABBBBBBBBB", "ABBBBBAABB"),
    "3": ("BBCCCCCCBB", "CCCCCDDBBA"),
    "4": ("DDDDDDDDDD", "DDDDDDDCCB"),
}


def test_stehman_2014_strata_other_than_map_classes():
    strata, mapped, ref = [], [], []
    for h, (m, r) in STEHMAN_UNITS.items():
        strata += [h] * len(m)
        mapped += list(m)
        ref += list(r)
    sizes = {"1": 40_000, "2": 30_000, "3": 20_000, "4": 10_000}
    e = estimate(strata, mapped, ref, sizes, total_area=100_000, classes=list("ABCD"), fpc=True)
    assert round(e.proportion["A"], 2) == 0.35 and round(e.proportion_se["A"], 3) == 0.082
    assert round(e.proportion["C"], 2) == 0.20 and round(e.proportion_se["C"], 3) == 0.064
    assert round(e.overall, 2) == 0.63 and round(e.overall_se, 3) == 0.085
    assert round(e.users["B"], 3) == 0.574 and round(e.users_se["B"], 3) == 0.125
    assert round(e.producers["B"], 3) == 0.794 and e.producers_se["B"] == pytest.approx(0.1165, abs=5e-4)
    assert round(e.error_matrix[1, 2], 2) == 0.08


# --------------------------------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------------------------------
def test_allocations():
    sizes = {"mining": 5_000, "ring": 20_000, "rest": 1_975_000}
    prop = allocate(sizes, 400, "proportional")
    assert sum(prop.values()) == 400 and prop["mining"] == 1 and prop["rest"] == 395
    assert allocate(sizes, 400, "equal") == {"mining": 134, "ring": 133, "rest": 133}
    assert allocate(sizes, 400, "olofsson", rare_n=100) == {"mining": 100, "ring": 100, "rest": 200}
    # a stratum smaller than its share is sampled whole, never more
    assert allocate({"mining": 30, "ring": 500, "rest": 10_000}, 300, "olofsson", rare_n=50)["mining"] == 30
    with pytest.raises(UserError, match="rare strata"):
        allocate(sizes, 150, "olofsson", rare_n=100)
    with pytest.raises(UserError, match="allocation"):
        allocate(sizes, 100, "neyman")


# --------------------------------------------------------------------------------------------------
# Design and estimation on the Lourenço map (real data)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def design(tmp_path_factory):
    source = shared_path("mapbiomas_c6_lourenco", "utm_cover_AP_lorenco_2020.tif")
    out = tmp_path_factory.mktemp("design")
    code, _, err = run_cli("accuracy", "design", source, "--n", "360", "--allocation", "olofsson", "--rare-n", "80",
                           "--ring-width", "300", "--seed", "7", "--output", out)
    assert code == 0, err
    return source, out


def test_design_points_lie_in_their_strata(design):
    source, out = design
    doc = json.loads((out / "design.json").read_text())
    assert {s: v["n"] for s, v in doc["strata"].items()} == {"mining": 80, "ring": 80, "rest": 200}
    with rasterio.open(source) as src:
        values = src.read(1)
        transform = src.transform
    mining = values == 30
    assert doc["strata"]["mining"]["pixels"] == int(mining.sum())
    rows, cols = np.nonzero(mining)
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    tree = cKDTree(np.column_stack([xs, ys]))
    points = list(csv.DictReader(open(out / "sample.csv")))
    assert len(points) == 360 and len({(p["row"], p["col"]) for p in points}) == 360
    for p in points:
        r, c = int(p["row"]), int(p["col"])
        distance, _ = tree.query([float(p["x"]), float(p["y"])])
        if p["stratum"] == "mining":
            assert values[r, c] == 30 and distance < 0.01  # x, y are written to the millimetre
        elif p["stratum"] == "ring":
            assert values[r, c] != 30 and 0.01 < distance <= 300.01
        else:
            assert values[r, c] not in (30, 65535) and distance > 299.99
    features = json.loads((out / "sample.geojson").read_text())["features"]
    assert [f["properties"]["stratum"] for f in features] == [p["stratum"] for p in points]
    lon, lat = features[0]["geometry"]["coordinates"]
    assert -51.7 < lon < -51.3 and 2.1 < lat < 2.5  # Garimpo do Lourenço


def test_design_is_reproducible_with_its_seed(design, tmp_path):
    source, out = design
    code, _, err = run_cli("accuracy", "design", source, "--n", "360", "--rare-n", "80", "--seed", "7", "--output", tmp_path)
    assert code == 0, err
    assert (tmp_path / "sample.csv").read_text() == (out / "sample.csv").read_text()


def test_estimate_from_labels_recovers_a_known_truth(design, tmp_path):
    """Label the 2020 sample with the 2016 map as 'truth': the 95 % CI of mining area covers 2016's real area."""
    source, out = design
    truth_path = shared_path("mapbiomas_c6_lourenco", "utm_cover_AP_lorenco_2016.tif")
    with rasterio.open(truth_path) as src:
        truth = src.read(1)
    rows = list(csv.DictReader(open(out / "sample.csv")))
    for row in rows:
        row["reference"] = "mining" if truth[int(row["row"]), int(row["col"])] == 30 else "not_mining"
    labelled = tmp_path / "labelled.csv"
    with open(labelled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, stdout, err = run_cli("accuracy", "estimate", labelled, "--design", out / "design.json", "--output", tmp_path / "est")
    assert code == 0, err
    result = json.loads((tmp_path / "est" / "accuracy.json").read_text())
    mining = result["by_class"]["mining"]
    doc = json.loads((out / "design.json").read_text())
    total_ha = sum(v["area_ha"] for v in doc["strata"].values())
    total_px = sum(v["pixels"] for v in doc["strata"].values())
    true_ha = float((truth == 30).sum()) * total_ha / total_px
    low, high = mining["area_ci95_ha"]
    assert low <= true_ha <= high
    assert mining["mapped_area_ha"] == pytest.approx(doc["strata"]["mining"]["area_ha"])
    assert 0 < result["overall_accuracy"]["estimate"] <= 1
    assert "overall accuracy" in stdout


def test_estimate_of_a_perfect_map(design, tmp_path):
    source, out = design
    rows = list(csv.DictReader(open(out / "sample.csv")))
    for row in rows:
        row["reference"] = row["map_class"]
    path = tmp_path / "perfect.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert run_cli("accuracy", "estimate", path, "--design", out / "design.json", "--output", tmp_path / "e")[0] == 0
    result = json.loads((tmp_path / "e" / "accuracy.json").read_text())
    assert result["overall_accuracy"]["estimate"] == 1.0
    m = result["by_class"]["mining"]
    assert m["users_accuracy"] == m["producers_accuracy"] == 1.0
    assert m["area_ha"] == pytest.approx(m["mapped_area_ha"]) and m["area_se_ha"] == 0.0


def test_labelled_sample_with_unknown_classes_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "id,stratum,map_class,reference\n1,mining,mining,mining\n2,ring,not_mining,gravel pit\n"
        "3,rest,not_mining,\n4,lake,not_mining,not_mining\n"
    )
    with pytest.raises(UserError) as error:
        read_labelled_sample(str(path), ["mining", "ring", "rest"])
    message = str(error.value)
    assert str(path) in message and "3 bad sample unit(s)" in message
    assert "unit 2: unknown reference class 'gravel pit'" in message
    assert "unit 3: no reference label" in message and "unit 4: unknown stratum 'lake'" in message
    (tmp_path / "nolabel.csv").write_text("id,stratum,map_class\n1,mining,mining\n")
    with pytest.raises(UserError, match="missing column.*reference"):
        read_labelled_sample(str(tmp_path / "nolabel.csv"), ["mining"])


def test_estimate_command_names_the_bad_sample_file(design, tmp_path):
    _, out = design
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None, "properties": {"id": 9, "stratum": "mining", "map_class": "mining", "reference": "tailings"}}
    ]}))
    code, _, err = run_cli("accuracy", "estimate", bad, "--design", out / "design.json", "--output", tmp_path / "x")
    assert code == 2 and str(bad) in err and "unknown reference class 'tailings'" in err


def test_ring_is_measured_in_metres_on_a_geographic_raster():
    from affine import Affine

    from pipeline.products.accuracy import pixel_size_m, strata_map

    transform = Affine(0.0003, 0, -55.0, 0, -0.0003, 0.0)  # at the equator: 33.2 m × 33.4 m
    dy, dx = pixel_size_m("EPSG:4326", transform, (41, 41))
    assert dy == pytest.approx(33.17, abs=0.05) and dx == pytest.approx(33.40, abs=0.05)
    mining = np.zeros((41, 41), bool)
    mining[20, 20] = True
    strata = strata_map(mining, np.ones_like(mining), 110.0, (dy, dx))
    assert np.nonzero(strata[20] == 2)[0].tolist() == [17, 18, 19, 21, 22, 23]  # 3 × 33.4 m ≤ 110 m < 4 × 33.4 m
    strata = strata_map(mining, np.ones_like(mining), 100.0, (dy, dx))
    assert np.nonzero(strata[20] == 2)[0].tolist() == [18, 19, 21, 22]  # 3 × 33.4 m > 100 m
    assert np.nonzero(strata[:, 20] == 2)[0].tolist() == [17, 18, 19, 21, 22, 23]  # 3 × 33.2 m ≤ 100 m
    assert strata[20, 20] == 1 and strata[0, 0] == 3


def test_estimate_needs_every_stratum(design, tmp_path):
    _, out = design
    path = tmp_path / "only_mining.csv"
    path.write_text("id,stratum,map_class,reference\n1,mining,mining,mining\n2,mining,mining,not_mining\n")
    code, _, err = run_cli("accuracy", "estimate", path, "--design", out / "design.json", "--output", tmp_path / "o")
    assert code == 2 and str(path) in err and "no labelled unit in stratum ring, rest" in err
