"""The Python API a notebook user reaches for: every name the packages export resolves, and the README's
example (read a class series, run the filter chain, build the job into a Beam pipeline) works as written."""
from __future__ import annotations

import importlib
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
