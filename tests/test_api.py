"""The Python API a notebook user reaches for: every name the packages export resolves, and the README's
example (read a class series, run the filter chain, build the job into a Beam pipeline) works as written."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path

PACKAGES = ("pipeline.method", "pipeline.io", "transforms", "model")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__, package
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError, match="has no attribute"):
        module.no_such_name  # noqa: B018 - the lookup itself is the test


def test_importing_a_package_imports_none_of_its_heavy_modules():
    code = "import sys, pipeline.io, pipeline.method, transforms, model; print(sorted(m for m in ('apache_beam', 'tensorflow', 'keras', 'rasterio') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_filter_example_runs_on_the_real_series():
    from pipeline.io import find_annual_rasters, read_class_series
    from pipeline.method import FilterParams, PixelAreas, apply_chain

    series = read_class_series(find_annual_rasters([str(shared_path("mapbiomas_c6_lourenco"))], range(2000, 2006)))
    result = apply_chain(series.stack, FilterParams(mode="c9-code"), with_origin=True)
    areas = PixelAreas(series.crs, series.transform, series.stack.shape[1:])
    hectares = [areas.hectares(year == 1) for year in result.classes]
    assert series.years == list(range(2000, 2006)) and result.classes.shape == series.stack.shape
    assert all(h > 0 for h in hectares)
    assert np.isin(result.classes, (0, 1, 255)).all()


def test_the_readme_job_example_builds_the_job_into_a_beam_pipeline(tmp_path):
    """The README's second example, on the synthetic exports and stand-in model: MiningMapperJob in a user's own
    Beam pipeline writes the COGs and the summary and hands on one status per grid-year."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that

    from pipeline.options import build_config
    from tests.support.synthetic_run import YEARS, stand_in_model, truth_stack, write_exports
    from transforms import MiningMapperJob

    write_exports(tmp_path / "exports", truth_stack())
    model = stand_in_model(str(tmp_path / "model.keras"))
    options = PipelineOptions(["--exports", str(tmp_path / "exports"), "--model", model, "--output", str(tmp_path / "out"),
                               "--runner", "FnApiRunner"])

    def one_written_status_per_year(statuses):
        assert sorted((s.grid, s.year, s.status) for s in statuses) == [("1010", y, "written") for y in YEARS]

    with beam.Pipeline(options=options) as p:
        statuses = p | MiningMapperJob(config=build_config(options))
        assert_that(statuses, one_written_status_per_year)
    assert (tmp_path / "out" / "summary.json").exists()
    assert sorted(os.listdir(tmp_path / "out" / "1010")) == [f"1010_{y}.tif" for y in YEARS]
