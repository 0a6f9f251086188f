"""Benchmark the U-Net: training steps/s and inference patches/s, default (C9) and demo widths.

    python bench/bench_model.py                 # CPU figures, a few minutes on 2 cores
    python bench/bench_model.py --train-steps 5 --infer-batches 5 --batch-size 10

Measured per width (patch 256 x 256, 6 bands, batch 10 by default):
  - training: Keras train_on_batch with Adam and the weighted BCE loss on already-transformed input
    (what `mining-mapper train` runs per step), after one warm-up step;
  - inference, network only: the U-Net as a tf.function;
  - inference, serving model: the exported SavedModel (tf.Transform graph inside) through
    `load_serving_model`, i.e. what the Beam handler runs;
  - input pipeline: the tf.data reading of gzipped TFRecord patches with parsing, augmentation and
    the transform (patches/s), to see whether input or compute limits training.
Where a GPU is present, the default width's serving throughput is also swept over batch sizes in
float32 and mixed precision (mixed_float16 network weights, float32 output).
Figures are printed side by side with the default/demo ratio. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

BANDS = ("swir1", "nir", "red", "mndwi", "ndvi", "ndsi")
WIDTHS = {"default (C9: 64 filters, depth 4)": (64, 4), "demo (8 filters, depth 3)": (8, 3)}


def timed(fn, repeats: int) -> float:
    """Seconds per call of fn, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def make_transform(tmp: str, patch: int) -> str:
    """A real z-score transform analysed with tft_beam over a few synthetic patches."""
    from model.data import PatchSpec, list_record_files, scan_files, synthetic_patches, write_patches
    from model.preprocessing import analyze

    images, labels = synthetic_patches(4, patch, BANDS, seed=0)
    write_patches(os.path.join(tmp, "data", "0", "p.tfrecord.gz"), images, labels, BANDS)
    spec = PatchSpec(BANDS, patch)
    infos = scan_files(list_record_files([os.path.join(tmp, "data")]), spec)
    return analyze(infos, spec, "zscore", os.path.join(tmp, "transform"))


def bench_width(name, filters, depth, args, transform_dir, tmp) -> dict:
    """Training steps/s and inference patches/s of one width."""
    import keras
    import tensorflow as tf

    from model.export import export_serving_model, load_serving_model, serving_network
    from model.train import make_loss
    from model.unet import build_unet, count_parameters

    rng = np.random.default_rng(0)
    b, p = args.batch_size, args.patch_size
    x = rng.normal(size=(b, p, p, len(BANDS))).astype(np.float32)
    y = (x[..., :1] > 0.5).astype(np.float32)
    w = np.ones_like(y)
    raw = rng.uniform(1, 255, size=(b, p, p, len(BANDS))).astype(np.float32)

    keras.utils.set_random_seed(0)
    model = build_unet(len(BANDS), base_filters=filters, depth=depth, patch_size=p)
    model.compile(optimizer=keras.optimizers.Adam(5e-6), loss=make_loss("bce"))
    params, _ = count_parameters(model)
    step = timed(lambda: model.train_on_batch(x, y, sample_weight=w), args.train_steps)

    infer_fn = tf.function(lambda batch: model(batch, training=False), autograph=False)
    infer = timed(lambda: infer_fn(tf.constant(x)).numpy(), args.infer_batches)

    export_dir = os.path.join(tmp, f"model_f{filters}_d{depth}")
    card = {"bands": list(BANDS), "architecture": {"depth": depth}, "data": {"patch_size": p}, "threshold": 0.5}
    export_serving_model(serving_network(model, len(BANDS), filters, depth, 0.3), transform_dir, BANDS, export_dir, card)
    serving = load_serving_model(export_dir)
    serve = timed(lambda: serving(raw), args.infer_batches)
    print(f"  {name}: {params:,} parameters; train step {step:.3f} s, network batch {infer:.3f} s, "
          f"serving batch {serve:.3f} s", flush=True)
    return {
        "params": params,
        "train_steps_per_s": 1 / step,
        "train_patches_per_s": b / step,
        "network_patches_per_s": b / infer,
        "serving_patches_per_s": b / serve,
        "export_dir": export_dir,
    }


