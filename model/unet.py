"""The U-Net of the MapBiomas Collection 9 mining model (DESIGN §1.5), with width and depth parameters.

Defaults reproduce the published network: encoder levels of 64, 128, 256, 512 filters and a 1024 centre,
each block (3x3 conv -> BatchNorm -> ReLU) x 2, 2x2 max-pool down, 2x2 stride-2 transposed conv up,
concatenated with the skip, BatchNorm -> ReLU and a block, dropout 0.3 before a 1x1 sigmoid conv.
For 6 bands: 31,064,705 parameters, 31,049,089 trainable.
"""
from __future__ import annotations

import math

import keras
from keras import layers


def conv_block(x, filters: int, name: str):
    """Two (3x3 conv -> BatchNorm -> ReLU) stages: the unit of every level of the U-Net."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def encoder_block(x, filters: int, name: str):
    """A conv block and a 2x2 max-pool; returns (pooled, skip) so the decoder can concatenate the skip."""
    skip = conv_block(x, filters, name)
    pooled = layers.MaxPooling2D(2, strides=2, name=f"{name}_pool")(skip)
    return pooled, skip


def decoder_block(x, skip, filters: int, name: str):
    """2x2 stride-2 transposed conv up, concatenated with the skip, BatchNorm -> ReLU, then a conv block."""
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    x = layers.Concatenate(axis=-1, name=f"{name}_concat")([skip, x])
    x = layers.BatchNormalization(name=f"{name}_bn0")(x)
    x = layers.Activation("relu", name=f"{name}_relu0")(x)
    return conv_block(x, filters, name)


def build_unet(
    num_bands: int,
    base_filters: int = 64,
    depth: int = 4,
    dropout: float = 0.3,
    patch_size: int | None = 256,
) -> keras.Model:
    """Build the U-Net: input (H, W, num_bands) float32 channels-last, output (H, W, 1) mining probability.

    `depth` encoder levels of base_filters x 2**i filters and a centre of base_filters x 2**depth;
    the defaults are the published C9 network. `patch_size=None` gives a network that accepts any
    H and W divisible by 2**depth (used for serving, where exports may carry a kernel buffer).
    The output layer is float32 even under a mixed-precision policy, so probabilities stay exact.
    """
    if num_bands < 1:
        raise ValueError(f"num_bands must be at least 1, got {num_bands}")
    if base_filters < 1 or depth < 1:
        raise ValueError(f"base_filters and depth must be at least 1, got {base_filters} and {depth}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if patch_size is not None and patch_size % (2**depth):
        raise ValueError(f"patch_size {patch_size} must be divisible by 2**depth = {2**depth}")

    inputs = keras.Input(shape=(patch_size, patch_size, num_bands), dtype="float32", name="bands")
    x = inputs
    skips = []
    for level in range(depth):
        x, skip = encoder_block(x, base_filters * 2**level, name=f"enc{level}")
        skips.append(skip)
    x = conv_block(x, base_filters * 2**depth, name="center")
    for level in reversed(range(depth)):
        x = decoder_block(x, skips[level], base_filters * 2**level, name=f"dec{level}")
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=f"unet_f{base_filters}_d{depth}")


def count_parameters(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts of a built model, for model cards and the builder tests."""
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    return int(model.count_params()), trainable
