"""The streaming job (`mining-mapper run --streaming`): infer each export the moment it is complete, filter
each grid the moment its series is complete (issue 17).

    file events under --exports → per (grid, year): read + infer once complete, raw result written
                                → per grid (state: year → fingerprint): filter chain + COGs when complete

- **Watching.** `WatchExports`: a splittable DoFn lists `{exports}/*/*/*` every `--watch_interval` seconds
  and a keyed state per file lets each (path, mtime) through once, so each new or re-written file of an
  export is one event for its (grid, year). Our own rather than `fileio.MatchContinuously`, which Beam's
  local streaming runner cannot run: this way the watcher Dataflow runs is the one the local run and its
  test run. Earth Engine writes an export's shards and its mixer in no promised order, and the mixer gives
  `totalPatches` but not the shard list, so an export **counts as complete when its mixer is present and
  reading it gives `totalPatches` good records and no dead letter** (`read_export` reports a record-count
  mismatch as a dead letter). An incomplete export is dropped quietly; the next file that lands in its
  folder checks it again. An export that is whole but holds bad records or shards (no dead letter marked
  `incomplete`) is failed as in the batch run: its good patches still count in the filters, its dead
  letters go to `dead_letter.jsonl`, and a clean rewrite replaces it.
- **Inference** per complete export, in one process: the same model handlers as the batch job
  (`transforms.inference._handler`, record-wise or large tiles) and the same raw-result format and
  fingerprint (`pipeline.io.raw`). A raw result whose fingerprint matches (a duplicate event, a restart
  after a drain, or `--reuse_raw`) is not inferred again.
- **Per grid**, a stateful DoFn holds only `{year: fingerprint}` and what it last filtered. When every
  asked year is in and differs from what was last filtered (a re-exported year has a new fingerprint),
  the grid's filter chain runs from the raw results in one process — the batch path's pure functions
  (`pipeline.method.tiles`: the classified patches of a raw result, tile stacks, temporal, halo strips,
  spatial + frequency) and its COG writer (`transforms.write`) — so its COGs are the batch run's, byte
  for byte. A duplicate changes nothing. A grid still incomplete `--series_timeout` seconds (processing
  time) after the job's start, a grid none of whose exports landed included, is written to
  `{output}/streaming/{grid}.json` (status `incomplete`, its missing years); with
  `--finish_incomplete` it is then filtered with what it has (missing years not observed, their COGs
  reported skipped). Each finished grid writes its statuses to the same file, and `{output}/summary.json`
  (the batch run's schema) is rebuilt from all of them each time.
- **Runners.** Dataflow (streaming, runs until drained; a drain stops the watch and fires no series
  timeout) and, locally, `LocalStreamingRunner` (Beam's BundleBasedDirectRunner, able to run the watch),
  which `mining-mapper run --streaming` stops once every grid is settled (`grids_settled`).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam import typehints
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from pipeline.config import RunConfig
from pipeline.elements import ClassifiedPatch, DeadLetter, decode_dead_letters, encode_dead_letters, ExportGeometry, ExportPatch, GridYearKey, GridYearRecords, GridYearStatus, TileKey
from pipeline.io.export_layout import export_dir_of
from pipeline.io.export_reader import read_export
from pipeline.errors import UserError
from pipeline.io.filesystem import absolute_uri, delete, exists, join, match, match_identity, publish_atomically, read_bytes, read_json, write_atomically
from pipeline.io.summary import RunSummary, now_utc
from pipeline.io.run_folder import DEAD_LETTER_NAME
from pipeline.io.raw import assemble_raw, decode_raw, encode_raw, export_identity, find_raw, raw_path, raw_root
from pipeline.method.tiles import halo_strips, patches_of_probability, spatial_frequency_tile, split_years, stack_tile_years, temporal_filter_tile
from transforms.consistency import _dead_letters
from transforms.inference import _handler
from transforms.job import output_tags, run_manifest, run_parameters, summary_path
from transforms.metrics import NAMESPACE
from transforms.raw import grid_year_fingerprint, model_digests
from transforms.write import DEAD_LETTER, GEOMETRY, MISSING, TILES, _WriteGridYear

STATUS_FOLDER = "streaming"
"""`{output}/streaming/{grid}.json`: each grid's state as the streaming job last saw it."""
PENDING = "streaming: its grid's series is not complete yet"
FAILED_FOLDER = "failed"
"""`{output}/streaming/failed/{grid}_{year}.tif|.jsonl`: an export that is whole but holds bad records or
shards — its good patches' raw result (used by the filters, as the batch run uses them; never under raw/, so
never re-used as good) and its dead letters. Removed when the export is written again and reads clean."""
FAILED_PREFIX = "failed:"
"""A failed export's entry in its grid's state: FAILED_PREFIX + the export's fingerprint."""


