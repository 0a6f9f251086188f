"""Evaluation of an exported model on labelled patches: confusion matrix, IoU, F1, precision, recall,
and a threshold sweep that picks a threshold; the results go into the model card.

Pixels are counted exactly (integer counts per threshold) and only where observed (DESIGN §2: the
pipeline writes not-observed pixels as 255, so they are neither mining nor not mining). A pixel is
predicted mining where probability >= threshold.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SWEEP = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


class ConfusionAccumulator:
    """Integer confusion counts at a sorted set of thresholds, accumulated batch by batch."""

    def __init__(self, thresholds: Sequence[float]):
        """`thresholds`: the probabilities at which to count (sorted and de-duplicated here)."""
        t = np.unique(np.asarray(thresholds, dtype=np.float64))
        if t.size == 0 or t[0] < 0 or t[-1] > 1:
            raise ValueError(f"thresholds must lie in [0, 1], got {thresholds}")
        self.thresholds = t
        self._positive_hist = np.zeros(t.size + 1, dtype=np.int64)
        self._negative_hist = np.zeros(t.size + 1, dtype=np.int64)

    def add(self, probability: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Count pixels of one batch; `mask` (bool, same shape) selects the pixels that count."""
        p = np.asarray(probability, dtype=np.float64).ravel()
        y = np.asarray(label).ravel() > 0
        if p.shape != y.shape:
            raise ValueError(f"probability and label differ in size: {p.size} vs {y.size}")
        if mask is not None:
            keep = np.asarray(mask).ravel().astype(bool)
            p, y = p[keep], y[keep]
        # index k = number of thresholds <= p: the pixel is predicted mining at every threshold t_j, j < k
        index = np.searchsorted(self.thresholds, p, side="right")
        self._positive_hist += np.bincount(index[y], minlength=self.thresholds.size + 1)
        self._negative_hist += np.bincount(index[~y], minlength=self.thresholds.size + 1)

    def counts(self) -> dict[str, np.ndarray]:
        """tp, fp, fn, tn per threshold (arrays aligned with `self.thresholds`)."""
        # predicted positive at threshold j: pixels with index > j
        pos_tail = np.cumsum(self._positive_hist[::-1])[::-1][1:]
        neg_tail = np.cumsum(self._negative_hist[::-1])[::-1][1:]
        positives = self._positive_hist.sum()
        negatives = self._negative_hist.sum()
        return {"tp": pos_tail, "fp": neg_tail, "fn": positives - pos_tail, "tn": negatives - neg_tail}

    def at(self, threshold: float) -> dict[str, int]:
        """Confusion counts at one of the accumulated thresholds."""
        matches = np.flatnonzero(np.isclose(self.thresholds, threshold, rtol=0, atol=1e-12))
        if matches.size == 0:
            raise ValueError(f"threshold {threshold} was not accumulated")
        counts = self.counts()
        return {k: int(v[matches[0]]) for k, v in counts.items()}


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when den is 0 (written as null in JSON)."""
    return float(num) / float(den) if den else float("nan")


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """IoU (mining class), F1, precision, recall, accuracy and the confusion matrix from counts."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "confusion_matrix": {
            "rows": "reference (not mining, mining)",
            "columns": "predicted (not mining, mining)",
            "matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        },
        "pixels": int(tp + fp + fn + tn),
    }


def sweep(accumulator: ConfusionAccumulator) -> list[dict]:
    """Metrics at every accumulated threshold (for the card and for picking one)."""
    counts = accumulator.counts()
    rows = []
    for i, t in enumerate(accumulator.thresholds):
        m = metrics_from_counts(*(int(counts[k][i]) for k in ("tp", "fp", "fn", "tn")))
        rows.append({"threshold": float(t), "iou": m["iou"], "f1": m["f1"], "precision": m["precision"], "recall": m["recall"]})
    return rows


def pick_threshold(rows: Sequence[dict], metric: str = "f1") -> float:
    """The sweep threshold with the best `metric` (f1 or iou); ties go to the one nearest 0.5.

    With no mining pixels predicted or present (all NaN), 0.5 is returned.
    """
    if metric not in ("f1", "iou"):
        raise ValueError(f"cannot pick a threshold by {metric!r}: use f1 or iou")
    scored = [(r[metric], -abs(r["threshold"] - 0.5), r["threshold"]) for r in rows if np.isfinite(r[metric])]
    if not scored:
        return 0.5
    return max(scored)[2]


