"""The filter engine against DESIGN.md §3: worked examples, a per-pixel reference, tiling, memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.method import filters as F
from tests import reference_filters as ref
from tests.support.filter_cases import WORKED, edge_blob_stack, series, text

MODES = ("appendix", "c9-code")


@pytest.mark.parametrize("given_series,appendix,c9", WORKED)
def test_worked_examples_gap_fill_and_temporal(given_series, appendix, c9):
    for mode, expected in (("appendix", appendix), ("c9-code", c9)):
        filled, _ = F.gap_fill(series(given_series), mode)
        assert text(F.temporal_filter(filled, mode)) == expected, mode


def blob(shape_rows: list[str], pad: int = 3) -> np.ndarray:
    """A binary blob drawn with '#' in a field of zeros, as a (1, rows, cols) stack."""
    body = np.array([[1 if ch == "#" else 0 for ch in row] for row in shape_rows], dtype=np.uint8)
    return np.pad(body, pad)[None]


# DESIGN.md §3: c9-code mining pixels in → out for an isolated blob; appendix removes every blob under 10.
BLOBS = [
    (["#"], 1, 0),
    (["#..", "#..", "###"], 5, 0),
    (["#########"], 9, 0),
    (["####", "####"], 8, 4),
    (["###", "###", "###"], 9, 5),
    (["####", "####", "####"], 12, 12),
]


@pytest.mark.parametrize("rows,pixels_in,c9_out", BLOBS)
def test_worked_examples_spatial(rows, pixels_in, c9_out):
    stack = blob(rows)
    assert int((stack == 1).sum()) == pixels_in
    c9 = F.spatial_filter(stack, "c9-code")
    appendix = F.spatial_filter(stack, "appendix")
    assert int((c9 == 1).sum()) == c9_out
    assert int((appendix == 1).sum()) == (0 if pixels_in < 10 else pixels_in)
    assert set(np.unique(c9)) <= {0, 1}


def test_gap_fill_origin_records_source_year():
    filled, origin = F.gap_fill(series("0.1..."), "appendix", backfill_limit=2)
    assert text(filled) == "01111."
    assert origin[:, 0, 0].tolist() == [0, 2, 2, 2, 2, 255]


def test_c9_gap_fill_backfills_from_index_32_only_and_never_touches_the_last_year():
    values = "0" * 30 + "1" + "." * 5  # 36 years, indices 31..35 not observed
    filled, origin = F.gap_fill(series(values), "c9-code")
    # Nothing later to take; index 31 is below 32 so it stays; 32 skips 31 and takes 30; 33, 34 take i−1;
    # the last year (35) is outside the script's loop (i < n − 1): still not observed after this step.
    assert text(filled) == "0" * 30 + "1" + "." + "1" * 3 + "."
    assert origin[30:, 0, 0].tolist() == [30, 255, 30, 30, 30, 255]
    filled, _ = F.gap_fill(series("0" * 31 + "1" + "." * 4), "c9-code")
    assert text(filled) == "0" * 31 + "1" * 4 + "."
    # ... and the temporal pass 2 fills it (y[n−3] = y[n−2] = 1 writes the last year; the onset moves
    # one year late, as in DESIGN's first worked example).
    assert text(F.temporal_filter(filled, "c9-code")) == "0" * 32 + "1" * 4


def test_c9_not_observed_years_agree_and_vote():
    # Pass 1: y[t−1] = y[t+1] = 255 writes 255 over an observation; pass 2 likewise.
    assert text(F.temporal_filter(series(".1."), "c9-code")) == "..."
    assert text(F.temporal_filter(series(".1."), "appendix")) == ".1."
    # A lone mining pixel among not-observed neighbours takes the mode: 255 (5 votes) beats 0 (3).
    image = np.array([[255, 255, 255], [255, 1, 0], [0, 0, 255]], dtype=np.uint8)
    assert F.spatial_filter_year(image, "c9-code")[1, 1] == 255
    assert F.spatial_filter_year(image, "appendix")[1, 1] == 0
    # Ties go to the smaller value: [0, 1] at the row's end → 0; [255, 1] at the column's top → 1.
    tie = np.array([[255, 255, 0, 0, 1]], dtype=np.uint8)
    assert F.window_mode(tie, 3).tolist() == [[255, 255, 0, 0, 0]]
    column = np.array([[255], [1], [1], [255]], dtype=np.uint8)
    assert F.window_mode(column, 3).ravel().tolist() == [1, 1, 1, 1]
    # Outside the raster (inside = False) does not vote.
    inside = np.array([[False, False, True, True, True]])
    assert F.window_mode(tie, 3, inside).tolist() == [[0, 0, 0, 0, 0]]


def test_c9_gap_fill_never_uses_last_year_as_source():
    filled, _ = F.gap_fill(series("0..1"), "c9-code")
    assert text(filled) == "0..1"
    filled, _ = F.gap_fill(series("0..1"), "appendix")
    assert text(filled) == "0111"


def test_frequency_thresholds_are_strict_in_appendix_and_inclusive_in_c9():
    # 20 years, 2 mining: appendix 2/20 = 10 % is not < 10 % (kept); c9 2*100/19 = 10.5 > 10 (kept).
    kept = series("11" + "0" * 18)
    assert (F.frequency_filter(kept, "appendix") == kept).all()
    assert (F.frequency_filter(kept, "c9-code") == kept).all()
    # 21 years, 2 mining: appendix 2/21 < 10 % removed; c9 200/20 = 10 ≤ 10 removed.
    rare = series("11" + "0" * 19)
    assert text(F.frequency_filter(rare, "appendix")) == "0" * 21
    assert text(F.frequency_filter(rare, "c9-code")) == "0" * 21
    # 11 years, 1 mining: appendix 1/11 < 10 % and c9 100/10 = 10 ≤ 10: both remove.
    assert text(F.frequency_filter(series("1" + "0" * 10), "appendix")) == "0" * 11
    assert text(F.frequency_filter(series("1" + "0" * 10), "c9-code")) == "0" * 11
    # 10 years, 1 mining: appendix 1/10 is not < 10 %; c9 100/9 = 11.1 > 10: both keep.
    assert text(F.frequency_filter(series("1" + "0" * 9), "appendix")) == "1" + "0" * 9
    assert text(F.frequency_filter(series("1" + "0" * 9), "c9-code")) == "1" + "0" * 9
    # 30 years, 3 mining: appendix 3/30 = 10 % kept; c9 300/29 = 10.3 kept. 31 years, 3: appendix removes, c9 300/30 = 10 removes.
    assert text(F.frequency_filter(series("111" + "0" * 27), "appendix")).count("1") == 3
    assert text(F.frequency_filter(series("111" + "0" * 28), "c9-code")).count("1") == 0


def test_chain_counts_mining_after_every_stage():
    stack = np.zeros((5, 12, 12), dtype=np.uint8)
    stack[:, 2:6, 2:6] = 1  # a 16-pixel pit, every year
    stack[2, 10, 10] = 1  # a one-year, one-pixel flicker
    stack[1, 3, 3] = 255
    result = F.apply_chain(stack, F.FilterParams())
    assert result.mining_pixels["input"].tolist() == [16, 15, 17, 16, 16]
    assert result.mining_pixels["gap_fill"].tolist() == [16, 16, 17, 16, 16]
    assert result.mining_pixels["temporal"].tolist() == [16, 16, 16, 16, 16]
    assert result.mining_pixels["frequency"].tolist() == [16] * 5
    assert set(result.mining_pixels) == set(F.STAGES)


def test_params_are_validated():
    with pytest.raises(ValueError, match="mode"):
        F.FilterParams(mode="strict")
    with pytest.raises(ValueError, match="odd"):
        F.FilterParams(spatial_window=4)
    with pytest.raises(ValueError, match="values other than"):
        F.apply_chain(np.full((2, 2, 2), 7, dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        F.apply_chain(np.zeros((2, 2, 2), dtype=np.int16))


def test_input_stack_is_not_modified():
    rng = np.random.default_rng(1)
    stack = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(8, 20, 20))
    before = stack.copy()
    for mode in MODES:
        F.apply_chain(stack, F.FilterParams(mode=mode))
    assert (stack == before).all()


# ------------------------------------------------------------------ property tests vs the reference
def stacks(max_side: int = 6):
    return st.integers(1, 40).flatmap(
        lambda n: st.tuples(st.integers(1, max_side), st.integers(1, max_side)).flatmap(
            lambda rc: hnp.arrays(np.uint8, (n, rc[0], rc[1]), elements=st.sampled_from([0, 1, 255]))
        )
    )


series_strategy = st.integers(1, 40).flatmap(
    lambda n: hnp.arrays(np.uint8, (n, 1, 3), elements=st.sampled_from([0, 1, 255]))
)
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(stack=series_strategy, mode=st.sampled_from(MODES), limit=st.integers(0, 4), c9_from=st.sampled_from([0, 5, 32]))
def test_gap_fill_matches_reference(stack, mode, limit, c9_from):
    filled, origin = F.gap_fill(stack, mode, backfill_limit=limit, c9_backfill_from_index=c9_from)
    for c in range(stack.shape[2]):
        expected, expected_origin = ref.gap_fill_series(stack[:, 0, c].tolist(), mode, limit, c9_from)
        assert filled[:, 0, c].tolist() == expected
        assert origin[:, 0, c].tolist() == expected_origin


@QUICK
@given(stack=series_strategy, mode=st.sampled_from(MODES))
def test_temporal_matches_reference(stack, mode):
    out = F.temporal_filter(stack, mode)
    for c in range(stack.shape[2]):
        assert out[:, 0, c].tolist() == ref.temporal_series(stack[:, 0, c].tolist(), mode)


@QUICK
@given(stack=series_strategy, mode=st.sampled_from(MODES), cut=st.sampled_from([0.0, 5.0, 10.0, 25.0, 50.0]))
def test_frequency_matches_reference(stack, mode, cut):
    out = F.frequency_filter(stack, mode, cut)
    for c in range(stack.shape[2]):
        assert out[:, 0, c].tolist() == ref.frequency_series(stack[:, 0, c].tolist(), mode, cut)


binary_images = st.tuples(st.integers(1, 14), st.integers(1, 14)).flatmap(
    lambda rc: hnp.arrays(np.uint8, rc, elements=st.sampled_from([0, 1, 1, 255]))
)


@QUICK
@given(image=binary_images, mode=st.sampled_from(MODES), min_size=st.integers(1, 12), window=st.sampled_from([1, 3, 5]))
def test_spatial_matches_reference(image, mode, min_size, window):
    out = F.spatial_filter_year(image, mode, min_size, window)
    assert out.tolist() == ref.spatial_image(image.tolist(), mode, min_size, window)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack=stacks(), mode=st.sampled_from(MODES))
def test_chain_matches_reference(stack, mode):
    params = F.FilterParams(mode=mode, min_component_size=4, c9_backfill_from_index=3)
    result = F.apply_chain(stack, params)
    expected = ref.chain(stack.tolist(), mode, min_size=4, c9_from=3)
    assert result.classes.tolist() == expected


# ------------------------------------------------------------------ tiles
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    tile=st.integers(3, 17),
    mode=st.sampled_from(MODES),
    min_size=st.integers(2, 12),
    density=st.floats(0.2, 0.6),
    edges=st.booleans(),
)
def test_tiled_spatial_filter_equals_whole_raster(seed, tile, mode, min_size, density, edges):
    rng = np.random.default_rng(seed)
    if edges:  # small blobs at the raster's edge and at the edge of never-observed areas
        stack = edge_blob_stack(rng, 2, 40, 37, blobs=16, density=density / 4)
    else:
        stack = np.where(rng.random((2, 40, 37)) < density, 1, 0).astype(np.uint8)
        stack[rng.random(stack.shape) < 0.05] = 255
    whole = F.spatial_filter(stack, mode, min_size)
    tiled = F.spatial_filter_tiled(stack, tile, mode, min_size)
    assert (tiled == whole).all()


def test_component_crossing_tile_edges_is_one_component():
    # A 12-pixel diagonal staircase crosses the 4×4 tile corners several times: kept whole, never cut.
    image = np.zeros((16, 16), dtype=np.uint8)
    for i in range(12):
        image[i, i] = 1
    stack = image[None]
    assert (F.spatial_filter_tiled(stack, 4, "appendix") == stack).all()
    assert (F.spatial_filter_tiled(stack, 4, "appendix", min_component_size=13) == 0).all()
    # Without a halo, each tile would see 4-pixel pieces and remove them.
    pieces = np.concatenate([F.spatial_filter(stack[:, r:r + 4, c:c + 4], "appendix") for r in (0, 4) for c in (0, 4)], axis=0)
    assert (pieces == 0).all()


def test_spatial_halo_is_what_the_size_test_needs():
    assert F.spatial_halo(10, 3) == 9
    assert F.spatial_halo(1, 5) == 2
    assert F.FilterParams(min_component_size=6).spatial_halo == 5


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("mode", MODES)
def test_chain_peak_extra_memory_is_at_most_four_times_the_stack(mode):
    rng = np.random.default_rng(7)
    stack = rng.choice(np.array([0, 0, 0, 1, 255], dtype=np.uint8), size=(39, 256, 256))
    F.apply_chain(stack[:, :8, :8], F.FilterParams(mode=mode))  # warm up imports and caches
    tracemalloc.start()
    try:
        result = F.apply_chain(stack, F.FilterParams(mode=mode))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.classes.shape == stack.shape
    assert peak <= 4 * stack.nbytes, f"peak {peak / stack.nbytes:.2f}× the stack"
