"""The derived receptive field (model/receptive_field.py): exact margins, proved on random-weight U-Nets.

Outside the margin nothing reaches the core (outputs bit-identical in float32 on CPU); one pixel at the
margin's edge does reach it. DESIGN §1.5: the published depth-4 network needs 94 px, a 96-px halo.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from model import receptive_field as rf
from model.unet import build_unet
from tests.support.unet import random_unet


@pytest.mark.parametrize("depth, margin, halo", [(1, 8, 8), (2, 22, 24), (3, 46, 48), (4, 94, 96)])
def test_margin_and_halo_of_the_unet_builder(depth, margin, halo):
    """The walk's result for each depth: 2 px per 3x3 conv pair per level scale, pooling and skips included."""
    model = build_unet(6, base_filters=4, depth=depth, patch_size=None)
    assert rf.pooling_alignment(model) == 2**depth
    assert rf.receptive_margin(model) == (margin, margin)
    assert rf.halo(model) == halo


def test_published_c9_network_needs_96_px():
    """DESIGN §1.5: the published network (64 filters, depth 4) needs a 96-px halo on its 16-px grid."""
    model = build_unet(6, patch_size=None)
    assert rf.pooling_alignment(model) == 16
    assert rf.halo(model) == 96


def test_c9_flops_at_512():
    """Useful work 386.2 GFLOP per 512² record; 437.8 counting transposed convs on the dilated input (XLA)."""
    model = build_unet(6, patch_size=None)
    assert rf.count_flops(model, 512, 512) == 386_245_066_752
    assert round(rf.count_flops(model, 512, 512, transposed_as_dilated=True) / 1e9, 1) == 437.8


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_outside_the_margin_nothing_changes_and_at_its_edge_something_does(depth):
    """Randomise everything outside the margin: core bit-identical; one pixel at the edge: core changes."""
    model = random_unet(depth, seed=depth)
    before, after = rf.receptive_margin(model)
    align = rf.pooling_alignment(model)
    h = rf.halo(model)
    core = 2 * align
    start = h + align  # on the pooling grid, with pixels beyond the halo on every side
    side = start + core + h + align
    rng = np.random.default_rng(10 + depth)
    x = rng.normal(size=(1, side, side, 3)).astype(np.float32)

    def core_of(image):
        return np.asarray(model(image, training=False))[0, start : start + core, start : start + core]

    reference = core_of(x)
    inside = np.zeros((side, side), dtype=bool)
    inside[start - before : start + core + after, start - before : start + core + after] = True
    changed = x.copy()
    changed[0][~inside] = rng.normal(size=(int((~inside).sum()), 3)) * 5
    np.testing.assert_array_equal(core_of(changed), reference)

    middle = start + core // 2
    for row, col in ((middle, start - before), (middle, start + core + after - 1),
                     (start - before, middle), (start + core + after - 1, middle)):
        poked = x.copy()
        poked[0, row, col] += 25.0
        assert not np.array_equal(core_of(poked), reference), f"pixel ({row}, {col}) at the margin did not reach the core"


def test_halo_is_exact_only_on_the_pooling_grid():
    """The same window shifted off the grid by one pixel no longer gives the same core (why tiles align)."""
    model = random_unet(2, seed=7)
    h, align = rf.halo(model), rf.pooling_alignment(model)
    x = np.random.default_rng(3).normal(size=(1, 96, 96, 3)).astype(np.float32)
    whole = np.asarray(model(x, training=False))[0]
    core = 2 * align
    aligned = np.asarray(model(x[:, 32 - h : 32 + core + h, 32 - h : 32 + core + h], training=False))[0]
    np.testing.assert_array_equal(aligned[h : h + core, h : h + core], whole[32 : 32 + core, 32 : 32 + core])
    s = 1  # one pixel off the grid: window and core shift together
    shifted = np.asarray(model(x[:, 32 + s - h : 32 + s + core + h, 32 + s - h : 32 + s + core + h], training=False))[0]
    assert not np.array_equal(shifted[h : h + core, h : h + core], whole[32 + s : 32 + s + core, 32 + s : 32 + s + core])


def test_nested_models_and_preprocessing_layers_are_walked():
    """A serving model (Normalization → nested U-Net) has the U-Net's margin."""
    net = build_unet(3, base_filters=4, depth=3, patch_size=None)
    inputs = keras.Input((None, None, 3))
    outputs = net(keras.layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 4.0, 4.0])(inputs))
    assert rf.receptive_margin(keras.Model(inputs, outputs)) == (46, 46)


def test_dilated_and_strided_layers():
    """A 5x5 conv with dilation 2 reaches 4 px; a stride-2 3x3 conv then an up-sampling reaches farther."""
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(1, 5, dilation_rate=2, padding="same")(inputs)
    assert rf.receptive_margin(keras.Model(inputs, x)) == (4, 4)
    y = keras.layers.Conv2D(1, 3, strides=2, padding="same")(inputs)
    y = keras.layers.UpSampling2D(2)(y)
    model = keras.Model(inputs, y)
    assert rf.pooling_alignment(model) == 2
    assert rf.receptive_margin(model) == (1, 1)


def test_unknown_layers_are_refused_by_name():
    """A layer whose spatial effect is unknown (Dense over a flattened map) is named in the error."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Reshape((8, 8, 1), name="odd_reshape")(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="Flatten"):
        rf.receptive_margin(keras.Model(inputs, x))
    valid = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="valid", name="shrinks")(inputs))
    with pytest.raises(ValueError, match="shrinks"):
        rf.halo(valid)
