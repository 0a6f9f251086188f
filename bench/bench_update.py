"""The yearly update against the full run, side by side, on the sample (issue 14).

On the demo sample (`mining-mapper sample`: 2 grids, 1985–2023, 2 × 2 patches of 256 px, kernel 32) with a
demo-width U-Net (untrained: the cost of inference does not depend on the weights), it runs the whole
pipeline on the FnApiRunner three times:

1. last year's collection, 1985–2022 (it leaves the raw results under {output}/raw);
2. the update, 1985–2023 into the same output: only 2023 is read and inferred, the rest re-uses raw results;
3. the full run, 1985–2023 from scratch (`--reuse_raw off`) into another output;

and prints wall time and patches inferred of (2) and (3), checks that their COGs are byte-identical, and
derives the C9-scale figure from the measured costs: the marginal cost of a patch inferred rather than
re-used, (full − update) / (patches inferred by full − by update), and the per-patch cost of the rest
(re-use, filters, writing), applied to the collection's 3.1 M core patches (bench/bench_gpu.py) over 39 years.

    python bench/bench_update.py                 # U-Net width 8, depth 3 (the demo network)
    python bench/bench_update.py --width 16
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gpu import COLLECTION_PATCHES
from tests.support.outputs import tifs  # the same comparison the tests make

C9_YEARS = 39


def timed_run(exports: str, output: str, model: str, years: str, *extra: str) -> tuple[float, dict]:
    """(wall seconds, summary) of one pipeline run on the FnApiRunner."""
    from pipeline.run import run

    start = time.perf_counter()
    summary = run(["--exports", exports, "--output", output, "--model", model, "--years", years,
                   "--direct_num_workers", "1", "--overwrite", *extra])  # the update replaces its own folder
    return time.perf_counter() - start, summary


def inferred(summary: dict) -> int:
    """Patches that reached the model handler (inferred, or skipped there as wholly not observed)."""
    metrics = summary["metrics"]
    return metrics.get("patches_inferred", 0) + metrics.get("patches_not_observed", 0)


def main() -> None:
    """Generate the sample, run the three runs, print the table and the C9-scale figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8, help="U-Net base filters (64 = the published network)")
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()

    from bench.sample_run import sample_and_model

    workdir, sample, model = sample_and_model(args.width, args.depth, "bench_update_")
    first, last = sample.years[0], sample.years[-1]
    exports, updated, fresh = sample.exports, os.path.join(workdir, "updated"), os.path.join(workdir, "fresh")

    previous_s, previous = timed_run(exports, updated, model, f"{first}-{last - 1}")
    update_s, update = timed_run(exports, updated, model, f"{first}-{last}")
    full_s, full = timed_run(exports, fresh, model, f"{first}-{last}", "--reuse_raw", "off")
    identical = tifs(updated) == tifs(fresh)

    patches = full["metrics"]["patches_read"]
    print(f"sample: {len(sample.grids)} grids × {len(sample.years)} years, {patches} patches; U-Net width {args.width} depth {args.depth}")
    print(f"last year's run {first}-{last - 1}: {previous_s:.1f} s, {inferred(previous)} patches inferred")
    print(f"{'':24}{'wall s':>8}{'inferred':>10}{'reused':>8}")
    print(f"{'update ' + str(last):24}{update_s:8.1f}{inferred(update):10d}{update['metrics'].get('patches_reused', 0):8d}")
    print(f"{'full ' + f'{first}-{last}':24}{full_s:8.1f}{inferred(full):10d}{full['metrics'].get('patches_reused', 0):8d}")
    print(f"update / full: {update_s / full_s:.2f} of the wall time, {inferred(update) / inferred(full):.3f} of the patches inferred; "
          f"outputs byte-identical: {identical}")
    per_inferred = (full_s - update_s) / max(inferred(full) - inferred(update), 1)
    per_rest = max(update_s - inferred(update) * per_inferred, 0.0) / patches
    c9_full = COLLECTION_PATCHES * (per_inferred + per_rest)
    c9_update = COLLECTION_PATCHES / C9_YEARS * per_inferred + COLLECTION_PATCHES * per_rest
    print(f"measured: {per_inferred * 1e3:.1f} ms per patch inferred (read + inference) rather than re-used, "
          f"{per_rest * 1e3:.1f} ms per patch for the rest (re-use, filters, writing)")
    print(f"C9 scale ({COLLECTION_PATCHES / 1e6:.1f} M core patches over {C9_YEARS} years), at these per-patch costs on this machine: "
          f"full {c9_full / 3600:,.0f} h, update {c9_update / 3600:,.0f} h ({c9_update / c9_full:.2f} of the full run); "
          f"inference alone {COLLECTION_PATCHES * per_inferred / 3600:,.0f} h → {COLLECTION_PATCHES / C9_YEARS * per_inferred / 3600:,.0f} h")


if __name__ == "__main__":
    main()
