"""GPU benchmark of the project's own inference function: record-wise vs large-tile, float32 vs bfloat16.

Runs `model.inference.make_inference_fn` (the compiled function the pipeline's inference calls) on
the C9 network built by `model.unet.build_unet` (64 base filters, depth 4, 6 bands) under
KERAS_BACKEND=jax on a GPU:

- record-wise: 512 x 512 records (core 256 x 256, the published export geometry);
- large-tile: 1216 x 1216 windows (core 1024) and 2240 x 2240 (core 2048), the 96-px halo derived by
  `model.receptive_field.halo`;
- each in float32 and bfloat16 (Keras mixed policy, float32 probabilities), at two batch sizes.

It prints per configuration: tiles/s, 256² patches/s (core pixels / 65536), core Mpx/s, TFLOP/s
(useful FLOPs counted from the architecture by `model.receptive_field.count_flops`), that as a
fraction of a bf16 matmul timed in the same run, the memory bound of one batch
(`model.tiling.tile_memory`), and the time the full collection (3.1 M core patches of 256²) would
take at that rate. A configuration that fails (out of memory) is reported and skipped; the run stops
starting new ones after --max-seconds (default 330 s, so the whole script stays under 6 minutes).

Importable without TensorFlow or Beam: the device has JAX, CUDA and PyTorch but neither of those.

On the lent GPU machine (see /work/.library/device/README.md): carry keras, namex and optree as
wheels (its image already holds jax with CUDA, numpy, scipy, absl-py, rich, h5py, ml-dtypes). Here,
in the repo root, once:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0

then run with `carry: [".whl"]` and the command

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && KERAS_BACKEND=jax PYTHONUNBUFFERED=1 \
        python3 bench/bench_gpu.py 2>&1 | tee $OUT/bench_gpu.txt

Here, on CPU (no jax installed), the same code paths at tiny sizes, in under a minute:

    KERAS_BACKEND=tensorflow python bench/bench_gpu.py --smoke
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

COLLECTION_PATCHES = 3.1e6  # 475 grids x 39 years x ~170 core patches of 256²
PATCH = 256
BANDS = 6


@dataclass(frozen=True)
class Config:
    """One measured configuration: input side, core side, precision, batch."""

    name: str
    side: int
    core: int
    precision: str
    batch: int


def configs(smoke: bool, halo: int) -> list[Config]:
    """Record-wise 512² and large tiles (cores 1024, 2048 with the halo), float32 and bf16, two batches each."""
    if smoke:
        shapes = [("record 512", 512, 256, (1, 2)), (f"tile {256 + 2 * halo}", 256 + 2 * halo, 256, (1, 2))]
    else:
        shapes = [
            ("record 512", 512, 256, (32, 64)),
            (f"tile {1024 + 2 * halo}", 1024 + 2 * halo, 1024, (2, 4)),
            (f"tile {2048 + 2 * halo}", 2048 + 2 * halo, 2048, (1, 2)),
        ]
    out = []
    for precision in ("bfloat16", "float32"):  # bf16 first: the production candidate, if time runs short
        for name, side, core, batches in shapes:
            for batch in batches:
                out.append(Config(name, side, core, precision, batch))
    return out


def time_calls(fn, repeats: int, min_seconds: float) -> tuple[float, int]:
    """(seconds per call, calls) after one warm-up call (which compiles), at least `repeats` calls
    and at least `min_seconds` in all."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def matmul_tflops(smoke: bool) -> float | None:
    """TFLOP/s of a square bf16 matmul on the backend's default device (the card's practical peak)."""
    import keras

    n = 1024 if smoke else 8192
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((n, n), dtype=jnp.bfloat16)
        mm = jax.jit(lambda x, y: x @ y)
        seconds, _ = time_calls(lambda: mm(a, a).block_until_ready(), 10, 1.0)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        a = tf.ones((n, n), dtype=tf.bfloat16)
        mm = tf.function(lambda x: tf.matmul(x, x), jit_compile=True)
        seconds, _ = time_calls(lambda: mm(a).numpy(), 3, 0.5)
    else:
        return None
    return 2 * n**3 / seconds / 1e12


