"""The context a fully convolutional network needs, derived from its Keras graph (DESIGN §1.5).

A U-Net's output at a pixel depends only on inputs within some distance of it, and only as long as the
tiles it runs on sit on its pooling grid (2**depth pixels): a 2x2 max-pool mixes pixels 2i and 2i + 1,
so shifting a tile by one pixel changes which pixels meet. This module walks a built Keras model's
graph backwards, layer by layer (conv kernel sizes, dilations, strides and padding, pooling windows,
transposed convs, up-sampling, concatenations, nested models) and computes, exactly, the input pixels
an aligned output region depends on. From that:

- `receptive_margin(model)`: the pixels of context needed on the (top/left, bottom/right) sides of an
  output region whose edges lie on the pooling grid (94 and 94 for the published C9 network);
- `pooling_alignment(model)`: the coarsest pixel grid of the network (2**depth for our U-Net);
- `halo(model)`: the margin rounded up to that grid (96 for depth 4), the halo a tile core needs so
  that its outputs equal, bit for bit, those of any larger aligned input;
- `count_flops(model, h, w)` and `activation_bytes(model, h, w)`: analytic cost and memory of one
  inference at a given input size, from the same walk (no tracing, no backend call).

Only the graph's structure is read (layer classes and configs), so this works under every Keras
backend and needs no TensorFlow. Layers whose spatial effect is unknown are refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass

# Layers that act on each pixel independently (in inference), so they change no spatial dependency.
POINTWISE_LAYERS = frozenset({
    "InputLayer", "BatchNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Normalization",
    "Rescaling", "Identity", "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum",
    "Minimum", "InputSpec",
})
CONV_LAYERS = frozenset({"Conv2D", "DepthwiseConv2D", "SeparableConv2D"})
POOL_LAYERS = frozenset({"MaxPooling2D", "AveragePooling2D"})


@dataclass(frozen=True)
class _Spatial:
    """How one layer maps pixels: kernel extent (dilated), stride, and whether it goes up or down."""

    kind: str  # 'pointwise', 'down' (conv/pool, stride t >= 1), 'up' (transposed conv / up-sampling)
    kernel: int = 1
    stride: int = 1
    padding: str = "same"


def _pair(value, what: str, layer) -> int:
    """One integer from a Keras (h, w) pair; square kernels/strides only (what the tiling assumes)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(set(values)) != 1:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): non-square {what} {values} is not supported")
    return int(values[0])


def _spatial(layer) -> _Spatial:
    """The spatial behaviour of one layer, from its class and config; ValueError for unknown layers."""
    kind = type(layer).__name__
    if kind in POINTWISE_LAYERS:
        return _Spatial("pointwise")
    config = layer.get_config()
    if kind in CONV_LAYERS:
        k = _pair(config["kernel_size"], "kernel", layer)
        d = _pair(config.get("dilation_rate", 1), "dilation", layer)
        t = _pair(config.get("strides", 1), "strides", layer)
        return _Spatial("down", d * (k - 1) + 1, t, config.get("padding", "valid"))
    if kind in POOL_LAYERS:
        p = _pair(config["pool_size"], "pool size", layer)
        t = _pair(config.get("strides") or p, "strides", layer)
        return _Spatial("down", p, t, config.get("padding", "valid"))
    if kind == "Conv2DTranspose":
        k = _pair(config["kernel_size"], "kernel", layer)
        d = _pair(config.get("dilation_rate", 1), "dilation", layer)
        if d != 1:
            raise ValueError(f"layer {layer.name!r}: dilated transposed convolutions are not supported")
        if config.get("output_padding") is not None:
            raise ValueError(f"layer {layer.name!r}: output_padding is not supported")
        return _Spatial("up", k, _pair(config.get("strides", 1), "strides", layer), config.get("padding", "valid"))
    if kind == "UpSampling2D":
        t = _pair(config["size"], "size", layer)
        return _Spatial("up", t, t, "same")
    raise ValueError(
        f"cannot derive the receptive field: layer {layer.name!r} ({kind}) is not a known convolutional, "
        "pooling, up-sampling or pixel-wise layer"
    )


def _check_size_preserving(layer, spatial: _Spatial) -> None:
    """Tiles must map to outputs of exactly input size / stride: 'valid' that shrinks is refused."""
    if spatial.padding == "valid" and ((spatial.kind == "down" and spatial.kernel > spatial.stride) or
                                       (spatial.kind == "up" and spatial.kernel != spatial.stride)):
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}): padding 'valid' with kernel {spatial.kernel} "
            f"and stride {spatial.stride} changes the output size; tiled inference needs 'same'"
        )


