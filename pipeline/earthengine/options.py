"""Command-line options shared by the Earth Engine commands: years, grid selection, retries, rate."""
from __future__ import annotations

from pipeline.earthengine import grid as grid_lib
from pipeline.earthengine.retry import Backoff
from pipeline.errors import UserError
from pipeline.ranges import parse_int_list


def parse_years(text: str) -> list[int]:
    """Parse '1985-1990,2000' into sorted unique years (each 1984…2100)."""
    years = parse_int_list(text, "years")
    if not years:
        raise UserError("--years: no year given")
    for year in years:
        if not 1984 <= year <= 2100:
            raise UserError(f"--years: {year} is out of range (1984-2100)")
    return sorted(years)


def add_grid_arguments(parser, required: bool = True) -> None:
    """--grids IDS | --grids-file FILE | --reference FILE… (+ --layer): which grid cells to process."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--grids", help="grid ids, e.g. 1200,1250-1260")
    group.add_argument("--grids-file", metavar="FILE", help="grid ids, one per line (as `mining-mapper grids` writes)")
    group.add_argument(
        "--reference", nargs="+", metavar="FILE", help="reference polygons/points: process the cells they touch"
    )
    parser.add_argument("--layer", help="layer of a multi-layer reference file (GeoPackage)")


def grid_ids_from_args(args) -> list[int] | None:
    """The grid ids the options name (None when none of them was given)."""
    if getattr(args, "grids", None):
        ids = grid_lib.parse_ids(args.grids)
        if not ids:
            raise UserError("--grids: no grid id given")
        return ids
    if getattr(args, "grids_file", None):
        return grid_lib.read_ids_file(args.grids_file)
    if getattr(args, "reference", None):
        selection = grid_lib.select_cells(args.reference, args.layer)
        if not selection.ids:
            raise UserError(f"{', '.join(args.reference)}: no feature touches the grid")
        return selection.ids
    return None


def add_submission_arguments(parser, default_rate: float = 1.0) -> None:
    """--rate, --retries, --backoff: how fast to submit and how to retry 429/5xx answers."""
    group = parser.add_argument_group("submission")
    group.add_argument("--rate", type=float, default=default_rate, help=f"requests per second (default {default_rate})")
    group.add_argument("--retries", type=int, default=5, help="retries on HTTP 429/5xx (default 5)")
    group.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time (default 2)")


def backoff_from_args(args) -> Backoff:
    """The retry policy the submission options name."""
    if args.retries < 0 or args.backoff < 0 or args.rate <= 0:
        raise UserError("--retries and --backoff must be >= 0 and --rate > 0")
    return Backoff(retries=args.retries, base_delay=args.backoff)


def report_started(command: str, outcomes, args, backoff: Backoff, what: str) -> int:
    """Print how many operations started or were skipped; with --wait, poll them and fail on any failure.

    Shared by the commands that start Earth Engine operations (ingestions, post-step tasks): exit 0,
    or 1 when a waited-for operation failed (Earth Engine's own error text is printed while waiting).
    """
    from pipeline.earthengine import exports

    started = [o.operation for o in outcomes if o.status == "started"]
    print(f"{command}: {len(started)} started, {len(outcomes) - len(started)} skipped (existing)")
    if args.wait and started:
        result = exports.wait_for_operations(started, poll_seconds=args.poll_seconds, backoff=backoff)
        if result.failures:
            print(f"{command}: {len(result.failures)} of {len(started)} {what} failed")
            return 1
    return 0
