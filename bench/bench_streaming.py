"""Streaming against batch: time from the last export landing to its grid's COGs (issue 17).

On the demo sample (`mining-mapper sample`: 2 grids, 1985–2023, 2 × 2 patches of 256 px, kernel 32) with a
demo-width U-Net (untrained: the cost of inference does not depend on the weights):

- **batch**: the whole pipeline on the FnApiRunner, started once every export has landed; the time from the
  last export landing to its grid's COGs is the whole run.
- **streaming, live**: `mining-mapper run --streaming` on the local runner (LocalStreamingRunner), watching a
  folder that holds every export but the last; once all of those are inferred, the last export's files are
  copied in, and the time runs until its grid's status file says `filtered` (watch interval included).
- **streaming, steps**: every other export already inferred (its raw result written) and the model loaded, as in a
  running streaming job; then the last export lands and the job's own steps for it run in this process:
  `_InferCompleteExportFn` (check complete, read, infer, write its raw result) and `_GridSeriesFn._finish`
  (its grid's filter chain from the raw results, COGs, status file, summary). On Dataflow the watch interval
  (`--watch_interval`, default 60 s) comes on top: the time until the next listing sees the file.

It checks that the streamed grid's COGs are byte-identical to the batch run's, and derives the C9-scale
figure from the measured rates: batch = the whole collection (3.1 M core patches, bench/bench_gpu.py) at the
batch run's per-patch cost; streaming = one grid-year's patches inferred plus one grid's series filtered
at the streaming steps' per-patch costs, plus the watch interval.

    python bench/bench_streaming.py              # U-Net width 8, depth 3 (the demo network)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gpu import COLLECTION_PATCHES  # noqa: E402
from bench.bench_update import C9_YEARS, tifs  # noqa: E402

C9_GRIDS = 475


class _State:
    """A stand-in for a Beam ReadModifyWriteState outside a pipeline."""

    def __init__(self, value=None):
        self.value = value

    def read(self):
        """The value held."""
        return self.value

    def write(self, value):
        """Hold a value."""
        self.value = value


def live(flags, sample, workdir, grid, last, interval):
    """The live figure: a local `run --streaming` watching a folder that holds every export but the last; once
    they are all inferred, the last export's files are copied in. Seconds from then until its grid's status
    file says filtered, and whether that grid's COGs equal a batch run's over the same exports."""
    import json
    import shutil
    import threading

    from pipeline.run import run

    exports, output = os.path.join(workdir, "live_exports"), os.path.join(workdir, "live")
    held = os.path.join(str(sample.exports), grid, str(last))
    shutil.copytree(sample.exports, exports, ignore=lambda folder, names: names if os.path.abspath(folder) == os.path.abspath(held) else [])
    live_flags = [f if f != sample.exports else exports for f in flags]
    runner = threading.Thread(target=run, args=([*live_flags, "--output", output, "--streaming", "--watch_interval", str(interval),
                                                 "--series_timeout", "3600"],), daemon=True)
    runner.start()
    raw_wanted = len(sample.grids) * len(sample.years) - 1
    while runner.is_alive() and sum(len(files) for _, _, files in os.walk(os.path.join(output, "raw"))) < raw_wanted:
        time.sleep(0.1)
    target = os.path.join(exports, grid, str(last))
    os.makedirs(target, exist_ok=True)  # copytree left it empty
    landed = time.perf_counter()
    for name in sorted(os.listdir(held)):
        shutil.copy(os.path.join(held, name), os.path.join(target, name + ".part"))
        os.replace(os.path.join(target, name + ".part"), os.path.join(target, name))
    status = os.path.join(output, "streaming", f"{grid}.json")
    while runner.is_alive() and not (os.path.exists(status) and json.load(open(status))["state"] == "filtered"):
        time.sleep(0.02)
    live_s = time.perf_counter() - landed
    runner.join()
    run([*live_flags, "--output", os.path.join(workdir, "live_batch"), "--reuse_raw", "off"])
    streamed = {n: d for n, d in tifs(output).items() if n.startswith(f"{grid}/")}
    reference = {n: d for n, d in tifs(os.path.join(workdir, "live_batch")).items() if n.startswith(f"{grid}/")}
    return live_s, streamed == reference and len(streamed) == len(sample.years)


def main() -> None:
    """Generate the sample, time the batch run and the streaming steps after the last export, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8, help="U-Net base filters (64 = the published network)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--watch_interval", type=float, default=60.0, help="the streaming job's listing interval (s), added on paper")
    parser.add_argument("--live_interval", type=float, default=1.0, help="the live local run's listing interval (s)")
    args = parser.parse_args()

    from apache_beam.options.pipeline_options import PipelineOptions

    from bench.sample_run import sample_and_model
    from pipeline.elements import GridYearKey
    from pipeline.options import build_config
    from pipeline.run import run
    from transforms.raw import model_digests
    from transforms.streaming import _GridSeriesFn, _InferCompleteExportFn

    workdir, sample, model = sample_and_model(args.width, args.depth, "bench_streaming_")
    first, last = sample.years[0], sample.years[-1]
    grids = [str(g) for g in sample.grids]
    flags = ["--exports", sample.exports, "--model", model, "--grids", ",".join(grids), "--years", f"{first}-{last}",
             "--direct_num_workers", "1"]

    start = time.perf_counter()
    batch = run([*flags, "--output", os.path.join(workdir, "batch"), "--reuse_raw", "off"])
    batch_s = time.perf_counter() - start
    patches = batch["metrics"]["patches_read"]

    output = os.path.join(workdir, "stream")
    config = build_config(PipelineOptions([*flags, "--output", output]))
    infer = _InferCompleteExportFn(config, model_digests(config))
    grid, last_key = grids[-1], GridYearKey(grids[-1], last)
    fingerprints = {}
    for key in config.grid_years():  # the exports that landed earlier, inferred as they landed (not timed)
        if GridYearKey(*key) != last_key:
            fingerprints[key] = infer._raw_result(GridYearKey(*key))
    series = _GridSeriesFn(config, 3600.0, False, "bench", ["bench"])

    start = time.perf_counter()
    fingerprints[tuple(last_key)] = infer._raw_result(last_key)
    inferred_s = time.perf_counter() - start
    current = {year: f for (g, year), f in fingerprints.items() if g == grid}
    statuses = list(series._finish(grid, current, _State()))
    stream_s = time.perf_counter() - start
    filter_s = stream_s - inferred_s

    live_s, live_identical = live(flags, sample, workdir, grid, last, args.live_interval)

    streamed = {name: data for name, data in tifs(output).items() if name.startswith(f"{grid}/")}
    reference = {name: data for name, data in tifs(os.path.join(workdir, "batch")).items() if name.startswith(f"{grid}/")}
    identical = streamed == reference and len(streamed) == len(sample.years)
    per_export = patches // (len(grids) * len(sample.years))
    print(f"sample: {len(grids)} grids × {len(sample.years)} years, {patches} patches ({per_export} per export); "
          f"U-Net width {args.width} depth {args.depth}")
    print(f"batch, started after the last export:            {batch_s:8.1f} s to every COG")
    print(f"streaming, after the last export ({grid} {last}): {stream_s:8.2f} s to its grid's {len(statuses)} COGs "
          f"(infer {inferred_s:.2f} s, filter + write {filter_s:.2f} s) + the watch interval; "
          f"COGs byte-identical to batch: {identical}")
    print(f"streaming, live local run (watch every {args.live_interval:g} s): {live_s:8.2f} s from the last export's files "
          f"landing to its grid's COGs; COGs byte-identical to a batch run over the same exports: {live_identical}")
    per_batch = batch_s / patches
    per_infer = inferred_s / per_export
    per_filter = filter_s / (per_export * len(sample.years))
    c9_export = COLLECTION_PATCHES / (C9_GRIDS * C9_YEARS)
    c9_batch = COLLECTION_PATCHES * per_batch
    c9_stream = c9_export * per_infer + c9_export * C9_YEARS * per_filter + args.watch_interval
    print(f"rates: batch {per_batch * 1e3:.1f} ms per patch; streaming {per_infer * 1e3:.1f} ms per patch inferred, "
          f"{per_filter * 1e3:.1f} ms per patch-year filtered and written")
    print(f"C9 scale ({COLLECTION_PATCHES / 1e6:.1f} M core patches, {C9_GRIDS} grids × {C9_YEARS} years, ~{c9_export:.0f} patches "
          f"per export), on this machine at these rates: last export → its COGs: batch {c9_batch / 3600:,.0f} h (the whole "
          f"collection, after every export), streaming {c9_stream / 60:,.1f} min (one export inferred, one grid's "
          f"{C9_YEARS} years filtered, + {args.watch_interval:.0f} s watch interval)")
    print(f"that holds while the job keeps up: its {COLLECTION_PATCHES * per_infer / 3600:,.0f} h of inference (at this rate, one "
          f"worker) are spread over the days Earth Engine takes to export, and must fit in them (more workers if not)")


if __name__ == "__main__":
    main()
