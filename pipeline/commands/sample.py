"""`mining-mapper sample`: generate Earth Engine-format exports, training patches and truth for the demo."""
from __future__ import annotations

import argparse
import sys
import time

NAME = "sample"
HELP = (
    "Generate sample Earth Engine TFRecord exports (shards + mixer, kernel buffer) over real Collection 9 "
    "grid cells for many years, with training patches and the true classes."
)
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ()
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sample command (see pipeline.demo.sample.SampleSpec)."""
    parser.add_argument("--output", required=True, help="output folder (local path or gs://): exports/, training/, truth/, sample.json")
    parser.add_argument("--band-preset", default="appendix", help="band preset: appendix (default) or c9-code")
    parser.add_argument("--grid-count", type=int, default=2, help="number of sample grids, placed on real mining regions (default 2)")
    parser.add_argument("--grids", default=None, help="explicit Collection 9 grid ids for the sample (comma list with ranges) instead of --grid-count")
    parser.add_argument("--years", default="1985-2023", help="START-END (default 1985-2023)")
    parser.add_argument("--patch-size", type=int, default=256, help="patch size P in pixels (default 256)")
    parser.add_argument("--kernel", type=int, default=32, help="kernel size K: records are (P + K) square (default 32)")
    parser.add_argument("--patches", default="2x2", help="patches per grid, COLSxROWS (default 2x2)")
    parser.add_argument("--records-per-shard", type=int, default=2, help="records per shard file (default 2)")
    parser.add_argument("--training-grids", type=int, default=2, help="grids of training patches, other sites than the sample (default 2)")
    parser.add_argument("--training-year-step", type=int, default=6, help="training patches every N years, plus the last year (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same bytes (default 0)")
    parser.add_argument("--compress-level", type=int, default=6, help="gzip level of the shards (default 6)")
    parser.add_argument("--overwrite", action="store_true", help="replace a sample already in --output")


def _parse_years(text: str) -> tuple[int, int]:
    from pipeline.errors import UserError

    try:
        if "-" in text:
            start, end = (int(v) for v in text.split("-", 1))
        else:
            start = end = int(text)
    except ValueError:
        raise UserError(f"--years {text!r}: expected START-END (e.g. 1985-2023) or one year") from None
    if end < start:
        raise UserError(f"--years {text!r}: END is before START")
    return start, end


def _parse_patches(text: str) -> tuple[int, int]:
    from pipeline.errors import UserError

    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--patches {text!r}: expected COLSxROWS, e.g. 2x2") from None
    return cols, rows


def _parse_ids(text: str | None) -> tuple[int, ...]:
    from pipeline.ranges import parse_int_list

    return tuple(parse_int_list(text, "grids"))


def _prepare_output(output: str, overwrite: bool) -> None:
    """Refuse a non-empty folder that is not a sample; clear a previous sample when --overwrite."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.errors import UserError

    matches = FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list
    if not matches:
        return
    names = {m.path.rstrip("/").rsplit("/", 1)[-1] for m in matches}
    if "sample.json" not in names:
        raise UserError(f"{output}: folder is not empty and holds no sample.json; choose an empty or new folder")
    if not overwrite:
        raise UserError(f"{output}: a sample is already there; pass --overwrite to replace it")
    for sub in ("exports", "training", "truth"):
        folder = FileSystems.join(output, sub)
        files = FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list
        if files:
            FileSystems.delete([m.path for m in files])
    FileSystems.delete([FileSystems.join(output, "sample.json")])


def run(args: argparse.Namespace) -> int:
    """Generate the sample and print where it is."""
    from pipeline.demo.sample import SampleSpec, generate_sample

    spec = SampleSpec(
        preset=args.band_preset,
        grids=args.grid_count,
        years=_parse_years(args.years),
        patch_size=args.patch_size,
        kernel=args.kernel,
        patches=_parse_patches(args.patches),
        records_per_shard=args.records_per_shard,
        seed=args.seed,
        training_grids=args.training_grids,
        training_year_step=args.training_year_step,
        grid_ids=_parse_ids(args.grids),
        compress_level=args.compress_level,
    )
    spec.validate()
    output = args.output.rstrip("/")
    _prepare_output(output, args.overwrite)
    start = time.monotonic()

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    manifest = generate_sample(output, spec, progress=say).manifest
    sample = [g["grid"] for g in manifest["grids"] if g["kind"] == "sample"]
    training = [g["grid"] for g in manifest["grids"] if g["kind"] == "training"]
    years = manifest["years"]
    print(f"sample written to {output} in {time.monotonic() - start:.1f}s")
    print(f"  exports:  {output}/exports  grids {', '.join(sample)}, years {years[0]}-{years[-1]}, "
          f"preset {manifest['preset']} ({', '.join(manifest['bands'])}), "
          f"{manifest['patches_per_row']}x{manifest['patch_rows']} patches of {manifest['patch_size']} px, kernel {manifest['kernel']}")
    if training:
        print(f"  training: {output}/training  grids {', '.join(training)}, years {', '.join(map(str, manifest['training_years']))}")
    print(f"  truth:    {output}/truth  (0 not mining, 1 mining, 255 not observed)")
    print(f"  manifest: {output}/sample.json")
    return 0
