"""`mining-mapper ee-poststeps`: spatial filter, prevalence integration and class_id in Earth Engine."""
from __future__ import annotations

NAME = "ee-poststeps"
HELP = "run the spatial filter, prevalence integration and/or class_id on the ingested collection in Earth Engine"

STEPS = ("spatial", "prevalence", "class-id")


def configure(parser) -> None:
    """Options: input collection, years, steps and their parameters, destination folder, region, access."""
    from pipeline.earthengine import auth, options

    parser.add_argument("--collection", required=True, help="ImageCollection filled by `mining-mapper ingest`")
    parser.add_argument("--years", required=True, help="years, e.g. 1985-2023")
    parser.add_argument(
        "--steps", default="spatial", help=f"comma-separated, chained in this order: {', '.join(STEPS)} (default spatial)"
    )
    parser.add_argument("--dest", required=True, help="asset folder for the results: {dest}/{step}_{year}")
    options.add_grid_arguments(parser, required=True)
    spatial = parser.add_argument_group(
        "spatial filter (DESIGN §3)",
        "The committed C9 script (5-SpatialFilter.js) filters class 10, which never occurs in 0/30 maps, so as committed "
        "it changes nothing: leaving 'spatial' out of --steps (the run's --spatial_filter off) reproduces it; "
        "--filter-mode c9-code filters class 30, as the script's own preview line does.",
    )
    spatial.add_argument("--filter-mode", choices=["appendix", "c9-code"], default="appendix", help="filter mode (default appendix)")
    spatial.add_argument("--min-component-size", type=int, default=10, help="minimum component size in pixels (default 10)")
    spatial.add_argument("--spatial-window", type=int, default=3, help="c9-code mode window (default 3)")
    integration = parser.add_argument_group("prevalence integration (DESIGN §5)")
    integration.add_argument("--land-cover", help="land-cover image asset (one band per year)")
    integration.add_argument(
        "--land-cover-band", default="classification_{year}", help="band name template (default classification_{year})"
    )
    class_id = parser.add_argument_group("class_id (DESIGN §6)")
    class_id.add_argument("--occurrences", help="occurrence FeatureCollection asset (e.g. ANM SIGMINE)")
    class_id.add_argument("--type-field", default="FASE", help="field giving the mining type (default FASE)")
    class_id.add_argument("--substance-field", default="SUBS", help="field giving the substance (default SUBS)")
    class_id.add_argument("--class-property", help="use this ready class_id property instead of the table lookup")
    class_id.add_argument("--buffer", type=float, default=1000.0, help="nearest-feature search distance, m (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace result assets that exist")
    parser.add_argument("--dry-run", action="store_true", help="write the exact task requests as JSON; send nothing")
    parser.add_argument("--out", default="ee_poststeps_tasks.json", help="dry-run output file")
    parser.add_argument("--wait", action="store_true", help="poll until every task finishes; report failures")
    parser.add_argument("--poll-seconds", type=float, default=30.0, help="seconds between polls (default 30)")
    options.add_submission_arguments(parser, default_rate=1.0)
    auth.add_arguments(parser)


def build_tasks(args):
    """One export-to-asset task per requested step and year (Earth Engine initialised, online or offline)."""
    import ee

    from pipeline.earthengine import options, poststeps
    from pipeline.io import tables
    from pipeline.errors import UserError

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise UserError(f"--steps {args.steps!r}: choose from {', '.join(STEPS)}")
    if "prevalence" in steps and not args.land_cover:
        raise UserError("--steps prevalence needs --land-cover ASSET")
    if "class-id" in steps and not args.occurrences:
        raise UserError("--steps class-id needs --occurrences ASSET")
    years = options.parse_years(args.years)
    region = poststeps.grid_region(options.grid_ids_from_args(args))
    dest = args.dest.rstrip("/")
    ranks = tables.load_prevalence_table() if "prevalence" in steps else None
    table = tables.load_class_id_table() if "class-id" in steps else None
    occurrences = None
    if table is not None:
        occurrences = poststeps.occurrences_with_class_id(
            ee.FeatureCollection(args.occurrences), table, args.type_field, args.substance_field, args.class_property
        )
    tasks = []
    for year in years:
        # c9-code's spatial filter is literal: not observed (inside the year's images) votes as a value.
        literal = "spatial" in steps and args.filter_mode == "c9-code"
        classification = poststeps.year_classification(
            args.collection, year, not_observed=poststeps.NOT_OBSERVED if literal else None
        )
        if "spatial" in steps:
            classification = poststeps.spatial_filter(classification, args.filter_mode, args.min_component_size, args.spatial_window)
            tasks.append(poststeps.asset_export(
                classification, "spatial", year, f"{dest}/spatial_{year}", region, overwrite=args.overwrite
            ))
        if "prevalence" in steps:
            landcover = ee.Image(args.land_cover).select(args.land_cover_band.format(year=year))
            integrated = poststeps.integrate_mining(classification, landcover, ranks)
            tasks.append(poststeps.asset_export(
                integrated, "prevalence", year, f"{dest}/prevalence_{year}", region, overwrite=args.overwrite
            ))
        if "class-id" in steps:
            image = poststeps.class_id_image(classification, occurrences, table, region, args.buffer)
            tasks.append(poststeps.asset_export(
                image, "class-id", year, f"{dest}/class_id_{year}", region, overwrite=args.overwrite
            ))
    return tasks


def run(args) -> int:
    """Dry run: write the requests. Otherwise: initialise, start the tasks (skipping existing results), wait."""
    import json
    from pathlib import Path

    from pipeline import preflight
    from pipeline.earthengine import auth, options, poststeps

    backoff = options.backoff_from_args(args)
    if args.dry_run:
        auth.initialize_offline(args.project or "offline-dry-run")
        tasks = build_tasks(args)
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = [
            {"step": t.step, "year": t.year, "asset": t.asset, "description": t.description, "request": t.request()}
            for t in tasks
        ]
        path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"ee-poststeps: {len(tasks)} task requests written to {path} (nothing sent)")
        return 0
    preflight.probe_earth_engine(auth.config_from_args(args))
    tasks = build_tasks(args)
    outcomes = poststeps.start_tasks(tasks, overwrite=args.overwrite, per_second=args.rate, backoff=backoff)
    return options.report_started("ee-poststeps", outcomes, args, backoff, "tasks")
