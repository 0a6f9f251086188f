"""What a 16-bit inference precision changes, before and after the filters, on the sample with the demo model.

Runs the whole pipeline (`mining-mapper run`, FnApiRunner) on the sample's exports three times: float32,
then each 16-bit precision with `--precision_check` (the run also infers float32 and counts the observed
pixels whose class differs before the filters). After the filters, the written COGs of the 16-bit run are
compared with the float32 ones pixel by pixel. Prints both fractions and the wall times side by side.

    make demo                                     # the sample and the demo model (with its serving.keras)
    python bench/bench_precision.py [--sample out/demo/sample] [--model out/demo/model/model] [--tile grid]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.run import run  # noqa: E402


def classes_of(output: Path) -> dict[str, np.ndarray]:
    """Band 1 (30 / 0 / 255) of every classification COG of a run, by its path under the output."""
    import rasterio

    found = {}
    for path in sorted(output.glob("*/*.tif")):
        with rasterio.open(path) as src:
            found[str(path.relative_to(output))] = src.read(1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="out/demo/sample", help="a sample made by `mining-mapper sample`")
    parser.add_argument("--model", default="out/demo/model/model", help="a serving model with its serving.keras")
    parser.add_argument("--tile", default="grid", help="--inference_tile of the runs ('' for record-wise)")
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "float16"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    common = ["--exports", f"{args.sample}/exports", "--model", args.model, "--runner", "FnApiRunner",
              "--direct_num_workers", "1", *(["--inference_tile", args.tile] if args.tile else [])]

    start = time.perf_counter()
    run([*common, "--output", str(work / "float32")])
    seconds = {"float32": time.perf_counter() - start}
    reference = classes_of(work / "float32")
    print(f"sample: {len(reference)} grid-years; inference {'tile ' + args.tile if args.tile else 'record-wise'}")
    print(f"{'precision':>10} {'wall s':>8} {'class changes before filters':>30} {'after filters':>16}")
    print(f"{'float32':>10} {seconds['float32']:8.1f} {'-':>30} {'-':>16}")
    for precision in args.precisions:
        start = time.perf_counter()
        summary = run([*common, "--output", str(work / precision), "--inference_precision", precision, "--precision_check", "true"])
        wall = time.perf_counter() - start
        before = summary.get("precision_check") or {"fraction": float("nan"), "class_changes": 0, "pixels": 0}
        changed = observed = 0
        for name, classes in classes_of(work / precision).items():
            mask = reference[name] != 255
            observed += int(mask.sum())
            changed += int(np.count_nonzero((classes != reference[name])[mask]))
        after = changed / observed if observed else float("nan")
        print(f"{precision:>10} {wall:8.1f} {before['fraction']:>14.2e} ({before['class_changes']}/{before['pixels']})"
              f" {after:>9.2e} ({changed}/{observed})")
    print("(16-bit wall times include the float32 reference inference of --precision_check: ~2x the inference)")


if __name__ == "__main__":
    main()
