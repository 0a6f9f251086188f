"""CPU figures for inference: eager vs compiled, record-wise vs large-tile, side by side in one run.

    python bench/bench_inference.py              # ~1-2 minutes on 2 cores
    python bench/bench_inference.py --grid 4 --filters 8 --repeats 3

One generated (grid, year) export with the C9 geometry (patch 256, kernel 256: 512² records), a
small-width U-Net of depth 4 (the C9 depth, so the C9 halo of 96 px; 8 base filters by default),
random weights. Rows: record-wise (what the pipeline's handler does: the model on every whole record,
buffer cropped) and large tiles (`model.tiling`: mosaic, tiles of core 256, 512 and the whole grid
with the derived halo, cores stitched). Columns: core Mpx/s with the eager Keras call, with the
XLA-compiled float32 function (`model.inference.make_inference_fn`) and compiled mixed bfloat16;
the pixels the model ran on per core pixel; whether the float32 large-tile probabilities equal the
record-wise ones bit for bit (they must), and the fraction of pixels whose class bf16 changes.
Each figure is the best of --repeats timed passes after a warm-up pass. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.timing import best_seconds  # noqa: E402
from pipeline.contract import crop_buffer  # noqa: E402


def record_wise(predict, patches, batch_size: int) -> dict[int, np.ndarray]:
    """Core probabilities per patch index, the model on whole records (the pipeline's handler's way)."""
    out = {}
    for start in range(0, len(patches), batch_size):
        group = patches[start : start + batch_size]
        probabilities = np.asarray(predict(np.stack([p.bands for p in group])))
        for p, prob in zip(group, probabilities):
            out[p.index] = crop_buffer(prob[..., 0], p.kernel)
    return out


def main(argv=None) -> int:
    """Generate the export, build the network, time every (mode, function) pair, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=3, help="patches per side of the generated export (default 3)")
    parser.add_argument("--filters", type=int, default=8, help="base filters of the depth-4 U-Net (default 8)")
    parser.add_argument("--batch-size", type=int, default=2, help="records or tiles per model call")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per figure (best kept; default 1)")
    args = parser.parse_args(argv)

    from model import receptive_field, tiling
    from model.inference import class_disagreement, make_inference_fn
    from tests.support.unet import generated_export, random_unet

    model = random_unet(4, bands=6, filters=args.filters, seed=0)
    geometry, patches = generated_export(args.grid, args.grid, 256, 256, 6, seed=0)
    core_px = geometry.height * geometry.width
    functions = {
        "eager f32": lambda b: np.asarray(model(b, training=False)),
        "XLA f32": make_inference_fn(model, "float32"),
        "XLA bf16": make_inference_fn(model, "bfloat16"),
    }
    print(f"{model.name}: halo {receptive_field.halo(model)} px; export {args.grid}x{args.grid} patches of 256 "
          f"with kernel 256 ({core_px / 1e6:.2f} core Mpx); batch {args.batch_size}; best of {args.repeats}")
    mosaic = tiling.assemble_mosaic(geometry, patches)
    modes = {"record-wise 512": None, "tile 256": 256, "tile 512": 512, "whole grid": "whole"}
    header = f"{'mode':<17}{'window':>8}{'px/core px':>11}" + "".join(f"{name + ' Mpx/s':>16}" for name in functions)
    print(header + f"{'f32 = records':>15}{'bf16 class diff':>16}")
    begin = time.perf_counter()
    reference = record_wise(functions["XLA f32"], patches, args.batch_size)
    for mode, tile in modes.items():
        rates, outputs = [], {}
        if tile is None:
            window, inferred = geometry.record_side, len(patches) * geometry.record_side**2
            for name, fn in functions.items():
                run = lambda fn=fn, name=name, outputs=outputs: outputs.__setitem__(name, record_wise(fn, patches, args.batch_size))
                rates.append(core_px / best_seconds(run, args.repeats, warmup=True) / 1e6)
            stitched = {name: np.block([[out[r * args.grid + c] for c in range(args.grid)] for r in range(args.grid)])
                        for name, out in outputs.items()}
        else:
            plan = tiling.plan_tiles(mosaic, model, None if tile == "whole" else tile)
            window, inferred = plan.window[0], plan.inferred_pixels
            stitched = {}
            for name, fn in functions.items():
                run = lambda fn=fn, name=name, stitched=stitched, plan=plan: stitched.__setitem__(
                    name, tiling.infer_mosaic(fn, mosaic, plan, args.batch_size))
                rates.append(core_px / best_seconds(run, args.repeats, warmup=True) / 1e6)
        expected = np.block([[reference[r * args.grid + c] for c in range(args.grid)] for r in range(args.grid)])
        observed = crop_buffer(mosaic.observed, 2 * mosaic.buffer)
        exact = np.array_equal(stitched["XLA f32"][observed], expected[observed])
        diff = class_disagreement(stitched["XLA bf16"], stitched["XLA f32"], observed=observed)
        print(f"{mode:<17}{window:>8}{inferred / core_px:>11.2f}" + "".join(f"{r:>16.3f}" for r in rates)
              + f"{'yes' if exact else 'NO':>15}{diff:>16.2e}", flush=True)
    print(f"total {time.perf_counter() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
