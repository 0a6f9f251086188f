"""`mining-mapper run`: the whole pipeline (options as in `pipeline.options`, Beam flags pass through)."""
from __future__ import annotations

import argparse

NAME = "run"
HELP = "Run the pipeline: Earth Engine exports → U-Net inference → filters → COGs and a run summary."


def configure(parser: argparse.ArgumentParser) -> None:
    """Every option is the pipeline's own (see `python -m pipeline.run --help`); they pass through as is."""
    parser.set_defaults(_accepts_extra=True)
    parser.epilog = (
        "Options: --exports, --output, --model, --model_routing, --grids, --years, --band_preset, --threshold, "
        "--filter_mode and the filter parameters, --spatial_filter local|earthengine|off, --min_batch_size, "
        "--max_batch_size, --probability_band, --origin_band, --require_gpu; and Beam's (--runner …)."
    )


def run(args: argparse.Namespace) -> int:
    """Hand the remaining command line to the pipeline."""
    from pipeline.run import main

    return main(args._extra)
