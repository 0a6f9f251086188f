"""`mining-mapper ingest`: register classification COGs as images of an Earth Engine ImageCollection."""
from __future__ import annotations

NAME = "ingest"
HELP = "register each (grid, year) classification COG as an image of an Earth Engine ImageCollection asset"


def configure(parser) -> None:
    """Options: COG sources, destination collection, image metadata, overwrite, dry run, waiting, access."""
    from pipeline import __version__
    from pipeline.earthengine import auth, options

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cogs", nargs="+", metavar="URI", help="gs:// URIs of the COGs (.../GRID/YEAR/NAME.tif)")
    source.add_argument("--cogs-list", metavar="FILE", help="a file of COG URIs, one a line")
    source.add_argument("--cogs-prefix", metavar="gs://BUCKET/PATH", help="ingest every .tif under this prefix; a run's output folder (with a summary.json) gives the COGs its manifest lists")
    parser.add_argument("--collection", required=True, help="ImageCollection asset id, projects/P/assets/PATH")
    parser.add_argument("--model", help="model name recorded on every image (or from the COG tags)")
    parser.add_argument("--threshold", type=float, help="probability threshold recorded on every image")
    parser.add_argument("--filter-mode", choices=["appendix", "c9-code"], help="post-classification filter mode")
    parser.add_argument(
        "--software-version", default=None, help=f"software version recorded (default {__version__})"
    )
    parser.add_argument("--bands", default="classification", help="band names of the COG, in order (comma-separated)")
    parser.add_argument("--read-tags", action="store_true", help="take grid/year/model/threshold/filter_mode/version from the COG tags")
    parser.add_argument("--overwrite", action="store_true", help="replace images that already exist")
    parser.add_argument("--dry-run", action="store_true", help="write the manifests as JSON; send nothing")
    parser.add_argument("--out", default="ingest_manifests.json", help="dry-run output file (default ingest_manifests.json)")
    parser.add_argument("--wait", action="store_true", help="poll until every ingestion finishes; report failures")
    parser.add_argument("--poll-seconds", type=float, default=30.0, help="seconds between polls (default 30)")
    options.add_submission_arguments(parser, default_rate=2.0)
    auth.add_arguments(parser)


def preflight_paths(args) -> tuple[list[str], list[str]]:
    """gs:// paths probed before the command runs: the prefix listed, and the COGs when their tags are read."""
    inputs = [args.cogs_prefix] if args.cogs_prefix else []
    if args.read_tags and args.cogs:
        inputs += list(args.cogs)
    return inputs, [args.out] if args.dry_run else []


def cog_uris(args) -> list[str]:
    """The COG URIs named by --cogs, --cogs-list or --cogs-prefix (listing the bucket for the last).

    A prefix that is a run's output folder (it holds a summary.json with a manifest) gives the COGs the
    manifest lists, so no COG of an earlier run lying there is ingested.
    """
    from pathlib import Path

    from pipeline.earthengine import storage
    from pipeline.errors import UserError

    if args.cogs:
        return list(args.cogs)
    if args.cogs_list:
        path = Path(args.cogs_list)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise UserError(f"{path}: cannot read: {error.strerror or error}") from error
        uris = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not uris:
            raise UserError(f"{path}: no COG URI in the file")
        return uris
    from pipeline.io.rasters import manifest_rasters

    uris = manifest_rasters(args.cogs_prefix)
    if uris is not None:
        if not uris:
            raise UserError(f"{args.cogs_prefix}: the run's summary.json lists no COG")
        return uris
    uris = storage.list_uris(storage.default_client(args.project), args.cogs_prefix)
    if not uris:
        raise UserError(f"{args.cogs_prefix}: no .tif object under this prefix")
    return uris


def run(args) -> int:
    """Build the manifests; dry run writes them, otherwise create the collection and start the ingestions."""
    from pipeline import __version__, preflight
    from pipeline.earthengine import auth, ingest, options

    backoff = options.backoff_from_args(args)
    ingest_options = ingest.IngestOptions(
        collection=args.collection,
        model=args.model,
        threshold=args.threshold,
        filter_mode=args.filter_mode,
        version=args.software_version or (None if args.read_tags else __version__),
        bands=tuple(b.strip() for b in args.bands.split(",") if b.strip()),
    )
    ingest.collection_name(args.collection)  # validate before any listing or reading
    ingest.check_threshold(args.threshold)
    uris = cog_uris(args)
    items = [
        ingest.make_item(uri, ingest_options, ingest.read_cog_tags(uri) if args.read_tags else None) for uri in uris
    ]
    ingest.check_items(items, real=not args.dry_run)
    if args.dry_run:
        path = ingest.write_dry_run(items, ingest_options, args.out, args.overwrite)
        print(f"ingest: {len(items)} manifests written to {path} (nothing sent)")
        return 0
    preflight.probe_earth_engine(auth.config_from_args(args))
    if ingest.ensure_collection(ingest_options, backoff):
        print(f"ingest: created ImageCollection {ingest.collection_name(args.collection)}")
    outcomes = ingest.ingest(items, ingest_options, overwrite=args.overwrite, per_second=args.rate, backoff=backoff)
    return options.report_started("ingest", outcomes, args, backoff, "ingestions")