def bench_input(args, transform_dir, tmp) -> float:
    """Patches/s of the training tf.data input (read, parse, augment, transform) from gzipped TFRecords."""
    from model.data import PatchSpec, list_record_files, make_dataset, scan_files, synthetic_patches, write_patches
    from model.preprocessing import load_transform, transform_images

    n = args.input_patches
    images, labels = synthetic_patches(n, args.patch_size, BANDS, seed=1)
    for f in range(4):
        write_patches(os.path.join(tmp, "input", str(f), "p.tfrecord.gz"), images[f::4], labels[f::4], BANDS)
    spec = PatchSpec(BANDS, args.patch_size)
    infos = scan_files(list_record_files([os.path.join(tmp, "input")]), spec)
    layer = load_transform(transform_dir).transform_features_layer()

    def run():
        ds = make_dataset(infos, spec, batch_size=args.batch_size, training=True, augment=True,
                          transform=lambda im: transform_images(layer, im, BANDS))
        for _ in ds:
            pass

    return n / timed(run, 2)


def bench_gpu_batches(export_dir_by_policy: dict, args) -> None:
    """Serving patches/s of the default width over batch sizes, float32 vs mixed precision (GPU only)."""
    from model.export import load_serving_model

    print("\nGPU serving sweep, default width (patches/s):")
    print(f"  {'batch':>6} " + " ".join(f"{k:>16}" for k in export_dir_by_policy))
    models = {k: load_serving_model(v) for k, v in export_dir_by_policy.items()}
    for batch in (4, 8, 16, 32, 64):
        raw = np.random.default_rng(0).uniform(1, 255, (batch, args.patch_size, args.patch_size, 6)).astype(np.float32)
        cells = [batch / timed(lambda m=m: m(raw), args.infer_batches) for m in models.values()]
        print(f"  {batch:>6} " + " ".join(f"{c:>16.1f}" for c in cells), flush=True)


def export_mixed(transform_dir, tmp, args) -> str:
    """Export the default width under mixed_float16 (weights cast per layer, output float32)."""
    import keras

    from model.export import export_serving_model
    from model.unet import build_unet

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet(6, patch_size=None)
        path = os.path.join(tmp, "model_mixed")
        card = {"bands": list(BANDS), "architecture": {"depth": 4}, "data": {"patch_size": args.patch_size}}
        export_serving_model(model, transform_dir, BANDS, path, card)
    finally:
        keras.config.set_dtype_policy("float32")
    return path


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps per width")
    parser.add_argument("--infer-batches", type=int, default=3, help="timed inference batches per width")
    parser.add_argument("--input-patches", type=int, default=40, help="patches for the input-pipeline figure")
    args = parser.parse_args()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    print(f"device: {'GPU ' + gpus[0].name if gpus else 'CPU'}, {os.cpu_count()} CPU cores; TF {tf.__version__}; "
          f"patch {args.patch_size}x{args.patch_size}x6, batch {args.batch_size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        transform_dir = make_transform(tmp, args.patch_size)
        results = {name: bench_width(name, f, d, args, transform_dir, tmp) for name, (f, d) in WIDTHS.items()}
        input_rate = bench_input(args, transform_dir, tmp)

        default, demo = (results[k] for k in WIDTHS)
        rows = [
            ("parameters", "params", "{:,.0f}"),
            ("training steps/s", "train_steps_per_s", "{:.4f}"),
            ("training patches/s", "train_patches_per_s", "{:.3f}"),
            ("inference patches/s (network)", "network_patches_per_s", "{:.2f}"),
            ("inference patches/s (serving)", "serving_patches_per_s", "{:.2f}"),
        ]
        names = list(WIDTHS)
        print(f"\n{'':32} {names[0]:>36} {names[1]:>28} {'default/demo':>13}")
        for label, key, fmt in rows:
            print(f"{label:32} {fmt.format(default[key]):>36} {fmt.format(demo[key]):>28} "
                  f"{default[key] / demo[key]:>13.3g}")
        for name in names:
            r = results[name]
            print(f"transform overhead in serving, {name}: {r['network_patches_per_s'] / r['serving_patches_per_s']:.3f}x")
        print(f"training input pipeline (read + parse + augment + transform): {input_rate:.1f} patches/s "
              f"= {input_rate / default['train_patches_per_s']:.0f}x the default width's training, "
              f"{input_rate / demo['train_patches_per_s']:.1f}x the demo width's")
        if gpus:
            bench_gpu_batches({"float32": default["export_dir"], "mixed_float16": export_mixed(transform_dir, tmp, args)}, args)
        else:
            print("no GPU: the float32 vs mixed-precision batch sweep needs one (it runs where a GPU is present)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
