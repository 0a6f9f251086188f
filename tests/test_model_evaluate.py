"""Evaluation metrics: exact confusion counts per threshold, IoU/F1/precision/recall, threshold choice."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluate import ConfusionAccumulator, evaluate_arrays, metrics_from_counts, pick_threshold, sweep


def _brute(p, y, m, t):
    pred = (p >= t) & m
    ref = (y > 0) & m
    return {
        "tp": int((pred & ref).sum()),
        "fp": int((pred & ~ref & m).sum()),
        "fn": int((~pred & ref & m).sum()),
        "tn": int((~pred & ~ref & m).sum()),
    }


def test_accumulated_counts_equal_brute_force_at_every_threshold():
    rng = np.random.default_rng(0)
    thresholds = [0.1, 0.25, 0.5, 0.75, 0.9]
    acc = ConfusionAccumulator(thresholds)
    ps, ys, ms = [], [], []
    for _ in range(4):
        p = rng.random((3, 8, 8, 1)).astype(np.float32)
        p[0, 0, 0, 0] = 0.5  # exactly at a threshold: counts as mining
        y = (rng.random((3, 8, 8, 1)) < 0.3).astype(np.float32)
        m = rng.random((3, 8, 8, 1)) < 0.9
        acc.add(p, y, m)
        ps.append(p), ys.append(y), ms.append(m)
    p, y, m = (np.concatenate(a) for a in (ps, ys, ms))
    for t in thresholds:
        assert acc.at(t) == _brute(p, y, m, t)


def test_metrics_from_counts():
    m = metrics_from_counts(tp=30, fp=10, fn=20, tn=40)
    assert m["iou"] == pytest.approx(30 / 60)
    assert m["f1"] == pytest.approx(60 / 90)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["confusion_matrix"]["matrix"] == [[40, 10], [20, 30]]
    empty = metrics_from_counts(0, 0, 0, 10)
    assert math.isnan(empty["precision"]) and math.isnan(empty["iou"]) and empty["accuracy"] == 1.0


def test_sweep_picks_the_best_f1_threshold():
    # mining pixels have probabilities 0.6-0.7, background 0.2-0.45: any threshold in (0.45, 0.6] is perfect
    p = np.array([0.6, 0.65, 0.7, 0.2, 0.3, 0.45])
    y = np.array([1, 1, 1, 0, 0, 0])
    acc = ConfusionAccumulator([0.3, 0.5, 0.55, 0.7])
    acc.add(p, y)
    rows = sweep(acc)
    assert [r["f1"] for r in rows][1:3] == [1.0, 1.0]
    assert pick_threshold(rows) == 0.5  # tie broken towards 0.5
    assert pick_threshold(rows, "iou") == 0.5
    assert pick_threshold([{"threshold": 0.3, "f1": float("nan")}]) == 0.5


def test_evaluate_arrays_ignores_unobserved_pixels():
    def model(x):
        return x[..., :1]  # "probability" = first band

    x = np.array([[[[0.9], [0.1]], [[0.8], [0.7]]]], np.float32)
    y = np.array([[[[1], [0]], [[0], [1]]]], np.float32)
    w = np.array([[[[1], [1]], [[0], [1]]]], np.float32)  # the 0.8 false positive is not observed
    report = evaluate_arrays(model, [(x, y, w)], threshold=0.5, thresholds=[0.5, 0.75])
    assert report["at_threshold"]["confusion_matrix"]["matrix"] == [[1, 0], [0, 2]]
    assert report["at_threshold"]["f1"] == 1.0 and report["selected_threshold"] == 0.5
    assert report["patches"] == 1
