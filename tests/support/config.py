"""A RunConfig for transform tests: the defaults of the run command, any field overridable."""
from __future__ import annotations

import dataclasses

from pipeline.config import ModelRoute, RunConfig
from pipeline.contract import BAND_PRESETS
from pipeline.method.filters import FilterParams


def run_config(**overrides) -> RunConfig:
    """A valid RunConfig (one grid, one year, a national model at 'model.keras') with `overrides` applied."""
    base = RunConfig(
        exports="exports",
        output="out",
        grids=("1010",),
        years=(2000,),
        routes=(ModelRoute("national", "model.keras", ()),),
        bands=BAND_PRESETS["appendix"],
        band_preset="appendix",
        threshold=0.5,
        filter_params=FilterParams(),
        spatial_filter="local",
        min_batch_size=1,
        max_batch_size=16,
        export_nodata=(-9999.0,),
        probability_band=False,
        origin_band=False,
        require_gpu=False,
    )
    return dataclasses.replace(base, **overrides)
