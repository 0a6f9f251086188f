"""The U-Net builder: the published C9 parameter counts, shapes, width/depth variants, input checks."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.contract import BAND_PRESETS
from model.unet import build_unet, count_parameters


def test_published_c9_network_parameter_counts():
    """DESIGN §1.5: for 6 bands, 31,064,705 parameters, 31,049,089 trainable."""
    model = build_unet(6)
    assert count_parameters(model) == (31_064_705, 31_049_089)
    assert model.input_shape == (None, 256, 256, 6)
    assert model.output_shape == (None, 256, 256, 1)


def test_published_layout_levels_and_dropout():
    """Encoder 64/128/256/512, centre 1024, dropout 0.3 before a 1x1 sigmoid conv."""
    model = build_unet(6)
    filters = [model.get_layer(f"enc{i}_conv1").filters for i in range(4)]
    assert filters == [64, 128, 256, 512]
    assert model.get_layer("center_conv2").filters == 1024
    assert model.get_layer("dropout").rate == pytest.approx(0.3)
    out = model.get_layer("probability")
    assert out.kernel_size == (1, 1) and out.filters == 1
    assert out.activation.__name__ == "sigmoid"


@pytest.mark.parametrize("preset", sorted(BAND_PRESETS))
def test_demo_width_shapes_and_probabilities(preset):
    """The demo width (8 filters, depth 3) maps (B, H, W, bands) to probabilities (B, H, W, 1)."""
    bands = len(BAND_PRESETS[preset])
    model = build_unet(bands, base_filters=8, depth=3, patch_size=32)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, bands)).astype(np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, 32, 32, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    total, trainable = count_parameters(model)
    assert 0 < trainable < total < 200_000


def test_any_size_network_accepts_multiples_of_two_to_the_depth():
    """patch_size=None serves 256x256 patches and 512x512 records with a kernel buffer alike."""
    model = build_unet(3, base_filters=4, depth=2, patch_size=None)
    for side in (16, 24):
        assert np.asarray(model(np.zeros((1, side, side, 3), np.float32))).shape == (1, side, side, 1)


def test_parameter_count_scales_with_bands_only_in_first_conv():
    """One more band adds 3*3*64 weights to the first convolution and nothing else."""
    six, _ = count_parameters(build_unet(6, patch_size=None))
    seven, _ = count_parameters(build_unet(7, patch_size=None))
    assert seven - six == 3 * 3 * 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bands": 6, "patch_size": 250}, "divisible"),
        ({"num_bands": 0}, "num_bands"),
        ({"num_bands": 6, "depth": 0}, "depth"),
        ({"num_bands": 6, "dropout": 1.0}, "dropout"),
    ],
)
def test_bad_builder_arguments(kwargs, message):
    """Impossible shapes and values fail at build time with a message naming the argument."""
    with pytest.raises(ValueError, match=message):
        build_unet(**kwargs)
