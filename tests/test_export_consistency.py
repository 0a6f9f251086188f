"""A mixer that contradicts its grid's other years is refused (pipeline.io.export_layout.contradicting_years),
checked against a simple reference: the layout most years share wins, a tie goes to the earliest year."""
from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.elements import ExportGeometry
from pipeline.io.export_layout import contradicting_years

LAYOUTS = [(16, 3, 6), (18, 3, 6), (16, 4, 8)]


def geometry(grid: str, year: int, layout: int, kernel: int = 4) -> ExportGeometry:
    patch, per_row, total = LAYOUTS[layout]
    return ExportGeometry(grid, year, "EPSG:4326", (0.0003, 0.0, -54.0, 0.0, -0.0003, -3.0), patch, per_row, total, kernel)


def test_one_mixer_with_wrong_patch_dimensions_is_refused_naming_both_layouts():
    members = [geometry("1010", y, 0) for y in range(2000, 2008)]
    members[3] = geometry("1010", 2003, 1, kernel=2)  # 20x20 records read as patch 18 + kernel 2
    refused = contradicting_years(members)
    assert list(refused) == [("1010", 2003)]
    assert "patchDimensions 18" in refused[("1010", 2003)] and "patchDimensions 16" in refused[("1010", 2003)]
    assert "in 7 year(s) from 2000" in refused[("1010", 2003)]


def test_a_different_kernel_alone_is_no_contradiction():
    assert contradicting_years([geometry("1", 2000, 0, kernel=4), geometry("1", 2001, 0, kernel=8)]) == {}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["1010", "1011"]),
                       st.lists(st.integers(0, len(LAYOUTS) - 1), min_size=1, max_size=8), min_size=1))
def test_refused_years_are_those_off_the_majority_layout_earliest_on_a_tie(layouts_by_grid):
    members = [geometry(grid, 2000 + i, layout) for grid, layouts in layouts_by_grid.items() for i, layout in enumerate(layouts)]
    refused = contradicting_years(list(reversed(members)))  # input order does not matter
    expected = set()
    for grid, layouts in layouts_by_grid.items():
        counts = Counter(layouts)
        best = max(counts.values())
        winner = next(layout for layout in layouts if counts[layout] == best)  # earliest year among the most common
        expected |= {(grid, 2000 + i) for i, layout in enumerate(layouts) if layout != winner}
    assert set(refused) == expected
