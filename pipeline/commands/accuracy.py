"""`mining-mapper accuracy`: a stratified sample design for interpreters, and the estimates from its labels."""
from __future__ import annotations

import argparse
import sys

NAME = "accuracy"
HELP = "Accuracy assessment (Olofsson et al. 2014): 'design' a stratified sample, 'estimate' accuracy and area from its labels."
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("map", "sample", "design")
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Two subcommands: design and estimate."""
    sub = parser.add_subparsers(dest="accuracy_step", required=True, metavar="STEP")
    design = sub.add_parser("design", help="strata mining / ring / rest, allocation and random points (GeoJSON + CSV)")
    design.add_argument("map", help="one mining map (classification COG or categorical map; local or gs://)")
    design.add_argument("--output", required=True, help="folder for sample.geojson, sample.csv and design.json")
    design.add_argument("--class-value", type=int, default=30, help="value meaning mining (default 30)")
    design.add_argument("--nodata-value", type=float, action="append", default=[], help="extra value meaning not observed (repeatable)")
    design.add_argument("--ring-width", type=float, default=300.0, help="ring stratum: not-mining pixels within this many metres of mining (default 300)")
    size = design.add_mutually_exclusive_group(required=True)
    size.add_argument("--n", type=int, help="total sample size")
    size.add_argument("--target-se", type=float, help="target standard error of overall accuracy; the size follows (Olofsson et al. 2014 eq. 13)")
    design.add_argument(
        "--expected-users", default=None,
        help="expected user's accuracy per stratum for --target-se, e.g. mining=0.8,ring=0.9,rest=0.99 (these are the defaults)",
    )
    design.add_argument("--allocation", choices=["olofsson", "proportional", "equal"], default="olofsson",
                        help="olofsson: a fixed --rare-n for rare strata, the rest proportional (default); proportional; equal")
    design.add_argument("--rare-n", type=int, default=100, help="sample size for each rare stratum under olofsson allocation (default 100)")
    design.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same points)")

    est = sub.add_parser("estimate", help="error matrix in area proportions, user's / producer's / overall accuracy, error-adjusted areas")
    est.add_argument("sample", help="the labelled sample.csv or sample.geojson ('reference' filled with mining / not_mining)")
    est.add_argument("--design", required=True, help="the design.json written by 'accuracy design'")
    est.add_argument("--output", required=True, help="folder for accuracy.json, error_matrix.csv, accuracy_by_class.csv")
    est.add_argument("--drop-unlabelled", action="store_true", help="leave out units with no reference label instead of failing")
    est.add_argument("--fpc", action="store_true", help="apply the finite population correction (off in Olofsson et al. 2014)")


def _parse_expected(text: str | None) -> dict[str, float]:
    from pipeline.errors import UserError
    from pipeline.products.accuracy import STRATA

    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in STRATA:
            raise UserError(f"--expected-users: unknown stratum {name!r} (strata: {', '.join(STRATA)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--expected-users: {part!r} is not STRATUM=VALUE") from None
    return out


def run(args: argparse.Namespace) -> int:
    """Run the chosen step and publish its files."""
    from pipeline.errors import UserError
    from pipeline.products import accuracy as acc
    from pipeline.io import filesystem as fs

    if args.accuracy_step == "design":
        files = acc.make_design(
            args.map, args.class_value, args.nodata_value, args.ring_width, args.n, args.target_se,
            _parse_expected(args.expected_users), args.allocation, args.rare_n, args.seed,
        )
        fs.publish_atomically({fs.join(args.output, name): data for name, data in files.items()})
        print(args.output)
        return 0

    design = fs.read_json(args.design)
    try:
        strata_spec = design["strata"]
        sizes = {name: float(spec["pixels"]) for name, spec in strata_spec.items()}
        areas = {name: float(spec["area_ha"]) for name, spec in strata_spec.items()}
        map_class_of = {name: spec["map_class"] for name, spec in strata_spec.items()}
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{args.design}: not a design.json from 'accuracy design' ({error!r})") from None
    sample = acc.read_labelled_sample(args.sample, list(sizes), args.drop_unlabelled)
    acc.check_sample_against_design(sample, design, str(args.sample), str(args.design))
    empty = [s for s in sizes if sizes[s] > 0 and s not in set(sample.strata)]
    if empty:
        raise UserError(f"{args.sample}: no labelled unit in stratum {', '.join(empty)}; every non-empty stratum needs one")
    wrong = [i for i, (s, m) in enumerate(zip(sample.strata, sample.map_classes), start=1) if map_class_of[s] != m]
    if wrong:
        raise UserError(f"{args.sample}: {len(wrong)} unit(s) carry a map_class that contradicts their stratum (e.g. row {wrong[0]})")
    # Strata are weighted by their true area (pixels differ slightly in area); pixel counts serve the fpc.
    estimates = acc.estimate(sample.strata, sample.map_classes, sample.reference, areas, sum(areas.values()),
                             classes=list(acc.MAP_CLASSES), fpc=args.fpc, counts=sizes)
    mapped = {c: sum(a for s, a in areas.items() if map_class_of[s] == c) for c in acc.MAP_CLASSES}
    files = acc.estimate_files(estimates, mapped, {"sample": str(args.sample), "design": str(args.design), "units": len(sample.strata)})
    fs.publish_atomically({fs.join(args.output, name): data for name, data in files.items()})
    m = "mining"
    low, high = estimates.area_ci(m)
    print(
        f"overall accuracy {estimates.overall:.3f} ± {estimates.z * estimates.overall_se:.3f}; mining: user's {estimates.users[m]:.3f}, "
        f"producer's {estimates.producers[m]:.3f}; area {estimates.area(m):.1f} ha (95 % CI {low:.1f}–{high:.1f}), mapped {mapped[m]:.1f} ha",
        file=sys.stdout,
    )
    return 0
