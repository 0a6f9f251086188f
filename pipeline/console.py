"""What the commands print: quiet by default, -v for everything, -q for errors only; the end-of-run table.

Libraries write a lot at start-up (TensorFlow's C++ CUDA/oneDNN notes, absl, Beam's type-hint INFO
lines). `quiet_native_logs` must run before TensorFlow is imported (the C++ side reads the environment
once); `configure_logging` sets Python's logging for the chosen verbosity.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping

from pipeline.io.filesystem import local_or_remote

QUIET, NORMAL, VERBOSE = -1, 0, 1
PROJECT_LOGGERS = ("pipeline", "transforms", "model")
# Messages that say nothing a user can act on (Beam on a machine without the `resource` module).
NOISE = ("Resource module is not available",)
_ENV_WE_SET: dict[str, str] = {}
_verbosity = {"current": NORMAL}
# What TensorFlow's C++ side writes while loading: absl's pre-initialisation INFO lines (which ignore
# TF_CPP_MIN_LOG_LEVEL since TensorFlow logs through absl), CPU-feature notes, and the CUDA probes of a
# machine without a GPU.
NATIVE_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|I\d{4} [\d:.]+ +\d+ \S+\]"
    r"|[WE]\d{4} [\d:.]+ +\d+ \S+\] .*(cuInit|cuda|CUDA|cuDNN|cuFFT|cuBLAS|TensorRT)"
    r"|To enable the following instructions:.*rebuild TensorFlow)"
)


def quiet_native_logs(verbosity: int = NORMAL) -> None:
    """Silence TensorFlow's and absl's C++ logs (unless verbose) through the environment, before TF loads.

    A value the user already set is left alone.
    """
    wanted = {"TF_CPP_MIN_LOG_LEVEL": "0" if verbosity >= VERBOSE else "2", "GRPC_VERBOSITY": "ERROR"}
    for name, value in wanted.items():
        if name not in os.environ or _ENV_WE_SET.get(name) == os.environ[name]:
            os.environ[name] = value
            _ENV_WE_SET[name] = value


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe its devices with its native start-up chatter filtered out of stderr.

    Why: absl's C++ logging prints its INFO lines before it is initialised whatever TF_CPP_MIN_LOG_LEVEL
    says, so the only way to keep them off the terminal is to catch file descriptor 2 while TensorFlow
    loads. Lines that are not known chatter are written back. Verbose runs (`configure_logging`) see everything.
    """
    if _verbosity["current"] >= VERBOSE or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401 - loaded for the caller
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs on first use
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not NATIVE_CHATTER.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (a test's capture, a redirection)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in NOISE)


class _Formatter(logging.Formatter):
    """Our INFO lines bare (they are the progress); warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def configure_logging(verbosity: int = NORMAL) -> None:
    """Set Python logging for a verbosity: QUIET errors only; NORMAL our progress plus everyone's warnings;
    VERBOSE everything at INFO, ours at DEBUG, with timestamps and logger names."""
    quiet_native_logs(verbosity)
    _verbosity["current"] = verbosity
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mining_mapper", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler._mining_mapper = True
    if verbosity >= VERBOSE:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_Formatter())
        handler.addFilter(_DropNoise())
    root.addHandler(handler)
    root.setLevel({QUIET: logging.ERROR, NORMAL: logging.WARNING}.get(verbosity, logging.INFO))
    ours = {QUIET: logging.ERROR, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    # TensorFlow's Python side logs through absl into the "tensorflow" logger.
    logging.getLogger("tensorflow").setLevel(logging.ERROR if verbosity <= NORMAL else logging.INFO)
    # urllib3 warns at every connection retry; the failure itself is reported as one line (pipeline.failures).
    logging.getLogger("urllib3").setLevel(logging.ERROR if verbosity <= NORMAL else logging.INFO)


def verbosity_of(verbose: bool, quiet: bool) -> int:
    """The verbosity of -v / -q (-q wins: a script asking for errors only gets errors only)."""
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def run_table(summary: Mapping) -> str:
    """The short table `run` ends with: written / skipped / failed, inferred / reused (when the summary says),
    mining hectares of the first and the last year (after every filter, summed over the grids written), and
    where the outputs are."""
    counts = summary.get("counts", {})
    entries = summary.get("grid_years", [])
    total = len(entries)
    years = [entry["year"] for entry in entries]
    rows = [(status, f"{counts.get(status, 0)}/{total}") for status in ("written", "skipped", "failed")]
    inference = summary.get("inference") or {}
    if any(inference.values()):  # the yearly update: how the written grid-years got their probabilities
        rows += [("inferred", f"{inference.get('inferred', 0)}/{total}"), ("reused", f"{inference.get('reused', 0)}/{total} (raw results)")]
    if years:
        for year in sorted({min(years), max(years)}):
            written = [e for e in entries if e["year"] == year and e.get("status") == "written"]
            hectares = sum(_final_hectares(e) for e in written)
            grids = len({e["grid"] for e in entries if e["year"] == year})
            rows.append((f"mining {year}", f"{hectares:,.1f} ha ({len(written)}/{grids} grids)"))
    output = local_or_remote(summary.get("output", ""))
    rows.append(("COGs", f"{output}/{{grid}}/{{grid}}_{{year}}.tif"))
    rows.append(("summary", f"{output}/summary.json"))
    if any(inference.values()):
        rows.append(("raw results", f"{output}/raw/{{grid}}/{{grid}}_{{year}}.tif"))
    if summary.get("dead_letters"):
        rows.append(("dead letters", f"{summary['dead_letters']} in {output}/dead_letter.jsonl"))
    out_of_range = summary.get("metrics", {}).get("out_of_range_pixels")
    if out_of_range:
        rows.append(("out of range", f"{out_of_range:,} pixel(s) with a band outside 0-255: not observed (broken exports?)"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _final_hectares(entry: Mapping) -> float:
    """Mining hectares of a written grid-year after the last filter stage it went through."""
    from pipeline.method.filters import STAGES

    areas = entry.get("mining_ha") or {}
    for stage in reversed(STAGES):
        if stage in areas:
            return float(areas[stage])
    return 0.0
