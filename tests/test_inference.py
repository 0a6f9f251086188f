"""Compiled, mixed-precision inference (model/inference.py) under the TensorFlow backend on CPU."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from model import tiling
from model.inference import class_disagreement, make_inference_fn, mixed_precision_model
from pipeline.errors import UserError
from tests.support.unet import generated_export, random_unet


@pytest.fixture(scope="module")
def net():
    return random_unet(3, bands=6, seed=21)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(5).uniform(0.0, 3.0, size=(2, 64, 64, 6)).astype(np.float32)


def test_float32_uncompiled_is_the_eager_call_bit_for_bit(net, batch):
    """float32 without XLA: the model's own call in a graph, identical to the eager call."""
    eager = np.asarray(net(batch, training=False))
    got = make_inference_fn(net, "float32", jit=False)(batch)
    assert got.dtype == np.float32 and got.shape == (2, 64, 64, 1)
    np.testing.assert_array_equal(got, eager)


def test_float32_compiled_equals_eager_to_rounding(net, batch):
    """XLA (its own kernels and fusions) differs from eager TensorFlow-CPU by float rounding only."""
    eager = np.asarray(net(batch, training=False))
    got = make_inference_fn(net, "float32")(batch)
    np.testing.assert_allclose(got, eager, rtol=0, atol=1e-6)
    assert class_disagreement(got, eager) == 0.0


def test_compiled_large_tiles_equal_compiled_records_bit_for_bit():
    """Under the compiled function too, tiles give the record-wise probabilities exactly."""
    model = random_unet(2, bands=3, seed=22)
    fn = make_inference_fn(model, "float32")
    geometry, patches = generated_export(2, 2, 32, 48, 3, seed=9)
    mosaic = tiling.assemble_mosaic(geometry, patches)
    stitched = tiling.infer_mosaic(fn, mosaic, tiling.plan_tiles(mosaic, model, 64), batch_size=2)
    for p in patches:
        expected = fn(p.bands[None])[0, 24:-24, 24:-24, 0]
        got = stitched[p.row * 32 : (p.row + 1) * 32, p.col * 32 : (p.col + 1) * 32]
        observed = p.core()[1]
        np.testing.assert_array_equal(got[observed], expected[observed])


@pytest.mark.parametrize("precision, policy", [("bfloat16", "mixed_bfloat16"), ("float16", "mixed_float16")])
def test_mixed_precision_same_weights_float32_probabilities(net, batch, precision, policy):
    """The mixed copy computes in 16 bits with the same weights; the output layer and probabilities stay float32."""
    clone = mixed_precision_model(net, precision)
    assert clone.get_layer("enc0_conv1").dtype_policy.name == policy
    assert clone.get_layer("probability").dtype_policy.name == "float32"
    for a, b in zip(clone.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)
    eager = np.asarray(net(batch, training=False))
    got = make_inference_fn(net, precision)(batch)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, eager, atol=2e-2)
    assert class_disagreement(got, eager) < 0.01
    assert not np.array_equal(got, make_inference_fn(net, "float32")(batch))  # it did compute in 16 bits


def test_serving_model_keeps_its_normalization_in_float32():
    """A serving model (Normalization → nested U-Net): preprocessing and the nested output layer stay float32."""
    net = random_unet(2, bands=3, seed=23)
    inputs = keras.Input((None, None, 3))
    norm = keras.layers.Normalization(mean=[100.0, 90.0, 80.0], variance=[400.0, 300.0, 200.0], name="band_standardization")
    serving = keras.Model(inputs, net(norm(inputs)))
    clone = mixed_precision_model(serving, "bfloat16")
    assert clone.get_layer("band_standardization").dtype_policy.name == "float32"
    inner = clone.layers[-1]
    assert inner.get_layer("probability").dtype_policy.name == "float32"
    assert inner.get_layer("enc1_conv2").dtype_policy.name == "mixed_bfloat16"
    raw = np.random.default_rng(1).uniform(1, 255, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(make_inference_fn(serving, "bfloat16")(raw), np.asarray(serving(raw)), atol=2e-2)


def test_class_disagreement_counts_observed_pixels():
    """Exact fractions on hand-made maps, with and without an observed mask."""
    a = np.array([[0.1, 0.6], [0.5, 0.49]], dtype=np.float32)
    b = np.array([[0.2, 0.4], [0.51, 0.5]], dtype=np.float32)
    assert class_disagreement(a, b) == 0.5
    assert class_disagreement(a, b, observed=np.array([[True, False], [True, True]])) == pytest.approx(1 / 3)
    assert class_disagreement(a[None, ..., None], b[None, ..., None], observed=np.ones((1, 2, 2), bool)) == 0.5
    assert class_disagreement(a, b, observed=np.zeros((2, 2), bool)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        class_disagreement(a, b[:1])


def test_unknown_precision_is_a_user_error(net):
    with pytest.raises(UserError, match="unknown inference precision 'int8'"):
        make_inference_fn(net, "int8")


def test_a_gs_keras_file_is_read_through_the_filesystem_and_its_local_copy_removed(net, batch, tmp_path, monkeypatch):
    """transforms.inference._load_keras_file: `gs://` through pipeline.io.filesystem.read_bytes, into a temporary
    folder that is gone once the model is loaded; the loaded model is the saved one."""
    import tempfile

    from pipeline.io import filesystem
    from transforms.inference import _load_keras_file

    saved = tmp_path / "unet.keras"
    net.save(saved)
    asked = []
    monkeypatch.setattr(filesystem, "read_bytes", lambda path: asked.append(path) or saved.read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = _load_keras_file("gs://models/national/unet.keras")
    assert asked == ["gs://models/national/unet.keras"] and list(scratch.iterdir()) == []
    np.testing.assert_array_equal(np.asarray(loaded(batch, training=False)), np.asarray(net(batch, training=False)))


def test_the_precision_check_reference_is_the_loaded_network_in_float32(net, batch, tmp_path, monkeypatch):
    """--precision_check at bfloat16: the model file is read once; the reference is that network's float32 call."""
    from transforms import inference

    saved = tmp_path / "unet.keras"
    net.save(saved)
    loads = []
    real = inference._load_keras_file
    monkeypatch.setattr(inference, "_load_keras_file", lambda path: loads.append(path) or real(path))
    model = inference.load_inference_model(str(saved), "bfloat16", need_network=True, check=True)
    assert loads == [str(saved)] and model.reference.network is model.network
    np.testing.assert_array_equal(model.reference(batch), np.asarray(net(batch, training=False)))
    assert inference.load_inference_model(str(saved), "float32", check=True).reference is None  # nothing to compare at float32
