"""Throughput of the filter engine: megapixel-years per second, side by side with a per-pixel
implementation (the reference in tests/, on a crop, scaled) and a plain numpy copy (the memory floor).

    python bench/bench_filters.py                 # 39 × 2048 × 2048, both modes
    python bench/bench_filters.py --size 512      # quicker
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.method import filters as F  # noqa: E402
from bench.timing import best_seconds  # noqa: E402
from tests import reference_filters as ref  # noqa: E402


def realistic_stack(years: int, size: int, seed: int = 0) -> np.ndarray:
    """Mostly not mining, growing pits and speckle, cloud gaps: a plausible classified stack."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((size, size)).astype(np.float32), 6)
    threshold = np.quantile(base, 0.97)
    stack = np.zeros((years, size, size), dtype=np.uint8)
    for t in range(years):
        grow = threshold - 0.002 * t
        year = (base > grow).astype(np.uint8)
        year[rng.random((size, size)) < 0.002] = 1  # classifier speckle
        clouds = ndimage.gaussian_filter(rng.random((size // 8, size // 8)).astype(np.float32), 2) > 0.53
        year[np.kron(clouds, np.ones((8, 8), dtype=bool))[:size, :size]] = 255
        stack[t] = year
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--years", type=int, default=39)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--crop", type=int, default=24, help="side of the crop the per-pixel reference runs on")
    args = parser.parse_args()

    stack = realistic_stack(args.years, args.size)
    mpx_years = stack.size / 1e6
    crop = stack[:, : args.crop, : args.crop]
    crop_mpx_years = crop.size / 1e6
    floor_s = best_seconds(lambda: stack.copy(), 3)
    print(f"stack {stack.shape} = {mpx_years:.1f} Mpx-years ({stack.nbytes / 2**20:.0f} MiB); "
          f"per-pixel reference on {crop.shape}; numpy copy {mpx_years / floor_s:,.0f} Mpx-years/s")
    print(f"{'mode':9} {'stage':10} {'engine s':>9} {'Mpx-yr/s':>10} {'per-pixel':>10} {'speed-up':>9} {'copy/engine':>11}")

    for mode in F.MODES:
        params = F.FilterParams(mode=mode)
        filled, _ = F.gap_fill(stack, mode)
        temporal = F.temporal_filter(filled, mode)
        spatial = F.spatial_filter(temporal, mode)
        crop_list = crop.tolist()
        stages = {
            "gap_fill": (lambda: F.gap_fill(stack, mode),
                         lambda: [ref.gap_fill_series([crop_list[t][r][c] for t in range(len(crop_list))], mode)
                                  for r in range(args.crop) for c in range(args.crop)]),
            "temporal": (lambda: F.temporal_filter(filled, mode),
                         lambda: [ref.temporal_series([crop_list[t][r][c] for t in range(len(crop_list))], mode)
                                  for r in range(args.crop) for c in range(args.crop)]),
            "spatial": (lambda: F.spatial_filter(temporal, mode),
                        lambda: [ref.spatial_image(year, mode) for year in crop_list]),
            "frequency": (lambda: F.frequency_filter(spatial, mode),
                          lambda: [ref.frequency_series([crop_list[t][r][c] for t in range(len(crop_list))], mode)
                                   for r in range(args.crop) for c in range(args.crop)]),
            "chain": (lambda: F.apply_chain(stack, params), lambda: ref.chain(crop_list, mode)),
        }
        for stage, (engine, per_pixel) in stages.items():
            engine_s = best_seconds(engine)
            reference_s = best_seconds(per_pixel)
            engine_rate = mpx_years / engine_s
            reference_rate = crop_mpx_years / reference_s
            print(f"{mode:9} {stage:10} {engine_s:9.2f} {engine_rate:10.1f} {reference_rate:10.3f} "
                  f"{engine_rate / reference_rate:8.0f}× {engine_s / floor_s:10.1f}×")


if __name__ == "__main__":
    main()
