"""`mining-mapper run`: the whole pipeline (options as in `pipeline.options`, Beam flags pass through)."""
from __future__ import annotations

import argparse

NAME = "run"
ADD_HELP = False  # --help goes to the pipeline, which documents its own options
HELP = "Run the pipeline: Earth Engine exports → U-Net inference → filters → COGs and a run summary."


def configure(parser: argparse.ArgumentParser) -> None:
    """Every option is the pipeline's own (`pipeline.options`); they pass through as is, --help included."""
    parser.set_defaults(_accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    """Hand the remaining command line to the pipeline."""
    from pipeline.console import verbosity_of
    from pipeline.run import main

    return main(args._extra, verbosity_of(args.verbose, args.quiet))