def _left_pads(spatial: _Spatial) -> set[int]:
    """Possible top/left padding of a 'same' layer (TF and XLA put the odd pixel at the end; both kept)."""
    if spatial.padding != "same":
        return {0}
    total = max(spatial.kernel - spatial.stride, 0)
    return {total // 2, total - total // 2}


def _model_nodes(model):
    """The model's own nodes, inputs first (Keras' depth order), as (layer, input ids, output ids)."""
    out = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            out.append((node.operation, [id(t) for t in node.input_tensors], [id(t) for t in node.output_tensors]))
    return out


def _is_model(layer) -> bool:
    return hasattr(layer, "_nodes_by_depth") and hasattr(layer, "operations")


def _forward(model, input_scales: list[int]) -> tuple[dict[int, int], list[int]]:
    """Scale (input pixels per cell) of every tensor of the model, and of its outputs."""
    scale = {id(t): s for t, s in zip(model.inputs, input_scales)}
    for layer, inputs, outputs in _model_nodes(model):
        if not inputs:
            continue
        in_scales = [scale[i] for i in inputs]
        if _is_model(layer):
            inner, out_scales = _forward(layer, in_scales)
            scale.update(inner)  # so the pooling alignment sees the nested model's grid too
        else:
            spatial = _spatial(layer)
            _check_size_preserving(layer, spatial)
            if len(set(in_scales)) != 1:
                raise ValueError(f"layer {layer.name!r} joins tensors of different resolutions {in_scales}")
            s = in_scales[0]
            if spatial.kind == "down":
                s *= spatial.stride
            elif spatial.kind == "up":
                if s % spatial.stride:
                    raise ValueError(f"layer {layer.name!r} up-samples below the input resolution")
                s //= spatial.stride
            out_scales = [s] * len(outputs)
        scale.update(zip(outputs, out_scales))
    return scale, [scale[id(t)] for t in model.outputs]


def _input_interval(layer, spatial: _Spatial, s_in: int, s_out: int, lo: int, hi: int) -> tuple[int, int]:
    """Input pixels [lo, hi) needed for output pixels [lo, hi) of one layer (cells at scales s_in, s_out)."""
    if spatial.kind == "pointwise":
        return lo, hi
    jlo, jhi = lo // s_out, -(-hi // s_out)  # output cells touched
    k, t = spatial.kernel, spatial.stride
    best_lo, best_hi = None, None
    for left in _left_pads(spatial):
        if spatial.kind == "down":  # output j reads input cells j*t - left .. j*t - left + k - 1
            ilo, ihi = jlo * t - left, (jhi - 1) * t - left + k
        else:  # transposed: output m gets input i at tap kk when m = i*t + kk - left
            ilo = -(-(jlo + left - k + 1) // t)
            ihi = (jhi - 1 + left) // t + 1
        best_lo = ilo if best_lo is None else min(best_lo, ilo)
        best_hi = ihi if best_hi is None else max(best_hi, ihi)
    return best_lo * s_in, best_hi * s_in


def _backward(model, input_scales: list[int], output_needs: list[tuple[int, int] | None]) -> list[tuple[int, int] | None]:
    """Input pixel intervals the model's inputs must supply for the given output intervals."""
    scale, _ = _forward(model, input_scales)
    need: dict[int, tuple[int, int]] = {}

    def add(tensor_id: int, interval):
        if interval is None:
            return
        old = need.get(tensor_id)
        need[tensor_id] = interval if old is None else (min(old[0], interval[0]), max(old[1], interval[1]))

    for tensor, interval in zip(model.outputs, output_needs):
        add(id(tensor), interval)
    for layer, inputs, outputs in reversed(_model_nodes(model)):
        if not inputs:
            continue
        wanted = [need.get(o) for o in outputs]
        if all(w is None for w in wanted):
            continue
        if _is_model(layer):
            for i, interval in zip(inputs, _backward(layer, [scale[i] for i in inputs], wanted)):
                add(i, interval)
            continue
        spatial = _spatial(layer)
        lo = min(w[0] for w in wanted if w is not None)
        hi = max(w[1] for w in wanted if w is not None)
        for i in inputs:
            add(i, _input_interval(layer, spatial, scale[i], scale[outputs[0]], lo, hi))
    return [need.get(id(t)) for t in model.inputs]


def pooling_alignment(model) -> int:
    """The coarsest cell of the network in input pixels (2**depth for the U-Net): tiles must start on it."""
    scale, outputs = _forward(model, [1] * len(model.inputs))
    if any(s != 1 for s in outputs):
        raise ValueError(f"model {model.name!r}: outputs at scales {outputs}, not the input's resolution")
    return max(scale.values())


def receptive_margin(model) -> tuple[int, int]:
    """Context pixels (before, after) an output region aligned to the pooling grid needs, per axis.

    Exact for the graph: every input pixel within the margin can change some output of the region
    (for generic weights), none outside can. The region [0, C) is taken with C a multiple of the
    pooling alignment; the answer does not depend on C.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r}: expected one input and one output")
    align = pooling_alignment(model)
    core = 4 * align
    (lo, hi), = _backward(model, [1], [(0, core)])
    return max(0, -lo), max(0, hi - core)


def halo(model) -> int:
    """The halo a tile core needs (DESIGN §1.5): the receptive margin rounded up to the pooling grid.

    A core whose edges lie on the pooling grid, inferred from an input that extends `halo` pixels
    beyond it on every side (and starts on the grid), has exactly the outputs it has inside any
    larger grid-aligned input: 96 for the published depth-4 U-Net.
    """
    align = pooling_alignment(model)
    return -(-max(receptive_margin(model)) // align) * align


def _layer_shapes(model):
    """Yield (layer, input scales, output scales) for every layer, nested models flattened."""
    yield from _layer_shapes_nested(model, [1] * len(model.inputs))


def _layer_shapes_nested(model, input_scales):
    scale, _ = _forward(model, input_scales)
    for layer, inputs, outputs in _model_nodes(model):
        if not inputs:
            continue
        if _is_model(layer):
            yield from _layer_shapes_nested(layer, [scale[i] for i in inputs])
            continue
        yield layer, [scale[i] for i in inputs], [scale[o] for o in outputs]


def _channels(layer, which: str) -> int:
    shape = layer.output.shape if which == "out" else layer.input.shape
    return int(shape[-1])


def count_flops(model, height: int, width: int, *, transposed_as_dilated: bool = False) -> int:
    """Floating-point operations (multiply and add counted apart) of one inference at (height, width).

    Convolutions and transposed convolutions only (2 * kernel area * in * out channels per output
    position; per input position for transposed ones, the useful work); pixel-wise layers are ignored
    (memory-bound and small). The published C9 network at 512 x 512: 386.2 GFLOP useful. With
    `transposed_as_dilated`, transposed convs count per output position, as XLA lowers them (a conv
    over the zero-dilated input): 437.8 GFLOP, the figure XLA's cost analysis and the issue quote.
    """
    total = 0
    for layer, in_scales, out_scales in _layer_shapes(model):
        kind = type(layer).__name__
        if kind not in CONV_LAYERS and kind != "Conv2DTranspose":
            continue
        config = layer.get_config()
        k = _pair(config["kernel_size"], "kernel", layer)
        cin, cout = _channels(layer, "in"), _channels(layer, "out")
        if kind == "Conv2DTranspose" and not transposed_as_dilated:
            positions = (height // in_scales[0]) * (width // in_scales[0])
        else:
            positions = (height // out_scales[0]) * (width // out_scales[0])
        if kind == "DepthwiseConv2D":
            total += 2 * k * k * cout * positions
        elif kind == "SeparableConv2D":
            total += 2 * (k * k * cin + cin * cout) * positions
        else:
            total += 2 * k * k * cin * cout * positions
    return total


def activation_bytes(model, height: int, width: int, bytes_per_element: int = 4) -> int:
    """Sum of every layer output's size for one input (height, width): an upper bound of live activations.

    A compiler frees or fuses most of these; the sum bounds what one image can hold at once, so the
    caller can size tiles and batches for the accelerator (a C9 512 x 512 record: see bench/).
    """
    total = 0
    for layer, _, out_scales in _layer_shapes(model):
        s = out_scales[0]
        total += (height // s) * (width // s) * _channels(layer, "out") * bytes_per_element
    return total


__all__ = [
    "activation_bytes",
    "count_flops",
    "halo",
    "pooling_alignment",
    "receptive_margin",
]
