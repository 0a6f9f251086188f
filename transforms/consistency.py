"""Refuse the exports whose mixer contradicts the rest of their grid, before their patches are filtered.

The temporal filters stack each tile across the years; a year whose mixer says another patch size or
layout (a wrong `patchDimensions` crops its records to the wrong patch) would end the whole run in the
filter stage. Here such a year becomes a dead letter naming its mixer (so the write stage marks it
failed) and its classified patches are dropped; the grid's other years go on, with that year not
observed, like a year without an export.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam import typehints
from apache_beam.metrics import Metrics

from pipeline.elements import DeadLetter, ExportGeometry, GridYearKey
from pipeline.errors import ExportError
from pipeline.io.export_layout import contradicting_years, export_dir_of, list_export
from transforms.metrics import READ_NAMESPACE


def _by_grid(keyed) -> tuple[str, object]:
    key, geometry = keyed
    return str(key.grid), geometry


def _dead_letters(grid_geometries, exports_root: str):
    """One (GridYearKey, DeadLetter) per export of a grid that contradicts the grid, naming its mixer file."""
    _, geometries = grid_geometries
    for (grid, year), reason in sorted(contradicting_years(list(geometries)).items()):
        export_dir = export_dir_of(exports_root, grid, year)
        try:
            mixer, _ = list_export(export_dir)
        except ExportError:  # it was read a moment ago; name the folder if it cannot be listed again
            mixer = export_dir
        Metrics.counter(READ_NAMESPACE, "contradicting_mixers").inc()
        yield GridYearKey(grid, year), DeadLetter(grid, year, mixer, None, f"{mixer}: {reason}")


class RefuseContradictingExports(beam.PTransform):
    """(GridYearKey, ExportGeometry) → (GridYearKey, DeadLetter) of every export that contradicts its grid.

    The geometries (one small element per export) are grouped by grid, so the check sees each grid's
    years together. `drop_refused` then removes the refused grid-years' classified patches.
    """

    def __init__(self, *, exports_root: str):
        super().__init__()
        self._root = exports_root

    def expand(self, geometries: beam.PCollection) -> beam.PCollection:
        return (
            geometries
            | "By grid" >> beam.Map(_by_grid).with_output_types(typehints.KV[str, ExportGeometry])
            | "Years of a grid" >> beam.GroupByKey()
            | "Contradictions" >> beam.FlatMap(_dead_letters, self._root).with_output_types(typehints.KV[GridYearKey, DeadLetter])
        )


def _keep(keyed, refused: list) -> bool:
    return keyed[0].grid_year not in set(refused)


def drop_refused(patches: beam.PCollection, refused: beam.PCollection, label: str = "Drop refused exports") -> beam.PCollection:
    """The (PatchKey, …) elements whose grid-year has no dead letter in `refused` ((GridYearKey, DeadLetter))."""
    keys = refused | f"{label} keys" >> beam.Keys()
    return patches | label >> beam.Filter(_keep, beam.pvalue.AsList(keys))
