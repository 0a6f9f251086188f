"""The validated run configuration: what the pipeline's PTransforms consume (built from the options).

Plain Python, no Beam options: `pipeline.options.build_config` makes it from the command line or the Flex
Template parameters, and `transforms.job.MiningMapperJob` and its parts read it.
"""
from __future__ import annotations

import dataclasses

from pipeline.elements import GridYearKey
from pipeline.method.filters import FilterParams


@dataclasses.dataclass(frozen=True)
class ModelRoute:
    """One model and the grids it serves (an empty tuple: every grid no other route claims)."""

    name: str
    path: str
    grids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Validated, plain-Python view of the options: what the pipeline builder consumes."""

    exports: str
    output: str
    grids: tuple[str, ...]
    years: tuple[int, ...]
    routes: tuple[ModelRoute, ...]
    bands: tuple[str, ...]
    band_preset: str
    threshold: float
    filter_params: FilterParams
    spatial_filter: str
    min_batch_size: int
    max_batch_size: int
    export_nodata: tuple[float, ...]
    probability_band: bool
    origin_band: bool
    require_gpu: bool
    overwrite: bool = False
    reuse_raw: str | None = None
    """Raw results to re-use (a folder of `{grid}/{grid}_{year}.tif`), or None: infer every grid-year."""
    inference_tile: int | None = 0
    """0: record-wise; N: large tiles of N px core; None: a whole grid-year at once."""
    inference_precision: str = "float32"
    inference_memory_bytes: int = 12 << 30
    precision_check: bool = False
    """With a 16-bit precision: also run float32 and count the pixels whose class changes (costs a second pass)."""

    def __post_init__(self):
        """Index the routes by grid once: `route_for` is asked per patch."""
        by_grid: dict[str, ModelRoute] = {}
        for route in self.routes:
            for grid in route.grids:
                by_grid.setdefault(grid, route)  # the first route that claims a grid serves it
        object.__setattr__(self, "_route_by_grid", by_grid)
        object.__setattr__(self, "_national_route", next((route for route in self.routes if not route.grids), None))

    @property
    def large_tiles(self) -> bool:
        """Whether inference assembles each grid-year and runs on large tiles instead of records."""
        return self.inference_tile != 0

    def route_for(self, grid: str) -> ModelRoute:
        """The model that classifies a grid: its state model, else the national one."""
        route = self._route_by_grid.get(grid, self._national_route)
        if route is None:
            raise ValueError(f"grid {grid}: no model route claims it and there is no national model")
        return route

    def grid_years(self) -> list[GridYearKey]:
        """Every (grid, year) the run was asked for, in a deterministic order."""
        return [GridYearKey(grid, year) for grid in self.grids for year in self.years]
