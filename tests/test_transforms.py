"""Each pipeline PTransform on its own, with TestPipeline and assert_that (FnApiRunner)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
import apache_beam as beam
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ModelRoute
from pipeline.elements import ClassifiedPatch, DeadLetter, ExportGeometry, ExportPatch, GridYearKey, MissingExport, PatchKey
from pipeline.elements import GridYearStatus
from pipeline.io.summary import account
from pipeline.method.filters import FilterParams, apply_chain
from tests.support.config import run_config
from transforms.filtering import FilterTiles
from transforms.inference import ClassifyPatches
from transforms.write import WriteGridYears, cog_path

from tests.support.synthetic_run import BANDS, stand_in_model


def make_pipeline():
    return TestPipeline(runner="FnApiRunner", options=PipelineOptions(["--direct_num_workers", "1"]))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    national = stand_in_model(str(folder / "national.keras"))
    # The state model says the opposite: 1 − p, so routing is visible in the classes.
    import keras

    inverted = keras.models.load_model(national)
    inputs = keras.Input((None, None, len(BANDS)))
    keras.Model(inputs, 1.0 - inverted(inputs)).save(folder / "state.keras")
    return national, str(folder / "state.keras")


def export_patch(grid: str, year: int, index: int, swir1: float, kernel: int = 2, size: int = 4, masked: bool = False) -> ExportPatch:
    side = size + kernel
    bands = np.full((side, side, len(BANDS)), 120.0, dtype=np.float32)
    bands[..., 0] = swir1
    observed = np.full((side, side), not masked)
    return ExportPatch(grid=grid, year=year, index=index, row=0, col=index, kernel=kernel, bands=bands, observed=observed)


def test_classify_patches_batches_routes_and_skips_empty_patches(models):
    national, state = models
    routes = (ModelRoute("national", national, ()), ModelRoute("mg", state, ("1500",)))
    patches = [
        export_patch("1010", 2000, 0, 200.0),
        export_patch("1010", 2000, 1, 50.0),
        export_patch("1500", 2000, 0, 200.0),
        export_patch("1500", 2000, 1, 50.0, kernel=4),  # another record size in the same batch
        export_patch("1010", 2001, 0, 200.0, masked=True),
    ]

    def summarize(kv):
        key, patch = kv
        return key, int(patch.classes[0, 0]), patch.classes.shape

    with make_pipeline() as p:
        out = (
            p
            | beam.Create([(patch.key, patch) for patch in patches])
            | ClassifyPatches(config=run_config(routes=routes, threshold=0.5, min_batch_size=2, max_batch_size=8))
            | beam.Map(summarize)
        )
        assert_that(out, equal_to([
            (PatchKey("1010", 2000, 0), 1, (4, 4)),
            (("1010", 2000, 1), 0, (4, 4)),
            (("1500", 2000, 0), 0, (4, 4)),  # the state model inverts
            (("1500", 2000, 1), 1, (4, 4)),
            (("1010", 2001, 0), 255, (4, 4)),
        ]))


@settings(max_examples=60, deadline=None)
@given(
    claims=st.lists(st.sets(st.sampled_from([str(g) for g in range(1000, 1012)]), min_size=1, max_size=4), max_size=3),
    grid=st.sampled_from([str(g) for g in range(1000, 1014)]),
)
def test_route_for_is_the_first_route_claiming_the_grid_else_the_national_one_and_survives_pickling(claims, grid):
    """RunConfig.route_for (a mapping built once) against the plain scan of the routes, after pickling
    (the config travels to the workers) and after dataclasses.replace of the routes."""
    import dataclasses
    import pickle

    routes = (ModelRoute("national", "n.keras", ()),) + tuple(
        ModelRoute(f"state{i}", f"s{i}.keras", tuple(sorted(g))) for i, g in enumerate(claims))
    expected = next((r for r in routes if grid in r.grids), routes[0])
    config = run_config(routes=routes)
    assert config.route_for(grid) == expected and pickle.loads(pickle.dumps(config)).route_for(grid) == expected
    national_only = dataclasses.replace(config, routes=routes[:1])
    assert national_only.route_for(grid) == routes[0] and national_only == run_config(routes=routes[:1])
    with pytest.raises(ValueError, match=f"grid {grid}: no model route claims it"):
        run_config(routes=(ModelRoute("state", "s.keras", ("9999",)),)).route_for(grid)


@pytest.mark.parametrize("mode", ["appendix", "c9-code"])
def test_filter_tiles_equals_the_engine_across_tiles(mode):
    rng = np.random.default_rng(4)
    years = [2000, 2001, 2002, 2003]
    stack = np.where(rng.random((4, 8, 12)) < 0.5, 1, 0).astype(np.uint8)
    stack[rng.random(stack.shape) < 0.1] = 255
    stack[:, 0:3, 9:12] = 255  # never observed at the raster's corner, a small blob beside it and at the edge
    stack[:, 3, 10:12] = 1
    stack[:, 4, 10:12] = 255
    stack[:, 7, 0] = 1
    params = FilterParams(mode=mode, min_component_size=5)
    classified = []
    for t, year in enumerate(years):
        for r in range(2):
            for c in range(3):
                block = stack[t, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
                patch = ClassifiedPatch("9", year, r * 3 + c, r, c, block, block)
                classified.append((patch.key, patch))
    expected = apply_chain(stack, params).classes

    def as_rows(kv):
        (grid, year), tile = kv
        return grid, year, tile.row, tile.col, tile.classes.tolist()

    want = [("9", year, r, c, expected[t, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].tolist())
            for t, year in enumerate(years) for r in range(2) for c in range(3)]
    with make_pipeline() as p:
        out = (
            p
            | beam.Create(classified)
            | FilterTiles(years=years, params=params, spatial=True, keep_probability=False, keep_origin=False)
            | beam.Map(as_rows)
        )
        assert_that(out, equal_to(want))


def test_write_grid_years_accounts_for_each_case(tmp_path):
    geometry = ExportGeometry(grid="9", year=2000, crs="EPSG:4326", transform=(0.001, 0.0, -50.0, 0.0, -0.001, -2.0),
                              patch_size=4, patches_per_row=1, total_patches=1, kernel=0)
    from pipeline.elements import YearTile

    tile = YearTile("9", 2000, 0, 0, np.array([[1, 0, 0, 255]] * 4, dtype=np.uint8), None, None,
                    {"input": np.array([1, 1, 1, 1]), "frequency": np.array([1, 1, 1, 1])})
    inputs = {
        "tiles": [(GridYearKey("9", 2000), tile), (GridYearKey("9", 2002), tile)],
        "geometry": [(GridYearKey("9", 2000), geometry), (GridYearKey("9", 2001), geometry)],
        "missing": [(GridYearKey("9", 2002), MissingExport("9", 2002, "no mixer in exports/9/2002"))],
        "dead_letter": [(GridYearKey("9", 2001), DeadLetter("9", 2001, "exports/9/2001/x-00000.tfrecord.gz", None, "corrupt"))],
    }
    with make_pipeline() as p:
        pcolls = {name: p | f"Create {name}" >> beam.Create(values) for name, values in inputs.items()}
        statuses = pcolls | WriteGridYears(
            output=str(tmp_path), years=[2000, 2001, 2002], tags={"model": "m"}, with_probability=False, with_origin=False
        )
        assert_that(statuses | beam.Map(lambda s: (s.grid, s.year, s.status)), equal_to([
            ("9", 2000, "written"), ("9", 2001, "failed"), ("9", 2002, "skipped"),
        ]))
    with rasterio.open(cog_path(str(tmp_path), "9", 2000)) as cog:
        assert cog.read(1)[0].tolist() == [30, 0, 0, 255]
        assert cog.tags()["model"] == "m" and cog.tags()["grid"] == "9"
    entries = account([GridYearStatus("9", 2000, "written")], [("9", 2000), ("9", 2001)])
    assert [e.status for e in entries] == ["written", "failed"]
    assert entries[1].reason == "no result reached the writer"


def test_read_exports_takes_its_grid_years_from_the_pipeline_call_or_from_the_pcollection_not_both():
    """ReadEarthEngineExports: grid_years for a pipeline, None for a PCollection of GridYearKey (the job's case)."""
    from transforms.read import ReadEarthEngineExports

    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    with pytest.raises(ValueError, match="applied to a pipeline needs the grid_years"):
        _ = p | "None" >> ReadEarthEngineExports("exports", None, BANDS)
    keys = p | beam.Create([GridYearKey("1010", 2000)])
    with pytest.raises(ValueError, match="applied to a PCollection reads its GridYearKey elements"):
        _ = keys | "Both" >> ReadEarthEngineExports("exports", [("1010", 2000)], BANDS)
