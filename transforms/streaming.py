"""The streaming job (`mining-mapper run --streaming`): infer each export the moment it is complete, filter
each grid the moment its series is complete (issue 17).

    file events under --exports → per (grid, year): read + infer once complete, raw result written
                                → per grid (state: year → fingerprint): filter chain + COGs when complete

- **Watching.** `fileio.MatchContinuously` on `{exports}/*/*/*` (every file, updated ones too): each new
  or re-written file of an export is an event for its (grid, year). Earth Engine writes an export's
  shards and its mixer in no promised order, and the mixer gives `totalPatches` but not the shard list,
  so an export **counts as complete when its mixer is present and reading it gives `totalPatches` good
  records and no dead letter** (`read_export` reports a record-count mismatch as a dead letter). An
  incomplete export is dropped quietly; the next file that lands in its folder checks it again. An
  export whose records are bad never completes: its grid is reported by the series timeout.
- **Inference** per complete export, in one process: the same model handlers as the batch job
  (`transforms.inference._handler`, record-wise or large tiles) and the same raw-result format and
  fingerprint (`pipeline.io.raw`). A raw result whose fingerprint matches (a duplicate event, a restart
  after a drain, or `--reuse_raw`) is not inferred again.
- **Per grid**, a stateful DoFn holds only `{year: fingerprint}` and what it last filtered. When every
  asked year is in and differs from what was last filtered (a re-exported year has a new fingerprint),
  the grid's filter chain runs from the raw results in one process — the batch path's pure functions
  (`pipeline.method.tiles`: the classified patches of a raw result, tile stacks, temporal, halo strips,
  spatial + frequency) and its COG writer (`transforms.write`) — so its COGs are the batch run's, byte
  for byte. A duplicate changes nothing. `--series_timeout` seconds (event time) after a grid's first
  export, a grid still incomplete is written to `{output}/streaming/{grid}.json` (status `incomplete`,
  its missing years); with `--finish_incomplete` it is then filtered with what it has (missing years
  not observed, their COGs reported skipped). Each finished grid writes its statuses to the same file,
  and `{output}/summary.json` (the batch run's schema) is rebuilt from all of them each time.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam import typehints
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration

from pipeline.config import RunConfig
from pipeline.elements import ClassifiedPatch, DeadLetter, ExportGeometry, ExportPatch, GridYearKey, GridYearRecords, GridYearStatus, TileKey
from pipeline.io.export_layout import export_dir_of
from pipeline.io.export_reader import read_export
from pipeline.io.filesystem import absolute_uri, join, match, publish_atomically, read_bytes, read_json, write_atomically
from pipeline.io.summary import RunSummary, now_utc
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


def write_streaming_summary(config: RunConfig, started: str, command_line: Sequence[str]) -> str:
    """Rebuild `{output}/summary.json` (the batch run's schema) from every grid's status file: grid-years of
    grids not filtered yet are `skipped` with the reason PENDING (or the grid's missing years). Called after
    each grid's status file is written, so the last call sees every grid finished before it; returns its path."""
    found: dict[tuple[str, int], GridYearStatus] = {}
    waiting: dict[str, str] = {}
    for path, _ in match(join(config.output, STATUS_FOLDER, "*.json")):
        record = read_json(path)
        for entry in record["grid_years"]:
            status = GridYearStatus.from_dict(entry)
            found[(status.grid, status.year)] = status
        if record["missing_years"] and not record["grid_years"]:
            waiting[record["grid"]] = f"streaming: series timeout passed, missing years {record['missing_years']}"
    grid_years = [found.get((grid, year)) or GridYearStatus(grid, year, "skipped", reason=waiting.get(grid, PENDING))
                  for grid, year in config.grid_years()]
    summary = RunSummary(command="run", output=absolute_uri(config.output), parameters={**run_parameters(config), "streaming": True},
                         grid_years=grid_years, started=started, finished=now_utc(), command_line=list(command_line),
                         outputs=run_manifest(config.output, grid_years))
    publish_atomically({summary_path(config): summary.to_json()})
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
        """The fingerprint of the export's raw result, written now if need be; None while it is incomplete."""
        config = self._config
        grid, year = key
        identity = export_identity(config.exports, grid, year)
        if not any(name.endswith("mixer.json") for name, _, _ in identity):
            self._incomplete.inc()
            return None
        expected = grid_year_fingerprint(config, self._digests, grid, year, identity)
        target = raw_path(raw_root(config.output), grid, year)
        found, _ = find_raw([target, config.reuse_raw and raw_path(config.reuse_raw, grid, year)], grid, year, expected, keep_in=target)
        if found is not None:
            self._reused.inc()
            return expected
        patches, geometry, dead = [], None, False
        for event in read_export(export_dir_of(config.exports, grid, year), grid, year, config.bands, config.export_nodata):
            if isinstance(event, ExportPatch):
                patches.append(event)
            elif isinstance(event, ExportGeometry):
                geometry = event
            else:  # a dead letter (a shard still missing shows as a record-count mismatch) or a missing export
                dead = True
        if dead or geometry is None or len(patches) != geometry.total_patches:
            self._incomplete.inc()
            return None  # the next file landing in this folder checks it again
        classified = self._classify(grid, patches, geometry)
        write_atomically(target, encode_raw(geometry, assemble_raw(geometry, classified), expected))
        self._inferred.inc()
        return expected


def filter_grid(grid: str, raw: Mapping[int, tuple[ExportGeometry, object]], config: RunConfig, tags: Mapping[str, str],
                missing_reason: str = "no export", dead_letters: Mapping[int, Sequence[DeadLetter]] | None = None) -> list[GridYearStatus]:
    """Run a whole grid's filter chain from its raw results ({year: (geometry, probability)}) in this process
    and write its COGs: the batch job's steps (pipeline.method.tiles, transforms.write) in the same order, so
    the COGs are byte-identical. Asked years without a raw result are not observed and reported skipped;
    years with dead letters (an export refused by the grid's consistency check) are not observed either and
    reported failed, as in the batch run."""
    params = config.filter_params
    dead_letters = dict(dead_letters or {})
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
                 MISSING: [], DEAD_LETTER: list(dead_letters.get(year, ()))}
        for status in writer.process(((grid, year), parts)):
            if status.status == "skipped":
                status = GridYearStatus(grid, year, "skipped", reason=missing_reason)
            statuses.append(status)
    return statuses


_YEARS = ReadModifyWriteStateSpec("years", PickleCoder())
"""A grid's state: {year: fingerprint} of the raw results in (never rasters)."""
_FILTERED = ReadModifyWriteStateSpec("filtered", PickleCoder())
"""The {year: fingerprint} the grid's COGs were last made from."""
_TIMEOUT = TimerSpec("series_timeout", TimeDomain.WATERMARK)
_YEARS_PARAM, _FILTERED_PARAM, _TIMEOUT_PARAM = beam.DoFn.StateParam(_YEARS), beam.DoFn.StateParam(_FILTERED), beam.DoFn.TimerParam(_TIMEOUT)


class _GridSeriesFn(beam.DoFn):
    """(grid, (year, fingerprint)) → the grid's GridYearStatus once its series is complete (or timed out)."""

    def __init__(self, config: RunConfig, series_timeout: float, finish_incomplete: bool, started: str, command_line: Sequence[str]):
        super().__init__()
        self._config = config
        self._started = started
        self._command_line = tuple(command_line)
        self._timeout = float(series_timeout)
        self._finish_incomplete = finish_incomplete
        self._tags = output_tags(config)
        self._grids_filtered = Metrics.counter(NAMESPACE, "streaming_grids_filtered")
        self._duplicates = Metrics.counter(NAMESPACE, "streaming_duplicates")

    def process(self, element, timestamp=beam.DoFn.TimestampParam, years=_YEARS_PARAM, filtered=_FILTERED_PARAM, timeout=_TIMEOUT_PARAM):
        """Record the year's fingerprint; filter the grid when every asked year is in and something changed."""
        grid, (year, fingerprint_) = element
        if year not in self._config.years:
            return
        current = dict(years.read() or {})
        if current.get(year) == fingerprint_:
            self._duplicates.inc()
            return
        if not current:
            timeout.set(timestamp + Duration(seconds=self._timeout))
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
        root = raw_root(self._config.output)
        raw = {}
        for year, fingerprint_ in current.items():
            source = raw_path(root, grid, year)
            raw[year] = decode_raw(read_bytes(source), source, grid, year, fingerprint_)
        missing = [y for y in self._config.years if y not in current]
        refused: dict[int, list[DeadLetter]] = {}  # the batch run's check of a grid's mixers against each other
        for key, letter in _dead_letters((grid, [geometry for geometry, _ in raw.values()]), self._config.exports):
            refused.setdefault(key.year, []).append(letter)
        statuses = filter_grid(grid, raw, self._config, self._tags, "no export arrived before the series timeout", refused)
        filtered.write(current)
        self._grids_filtered.inc()
        self._record(grid, "filtered" if not missing else "finished incomplete", current, missing, statuses)
        yield from statuses

    def _record(self, grid: str, state: str, current: Mapping[int, str], missing: Sequence[int], statuses: Sequence[GridYearStatus]) -> None:
        record = {"grid": grid, "state": state, "years_in": {str(y): f for y, f in sorted(current.items())},
                  "missing_years": list(missing), "grid_years": [s.to_record() for s in statuses]}
        write_atomically(grid_status_path(self._config.output, grid), (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        write_streaming_summary(self._config, self._started, self._command_line)


class StreamingGrids(beam.PTransform):
    """GridYearKey file events → GridYearStatus of every grid-year written as grids complete; each grid's
    status file and the run's summary.json are rewritten as grids complete or time out."""

    def __init__(self, *, config: RunConfig, series_timeout: float, finish_incomplete: bool, started: str | None = None,
                 command_line: Sequence[str] = ()):
        super().__init__()
        self._config = config
        self._timeout = series_timeout
        self._finish_incomplete = finish_incomplete
        self._started = started or now_utc()
        self._command_line = tuple(command_line)

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        config = self._config
        asked = set(config.grid_years())
        return (
            events
            | "Asked grid-years" >> beam.Filter(lambda key: (key.grid, key.year) in asked)
            | "Infer complete exports" >> beam.ParDo(_InferCompleteExportFn(config, model_digests(config))).with_output_types(
                typehints.KV[str, typehints.Tuple[int, str]])
            | "Per grid" >> beam.ParDo(_GridSeriesFn(config, self._timeout, self._finish_incomplete, self._started, self._command_line))
        )


class WatchExports(beam.PTransform):
    """PBegin → GridYearKey for every new or re-written file under `{exports}/*/*/` (fileio.MatchContinuously).

    `deduplicate` (Dataflow) emits each file once per modification time (Beam's Watch); without it (the local
    BundleBasedDirectRunner, which cannot run Watch) every poll emits every file again, which the job absorbs:
    a grid-year whose raw result already has the export's fingerprint is not inferred again, and a year
    whose fingerprint the grid's state already holds changes nothing. `stop_after` (seconds) ends the
    watch, for a bounded local run."""

    def __init__(self, *, exports: str, interval: float = 60.0, deduplicate: bool = True, stop_after: float | None = None):
        super().__init__()
        self._exports = exports.rstrip("/")
        self._interval = interval
        self._deduplicate = deduplicate
        self._stop_after = stop_after

    def expand(self, pbegin):
        from apache_beam.io.fileio import MatchContinuously
        from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

        stop = MAX_TIMESTAMP if self._stop_after is None else Timestamp.now() + self._stop_after
        exports = self._exports
        return (
            pbegin
            | "Match continuously" >> MatchContinuously(f"{exports}/*/*/*", interval=self._interval, match_updated_files=True,
                                                        has_deduplication=self._deduplicate, stop_timestamp=stop)
            | "Grid-year of file" >> beam.FlatMap(lambda meta: [k for k in [grid_year_of_path(exports, meta.path)] if k]).with_output_types(
                GridYearKey)
        )