def failed_paths(output: str, grid: str, year: int) -> tuple[str, str]:
    """Where a failed export's partial raw result and its dead letters are kept."""
    base = join(output, STATUS_FOLDER, FAILED_FOLDER, f"{grid}_{year}")
    return base + ".tif", base + ".jsonl"


def write_streaming_summary(config: RunConfig, started: str, command_line: Sequence[str]) -> str:
    """Rebuild `{output}/summary.json` (the batch run's schema) and `{output}/dead_letter.jsonl` from every
    grid's status file and every failed export's dead letters: grid-years of grids not filtered yet are
    `skipped` with the reason PENDING (or the grid's missing years). Called after each grid's status file is
    written, so the last call sees every grid finished before it; returns the summary's path."""
    found: dict[tuple[str, int], GridYearStatus] = {}
    waiting: dict[str, str] = {}
    letters: list[DeadLetter] = []
    for path, _ in match(join(config.output, STATUS_FOLDER, FAILED_FOLDER, "*.jsonl")):
        letters += decode_dead_letters(read_bytes(path))
    for path, _ in match(join(config.output, STATUS_FOLDER, "*.json")):
        record = read_json(path)
        letters += [DeadLetter(**entry) for entry in record.get("refused", [])]
        for entry in record["grid_years"]:
            status = GridYearStatus.from_dict(entry)
            found[(status.grid, status.year)] = status
        if record["missing_years"] and not record["grid_years"]:
            waiting[record["grid"]] = f"streaming: series timeout passed, missing years {record['missing_years']}"
    grid_years = [found.get((grid, year)) or GridYearStatus(grid, year, "skipped", reason=waiting.get(grid, PENDING))
                  for grid, year in config.grid_years()]
    summary = RunSummary(command="run", output=absolute_uri(config.output), parameters={**run_parameters(config), "streaming": True},
                         grid_years=grid_years, started=started, finished=now_utc(), command_line=list(command_line),
                         dead_letters=len(letters), outputs=run_manifest(config.output, grid_years))
    publish_atomically({summary_path(config): summary.to_json(),
                        join(config.output, DEAD_LETTER_NAME): encode_dead_letters(letters)})
    return summary_path(config)


def grid_status_path(output: str, grid: str) -> str:
    """Where the streaming job records a grid's state: `{output}/streaming/{grid}.json`."""
    return join(output, STATUS_FOLDER, f"{grid}.json")


def grid_year_of_path(exports_root: str, path: str) -> GridYearKey | None:
    """The (grid, year) of a file `{exports}/{grid}/{year}/name`, or None for a file outside that layout."""
    root = exports_root.rstrip("/") + "/"
    if not path.startswith(root):
        return None
    parts = path[len(root):].split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return GridYearKey(parts[0], int(parts[1]))


