"""Pure per-patch and per-tile functions: classification at the threshold, halo strips, assembly."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.method.filters import FilterParams, apply_chain, spatial_filter
from tests.support.filter_cases import edge_blob_stack
from pipeline.elements import ClassifiedPatch
from pipeline.method.tiles import assemble_year, classify_patch, halo_strips, mining_rows_of_raster, pad_with_halo, spatial_frequency_tile, split_years, stack_tile_years, temporal_filter_tile


def test_classify_patch_crops_the_buffer_thresholds_and_keeps_not_observed():
    probability = np.full((8, 8), 0.2, dtype=np.float32)
    probability[2:4, 2:4] = 0.5  # exactly the threshold: mining
    probability[0, :] = 0.99  # in the buffer: cropped away
    observed = np.ones((8, 8), dtype=bool)
    observed[5, 5] = False
    classes, scaled = classify_patch(probability, observed, kernel=4, threshold=0.5)
    assert classes.shape == (4, 4)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[0:2, 0:2] = 1
    expected[3, 3] = 255
    assert (classes == expected).all()
    assert scaled[0, 0] == 128 and scaled[2, 2] == 51 and scaled[3, 3] == 255
    assert classify_patch(np.ones((4, 4)), np.ones((4, 4), bool), 0, 0.5)[1].max() == 254


def tiles_of(stack: np.ndarray, size: int, grid: str = "7"):
    rows, cols = stack.shape[1] // size, stack.shape[2] // size
    years = list(range(2000, 2000 + stack.shape[0]))
    out = {}
    for r in range(rows):
        for c in range(cols):
            patches = [
                ClassifiedPatch(grid, year, r * cols + c, r, c, stack[t, r * size:(r + 1) * size, c * size:(c + 1) * size], None)
                for t, year in enumerate(years)
            ]
            out[(r, c)] = stack_tile_years(grid, r, c, years, patches, size, keep_probability=False)
    return out, years


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), size=st.sampled_from([4, 6, 9, 16]), mode=st.sampled_from(["appendix", "c9-code"]),
       min_size=st.integers(2, 12), edges=st.booleans())
def test_tiles_with_halo_strips_equal_the_whole_raster_chain(seed, size, mode, min_size, edges):
    rng = np.random.default_rng(seed)
    if edges:  # small blobs at the raster's edge and at the edge of never-observed areas
        stack = edge_blob_stack(rng, 5, 3 * size, 2 * size)
    else:
        stack = np.where(rng.random((5, 3 * size, 2 * size)) < 0.45, 1, 0).astype(np.uint8)
        stack[rng.random(stack.shape) < 0.1] = 255
    params = FilterParams(mode=mode, min_component_size=min_size)
    tiles, years = tiles_of(stack, size)
    temporal = {key: temporal_filter_tile(tile, params, keep_origin=True) for key, tile in tiles.items()}
    inbox: dict = {key: [] for key in temporal}
    for tile in temporal.values():
        for target, strip in halo_strips(tile, params.spatial_halo):
            if target in inbox:
                inbox[target].append(strip)
    expected = apply_chain(stack, params)
    for key, tile in temporal.items():
        done = spatial_frequency_tile(tile, inbox[key], params, spatial=True)
        r, c = key
        window = expected.classes[:, r * size:(r + 1) * size, c * size:(c + 1) * size]
        assert (done.classes == window).all()
        assert (done.origin == expected.origin[:, r * size:(r + 1) * size, c * size:(c + 1) * size]).all()


def test_pad_with_halo_puts_each_strip_on_its_side():
    stack = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(1, 12, 4)  # three tiles of 4×4 in a column
    tiles, _ = tiles_of(stack, 4)
    middle = tiles[(1, 0)]
    strips = [s for tile in (tiles[(0, 0)], tiles[(2, 0)]) for target, s in halo_strips(tile, 2) if target == (1, 0)]
    padded, inside = pad_with_halo(middle, strips, 2)
    assert padded.shape == (1, 8, 8)
    assert inside[:, 2:6].all() and not inside[:, :2].any() and not inside[:, 6:].any()
    assert (padded[0, 2:6, 2:6] == stack[0, 4:8]).all()
    assert (padded[0, 0:2, 2:6] == stack[0, 2:4]).all()  # bottom two rows of the tile above
    assert (padded[0, 6:8, 2:6] == stack[0, 8:10]).all()  # top two rows of the tile below
    assert (padded[0, :, :2] == 255).all() and (padded[0, :, 6:] == 255).all()  # no neighbours left/right


def test_c9_blob_at_the_raster_edge_ignores_outside_but_counts_not_observed():
    # A 2-pixel blob in the top-left corner over two not-observed pixels. Whole raster: the corner sees
    # 2 × 1 and 2 × 255 (the 5 outside ignored) → tie → 1; its neighbour sees 2 × 0, 2 × 1, 2 × 255 → 0.
    # The tile must agree although its padded window holds 255 beyond the edge (which would make 255 win).
    stack = np.zeros((1, 8, 8), dtype=np.uint8)
    stack[0, 0, 0:2] = 1
    stack[0, 1, 0:2] = 255
    params = FilterParams(mode="c9-code", min_component_size=3)
    whole = spatial_filter(stack, "c9-code", 3)
    assert whole[0, 0, :3].tolist() == [1, 0, 0]
    tiles, _ = tiles_of(stack, 4)
    inbox = {key: [] for key in tiles}
    for tile in tiles.values():
        for target, strip in halo_strips(tile, params.spatial_halo):
            if target in inbox:
                inbox[target].append(strip)
    done = spatial_frequency_tile(tiles[(0, 0)], inbox[(0, 0)], params, spatial=True)
    assert (done.classes == whole[:, :4, :4]).all()


def test_spatial_off_leaves_classes_and_counts_rows():
    stack = np.zeros((2, 4, 4), dtype=np.uint8)
    stack[:, 1, 1] = 1
    tiles, _ = tiles_of(stack, 4)
    tile = temporal_filter_tile(tiles[(0, 0)], FilterParams(), keep_origin=False)
    done = spatial_frequency_tile(tile, [], FilterParams(), spatial=False)
    assert (done.classes == stack).all()
    assert done.mining_rows["spatial"].tolist() == [[0, 1, 0, 0]] * 2
    assert spatial_filter(stack, "appendix").sum() == 0  # what spatial=True would have done


def test_split_and_assemble_round_trip():
    rng = np.random.default_rng(0)
    stack = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(3, 8, 12))
    tiles, years = tiles_of(stack, 4)
    per_year: dict = {}
    for tile in tiles.values():
        tile = temporal_filter_tile(tile, FilterParams(), keep_origin=True)
        tile = spatial_frequency_tile(tile, [], FilterParams(min_component_size=1), spatial=False)
        for key, year_tile in split_years(tile):
            per_year.setdefault(key, []).append(year_tile)
    expected = apply_chain(stack, FilterParams(min_component_size=1))
    for t, year in enumerate(years):
        rasters = assemble_year(per_year[("7", year)], 2, 3, 4, years)
        assert (rasters["classes"] == expected.classes[t]).all()
        assert set(rasters) == {"classes", "origin"}
        rows = mining_rows_of_raster(per_year[("7", year)], 2, 4)
        assert rows["frequency"].tolist() == (expected.classes[t] == 1).sum(axis=1).tolist()


def test_stack_tile_years_fills_missing_years_and_rejects_wrong_sizes():
    patch = ClassifiedPatch("7", 2001, 0, 0, 0, np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    tile = stack_tile_years("7", 0, 0, [2000, 2001, 2002], [patch], 4, keep_probability=True)
    assert (tile.classes[0] == 255).all() and (tile.classes[1] == 1).all() and (tile.probability[1] == 0).all()
    with pytest.raises(ValueError, match="not 8×8"):
        stack_tile_years("7", 0, 0, [2001], [patch], 8, keep_probability=False)