def device_name() -> str:
    """The accelerator the backend runs on, in words."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    return keras.backend.backend() + " (default device)"


def measure(model, config: Config, fns: dict, flops_per_tile: int, repeats: int, min_seconds: float) -> dict:
    """Throughput of one configuration with the project's compiled inference function."""
    from model.inference import make_inference_fn
    from model.tiling import tile_memory

    if config.precision not in fns:
        fns[config.precision] = make_inference_fn(model, config.precision)
    fn = fns[config.precision]
    batch = np.random.default_rng(0).uniform(1.0, 3.0, (config.batch, config.side, config.side, BANDS)).astype(np.float32)
    seconds, calls = time_calls(lambda: fn(batch), repeats, min_seconds)
    tiles = config.batch / seconds
    core_px = tiles * config.core**2
    return {
        "tiles_s": tiles,
        "patches_s": core_px / PATCH**2,
        "core_mpx_s": core_px / 1e6,
        "tflops": flops_per_tile * tiles / 1e12,
        "memory_gib": tile_memory(model, config.side, config.batch, BANDS, config.precision)["total"] / 2**30,
        "collection_min": COLLECTION_PATCHES * PATCH**2 / core_px / 60,
        "calls": calls,
    }


def main(argv=None) -> int:
    """Parse options, set the backend, build the network, measure every configuration, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny network and sizes (CPU check)")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"), help="Keras backend (default jax)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration, at least")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per configuration, at least")
    parser.add_argument("--max-seconds", type=float, default=330.0, help="start no configuration after this")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    begin = time.perf_counter()

    import keras

    from model import receptive_field
    from model.unet import build_unet

    if keras.backend.backend() != args.backend:
        print(f"keras was already imported with backend {keras.backend.backend()}", file=sys.stderr)
    filters = 4 if args.smoke else 64
    model = build_unet(BANDS, base_filters=filters, depth=4, dropout=0.3, patch_size=None)
    halo = receptive_field.halo(model)
    repeats, min_seconds = (1, 0.0) if args.smoke else (args.repeats, args.min_seconds)
    print(f"backend {keras.backend.backend()} on {device_name()}; network {model.name}, "
          f"{model.count_params():,} parameters, halo {halo} px on a {receptive_field.pooling_alignment(model)}-px grid")
    peak = matmul_tflops(args.smoke)
    print(f"bf16 matmul: {peak:.1f} TFLOP/s" if peak else "bf16 matmul: not measured on this backend")
    header = (f"{'input':<11}{'precision':<10}{'batch':>6}{'tiles/s':>10}{'patches/s':>11}{'core Mpx/s':>12}"
              f"{'TFLOP/s':>9}{'of matmul':>10}{'mem bound GiB':>14}{'collection':>12}")
    print(header)
    fns: dict = {}
    results = {}
    for config in configs(args.smoke, halo):
        label = f"{config.name:<11}{config.precision:<10}{config.batch:>6}"
        if time.perf_counter() - begin > args.max_seconds:
            print(f"{label}  skipped: --max-seconds {args.max_seconds:.0f} reached")
            continue
        flops = receptive_field.count_flops(model, config.side, config.side)
        try:
            r = measure(model, config, fns, flops, repeats, min_seconds)
        except Exception as error:  # noqa: BLE001 - out of memory on the card: say so and go on
            print(f"{label}  failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
            continue
        results[config] = r
        share = f"{r['tflops'] / peak:>9.0%}" if peak else f"{'-':>9}"
        print(f"{label}{r['tiles_s']:>10.1f}{r['patches_s']:>11.1f}{r['core_mpx_s']:>12.1f}{r['tflops']:>9.3g} {share}"
              f"{r['memory_gib']:>14.1f}{r['collection_min']:>10.1f} min", flush=True)
    for precision in ("bfloat16", "float32"):
        best = {}
        for config, r in results.items():
            if config.precision == precision:
                kind = "record" if config.name.startswith("record") else "tile"
                best[kind] = max(best.get(kind, 0.0), r["core_mpx_s"])
        if "record" in best and "tile" in best:
            print(f"{precision}: best large-tile / record-wise core Mpx/s = {best['tile'] / best['record']:.2f}x")
    print(f"total {time.perf_counter() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