class _InferCompleteExportFn(beam.DoFn):
    """GridYearKey (a file event) → (grid, (year, fingerprint)) once the export is complete and its raw
    result is written (or already there with that fingerprint)."""

    def __init__(self, config: RunConfig, digests: Mapping[str, str]):
        super().__init__()
        self._config = config
        self._digests = dict(digests)
        self._handlers: dict = {}
        self._models: dict = {}
        self._inferred = Metrics.counter(NAMESPACE, "streaming_grid_years_inferred")
        self._reused = Metrics.counter(NAMESPACE, "streaming_grid_years_reused")
        self._incomplete = Metrics.counter(NAMESPACE, "streaming_exports_incomplete")
        self._failed = Metrics.counter(NAMESPACE, "streaming_exports_failed")

    def _classify(self, grid: str, patches: list[ExportPatch], geometry: ExportGeometry) -> list[ClassifiedPatch]:
        route = self._config.route_for(grid)
        if route.name not in self._handlers:
            handler = _handler(route, self._config)
            self._handlers[route.name] = handler
            self._models[route.name] = handler.load_model()
        handler, model = self._handlers[route.name], self._models[route.name]
        if self._config.large_tiles:
            return [p for result in handler.run_inference([GridYearRecords(geometry, tuple(patches))], model) for p in result]
        return list(handler.run_inference(patches, model))

    def process(self, key: GridYearKey):
        """Infer one export if it is complete and its raw result is not there yet; emit its fingerprint."""
        fingerprint_ = self._raw_result(key)
        if fingerprint_ is not None:
            yield key.grid, (key.year, fingerprint_)

    def _raw_result(self, key: GridYearKey) -> str | None:
        """The fingerprint of the export's raw result, written now if need be; None while it is incomplete.

        An export that is whole (nothing `incomplete` among its dead letters) but holds bad records or shards
        is failed, as in the batch run: its good patches are inferred and kept apart with its dead letters
        (`failed_paths`), and its entry is FAILED_PREFIX + fingerprint."""
        config = self._config
        grid, year = key
        identity = export_identity(config.exports, grid, year)
        if not any(name.endswith("mixer.json") for name, _, _ in identity):
            self._incomplete.inc()
            return None
        expected = grid_year_fingerprint(config, self._digests, grid, year, identity)
        target = raw_path(raw_root(config.output), grid, year)
        failed_raw, failed_letters = failed_paths(config.output, grid, year)
        found, _ = find_raw([target, config.reuse_raw and raw_path(config.reuse_raw, grid, year)], grid, year, expected, keep_in=target)
        if found is not None:
            self._reused.inc()
            return expected
        if find_raw([failed_raw], grid, year, FAILED_PREFIX + expected)[0] is not None:
            return FAILED_PREFIX + expected  # this failed export again: nothing new
        patches, geometry, letters, missing = [], None, [], False
        for event in read_export(export_dir_of(config.exports, grid, year), grid, year, config.bands, config.export_nodata):
            if isinstance(event, ExportPatch):
                patches.append(event)
            elif isinstance(event, ExportGeometry):
                geometry = event
            elif isinstance(event, DeadLetter):
                letters.append(event)
            else:
                missing = True
        if missing or geometry is None or any(letter.incomplete for letter in letters):
            self._incomplete.inc()
            if geometry is None and letters:  # an unreadable mixer: said now, waited for all the same
                logging.getLogger(__name__).warning("streaming: %s", "; ".join(f"{d.file}: {d.reason}" for d in letters))
            return None  # the next file landing in this folder checks it again
        classified = self._classify(grid, patches, geometry) if patches else []
        probability = assemble_raw(geometry, classified)
        if letters:
            write_atomically(failed_letters, encode_dead_letters(letters))
            write_atomically(failed_raw, encode_raw(geometry, probability, FAILED_PREFIX + expected))
            self._failed.inc()
            return FAILED_PREFIX + expected
        write_atomically(target, encode_raw(geometry, probability, expected))
        delete([path for path in (failed_raw, failed_letters) if exists(path)])  # it failed before; now it reads clean
        self._inferred.inc()
        return expected


def filter_grid(grid: str, raw: Mapping[int, tuple[ExportGeometry, object]], config: RunConfig, tags: Mapping[str, str],
                missing_reason: str = "no export", dead_letters: Mapping[int, Sequence[DeadLetter]] | None = None,
                failed: Mapping[int, Sequence[DeadLetter]] | None = None) -> list[GridYearStatus]:
    """Run a whole grid's filter chain from its raw results ({year: (geometry, probability)}) in this process
    and write its COGs: the batch job's steps (pipeline.method.tiles, transforms.write) in the same order, so
    the COGs are byte-identical. Asked years without a raw result are not observed and reported skipped;
    years with `dead_letters` (an export refused by the grid's consistency check) are not observed either and
    reported failed; `failed` years (bad records or shards) are reported failed with their dead letters while
    their good patches still count in the filters — all as in the batch run."""
    params = config.filter_params
    dead_letters = dict(dead_letters or {})
    failed = dict(failed or {})
    by_tile: dict[TileKey, list[ClassifiedPatch]] = {}
    for year, (geometry, probability) in sorted(raw.items()):
        if year in dead_letters:
            continue
        for patch in patches_of_probability(geometry, probability, config.threshold):
            by_tile.setdefault(TileKey.of(patch), []).append(patch)
    series = []
    for key, patches in by_tile.items():
        tile = stack_tile_years(grid, key.row, key.col, config.years, patches, patches[0].classes.shape[0], config.probability_band)
        series.append(temporal_filter_tile(tile, params, config.origin_band))
    spatial = config.spatial_filter == "local"
    halo = params.spatial_halo if spatial else 0
    strips: dict[tuple[int, int], list] = {}
    for tile in series:
        for (row, col), strip in halo_strips(tile, halo):
            strips.setdefault((row, col), []).append(strip)
    year_tiles: dict[int, list] = {}
    for tile in series:
        filtered = spatial_frequency_tile(tile, strips.get((tile.row, tile.col), []), params, spatial)
        for (_, year), year_tile in split_years(filtered):
            year_tiles.setdefault(year, []).append(year_tile)
    writer = _WriteGridYear(output=config.output, years=config.years, tags=tags, with_probability=config.probability_band,
                            with_origin=config.origin_band)
    statuses = []
    for year in config.years:
        parts = {TILES: year_tiles.get(year, []) if year in raw else [], GEOMETRY: [raw[year][0]] if year in raw else [],
                 MISSING: [], DEAD_LETTER: [*dead_letters.get(year, ()), *failed.get(year, ())]}
        for status in writer.process(((grid, year), parts)):
            if status.status == "skipped":
                status = GridYearStatus(grid, year, "skipped", reason=missing_reason)
            statuses.append(status)
    return statuses