def evaluate_arrays(
    model, batches, threshold: float = 0.5, thresholds: Sequence[float] = DEFAULT_SWEEP, pick: str = "f1"
) -> dict:
    """Evaluate a callable (raw batch -> probabilities) over (raw images, labels, weights) batches.

    Returns {"at_threshold": metrics at `threshold`, "selected": metrics at the picked threshold,
    "selected_threshold", "sweep", "patches", "seconds"}.
    """
    acc = ConfusionAccumulator([*thresholds, threshold])
    patches = 0
    start = time.perf_counter()
    for images, labels, weights in batches:
        images = np.asarray(images)
        probability = np.asarray(model(images))
        acc.add(probability, np.asarray(labels), np.asarray(weights) > 0)
        patches += images.shape[0]
    if patches == 0:
        raise UserError("no patches to evaluate")
    rows = sweep(acc)
    chosen = pick_threshold(rows, pick)
    return {
        "threshold_rule": "mining where probability >= threshold; only observed pixels count",
        "at_threshold": {"threshold": float(threshold), **metrics_from_counts(**acc.at(threshold))},
        "selected_threshold": float(chosen),
        "selected_by": f"maximum {pick} over the sweep",
        "selected": {"threshold": float(chosen), **metrics_from_counts(**acc.at(chosen))},
        "sweep": rows,
        "patches": patches,
        "seconds": round(time.perf_counter() - start, 3),
    }


def evaluate_model(
    model_path: str,
    data: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    pick: str = "f1",
    batch_size: int = 10,
    update_card: bool = True,
    set_threshold: bool = True,
    patch_size: int | None = None,
) -> dict:
    """Evaluate an exported model on labelled patches and (optionally) record the result in its card.

    `data`: TFRecord files/folders/globs; when omitted, the validation part of the split recorded in
    the card at training time. With `set_threshold`, the picked threshold becomes the card's threshold.
    `patch_size` overrides the card's for DATA (the model takes any multiple of 2**depth).
    """
    from model.data import PatchSpec, list_record_files, make_dataset, scan_files
    from model.export import load_serving_model, write_model_card

    model = load_serving_model(model_path)
    card = model.card
    spec = PatchSpec(tuple(card["bands"]), int(patch_size or card["data"]["patch_size"]))
    if spec.patch_size % model.size_multiple:
        raise UserError(f"patch size {spec.patch_size} is not a multiple of {model.size_multiple}, as {model_path} needs")
    dataset_kwargs: dict = {}
    if data:
        files = scan_files(list_record_files(data), spec)
        source = {"files": [f.path for f in files], "records": sum(f.records for f in files)}
    else:
        split = card.get("data", {}).get("split") or {}
        paths = split.get("validation_files") or []
        if not paths:
            raise UserError(f"{model_path}: the model card records no validation data; give DATA to evaluate on")
        by_block = split.get("by") == "block"
        files = scan_files([(p, "") for p in paths], spec, with_coordinates=by_block)
        if by_block:
            dataset_kwargs = {
                "block_size": split["block_size"],
                "validation_blocks": [tuple(b) for b in split["validation_blocks"]],
                "keep": "validation",
            }
        source = {"validation_split_of": split.get("by"), "files": paths, "records": split.get("validation_records")}
    batches = make_dataset(files, spec, batch_size=batch_size, **dataset_kwargs).as_numpy_iterator()
    report = evaluate_arrays(model, batches, threshold=threshold, thresholds=thresholds, pick=pick)
    report["data"] = source
    sel = report["selected"]
    log.info(
        "evaluated %d patches: at %.2f IoU %.4f F1 %.4f; picked %.2f (F1 %.4f, IoU %.4f)",
        report["patches"], threshold, report["at_threshold"]["iou"], report["at_threshold"]["f1"],
        sel["threshold"], sel["f1"], sel["iou"],
    )
    if update_card:
        card["metrics"] = report
        if set_threshold:
            card["threshold"] = report["selected_threshold"]
            card["threshold_source"] = f"{report['selected_by']} on the evaluation data"
        write_model_card(model_path, card)
    return report
