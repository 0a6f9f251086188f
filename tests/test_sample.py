"""The sample generator (pipeline/demo/sample.py) and `mining-mapper sample`: format, georeference, content, determinism."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.contract import BAND_PRESETS
from pipeline.elements import DeadLetter, ExportGeometry, ExportPatch, MissingExport
from pipeline.io.example import decode_example
from pipeline.io.export_layout import list_export, parse_mixer
from pipeline.io.export_reader import read_export
from pipeline.io.tfrecord import read_shard
from pipeline.demo import sample as S
from pipeline.cli import main

SMALL = S.SampleSpec(grids=2, years=(1985, 2023), patch_size=32, kernel=16, training_grids=2)


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory) -> tuple[Path, dict]:
    """A 2-grid, 39-year sample of 2 x 2 patches of 32 px (kernel 16) with 2 training grids."""
    out = tmp_path_factory.mktemp("sample")
    generated = S.generate_sample(str(out), SMALL)
    assert generated.grids == ("1137", "2021") and generated.training_grids == ("1432", "1545")
    assert generated.years == tuple(range(1985, 2024)) and generated.bands == BAND_PRESETS["appendix"]
    assert generated.exports == str(out / "exports") and Path(generated.truth_path("1137", 2000)).is_file()
    assert json.loads((out / "sample.json").read_text()) == generated.manifest
    return out, generated.manifest


def read_year(out: Path, grid: str, year: int, bands) -> tuple[np.ndarray, ExportGeometry]:
    """The unbuffered block (rows, cols, bands) of one (grid, year), assembled from its records."""
    events = list(read_export(str(out / "exports" / grid / str(year)), grid, year, bands, fill_value=None))
    assert not [e for e in events if isinstance(e, (DeadLetter, MissingExport))]
    (geometry,) = [e for e in events if isinstance(e, ExportGeometry)]
    p = geometry.patch_size
    block = np.full((geometry.height, geometry.width, len(bands)), np.nan, dtype=np.float32)
    for e in events:
        if isinstance(e, ExportPatch):
            block[e.row * p : e.row * p + p, e.col * p : e.col * p + p] = e.core()[0]
    assert not np.isnan(block).any()
    return block, geometry


# ----------------------------------------------------------------------------------------------------
# The Collection 9 lattice and the sites


def test_c9_grid_ids_and_bounds():
    assert S.c9_grid_id(S.C9_ORIGIN_LON + 0.01, S.C9_ORIGIN_LAT - 0.01) == 1
    assert S.c9_grid_id(S.C9_ORIGIN_LON + S.C9_STRIDE + 0.01, S.C9_ORIGIN_LAT - 0.01) == 52  # column 1, row 0
    assert S.c9_grid_id(S.C9_ORIGIN_LON + 0.01, S.C9_ORIGIN_LAT - S.C9_STRIDE - 0.01) == 2  # column 0, row 1
    west, south, east, north = S.c9_grid_bounds(52)
    assert (west, north) == pytest.approx((S.C9_ORIGIN_LON + S.C9_STRIDE, S.C9_ORIGIN_LAT))
    assert east - west == pytest.approx(0.8648) and north - south == pytest.approx(0.8648)
    ids = [S.c9_grid_id(s.lon, s.lat) for s in S.SITES]
    assert ids == [1137, 2021, 1432, 1545, 1138, 1596]
    for site, gid in zip(S.SITES, ids):
        west, south, east, north = S.c9_grid_bounds(gid)
        assert west <= site.lon <= east and south <= site.lat <= north
    with pytest.raises(Exception, match="outside"):
        S.c9_grid_id(-20.0, 0.0)


# DESIGN §1.3 worked by hand: id = col·51 + row + 1; west = −73.990450 + col·0.77832,
# north = 5.271841 − row·0.77832; the cell is 0.8648° square.
C9_BOUNDS_BY_HAND = {
    1: (-73.990450, 5.271841 - 0.8648, -73.990450 + 0.8648, 5.271841),  # col 0, row 0
    52: (-73.212130, 4.407041, -72.347330, 5.271841),  # 51 = 1·51 + 0: col 1, row 0
    1137: (-56.867410, -6.489439, -56.002610, -5.624639),  # 1136 = 22·51 + 14: col 22, row 14
    2021: (-43.635970, -19.720879, -42.771170, -18.856079),  # 2020 = 39·51 + 31: col 39, row 31
    2601: (-73.990450 + 50 * 0.77832, 5.271841 - 50 * 0.77832 - 0.8648,
           -73.990450 + 50 * 0.77832 + 0.8648, 5.271841 - 50 * 0.77832),  # col 50, row 50: the last cell
}


@pytest.mark.parametrize("gid", sorted(C9_BOUNDS_BY_HAND))
def test_c9_grid_bounds_match_the_design_formula_worked_by_hand(gid):
    from pipeline.earthengine.grid import C9_GRID

    assert S.c9_grid_bounds(gid) == pytest.approx(C9_BOUNDS_BY_HAND[gid], abs=1e-9)
    assert C9_GRID.bounds(gid) == pytest.approx(C9_BOUNDS_BY_HAND[gid], abs=1e-9)
    west, south, east, north = C9_BOUNDS_BY_HAND[gid]
    assert S.c9_grid_id(west + 0.01, north - 0.01) == gid


def test_c9_grid_bounds_outside_the_lattice_is_a_user_error():
    from pipeline.errors import UserError

    for gid in (0, 2602):
        with pytest.raises(UserError, match="outside"):
            S.c9_grid_bounds(gid)


def test_lourenco_site_is_in_the_cell_of_the_real_lourenco_rasters():
    from tests.conftest import shared_path

    import rasterio
    from rasterio.warp import transform_bounds

    path = sorted(shared_path("mapbiomas_c6_lourenco").glob("*.tif"))[0]
    with rasterio.open(path) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    site = S.SITES[2]
    assert "Lourenço" in site.name
    assert west < site.lon < east and south < site.lat < north


# ----------------------------------------------------------------------------------------------------
# Pure functions


def test_export_values_scaling():
    refl = np.array([[[0.1, 0.1, 0.3, 0.2]]], dtype=np.float32)  # green, red, nir, swir1
    values = S.export_values(refl, ("green", "red", "nir", "swir1", "ndvi", "mndwi", "ndsi"))
    # x 255 truncated; NDVI 0.5 -> 190.5; MNDWI -1/3 -> 84.67; NDSI -0.2 -> 101.6
    np.testing.assert_array_equal(values[0, 0], [25, 25, 76, 51, 190, 84, 101])
    saturated = S.export_values(np.array([[[2.0, 0.0, 0.5, 0.5]]], dtype=np.float32), ("green", "ndvi"))
    np.testing.assert_array_equal(saturated[0, 0], [255, 254])  # clamped; NDVI 1 -> 254
    with pytest.raises(Exception, match="cannot make band 'swir2'"):
        S.export_values(refl, ("swir2",))


def test_pits_only_grow():
    rng = np.random.default_rng(3)
    land = S.make_landscape(rng, (96, 96), (1985, 2023), "garimpo", 0.2)
    areas = [int(S.pit_mask(land, year).sum()) for year in range(1980, 2024)]
    assert all(b >= a for a, b in zip(areas, areas[1:]))
    assert areas[-1] > areas[0] and areas[-1] > 0


def test_spec_validation():
    for spec, message in [
        (S.SampleSpec(patch_size=60), "multiple of 16"),
        (S.SampleSpec(kernel=3), "even"),
        (S.SampleSpec(patch_size=32, kernel=8), "multiple of 16 pixels"),
        (S.SampleSpec(preset="rgb"), "--band-preset 'rgb'"),
        (S.SampleSpec(years=(2000, 1990)), "--years"),
        (S.SampleSpec(grids=5, training_grids=2), "at most 6 sites"),
        (S.SampleSpec(grid_ids=(9999,)), "outside 1..2601"),
    ]:
        with pytest.raises(Exception, match=message):
            spec.validate()


# ----------------------------------------------------------------------------------------------------
# A generated sample


def test_layout_mixer_and_georeference(small_sample):
    out, manifest = small_sample
    assert manifest["bands"] == list(BAND_PRESETS["appendix"]) and manifest["record_side"] == 48
    sample = [g for g in manifest["grids"] if g["kind"] == "sample"]
    assert [g["grid"] for g in sample] == ["1137", "2021"]
    for g in sample:
        for year in (1985, 2023):
            folder = out / "exports" / g["grid"] / str(year)
            names = sorted(p.name for p in folder.iterdir())
            prefix = f"{g['grid']}_{year}"
            assert names == [f"{prefix}-00000.tfrecord.gz", f"{prefix}-00001.tfrecord.gz", f"{prefix}-mixer.json"]
            mixer = json.loads((folder / f"{prefix}-mixer.json").read_text())
            assert set(mixer) == {"projection", "patchDimensions", "patchesPerRow", "totalPatches"}
            geometry = parse_mixer(folder / f"{prefix}-mixer.json", g["grid"], year)
            assert geometry.transform[0] == pytest.approx(30 / 111319.49079327357) and geometry.transform[4] < 0
            assert (geometry.patch_size, geometry.patches_per_row, geometry.total_patches) == (32, 2, 4)
            # on the global 30 m lattice, inside the grid cell
            assert geometry.transform[2] / geometry.transform[0] == pytest.approx(round(geometry.transform[2] / geometry.transform[0]), abs=1e-6)
            west, south, east, north = S.c9_grid_bounds(int(g["grid"]))
            minx, miny, maxx, maxy = geometry.bounds
            assert west <= minx < maxx <= east and south <= miny < maxy <= north
            _, shards = list_export(str(folder))
            records = [r for s in shards for r in read_shard(s)]
            assert len(records) == 4
            features = decode_example(records[0])
            assert list(features) == manifest["bands"] and all(v.size == 48 * 48 for v in features.values())


def test_values_masks_and_the_fully_masked_patch(small_sample):
    out, manifest = small_sample
    bands = manifest["bands"]
    gap_shares = {}
    for g in ("1137", "2021"):
        for year in manifest["years"]:
            block, _ = read_year(out, g, year, bands)
            assert (block == np.floor(block)).all() and block.min() >= 0 and block.max() <= 255
            truth = np.load(out / "truth" / g / f"{year}_classes.npy")
            masked = truth == 255
            assert (block[masked] == 0).all()  # Earth Engine's default value in every band
            assert (block[~masked][:, 0] >= 1).all()
            assert set(np.unique(truth)) <= {0, 1, 255}
            gap_shares[g, year] = masked.mean()
    fm = manifest["fully_masked_patch"]
    assert (fm["grid"], fm["year"], fm["patch"]) == ("1137", 1986, 3)
    _, shards = list_export(str(out / "exports" / "1137" / "1986"))
    last = [r for s in shards for r in read_shard(s)][3]
    assert all((v == 0).all() for v in decode_example(last).values())
    # cloud gaps: more in the 1980s-90s than with Landsat 8; the 2012 SLC-off stripes
    early = np.mean([v for (g, y), v in gap_shares.items() if y < 2000 and (g, y) != ("1137", 1986)])
    late = np.mean([v for (g, y), v in gap_shares.items() if y >= 2013])
    assert early > late > 0
    assert gap_shares["2021", 2012] > 0.05


def test_landscape_and_mining_over_time(small_sample):
    out, manifest = small_sample
    for g in ("1137", "2021"):
        covers = [np.load(out / "truth" / g / f"{year}_landcover.npy") for year in manifest["years"]]
        mined = [int(np.isin(c, S.MINING_CODES).sum()) for c in covers]
        assert all(b >= a for a, b in zip(mined, mined[1:]))  # pits appear and grow, never shrink
        assert mined[-1] > mined[0] and mined[-1] > 0.01 * covers[-1].size
        present = set(np.unique(covers[-1]))
        assert {S.FOREST, S.WATER} <= present and present & set(S.MINING_CODES)
        classes = np.load(out / "truth" / g / "2023_classes.npy")
        observed = classes != 255
        np.testing.assert_array_equal(classes[observed] == 1, np.isin(covers[-1], S.MINING_CODES)[observed])


def test_spectral_signatures_separate_mining(small_sample):
    out, manifest = small_sample
    bands = manifest["bands"]  # swir1, nir, red, mndwi, ndvi, ndsi
    block, _ = read_year(out, "1137", 2023, bands)
    cover = np.load(out / "truth" / "1137" / "2023_landcover.npy")
    observed = block[..., 0] != 0

    def mean(code, band):
        sel = (cover == code) & observed
        assert sel.sum() > 10
        return block[sel][:, bands.index(band)].mean()

    assert mean(S.MINING_SOIL, "swir1") > mean(S.FOREST, "swir1") + 20
    assert mean(S.MINING_SOIL, "ndvi") < mean(S.FOREST, "ndvi") - 40
    assert mean(S.MINING_POND, "mndwi") > mean(S.FOREST, "mndwi") + 40
    assert mean(S.WATER, "mndwi") > mean(S.MINING_SOIL, "mndwi") + 40


def test_c9_code_preset_bands_and_consistent_indices(tmp_path):
    manifest = S.generate_sample(str(tmp_path), S.SampleSpec(preset="c9-code", grids=1, years=(2020, 2020),
                                                              patch_size=32, kernel=16, training_grids=0)).manifest
    bands = manifest["bands"]
    assert bands == ["swir1", "nir", "red", "green", "mndwi", "ndvi"]
    block, _ = read_year(tmp_path, manifest["grids"][0]["grid"], 2020, bands)
    observed = block[..., 0] != 0
    swir1, nir, red, green, mndwi, ndvi = (block[observed][:, i] for i in range(6))
    # stored bands are truncated: reflectance x 255 lies in [v, v + 1), so each stored index must lie
    # between the truncated index of the interval's extremes
    def check(index, a, b):
        low = np.floor(((a - (b + 1)) / (a + b + 1) + 1) * 127 - 1e-3)
        high = np.floor(((a + 1 - b) / (a + 1 + b) + 1) * 127 + 1e-3)
        assert ((low <= index) & (index <= high)).all()

    check(ndvi, nir, red)
    check(mndwi, green, swir1)


def test_training_patches(small_sample):
    out, manifest = small_sample
    training = [g for g in manifest["grids"] if g["kind"] == "training"]
    assert [g["grid"] for g in training] == ["1432", "1545"]
    assert manifest["training_years"] == [1985, 1991, 1997, 2003, 2009, 2015, 2021, 2023]
    labelled = 0
    for g in training:
        west, south, east, north = S.c9_grid_bounds(int(g["grid"]))
        for year in manifest["training_years"]:
            path = out / "training" / g["grid"] / str(year) / f"training_{g['grid']}_{year}-00000.tfrecord.gz"
            records = list(read_shard(str(path)))
            assert 1 <= len(records) <= 4
            for record in records:
                f = decode_example(record)
                assert set(f) == {*manifest["bands"], "label", "lon", "lat"}
                assert f["label"].size == 32 * 32 and set(np.unique(f["label"])) <= {0.0, 1.0}
                assert (f["label"][f[manifest["bands"][0]] == 0] == 0).all()  # not observed: label 0
                assert west < f["lon"][0] < east and south < f["lat"][0] < north
                labelled += int(f["label"].sum())
    assert labelled > 0


def test_same_seed_same_bytes(tmp_path):
    spec = S.SampleSpec(grids=1, years=(2011, 2013), patch_size=32, kernel=16, training_grids=1, training_year_step=2)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    S.generate_sample(str(tmp_path / "a"), spec)
    S.generate_sample(str(tmp_path / "b"), spec)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) > 10 and a == b
    S.generate_sample(str(tmp_path / "c"), S.SampleSpec(**{**spec.__dict__, "seed": 1}))
    c = files(tmp_path / "c")
    assert c.keys() == a.keys() and any(c[k] != a[k] for k in a if k.endswith(".tfrecord.gz"))


# ----------------------------------------------------------------------------------------------------
# The command


def test_sample_command(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["sample", "--output", str(out), "--years", "2001-2002", "--patch-size", "32", "--kernel", "16",
            "--patches", "1x2", "--training-grids", "1", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"{out}/exports" in printed and "grids 1137, 2021" in printed
    manifest = json.loads((out / "sample.json").read_text())
    assert (manifest["patches_per_row"], manifest["patch_rows"]) == (1, 2)
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (out / "exports" / "1137" / "2001" / "stray.tfrecord.gz").write_bytes(b"")
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "exports" / "1137" / "2001" / "stray.tfrecord.gz").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for bad, message in [
        (["--output", str(tmp_path / "other")], "holds no sample.json"),
        (["--output", str(tmp_path / "x"), "--patches", "2by2"], "--patches '2by2'"),
        (["--output", str(tmp_path / "x"), "--years", "twenty"], "--years 'twenty'"),
        (["--output", str(tmp_path / "x"), "--band-preset", "rgb"], "--band-preset 'rgb'"),
        (["--output", str(tmp_path / "x"), "--grids", "1137,a"], "--grids"),
    ]:
        assert main(["sample", *bad, "--quiet"]) == 2
        assert message in capsys.readouterr().err


def test_explicit_grid_ids(tmp_path):
    manifest = S.generate_sample(str(tmp_path), S.SampleSpec(grid_ids=(1432, 700), years=(2000, 2000), patch_size=32,
                                                              kernel=16, training_grids=1)).manifest
    kinds = [(g["kind"], g["grid"]) for g in manifest["grids"]]
    assert kinds == [("sample", "1432"), ("sample", "700"), ("training", "1137")]
    assert "Lourenço" in manifest["grids"][0]["site"] and manifest["grids"][1]["site"] == "Collection 9 cell 700"
    west, south, east, north = S.c9_grid_bounds(700)
    t = manifest["grids"][1]["transform"]
    assert west <= t[2] <= east and south <= t[5] <= north
