"""`c9-code` against a line-by-line transcription of the published Collection 9 scripts.

tests/c9_published_scripts.py transcribes 4-GapFill_TemporalFilter.js, 5-SpatialFilter.js and
6-FrequencyFilter.js (mapbiomas/brazil-mining @ 5a05cecc, Mapbiomas09/) with their own class values
0 / 30 / 50; here hypothesis feeds both the same stacks — series up to 40 years with up to 80 % of
years not observed, and small blobs at the edge of never-observed areas and of the raster — and the
vectorized engine must give the scripts' result (0 ↔ 0, 1 ↔ 30, 255 ↔ 50).
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.method import filters as F
from tests import c9_published_scripts as js
from tests.support.filter_cases import WORKED, edge_blob_stack, series, text

TO_JS = np.zeros(256, dtype=np.int64)
TO_JS[[0, 1, 255]] = [0, js.MN, js.NO]
FROM_JS = {0: 0, js.MN: 1, js.NO: 255}


def to_js(stack: np.ndarray) -> list[np.ndarray]:
    """A 0 / 1 / 255 stack → the scripts' per-year 0 / 30 / 50 images."""
    return [TO_JS[year] for year in stack]


def from_js(images: list[np.ndarray]) -> np.ndarray:
    out = np.stack(images)
    assert set(np.unique(out).tolist()) <= set(FROM_JS), np.unique(out)
    return np.vectorize(FROM_JS.get, otypes=[np.uint8])(out)


def random_series(seed: int, years: int, gap_share: float, pixels: int = 6) -> np.ndarray:
    """(years, 1, pixels) series of 0 / 1 with `gap_share` of the years not observed."""
    rng = np.random.default_rng(seed)
    stack = np.where(rng.random((years, 1, pixels)) < rng.random(), 1, 0).astype(np.uint8)
    stack[rng.random(stack.shape) < gap_share] = 255
    return stack


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
C9 = F.FilterParams(mode="c9-code")


def test_the_transcription_gives_designs_worked_examples():
    for given_series, _, c9 in WORKED:
        _, temporal = js.gap_fill_temporal(to_js(series(given_series)))
        assert text(from_js(temporal)) == c9, given_series


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), years=st.integers(1, 40), gap_share=st.floats(0.0, 0.8))
def test_gap_fill_and_temporal_equal_the_published_script(seed, years, gap_share):
    stack = random_series(seed, years, gap_share)
    filled_js, temporal_js = js.gap_fill_temporal(to_js(stack))
    filled, _ = F.gap_fill(stack, "c9-code", C9.backfill_limit, C9.c9_backfill_from_index)
    assert (filled == from_js(filled_js)).all()
    assert (F.temporal_filter(filled, "c9-code") == from_js(temporal_js)).all()


def test_last_year_is_filled_by_the_temporal_pass_only():
    # 36 years: the first gap-fill step leaves the last year alone even past index 32 (loop i < n − 1).
    stack = np.array([0] * 33 + [1, 1, 255], dtype=np.uint8)[:, None, None]
    filled_js, temporal_js = js.gap_fill_temporal(to_js(stack))
    assert from_js(filled_js)[-1, 0, 0] == 255
    assert from_js(temporal_js)[-1, 0, 0] == 1
    filled, _ = F.gap_fill(stack, "c9-code")
    assert filled[-1, 0, 0] == 255 and F.temporal_filter(filled, "c9-code")[-1, 0, 0] == 1


def test_two_not_observed_years_agree_in_the_script():
    # After the script's own gap fill this cannot arise (a gap before the last year is filled unless
    # it starts the trailing run), so the temporal filters are fed directly, as the engine's can be.
    stack = np.array([255, 1, 255], dtype=np.uint8)[:, None, None]
    assert from_js(js.temporal_filters(to_js(stack)))[:, 0, 0].tolist() == [255, 255, 255]
    assert F.temporal_filter(stack, "c9-code")[:, 0, 0].tolist() == [255, 255, 255]


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), years=st.integers(1, 40), gap_share=st.floats(0.0, 0.8))
def test_temporal_alone_equals_the_published_script(seed, years, gap_share):
    stack = random_series(seed, years, gap_share)
    assert (F.temporal_filter(stack, "c9-code") == from_js(js.temporal_filters(to_js(stack)))).all()


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 14), cols=st.integers(1, 14),
       mining=st.floats(0.0, 0.7), gap_share=st.floats(0.0, 0.8), edges=st.booleans())
def test_spatial_filter_equals_the_published_script_on_class_30(seed, rows, cols, mining, gap_share, edges):
    rng = np.random.default_rng(seed)
    if edges and rows >= 3 and cols >= 3:
        image = edge_blob_stack(rng, 1, rows, cols, blobs=6, density=mining / 4, gaps=gap_share / 2)[0]
    else:
        image = np.where(rng.random((rows, cols)) < mining, 1, 0).astype(np.uint8)
        image[rng.random(image.shape) < gap_share] = 255
    expected = js.spatialFilter(TO_JS[image], js.MINING_FILTER_PARAMS)
    assert (F.spatial_filter_year(image, "c9-code", 10, 3) == from_js([expected])[0]).all()
    # As committed (classValue 10, absent from 0/30/50 maps) the script changes nothing.
    assert (js.spatialFilter(TO_JS[image], js.COMMITTED_FILTER_PARAMS) == TO_JS[image]).all()


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), years=st.integers(2, 40), gap_share=st.floats(0.0, 0.8))
def test_frequency_filter_equals_the_published_script(seed, years, gap_share):
    rng = np.random.default_rng(seed)
    stack = np.where(rng.random((years, 1, 8)) < rng.random() * 0.3, 1, 0).astype(np.uint8)
    stack[rng.random(stack.shape) < gap_share] = 255
    expected = np.stack(js.filterPixelFrequency(to_js(stack), 10, js.MN))
    out = F.frequency_filter(stack, "c9-code", 10.0)
    assert ((out == 1) == (expected == js.MN)).all()
    # The script writes 0 for everything not mining (unmask(0)); the engine keeps not observed as 255.
    assert (out[stack != 1] == stack[stack != 1]).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), years=st.integers(2, 40), gap_share=st.floats(0.0, 0.8))
def test_whole_chain_equals_the_published_scripts(seed, years, gap_share):
    rng = np.random.default_rng(seed)
    stack = edge_blob_stack(rng, years, 10, 10, blobs=10, density=0.05, gaps=gap_share)
    _, temporal_js = js.gap_fill_temporal(to_js(stack))
    spatial_js = [js.spatialFilter(image, js.MINING_FILTER_PARAMS) for image in temporal_js]
    final_js = np.stack(js.filterPixelFrequency(spatial_js, 10, js.MN))
    stages = {}
    result = F.apply_chain(stack, C9, on_stage=lambda stage, s: stages.__setitem__(stage, s.copy()))
    assert (stages["spatial"] == from_js(spatial_js)).all()
    assert ((result.classes == 1) == (final_js == js.MN)).all()
