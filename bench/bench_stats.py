"""Time and peak memory of `stats` beside `filter` on one long series of large annual maps (issue 16).

The series is the real MapBiomas Collection 6 Lourenço maps (../shared/data/mapbiomas_c6_lourenco, 36 years,
EPSG:31976, a projected CRS: the costly case for areas), resampled by nearest neighbour to SIZE × SIZE pixels
and written as tiled DEFLATE GeoTIFFs; without that folder, a synthetic series in the same CRS. Each command
runs in its own process (`python -m pipeline.cli …`), so its peak resident memory is its own.

    python bench/bench_stats.py                               # 36 × 3072², stats and filter
    python bench/bench_stats.py --size 4096 --years 36        # the issue's size (takes long on 2 cores)
    python bench/bench_stats.py --code /tmp/before --only stats   # another checkout's stats (before / after)

Measured on the shared 2-core machine (load 3–5 from other work, so ±20 %), 30 Nov 2026; "before" is commit
6650274 (`git archive 6650274 pipeline model | tar -x -C /tmp/before`):

    size          stats before            stats after           filter (after)
    36 × 3072²    483 s, peak 388 MiB     8.5 s, peak 272 MiB   41 s, peak 1.2 GiB (59 s, 1.9 GiB before)
    36 × 4096²    490 s, peak 486 MiB     7.6 s, peak 420 MiB   67 s, peak 2.0 GiB

Peak RSS includes the interpreter and its imports (about 250 MiB).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LOURENCO = ROOT.parent / "shared" / "data" / "mapbiomas_c6_lourenco"


def write_series(folder: Path, years: int, size: int) -> list[Path]:
    """`years` annual maps of size × size pixels (30 mining), real Lourenço maps resampled when present."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(LOURENCO.glob("*.tif"))[:years] if LOURENCO.exists() else []
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "nodata": 255,
               "crs": "EPSG:31976", "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    paths = []
    rng = np.random.default_rng(0)
    for index in range(years):
        year = 1985 + index
        if index < len(sources):
            with rasterio.open(sources[index]) as src:
                values, transform = src.read(1), src.transform
            rows = np.arange(size) * values.shape[0] // size
            cols = np.arange(size) * values.shape[1] // size
            big = values[rows[:, None], cols[None, :]]
            out = np.where(big == 65535, 255, np.where(big == 30, 30, 0)).astype(np.uint8)
            scale = values.shape[1] / size
            transform = transform * Affine.scale(scale, scale)
        else:
            out = np.where(rng.random((size, size)) < 0.01 + 0.001 * index, 30, 0).astype(np.uint8)
            transform = Affine(30.0, 0, 400_000.0, 0, -30.0, 300_000.0)
        path = folder / f"lourenco_{year}.tif"
        with rasterio.open(path, "w", transform=transform, **profile) as dst:
            dst.write(out, 1)
        paths.append(path)
    return paths


# Runs the command in this child process and records the child's own peak resident set size.
_CHILD = (
    "import resource, sys\n"
    "from pipeline.cli import main\n"
    "try:\n"
    "    status = main(sys.argv[2:])\n"
    "finally:\n"
    "    open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    "sys.exit(status)\n"
)


def measure(argv: list[str], code: Path, scratch: Path) -> tuple[float, float, int]:
    """(wall seconds, peak resident MiB, exit status) of `mining-mapper ARGV` run with `code` on the path."""
    env = dict(os.environ, PYTHONPATH=str(code))
    peak_file = scratch / "peak_kib"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(peak_file), *argv], env=env, cwd=code, check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    peak = float(peak_file.read_text()) / 1024.0 if peak_file.exists() else float("nan")
    return wall, peak, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=int, default=36)
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose pipeline package runs (default: this one)")
    parser.add_argument("--only", choices=["stats", "filter"], help="run one command only")
    parser.add_argument("--workdir", type=Path, help="keep the series here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        series = work / f"series_{args.years}x{args.size}"
        if not series.exists() or len(list(series.glob("*.tif"))) != args.years:
            start = time.perf_counter()
            write_series(series, args.years, args.size)
            print(f"wrote {args.years} maps of {args.size}² in {time.perf_counter() - start:.0f} s", flush=True)
        mpx = args.years * args.size**2 / 1e6
        print(f"series: {args.years} × {args.size}² = {mpx:.0f} Mpx-years, EPSG:31976; code: {args.code}")
        commands = {
            "stats": ["stats", str(series), "--output", str(work / "stats_out"), "--quiet"],
            "filter": ["filter", str(series), "--output", str(work / "filter_out")],
        }
        for name, argv in commands.items():
            if args.only and name != args.only:
                continue
            wall, peak, status = measure(argv, args.code, work)
            print(f"{name:7s} {wall:8.1f} s  {mpx / wall:7.1f} Mpx-years/s  peak RSS {peak:8.0f} MiB  exit {status}",
                  flush=True)


if __name__ == "__main__":
    main()
