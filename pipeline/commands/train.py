"""`mining-mapper train`: train the U-Net on Earth Engine training patches, export it with its model card."""
from __future__ import annotations

import argparse

NAME = "train"
USES_TENSORFLOW = True  # pipeline.cli loads it with its start-up chatter filtered
HELP = (
    "train the U-Net on Earth Engine training-patch TFRecords (tf.Transform preprocessing, spatial "
    "validation split, resumable checkpoints) and export the serving model with its model card"
)
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("data",)
PREFLIGHT_OUTPUTS = ("output",)


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `mining-mapper train` (defaults as published: Adam, 5e-6, batch 10, C9 U-Net)."""
    from pipeline.contract import BAND_PRESETS, DEFAULT_PRESET, NORMALIZATIONS

    parser.add_argument("data", nargs="+", help="training TFRecord files, folders ({root}/{grid}/...) or globs")
    parser.add_argument("--output", "-o", required=True, help="run folder: transform, checkpoints, state, model/")
    g = parser.add_argument_group("bands and preprocessing")
    g.add_argument("--band-preset", default=DEFAULT_PRESET, choices=sorted(BAND_PRESETS),
                   help="band preset: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in BAND_PRESETS.items()))
    g.add_argument(
        "--normalization", default="zscore", choices=list(NORMALIZATIONS),
        help="zscore: per-band mean/std from tf.Transform analyzers (default); c9-code: the stored byte values "
             "(0-255 as float) with no normalisation, as the published C9 notebooks feed the network",
    )
    g.add_argument("--patch-size", type=int, default=256, help="pixels per patch side in the records (default 256)")
    g = parser.add_argument_group("network")
    g.add_argument("--base-filters", type=int, default=64, help="filters of the first level (default 64, the C9 net)")
    g.add_argument("--depth", type=int, default=4, help="encoder levels (default 4)")
    g.add_argument("--dropout", type=float, default=0.3, help="dropout before the output conv (default 0.3)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="total epochs (a larger value continues a run)")
    g.add_argument("--batch-size", type=int, default=10, help="patches per step (default 10)")
    g.add_argument("--learning-rate", type=float, default=5e-6, help="learning rate (default 5e-6)")
    g.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "rmsprop"], help="default adam")
    g.add_argument("--loss", default="bce", choices=["bce", "dice", "bce+dice"], help="default bce")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, split, shuffling and augmentation")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no flips / 90-degree rotations")
    g.add_argument("--shuffle-buffer", type=int, default=64, help="patches in the shuffle buffer (default 64)")
    g.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (for GPUs)")
    g.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a lower validation loss (default 0: off)")
    g.add_argument("--min-delta", type=float, default=0.0, help="smallest val_loss decrease that counts")
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=1, help="save a resumable checkpoint every N epochs")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="full checkpoints kept (default 2)")
    g.add_argument("--restart", action="store_true", help="ignore checkpoints in --output and start over")
    g = parser.add_argument_group("validation")
    g.add_argument("--split", default="grid", choices=["grid", "block", "none"],
                   help="grid: by the first folder below the data root; block: by square blocks of the "
                        "records' lon/lat features; none: no split (default grid)")
    g.add_argument("--val-fraction", type=float, default=0.2, help="share of grids/blocks that validate (default 0.2)")
    g.add_argument("--validation-groups", nargs="+", metavar="GRID", help="these grids validate (with --split grid)")
    g.add_argument("--block-size", type=float, default=0.25, help="block side in degrees for --split block")
    g.add_argument("--validation", nargs="+", metavar="DATA", help="separate validation data (overrides --split)")
    g.add_argument("--threshold", type=float, default=0.5, help="threshold evaluated (and recorded until a sweep picks one)")
    g.add_argument("--no-export", dest="export", action="store_false", help="do not export the serving model")
    g.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="do not evaluate after export")
    parser.epilog = "Arguments after the options (e.g. --runner=DataflowRunner ...) go to the Beam analysis pipeline."
    parser.set_defaults(_accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    """Train (or resume), export and evaluate; print where the model is and its validation metrics."""
    from model.train import TrainConfig, train

    config = TrainConfig(
        data=list(args.data), output=args.output, preset=args.band_preset, normalization=args.normalization,
        patch_size=args.patch_size, base_filters=args.base_filters, depth=args.depth, dropout=args.dropout,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        optimizer=args.optimizer, loss=args.loss, seed=args.seed, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, early_stopping=args.early_stopping, min_delta=args.min_delta,
        split=args.split, val_fraction=args.val_fraction, validation_groups=args.validation_groups,
        block_size=args.block_size, validation=args.validation, shuffle_buffer=args.shuffle_buffer,
        augment=args.augment, mixed_precision=args.mixed_precision, threshold=args.threshold,
        restart=args.restart, export=args.export, evaluate=args.evaluate,
        pipeline_args=list(getattr(args, "_extra", []) or []),
    )
    result = train(config)
    last = result.history[-1] if result.history else {}
    print(f"epochs done: {result.epochs_done}" + (" (stopped early)" if result.stopped_early else ""))
    if last:
        print("last epoch: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "epoch"))
    if result.model_dir:
        print(f"model: {result.model_dir}")
        metrics = (result.card or {}).get("metrics")
        if metrics:
            sel = metrics["selected"]
            print(
                f"validation at threshold {sel['threshold']:.2f}: IoU {sel['iou']:.4f}, F1 {sel['f1']:.4f}, "
                f"precision {sel['precision']:.4f}, recall {sel['recall']:.4f}"
            )
    return 0
