"""`mining-mapper export`: Earth Engine → Cloud Storage TFRecord exports, one per (grid, year)."""
from __future__ import annotations

NAME = "export"
HELP = "start Earth Engine TFRecord exports of the annual mosaics (or training patches) per grid and year"


def configure(parser) -> None:
    """Options: destination, years, grids or training samples, TFRecord options, dry run, waiting, access."""
    from pipeline.earthengine import auth, options

    parser.add_argument("--exports", required=True, metavar="gs://BUCKET/PATH", help="exports root: {exports}/{grid}/{year}/")
    parser.add_argument("--years", required=True, help="years, e.g. 1985-2023 or 2000,2010")
    options.add_grid_arguments(parser, required=False)
    parser.add_argument("--band-preset", choices=["appendix", "c9-code"], default="appendix", help="band preset (default appendix)")
    parser.add_argument("--patch-size", type=int, default=256, help="patchDimensions P: the core of each record (default 256, the published runs). "
                        + _geometry_costs())
    parser.add_argument("--kernel", type=int, default=256, help="kernelSize K: a K/2 buffer on each side, records are (P+K)^2 (default 256). "
                        "Large-tile inference (`run --inference_tile`) is exact when K/2 covers the network's halo (96 px for the "
                        "C9 U-Net, so K >= 192); a smaller K makes `run` infer those exports record-wise")
    parser.add_argument("--max-file-size", type=int, default=100 * 2**20, help="maxFileSize in bytes (default 100 MiB)")
    parser.add_argument("--priority", type=int, help="Earth Engine task priority (0-9999)")
    training = parser.add_argument_group("training patches")
    training.add_argument("--training", metavar="SAMPLES", help="sample polygons (0/1 label): export training patches")
    training.add_argument("--label-property", default="label", help="the samples' 0/1 property (default label)")
    training.add_argument("--year-property", help="the samples' year property (default: samples serve every year)")
    parser.add_argument("--dry-run", action="store_true", help="write the exact task requests as JSON; send nothing")
    parser.add_argument("--out", default="export_tasks.json", help="dry-run output file (default export_tasks.json)")
    parser.add_argument("--force", action="store_true", help="submit even when complete (mixer present) or active")
    parser.add_argument("--wait", action="store_true", help="poll until every task finishes; report failures")
    parser.add_argument("--poll-seconds", type=float, default=30.0, help="seconds between polls (default 30)")
    parser.add_argument("--wait-timeout", type=float, help="stop waiting after this many seconds")
    options.add_submission_arguments(parser, default_rate=1.0)
    auth.add_arguments(parser)


def _geometry_costs() -> str:
    """What export geometries cost per core pixel: pixels inferred record-wise, bytes exported (6 bands, before gzip)."""
    from pipeline.contract import core_pixels_cost

    parts = []
    for patch, kernel in ((256, 256), (512, 192), (1024, 192), (2048, 192)):
        cost = core_pixels_cost(patch, kernel)
        parts.append(f"P {patch} K {kernel}: {cost['inferred_per_core_pixel']:.2f} px inferred record-wise and "
                     f"{6 * cost['bytes_per_core_pixel_per_band']:.0f} B exported per core pixel")
    return "Costs: " + "; ".join(parts) + " (with large tiles, inference costs ~1.1-1.4 px per core pixel whatever the export)"


def preflight_paths(args) -> tuple[list[str], list[str]]:
    """gs:// paths probed before the command runs: the exports root, listed to skip complete exports."""
    if args.dry_run:
        return [], [args.out]
    return ([] if args.force else [args.exports]), []


def build_specs(args):
    """The export specs the options describe (Earth Engine must be initialised, online or offline)."""
    from pipeline.earthengine import exports, mosaic, options
    from pipeline.errors import UserError

    years = options.parse_years(args.years)
    mosaic.check_years(years)
    export_options = exports.ExportOptions(
        exports=args.exports,
        preset=args.band_preset,
        kernel=args.kernel,
        patch=args.patch_size,
        max_file_size=args.max_file_size,
        priority=args.priority,
    )
    grid_ids = options.grid_ids_from_args(args)
    if args.training:
        samples = exports.read_samples(args.training, args.label_property, args.year_property, args.layer)
        specs = exports.training_exports(samples, years, export_options, grid_ids=grid_ids)
        if not specs:
            raise UserError(f"{args.training}: no sample polygon falls in the selected grid cells and years")
        return specs
    if grid_ids is None:
        raise UserError("export: name the grid cells with --grids, --grids-file or --reference")
    return exports.mosaic_exports(grid_ids, years, export_options)


def run(args) -> int:
    """Dry run: write the requests. Otherwise: initialise, submit (resumable, rate-limited) and optionally wait."""
    from pipeline import preflight
    from pipeline.earthengine import auth, exports, options, storage

    backoff = options.backoff_from_args(args)
    if args.dry_run:
        auth.initialize_offline(args.project or "offline-dry-run")
        specs = build_specs(args)
        path = exports.write_dry_run(specs, args.out)
        print(f"export: {len(specs)} task requests written to {path} (nothing sent)")
        return 0
    preflight.probe_earth_engine(auth.config_from_args(args))
    specs = build_specs(args)
    client = None if args.force else storage.default_client(args.project)
    outcomes = exports.submit_exports(
        specs,
        client,
        per_second=args.rate,
        backoff=backoff,
        skip_complete=not args.force,
        skip_active=not args.force,
    )
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print("export: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    if args.wait:
        names = [o.operation for o in outcomes if o.operation]
        result = exports.wait_for_operations(
            names, poll_seconds=args.poll_seconds, timeout=args.wait_timeout, backoff=backoff
        )
        if result.failures:
            print(f"export: {len(result.failures)} of {len(names)} tasks failed")
            return 1
    return 0
