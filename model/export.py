"""The serving artefact: a TF SavedModel holding the tf.Transform graph and the U-Net, plus its model card.

Serving input: RAW exported band values (Earth Engine scaling: reflectance x 255, index (x + 1) x 127,
i.e. 0-255 floats) as float32 (batch, H, W, bands) in preset order; output: mining probability
(batch, H, W, 1). H and W may be anything divisible by 2**depth (e.g. 256, or 512 with a kernel buffer).

Layout of an exported model folder:
    saved_model.pb, variables/, assets/   the SavedModel (signature `serving_default`: bands -> probability)
    serving.keras                          the same model for every Keras backend (TensorFlow, JAX):
                                           a Normalization layer holding the tf.Transform statistics,
                                           then the U-Net; inputs must be finite (the pipeline's reader
                                           fills not-observed pixels with 0)
    model_card.json                        data, bands, preset, parameters, metrics, threshold, versions

`load_serving_model(path)` returns a `ServingModel`: call it with a numpy batch, get numpy probabilities.
Loading needs TensorFlow only (not tensorflow-transform, not Keras).
"""
from __future__ import annotations

import json
import logging
import platform
import posixpath
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

MODEL_CARD = "model_card.json"
KERAS_FILE = "serving.keras"
NORMALIZATION_LAYER = "band_standardization"
SIGNATURE = "serving_default"
INPUT_NAME = "bands"
OUTPUT_NAME = "probability"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def versions() -> dict[str, str]:
    """Versions of the software that made an artefact, for the model card."""
    import importlib.metadata as metadata

    out = {"python": platform.python_version()}
    for dist in ("mining-mapper", "tensorflow", "keras", "tensorflow-transform", "apache-beam", "numpy", "tfx-bsl"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def make_serving_module(network, transform_layer, bands: Sequence[str]):
    """A tf.Module whose `serve` maps raw bands (B, H, W, n) to probabilities through transform + network."""
    import tensorflow as tf

    from model.preprocessing import transform_images

    bands = list(bands)

    class ServingModule(tf.Module):
        """Transform graph + U-Net, traced for float32 (None, None, None, bands)."""

        def __init__(self):
            super().__init__(name="mining_unet_serving")
            self.network = network
            self.transform_layer = transform_layer
            spec = tf.TensorSpec([None, None, None, len(bands)], tf.float32, name=INPUT_NAME)
            self.serve = tf.function(self._serve, input_signature=[spec])
            self.signature = tf.function(self._signature, input_signature=[spec])

        def _serve(self, images):
            inputs = transform_images(self.transform_layer, images, bands)
            return self.network(inputs, training=False)

        def _signature(self, images):
            return {OUTPUT_NAME: self._serve(images)}

    return ServingModule()


def serving_network(trained, num_bands: int, base_filters: int, depth: int, dropout: float):
    """A float32, any-size copy of a trained U-Net (the training network has a fixed patch size/policy)."""
    import keras

    from model.unet import build_unet

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        network = build_unet(num_bands, base_filters=base_filters, depth=depth, dropout=dropout, patch_size=None)
    finally:
        keras.config.set_dtype_policy(previous)
    network.set_weights([np.asarray(w, dtype=np.float32) for w in trained.get_weights()])
    return network


def export_serving_model(network, transform_dir: str, bands: Sequence[str], export_dir: str, card: dict) -> str:
    """Save transform + network as a SavedModel in export_dir, with `model_card.json` beside it.

    `network` must accept any H, W (see `serving_network`). An existing SavedModel in export_dir is
    replaced; a non-empty folder that is not one is refused (nothing is overwritten by surprise).
    """
    import tensorflow as tf

    from model.preprocessing import band_statistics, load_transform

    gfile = _gfile()
    if gfile.exists(export_dir) and gfile.listdir(export_dir):
        if not gfile.exists(posixpath.join(export_dir, "saved_model.pb")):
            raise UserError(f"{export_dir}: exists and is not an exported model; choose another folder")
        gfile.rmtree(export_dir)
    tft_output = load_transform(transform_dir)
    transform_layer = tft_output.transform_features_layer()
    module = make_serving_module(network, transform_layer, bands)
    tf.saved_model.save(module, export_dir, signatures={SIGNATURE: module.signature})
    save_keras_model(keras_serving_model(network, band_statistics(tft_output, bands), bands), posixpath.join(export_dir, KERAS_FILE))
    write_model_card(export_dir, card)
    log.info("exported serving model to %s", export_dir)
    return export_dir


def keras_serving_model(network, statistics: dict[str, dict[str, float]], bands: Sequence[str]):
    """Raw bands (B, H, W, n) -> probability: a Normalization layer with the statistics, then `network`.

    Built-in layers only, so the `.keras` file loads under every Keras backend with no custom
    objects: Normalization computes (x - mean) / sqrt(variance) with variance = std², the
    transform's own formula (in float32 instead of the transform's float64: within 1e-5 after the
    network). Unlike the SavedModel it does not map NaN to 0: inputs must be finite.
    """
    import keras

    bands = list(bands)
    missing = [b for b in bands if b not in statistics]
    if missing:
        raise ValueError(f"no statistics for band(s) {', '.join(missing)}")
    normalize = keras.layers.Normalization(
        axis=-1,
        mean=[float(statistics[b]["mean"]) for b in bands],
        variance=[float(statistics[b]["std"]) ** 2 for b in bands],
        name=NORMALIZATION_LAYER,
        dtype="float32",
    )
    inputs = keras.Input((None, None, len(bands)), dtype="float32", name=INPUT_NAME)
    return keras.Model(inputs, network(normalize(inputs)), name="mining_unet_serving")


def save_keras_model(model, path: str) -> str:
    """Save a Keras model as a `.keras` file at a local or gs:// path (written locally, then copied)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="keras-") as folder:
        local = os.path.join(folder, posixpath.basename(path))
        model.save(local)
        _gfile().copy(local, path, overwrite=True)
    log.info("wrote the Keras serving model %s", path)
    return path


def read_model_card(model_dir: str) -> dict:
    """The model card of an exported model (a UserError naming the folder when it is absent or broken)."""
    path = posixpath.join(model_dir, MODEL_CARD)
    if not _gfile().exists(path):
        raise UserError(f"{model_dir}: no {MODEL_CARD}; not an exported mining-mapper model")
    try:
        with _gfile().GFile(path, "r") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def write_model_card(model_dir: str, card: dict) -> str:
    """Write the model card JSON beside the model (non-finite numbers become null)."""
    path = posixpath.join(model_dir, MODEL_CARD)
    gfile = _gfile()
    gfile.makedirs(model_dir)
    with gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(_finite(card), indent=2, sort_keys=False) + "\n")
    return path


def _finite(value):
    """Replace NaN/inf with None (JSON null), recursively, and numpy scalars with Python ones."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class ServingModel:
    """A loaded serving model: `model(batch)` with raw bands (B, H, W, n) -> probabilities (B, H, W, 1).

    Callable like a Keras model, so Beam's TensorFlow inference functions (and our handler) can use it.
    """

    path: str
    loaded: object
    card: dict

    @property
    def bands(self) -> list[str]:
        """Band names in input order."""
        return list(self.card["bands"])

    @property
    def threshold(self) -> float:
        """The probability threshold recorded in the model card."""
        return float(self.card.get("threshold", 0.5))

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (2**depth)."""
        return 2 ** int(self.card.get("architecture", {}).get("depth", 4))

    def __call__(self, batch, **_ignored) -> np.ndarray:
        """Probabilities (B, H, W, 1) float32 for a raw band batch (B, H, W, n) (numpy or tensor)."""
        import tensorflow as tf

        array = np.asarray(batch, dtype=np.float32)
        if array.ndim == 3:
            raise ValueError(f"{self.path}: expected a batch (B, H, W, {len(self.bands)}), got one image {array.shape}")
        if array.ndim != 4 or array.shape[-1] != len(self.bands):
            raise ValueError(
                f"{self.path}: expected input (B, H, W, {len(self.bands)}) with bands {', '.join(self.bands)}, "
                f"got shape {array.shape}"
            )
        m = self.size_multiple
        if array.shape[1] % m or array.shape[2] % m:
            raise ValueError(f"{self.path}: H and W must be multiples of {m}, got {array.shape[1]}x{array.shape[2]}")
        return self.loaded.serve(tf.constant(array)).numpy()

    predict = __call__


def load_serving_model(path: str) -> ServingModel:
    """Load an exported model folder: the SavedModel and its card. A clear error when it is not one."""
    import tensorflow as tf

    if not _gfile().exists(posixpath.join(path, "saved_model.pb")):
        raise UserError(f"{path}: no saved_model.pb; not an exported mining-mapper model")
    card = read_model_card(path)
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "serve"):
        raise UserError(f"{path}: the SavedModel has no `serve` function; export it with mining-mapper train")
    return ServingModel(path=path, loaded=loaded, card=card)
