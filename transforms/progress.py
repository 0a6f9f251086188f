"""One line per (grid, year) finished, on local runners: `written 1137/2004 (27/78, 41 s)  1200 2003`.

Applied to the GridYearStatus elements of `WriteGridYears`.
On a distributed runner the transform adds nothing (Dataflow shows progress itself, and a worker's log
line would not reach the person who started the run).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

import apache_beam as beam

from pipeline.elements import GridYearStatus

LOCAL_RUNNER_CLASSES = frozenset({"FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "LocalStreamingRunner"})
log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_DONE: dict[str, Counter] = {}  # per run token: "" → grid-years finished, grid → its years finished


def is_local(runner) -> bool:
    """Whether a runner runs the pipeline in this process (so a log line reaches the user's terminal)."""
    return runner is None or type(runner).__name__ in LOCAL_RUNNER_CLASSES


def progress_line(status: GridYearStatus, done: int, total: int, grids_done: int, grids_total: int, seconds: float) -> str:
    """The line of one finished grid-year: its status, counts of grid-years and of whole grids, time, name, reason."""
    line = f"{status.status} {done}/{total} ({grids_done}/{grids_total}, {seconds:.0f} s)  {status.grid} {status.year}"
    return f"{line}: {status.reason}" if status.reason else line


class _LogStatus(beam.DoFn):
    def __init__(self, token: str, years_per_grid: Mapping[str, int], started: float):
        self._token = token
        self._years_per_grid = dict(years_per_grid)
        self._started = started

    def process(self, status):
        with _LOCK:  # the local runner may run bundles on several threads; the counts are per process
            done = _DONE.setdefault(self._token, Counter())
            done[""] += 1
            done[status.grid] += 1
            grids_done = sum(1 for grid, n in self._years_per_grid.items() if done[grid] >= n)
            line = progress_line(status, done[""], sum(self._years_per_grid.values()), grids_done,
                                 len(self._years_per_grid), time.time() - self._started)
        log.info(line)
        return []


class LogProgress(beam.PTransform):
    """Log one line per (grid, year) status as it is written (local runners only; nothing elsewhere)."""

    def __init__(self, grid_years: Sequence[tuple[str, int]]):
        super().__init__()
        self._years_per_grid = Counter(grid for grid, _ in grid_years)
        self._started = time.time()

    def expand(self, statuses: beam.PCollection):
        if not is_local(statuses.pipeline.runner):
            return beam.pvalue.PDone(statuses.pipeline)
        return statuses | "Log a line per grid-year" >> beam.ParDo(_LogStatus(uuid.uuid4().hex, self._years_per_grid, self._started))