_YEARS = ReadModifyWriteStateSpec("years", PickleCoder())
"""A grid's state: {year: fingerprint} of the raw results in (never rasters)."""
_FILTERED = ReadModifyWriteStateSpec("filtered", PickleCoder())
"""The {year: fingerprint} the grid's COGs were last made from."""
_DEADLINE = ReadModifyWriteStateSpec("deadline", PickleCoder())
"""When the grid's series timeout was set for (processing time), so that it is set once."""
_TIMEOUT = TimerSpec("series_timeout", TimeDomain.REAL_TIME)
_YEARS_PARAM, _FILTERED_PARAM, _TIMEOUT_PARAM = beam.DoFn.StateParam(_YEARS), beam.DoFn.StateParam(_FILTERED), beam.DoFn.TimerParam(_TIMEOUT)
_DEADLINE_PARAM = beam.DoFn.StateParam(_DEADLINE)
SETTLED = ("filtered", "finished incomplete", "incomplete")
"""A grid's final states in its status file: filtered, or reported (and maybe finished) at its series timeout."""


class _GridSeriesFn(beam.DoFn):
    """(grid, (year, fingerprint)) → the grid's GridYearStatus once its series is complete (or timed out).

    (grid, None) is the series start (`StreamingGrids(start_every_grid=True)`): it only sets the grid's
    timeout, so that a grid none of whose exports ever lands is reported too.

    The series timeout is a processing-time timer: wall-clock seconds, as users set it, and a drained job
    does not fire it (an event-time timer would, finishing every incomplete grid at the drain). `clock`
    is the processing time the timer is set from (tests pass TestStream's, which starts at 0)."""

    def __init__(self, config: RunConfig, series_timeout: float, finish_incomplete: bool, started: str, command_line: Sequence[str],
                 clock=None):
        super().__init__()
        self._clock = clock
        self._config = config
        self._started = started
        self._command_line = tuple(command_line)
        self._timeout = float(series_timeout)
        self._finish_incomplete = finish_incomplete
        self._tags = output_tags(config)
        self._grids_filtered = Metrics.counter(NAMESPACE, "streaming_grids_filtered")
        self._duplicates = Metrics.counter(NAMESPACE, "streaming_duplicates")

    def process(self, element, years=_YEARS_PARAM, filtered=_FILTERED_PARAM, timeout=_TIMEOUT_PARAM, deadline=_DEADLINE_PARAM):
        """Record the year's fingerprint; filter the grid when every asked year is in and something changed.
        The grid's first event (its series start, or else its first export) sets its series timeout."""
        grid, event = element
        if deadline.read() is None:
            now = Timestamp.of(self._clock()) if self._clock else Timestamp.now()
            deadline.write(now + Duration(seconds=self._timeout))
            timeout.set(now + Duration(seconds=self._timeout))
        if event is None:
            return
        year, fingerprint_ = event
        if year not in self._config.years:
            return
        current = dict(years.read() or {})
        if current.get(year) == fingerprint_:
            self._duplicates.inc()
            return
        current[year] = fingerprint_
        years.write(current)
        if len(current) == len(self._config.years) and current != filtered.read():
            yield from self._finish(grid, current, filtered)

    @on_timer(_TIMEOUT)
    def on_timeout(self, key=beam.DoFn.KeyParam, years=_YEARS_PARAM, filtered=_FILTERED_PARAM):
        """Report a grid whose series is still incomplete; finish it with what it has when asked to."""
        current = dict(years.read() or {})
        if len(current) == len(self._config.years):
            return
        missing = [y for y in self._config.years if y not in current]
        self._record(key, "incomplete", current, missing, [])
        if self._finish_incomplete and current != filtered.read():
            yield from self._finish(key, current, filtered)

    def _finish(self, grid: str, current: dict[int, str], filtered) -> Iterable[GridYearStatus]:
        config = self._config
        root = raw_root(config.output)
        raw, failed = {}, {}
        for year, fingerprint_ in current.items():
            source = raw_path(root, grid, year)
            if fingerprint_.startswith(FAILED_PREFIX):
                source, letters = failed_paths(config.output, grid, year)
                failed[year] = decode_dead_letters(read_bytes(letters))
            raw[year] = decode_raw(read_bytes(source), source, grid, year, fingerprint_)
        missing = [y for y in config.years if y not in current]
        refused: dict[int, list[DeadLetter]] = {}  # the batch run's check of a grid's mixers against each other
        for key, letter in _dead_letters((grid, [geometry for geometry, _ in raw.values()]), config.exports):
            refused.setdefault(key.year, []).append(letter)
        statuses = filter_grid(grid, raw, config, self._tags, "no export arrived before the series timeout", refused, failed)
        filtered.write(current)
        self._grids_filtered.inc()
        self._record(grid, "filtered" if not missing else "finished incomplete", current, missing, statuses,
                     [letter for letters in refused.values() for letter in letters])
        yield from statuses

    def _record(self, grid: str, state: str, current: Mapping[int, str], missing: Sequence[int], statuses: Sequence[GridYearStatus],
                refused: Sequence[DeadLetter] = ()) -> None:
        record = {"grid": grid, "state": state, "years_in": {str(y): f for y, f in sorted(current.items())},
                  "missing_years": list(missing), "grid_years": [s.to_record() for s in statuses],
                  "refused": [letter.to_record() for letter in refused], "updated": time.time()}
        write_atomically(grid_status_path(self._config.output, grid), (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        write_streaming_summary(self._config, self._started, self._command_line)


class StreamingGrids(beam.PTransform):
    """GridYearKey file events → GridYearStatus of every grid-year written as grids complete; each grid's
    status file and the run's summary.json are rewritten as grids complete or time out."""

    def __init__(self, *, config: RunConfig, series_timeout: float, finish_incomplete: bool, started: str | None = None,
                 command_line: Sequence[str] = (), start_every_grid: bool = False, clock=None):
        """`start_every_grid`: every asked grid's series timeout runs from the job's start, so that a grid
        none of whose exports lands is reported too (else from the grid's first export). `clock`: the
        processing time the timeouts are set from (tests: TestStream's, which starts at 0)."""
        super().__init__()
        self._config = config
        self._timeout = series_timeout
        self._finish_incomplete = finish_incomplete
        self._started = started or now_utc()
        self._command_line = tuple(command_line)
        self._start_every_grid = start_every_grid
        self._clock = clock

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        config = self._config
        asked = set(config.grid_years())
        per_grid = typehints.KV[str, typehints.Optional[typehints.Tuple[int, str]]]
        inferred = (
            events
            | "Asked grid-years" >> beam.Filter(lambda key: (key.grid, key.year) in asked)
            | "Infer complete exports" >> beam.ParDo(_InferCompleteExportFn(config, model_digests(config))).with_output_types(per_grid)
        )
        if self._start_every_grid:
            starts = (
                events.pipeline
                | "Grids asked" >> beam.Create(sorted(config.grids))
                | "Series start" >> beam.Map(lambda grid: (grid, None)).with_output_types(per_grid)
            )
            inferred = (inferred, starts) | "With series starts" >> beam.Flatten()
        return inferred | "Per grid" >> beam.ParDo(
            _GridSeriesFn(config, self._timeout, self._finish_incomplete, self._started, self._command_line, self._clock))


def grids_settled(output: str, grids: Sequence[str], since: float = 0.0) -> dict[str, str]:
    """The grids whose status file, written at or after `since` (seconds since the epoch: not an earlier run's),
    says they are settled (SETTLED), with their state; what a local streaming run waits for before it stops."""
    settled = {}
    for grid in grids:
        path = grid_status_path(output, grid)
        record = read_json(path) if exists(path) else {}
        state = record.get("state") if record.get("updated", 0.0) >= since else None
        if state in SETTLED:
            settled[grid] = state
    return settled


_SEEN_PARAM = beam.DoFn.StateParam(ReadModifyWriteStateSpec("mtime", PickleCoder()))
"""A file's state in the watch: the modification time it was last let through with."""


class _FirstSightFn(beam.DoFn):
    """(path, (GridYearKey, mtime)) → the GridYearKey the first time the file is seen with that modification
    time. The watch emits only what changed since its own last listing, but that memory is a cache (a watch
    resumed on another worker, or after a restart, emits every file again); this keyed state per file is
    what lets each (path, mtime) through once."""

    def process(self, element, seen=_SEEN_PARAM):
        """Emit the file's grid-year once per modification time."""
        _, (key, mtime) = element
        if seen.read() == mtime:
            return
        seen.write(mtime)
        yield key


FOREVER = 2 ** 62
"""The end of a watch's poll range (milliseconds since the epoch): never reached."""


class _PollTracker(RestrictionTracker):
    """The restriction of a watch: [next poll time, FOREVER) in milliseconds since the epoch.

    Each call of the watch claims its own time, then checkpoints: the residual starts just after it. It
    splits only to checkpoint after the claim (one watcher, never parallel polls) and returns the same split
    if asked again (Beam's local runner asks from its timer thread and may ask twice)."""

    def __init__(self, restriction: OffsetRange):
        self._range = restriction
        self._claimed: int | None = None
        self._split: tuple[OffsetRange, OffsetRange] | None = None
        self.checkpointed = threading.Event()

    def current_restriction(self) -> OffsetRange:
        """The polls this call may still claim."""
        return self._range

    def try_claim(self, position: int) -> bool:
        """Claim one poll time: once per call, within the range, before any checkpoint."""
        if self._split is not None or self._claimed is not None or not self._range.start <= position < self._range.stop:
            return False
        self._claimed = position
        return True

    def try_split(self, fraction_of_remainder: float):
        """Checkpoint after the claimed poll (fraction 0 only; nothing before a claim); idempotent."""
        if self._split is None:
            if self._claimed is None or fraction_of_remainder != 0:
                return None
            self._split = (OffsetRange(self._range.start, self._claimed + 1), OffsetRange(self._claimed + 1, self._range.stop))
            self._range = self._split[0]
            self.checkpointed.set()
        return self._split

    def check_done(self) -> None:
        """Nothing to check: a call claims one poll and checkpoints the rest, or claims nothing and ends."""

    def current_progress(self) -> RestrictionProgress:
        """No fraction of an endless watch is done."""
        return RestrictionProgress(completed=0.0, remaining=1.0)

    def is_bounded(self) -> bool:
        """A watch is unbounded."""
        return False


def _poll_range(restriction) -> OffsetRange:
    """The OffsetRange of a watch's restriction. Beam's local runner hands a checkpoint back as the
    invoker's list of SplitResultResidual (value ((element, (restriction, watermark state)), size))
    instead of the restriction itself; this takes the restriction out of it."""
    if isinstance(restriction, list | tuple):
        return restriction[0].residual_value.value[0][1][0]
    return restriction


class _PollRestrictions(RestrictionProvider):
    """One unsplittable, endless range of poll times per watched folder; truncated to nothing on a drain."""

    def initial_restriction(self, element) -> OffsetRange:
        """Every poll time from the epoch on."""
        return OffsetRange(0, FOREVER)

    def create_tracker(self, restriction) -> _PollTracker:
        """The tracker that claims one poll per call."""
        return _PollTracker(_poll_range(restriction))

    def split(self, element, restriction):
        """Never split up front: one watcher."""
        yield _poll_range(restriction)

    def restriction_size(self, element, restriction) -> int:
        """One unit of work per watch."""
        return 1

    def truncate(self, element, restriction):
        """A drained job stops watching."""
        return None


_POLL_RESTRICTIONS = beam.DoFn.RestrictionParam(_PollRestrictions())
_POLL_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())
_LOCAL_CHECKPOINT_WAIT = 5.0
"""Seconds a local call waits at most for Beam's local runner to checkpoint it (LocalStreamingRunner: LOCAL_CHECKPOINT_SECONDS)."""


@beam.DoFn.unbounded_per_element()
class _PollExportsFn(beam.DoFn):
    """exports root → (path, (GridYearKey, mtime)) of every file under `{exports}/*/*/` at each poll.

    A splittable DoFn: each call claims its time, lists the exports when a poll is due (`interval` seconds
    after this instance's last listing), emits the files new or changed since that listing, and
    checkpoints the rest of the watch. On Dataflow the runner resumes it `interval` seconds later
    (`defer_remainder`). Beam's local BundleBasedDirectRunner honours neither that nor a
    ProcessContinuation (fileio.MatchContinuously's PeriodicImpulse fails there): it checkpoints a call
    still running after LOCAL_CHECKPOINT_SECONDS, from a timer thread, and resumes it at once. So locally
    (`local=True`) a call returns only once that checkpoint is taken, and most calls list nothing.
    A listing that fails (a network blip) is logged and retried at the next poll."""

    def __init__(self, *, interval: float, local: bool, stop_at: float | None = None):
        super().__init__()
        self._interval = float(interval)
        self._local = local
        self._stop_at = stop_at
        self._seen: dict[str, float] = {}
        self._listed_at = 0.0

    def setup(self) -> None:
        """What this instance last listed, {path: mtime}, and when: a poll emits only what changed since (a
        cache, so it starts empty wherever the watch resumes; the per-file state behind it has the last word)."""
        self._seen = {}
        self._listed_at = 0.0

    def process(self, exports: str, tracker=_POLL_RESTRICTIONS, estimator=_POLL_WATERMARK):
        """One call: claim its time, list and emit what changed if a poll is due, checkpoint the rest."""
        first = tracker.current_restriction().start
        now = time.time()
        if self._stop_at is not None and now >= self._stop_at:
            return []  # claims nothing: the watch ends
        if not tracker.try_claim(max(int(now * 1000), first)):
            return []
        files = []
        if now - self._listed_at >= self._interval:
            self._listed_at = now
            estimator.set_watermark(Timestamp.of(now))
            files = self._changed_files(exports, now)
        if self._local:  # Beam's local runner checkpoints this call from its timer thread, soon
            tracker_ = getattr(tracker, "_threadsafe_restriction_tracker", tracker)
            inner = getattr(tracker_, "_restriction_tracker", tracker_)
            inner.checkpointed.wait(_LOCAL_CHECKPOINT_WAIT)
        else:
            tracker.defer_remainder(Duration(seconds=self._interval))
        return files

    def _changed_files(self, exports: str, now: float) -> list:
        """(path, (GridYearKey, mtime)) of every export file new or changed since this instance's last listing."""
        try:
            listed = {path: mtime for path, _, mtime in match_identity(join(exports, "*", "*", "*"))}
        except UserError as error:
            logging.getLogger(__name__).warning("streaming: listing the exports failed, retried at the next poll: %s", error)
            return []
        files = [TimestampedValue((path, (key, mtime)), now) for path, mtime in sorted(listed.items())
                 if self._seen.get(path) != mtime for key in [grid_year_of_path(exports, path)] if key is not None]
        self._seen = listed
        return files


LOCAL_CHECKPOINT_SECONDS = 0.1
"""How long Beam's local runner lets a splittable DoFn call run before it checkpoints it (Beam: 1 s)."""


class LocalStreamingRunner(BundleBasedDirectRunner):
    """Beam's BundleBasedDirectRunner (the local runner with a streaming mode), able to run the watch.

    - In streaming mode that runner replaces GroupByKeys with its streaming kind before the splittable-DoFn
      expansion adds one, and then refuses the pipeline ("… ProcessKeyedElements/GroupByKey … was not
      replaced as expected"). This one applies the splittable-DoFn overrides first, so that the streaming
      ones see every GroupByKey.
    - That runner runs everything on one thread and checkpoints a splittable DoFn call after it has run for
      a second, so a poll held the thread a second at a time; this one checkpoints after
      LOCAL_CHECKPOINT_SECONDS (a class setting of Beam's evaluator, set for this process: only splittable
      DoFns on that runner read it)."""

    def run_pipeline(self, pipeline, options):
        """Expand the splittable DoFns, then run as Beam's runner does."""
        from apache_beam.runners.direct import transform_evaluator
        from apache_beam.runners.direct.sdf_direct_runner import ProcessKeyedElementsViaKeyedWorkItemsOverride, SplittableParDoOverride

        pipeline.replace_all([SplittableParDoOverride(), ProcessKeyedElementsViaKeyedWorkItemsOverride()])
        transform_evaluator._ProcessElementsEvaluator.DEFAULT_MAX_DURATION = LOCAL_CHECKPOINT_SECONDS
        return super().run_pipeline(pipeline, options)


class WatchExports(beam.PTransform):
    """PBegin → GridYearKey for every new or re-written file under `{exports}/*/*/`.

    A splittable DoFn lists the exports every `interval` seconds (`_PollExportsFn`) and a keyed state per
    file (`_FirstSightFn`) lets each (path, mtime) through once. Our own watcher rather than
    fileio.MatchContinuously, which Beam's local streaming runner cannot run (its PeriodicImpulse fails
    there, and its Watch emits nothing): so the watcher that runs on Dataflow is the one the local smoke
    test runs. A repeat is harmless anyway: a grid-year whose raw result already has the export's
    fingerprint is not inferred again, and a year whose fingerprint the grid's state holds changes nothing.
    `local` picks how a poll waits (see `_PollExportsFn`); `stop_after` (seconds) ends the watch."""

    def __init__(self, *, exports: str, interval: float = 60.0, local: bool = False, stop_after: float | None = None):
        super().__init__()
        self._exports = exports.rstrip("/")
        self._interval = interval
        self._local = local
        self._stop_after = stop_after

    def expand(self, pbegin) -> beam.PCollection:
        import time

        stop_at = None if self._stop_after is None else time.time() + self._stop_after
        return (
            pbegin
            | "Exports root" >> beam.Create([self._exports])
            | "Poll" >> beam.ParDo(_PollExportsFn(interval=self._interval, local=self._local, stop_at=stop_at)).with_output_types(
                typehints.KV[str, typehints.Tuple[GridYearKey, float]])
            | "New files only" >> beam.ParDo(_FirstSightFn()).with_output_types(GridYearKey)
        )


def grid_year_of_notification(exports_root: str, attributes: Mapping[str, str]) -> GridYearKey | None:
    """The (grid, year) of a Cloud Storage notification's object, when it is a new object (OBJECT_FINALIZE)
    under `{exports}/{grid}/{year}/`; None for any other event or object."""
    if attributes.get("eventType") != "OBJECT_FINALIZE" or not attributes.get("bucketId") or not attributes.get("objectId"):
        return None
    return grid_year_of_path(exports_root, f"gs://{attributes['bucketId']}/{attributes['objectId']}")


def _listed_once(exports: str) -> list[GridYearKey]:
    """One GridYearKey per export folder holding files now: what a job fed by notifications starts from."""
    found = {grid_year_of_path(exports, path) for path, _, _ in match_identity(join(exports, "*", "*", "*"))}
    return sorted(key for key in found if key is not None)


class GridYearsOfNotifications(beam.PTransform):
    """PubsubMessage (a Cloud Storage notification, attributes read) → GridYearKey of each new export object."""

    def __init__(self, *, exports: str):
        super().__init__()
        self._exports = exports.rstrip("/")

    def expand(self, messages: beam.PCollection) -> beam.PCollection:
        exports = self._exports
        return messages | "Grid-year of object" >> beam.FlatMap(
            lambda message: [k for k in [grid_year_of_notification(exports, message.attributes or {})] if k]
        ).with_output_types(GridYearKey)


class ExportNotifications(beam.PTransform):
    """PBegin → GridYearKey for every new object under `{exports}/*/*/`, from a Pub/Sub subscription to the
    bucket's Cloud Storage notifications (the issue's option to listing): an event as soon as Cloud Storage
    has the object, and no listing of tens of thousands of objects a minute. What is already there when the
    job starts (a restart after a drain) is listed once. A notification delivered twice is harmless, as any
    repeated event (`WatchExports`)."""

    def __init__(self, *, exports: str, subscription: str):
        super().__init__()
        self._exports = exports.rstrip("/")
        self._subscription = subscription

    def expand(self, pbegin) -> beam.PCollection:
        from apache_beam.io.gcp.pubsub import ReadFromPubSub

        exports = self._exports
        notified = (
            pbegin
            | "Read notifications" >> ReadFromPubSub(subscription=self._subscription, with_attributes=True)
            | "Grid-years notified" >> GridYearsOfNotifications(exports=exports)
        )
        present = (
            pbegin
            | "Exports root" >> beam.Create([exports])
            | "List once" >> beam.FlatMap(_listed_once).with_output_types(GridYearKey)
        )
        return (notified, present) | "Notified and present" >> beam.Flatten()


class StreamingJob(beam.PTransform):
    """PBegin → GridYearStatus as grids complete: the whole streaming job, as `MiningMapperJob` is the batch one.

    Its events come from the exports' Cloud Storage notifications (`exports_subscription`) or from
    watching the exports folder every `watch_interval` seconds (`local`: Beam's local runner, see
    `_PollExportsFn`); every asked grid's series timeout runs from the job's start."""

    def __init__(self, *, config: RunConfig, series_timeout: float, finish_incomplete: bool, watch_interval: float,
                 exports_subscription: str = "", local: bool = False, started: str | None = None, command_line: Sequence[str] = ()):
        super().__init__()
        self._config = config
        self._series_timeout = series_timeout
        self._finish_incomplete = finish_incomplete
        self._watch_interval = watch_interval
        self._subscription = exports_subscription
        self._local = local
        self._started = started
        self._command_line = tuple(command_line)

    def expand(self, pbegin) -> beam.PCollection:
        exports = self._config.exports
        if self._subscription:  # Beam's local runner reads Pub/Sub with the client library (or its emulator)
            events = pbegin | "Export notifications" >> ExportNotifications(exports=exports, subscription=self._subscription)
        else:
            events = pbegin | "Watch exports" >> WatchExports(exports=exports, interval=self._watch_interval, local=self._local)
        return events | "Streaming grids" >> StreamingGrids(
            config=self._config, series_timeout=self._series_timeout, finish_incomplete=self._finish_incomplete,
            started=self._started, command_line=self._command_line, start_every_grid=True)
