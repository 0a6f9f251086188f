"""The one timer of the benchmarks: the fastest of a few calls, optionally after a warm-up call."""
from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], repeats: int = 1, *, warmup: bool = False) -> float:
    """Fastest of `repeats` timed calls of `fn`; with `warmup`, after one untimed call (compilation, caches).

    The minimum rather than the mean: on a shared machine the slow calls are other processes' noise.
    """
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
