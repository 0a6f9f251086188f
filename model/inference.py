"""Compiled, mixed-precision inference for any Keras backend (DESIGN §1.5; the GPU path of the pipeline).

`make_inference_fn(model, precision)` returns a callable numpy batch (B, H, W, bands) -> float32
probabilities (B, H, W, 1), compiled by XLA: under KERAS_BACKEND=jax, `jax.jit` over the model's
`stateless_call`; under TensorFlow, `tf.function(jit_compile=True)`. Each input shape compiles once
(tiles of one plan share a shape). Mixed precision rebuilds the network under Keras' mixed policy
(`mixed_bfloat16` / `mixed_float16`: weights float32, computation in 16 bits) with the same weights;
the output layer and any preprocessing layer stay float32, and probabilities come back as float32.

float32 is the default and exact: without `jit` the function is the model's own call in a graph
(bit for bit the eager call); compiled by XLA it differs from the eager TensorFlow-CPU call by float
rounding only (XLA fuses and picks its own convolution kernels; ~2e-7 measured on CPU), and it is
deterministic per pixel across input sizes, so large tiles still equal records bit for bit under it.
`class_disagreement` reports how many pixels change class between two precisions.

Nothing here imports TensorFlow, JAX or Beam at module import: the backend is imported when a
function is built, so the GPU benchmark (JAX, no TensorFlow) uses this very code.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

PRECISIONS = ("float32", "bfloat16", "float16")
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
_KEEP_FLOAT32 = frozenset({"InputLayer", "Normalization", "Rescaling"})


def check_precision(precision: str) -> str:
    """Validate an inference precision (float32, bfloat16, float16) and return it."""
    if precision not in PRECISIONS:
        from pipeline.errors import UserError

        raise UserError(f"unknown inference precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def mixed_precision_model(model, precision: str):
    """A copy of `model` computing in `precision` under Keras' mixed policy, with the same weights.

    float32 returns the model itself. Otherwise every layer is rebuilt from its config with the
    mixed policy (float32 variables, 16-bit computation), except the model's output layers and
    preprocessing layers (Normalization, Rescaling), which stay float32 so probabilities and the
    standardised inputs keep full precision. Nested models are rebuilt the same way.
    """
    import keras

    check_precision(precision)
    if precision == "float32":
        return model
    policy = _POLICIES[precision]
    keep = _output_layers(model)

    def clone_layer(layer):
        config = layer.get_config()
        if id(layer) not in keep and type(layer).__name__ not in _KEEP_FLOAT32:
            config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def _output_layers(model) -> set[int]:
    """Ids of the layers that produce a model's outputs, nested models' own output layers included."""
    ids = set()
    for tensor in model.outputs:
        layer = tensor._keras_history.operation
        ids.add(id(layer))
        if hasattr(layer, "outputs") and hasattr(layer, "_nodes_by_depth"):
            ids |= _output_layers(layer)
    return ids


def make_inference_fn(model, precision: str = "float32", *, jit: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """A callable numpy (B, H, W, bands) -> float32 probabilities (B, H, W, 1), XLA-compiled by default.

    Under KERAS_BACKEND=jax: `jax.jit` over `model.stateless_call` (inference mode); under
    tensorflow: `tf.function(jit_compile=jit)`; `jit=False` gives the uncompiled call (tests, and
    backends without XLA). `precision` picks the computation (see `mixed_precision_model`).
    """
    import keras

    network = mixed_precision_model(model, precision)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in network.trainable_variables]
        frozen = [v.value for v in network.non_trainable_variables]

        def call(trainable, frozen, batch):
            out, _ = network.stateless_call(trainable, frozen, batch, training=False)
            return jnp.asarray(out, dtype=jnp.float32)

        compiled = jax.jit(call) if jit else call
        return lambda batch: np.asarray(compiled(trainable, frozen, np.asarray(batch, dtype=np.float32)))
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda batch: tf.cast(network(batch, training=False), tf.float32), jit_compile=jit, reduce_retracing=False)
        return lambda batch: fn(tf.constant(np.asarray(batch, dtype=np.float32))).numpy()
    if jit:
        raise ValueError(f"Keras backend {backend!r}: XLA compilation is available under jax and tensorflow; use jit=False")
    return lambda batch: np.asarray(keras.ops.convert_to_numpy(network(np.asarray(batch, dtype=np.float32), training=False)), dtype=np.float32)


def class_disagreement(probability: np.ndarray, reference: np.ndarray, threshold: float = 0.5, observed: np.ndarray | None = None) -> float:
    """Fraction of (observed) pixels whose class at `threshold` differs between two probability maps.

    Used to report what a 16-bit precision changes against float32 (before and after the filters,
    the same function on classes: pass 0/1 arrays with threshold 0.5).
    """
    a = np.asarray(probability) >= threshold
    b = np.asarray(reference) >= threshold
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    if observed is not None:
        mask = np.broadcast_to(np.asarray(observed, dtype=bool).reshape(a.shape[: np.ndim(observed)] + (1,) * (a.ndim - np.ndim(observed))), a.shape)
        a, b = a[mask], b[mask]
    return float(np.count_nonzero(a != b) / a.size) if a.size else 0.0
