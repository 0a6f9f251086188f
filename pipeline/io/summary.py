"""The run summary (`summary.json`): one schema, written by `mining-mapper run` and `mining-mapper filter`
and read by `report`, `stats` and the tests without guessing its shape.

Every (grid, year) asked for has one `GridYearStatus`: written (its COG, mining pixels and true-area
hectares after each filter stage), skipped and why, or failed and why. Paths are absolute URIs, numbers
are numbers, and the file says which format version it is (`format`), which command and software made
it, with what command line, from when to when.

`outputs` is the run's manifest: every file of the run, relative to its output folder (the COGs,
`dead_letter.jsonl` or `areas.csv`, `summary.json` itself, and the `raw/` inference results a later run
reuses, when there are any). An output folder is one run: `stats`, `report` and `ingest` read what the
manifest lists (`manifest_files`), and `pipeline.io.run_folder` removes what it does not list.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import __version__
from pipeline.elements import GridYearStatus
from pipeline.errors import UserError

FORMAT = "mining-mapper.run-summary/2"
"""The schema's name and version. Version 2 added, per written grid-year, `inference` (inferred or reused),
`fingerprint` and `inference_reason`, and the totals `inference`; version 1 files are still read."""
READABLE_FORMATS = ("mining-mapper.run-summary/1", FORMAT)
"""The versions a reader accepts; it refuses any other."""



def now_utc() -> str:
    """The current time as an ISO 8601 UTC timestamp (seconds)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


@dataclasses.dataclass
class RunSummary:
    """Everything a run leaves about itself: who made it, with what, and every grid-year's fate."""

    command: str
    output: str
    parameters: dict[str, Any]
    grid_years: list[GridYearStatus]
    started: str
    finished: str
    command_line: list[str] = dataclasses.field(default_factory=list)
    software_version: str = __version__
    dead_letters: int = 0
    metrics: dict[str, int] = dataclasses.field(default_factory=dict)
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    precision_check: dict[str, float] | None = None
    """With `run --precision_check`: observed pixels compared with float32, class changes, their fraction."""
    outputs: list[str] = dataclasses.field(default_factory=list)
    format: str = FORMAT

    @property
    def counts(self) -> dict[str, int]:
        """How many grid-years were written, skipped and failed (only the statuses that occur)."""
        counts: dict[str, int] = {}
        for entry in self.grid_years:
            counts[entry.status] = counts.get(entry.status, 0) + 1
        return counts

    @property
    def inference_counts(self) -> dict[str, int]:
        """How many grid-years had their probabilities inferred and how many re-used a raw result."""
        counts = {"inferred": 0, "reused": 0}
        for entry in self.grid_years:
            if entry.inference:
                counts[entry.inference] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """The JSON object: the header fields, the counts, then one entry per grid-year."""
        return {
            "format": self.format,
            "command": self.command,
            "command_line": list(self.command_line),
            "software_version": self.software_version,
            "started": self.started,
            "finished": self.finished,
            "output": self.output,
            "parameters": self.parameters,
            "inputs": dict(self.inputs),
            "counts": self.counts,
            "inference": self.inference_counts,
            "dead_letters": self.dead_letters,
            "metrics": dict(self.metrics),
            **({"precision_check": self.precision_check} if self.precision_check is not None else {}),
            "outputs": sorted(self.outputs),
            "grid_years": [entry.to_record() for entry in self.grid_years],
        }

    def to_json(self) -> bytes:
        """Stable, human-readable JSON bytes."""
        return json.dumps(self.as_dict(), indent=2).encode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "summary.json") -> RunSummary:
        """A summary from its JSON object; a UserError naming `source` when it is not this schema."""
        if not isinstance(data, Mapping) or data.get("format") not in READABLE_FORMATS:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise UserError(f"{source}: not a mining-mapper run summary of format {' or '.join(READABLE_FORMATS)} (found {found!r})")
        try:
            return cls(
                command=str(data["command"]),
                output=str(data["output"]),
                parameters=dict(data.get("parameters", {})),
                grid_years=[GridYearStatus.from_dict(e) for e in data["grid_years"]],
                started=str(data["started"]),
                finished=str(data["finished"]),
                command_line=list(data.get("command_line", [])),
                software_version=str(data.get("software_version", "")),
                dead_letters=int(data.get("dead_letters", 0)),
                metrics=dict(data.get("metrics", {})),
                inputs=dict(data.get("inputs", {})),
                precision_check=data.get("precision_check"),
                format=str(data["format"]),
                outputs=[str(name) for name in data.get("outputs", [])],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{source}: malformed run summary ({error})") from None

    @classmethod
    def from_json(cls, raw: bytes, source: str = "summary.json") -> RunSummary:
        """A summary from its bytes (see `from_dict`)."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{source}: not valid JSON ({error})") from None
        return cls.from_dict(data, source)


SUMMARY_NAME = "summary.json"


def manifest_files(folder: str) -> list[str] | None:
    """The files of the run in `folder` as its summary's manifest lists them (paths joined to the folder).

    None when the folder has no summary.json (or one of an older run without a manifest): the caller
    then looks at the folder's files. A summary that is not this schema is a UserError naming it.
    """
    from pipeline.io import filesystem

    path = filesystem.join(str(folder), SUMMARY_NAME)
    if not filesystem.exists(path):
        return None
    summary = RunSummary.from_json(filesystem.read_bytes(path), path)
    if not summary.outputs:
        return None
    return [filesystem.join(str(folder), *name.split("/")) for name in sorted(summary.outputs)]


def account(statuses: Sequence[GridYearStatus], asked: Sequence[tuple[str, int]]) -> list[GridYearStatus]:
    """One status per (grid, year) asked for, in the asked order; a grid-year no status reached is failed."""
    by_key = {(s.grid, s.year): s for s in statuses}
    return [
        by_key.get((str(grid), int(year)), GridYearStatus(str(grid), int(year), "failed", reason="no result reached the writer"))
        for grid, year in asked
    ]


def command_line() -> list[str]:
    """The command line of this process, as the summary records it."""
    return list(sys.argv)
