"""`mining-mapper evaluate`: IoU, F1, precision, recall, confusion matrix and a threshold sweep."""
from __future__ import annotations

import argparse

NAME = "evaluate"
USES_TENSORFLOW = True  # pipeline.cli loads it with its start-up chatter filtered
HELP = (
    "evaluate an exported model on labelled patches (default: its validation split): IoU, F1, precision, "
    "recall, confusion matrix, a threshold sweep that picks a threshold; results go into model_card.json"
)
# gs:// paths probed before the command runs (pipeline/preflight.py)
PREFLIGHT_INPUTS = ("model", "data")
PREFLIGHT_OUTPUTS = ("output",)


def _thresholds(text: str) -> list[float]:
    """Parse 'START:STOP:STEP' (inclusive) or a comma list of thresholds."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: give START:STOP:STEP or a comma list, e.g. 0.05:0.95:0.05") from error
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: thresholds must lie in [0, 1]")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `mining-mapper evaluate`."""
    parser.add_argument("model", help="exported model folder (holds saved_model.pb and model_card.json)")
    parser.add_argument("data", nargs="*", help="labelled TFRecord files/folders/globs (default: the card's validation split)")
    parser.add_argument("--threshold", type=float, default=0.5, help="threshold to report metrics at (default 0.5)")
    parser.add_argument("--sweep", type=_thresholds, default=None, metavar="START:STOP:STEP",
                        help="thresholds of the sweep (default 0.05:0.95:0.05)")
    parser.add_argument("--pick", default="f1", choices=["f1", "iou"], help="metric the sweep maximises (default f1)")
    parser.add_argument("--batch-size", type=int, default=10, help="patches per inference batch")
    parser.add_argument("--patch-size", type=int, help="pixels per patch side in DATA (default: the card's)")
    parser.add_argument("--keep-threshold", action="store_true", help="record metrics but keep the card's threshold")
    parser.add_argument("--no-card", action="store_true", help="do not write into model_card.json")
    parser.add_argument("--output", help="also write the metrics JSON here")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics at the threshold and at the picked one."""
    import json

    from model.evaluate import DEFAULT_SWEEP, evaluate_model
    from pipeline.errors import UserError

    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    report = evaluate_model(
        args.model, args.data or None, threshold=args.threshold, thresholds=args.sweep or DEFAULT_SWEEP,
        pick=args.pick, batch_size=args.batch_size, update_card=not args.no_card,
        set_threshold=not args.keep_threshold, patch_size=args.patch_size,
    )
    for key in ("at_threshold", "selected"):
        m = report[key]
        (tn, fp), (fn, tp) = m["confusion_matrix"]["matrix"]
        print(
            f"{'threshold' if key == 'at_threshold' else 'picked'} {m['threshold']:.2f}: IoU {m['iou']:.4f}  "
            f"F1 {m['f1']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
            f"(TP {tp}, FP {fp}, FN {fn}, TN {tn})"
        )
    print(f"patches: {report['patches']}; pixels: {report['at_threshold']['pixels']}")
    if args.output:
        import tensorflow as tf

        with tf.io.gfile.GFile(args.output, "w") as handle:
            handle.write(json.dumps(report, indent=2, default=lambda v: None) + "\n")
        print(f"metrics: {args.output}")
    return 0
