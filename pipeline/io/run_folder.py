"""An output folder is one run: refuse another run's folder, lock it while writing, leave exactly the new set.

`run` and `filter` write into an output folder; what a run leaves there is listed in its summary's
manifest (`RunSummary.outputs`). This module keeps that true:

- `claim_output` (before any work): refuses a folder that holds another run's outputs (a summary, COGs,
  `dead_letter.jsonl`, `areas.csv`) unless `--overwrite` is given; takes the folder's lock (a small JSON
  file naming pid, host and start time) so a second run into the same folder refuses while the first
  is alive; a lock whose process is gone (same host) or that is older than `LOCK_MAX_AGE_S` is stale
  and taken over; and removes what a killed run left of ours: `.NAME.partial-*` temporaries of
  `publish_atomically` and empty `beam-temp-*` folders.
- `remove_stale` (after the new set is published): removes every file of ours that the new manifest does
  not list, so no COG of an earlier run survives beside the new ones, and a grid-year that failed this
  time leaves no older map in its place.

`{output}/raw/` (inference results that a later run reuses) is never touched here: its files are listed in
the manifest when present, and their lifecycle belongs to that feature.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.io import filesystem
from pipeline.io.filesystem import PARTIAL_MARK
from pipeline.io.raw import RAW_FOLDER
from pipeline.io.summary import SUMMARY_NAME, now_utc

LOCK_NAME = ".mining-mapper.lock"
LOCK_MAX_AGE_S = 7 * 24 * 3600
"""A lock older than this is stale whatever its process: a run is never that long, a dead host's lock is."""
OUR_FILES = (".tif", ".tiff")
DEAD_LETTER_NAME = "dead_letter.jsonl"
AREAS_NAME = "areas.csv"
OUR_NAMES = (SUMMARY_NAME, DEAD_LETTER_NAME, AREAS_NAME)
BEAM_TEMP_PREFIX = "beam-temp-"


def _relative(folder: str, path: str) -> str:
    folder = folder.rstrip("/")
    if filesystem.is_remote(folder):
        return path[len(folder) + 1:]
    return os.path.relpath(path, folder).replace(os.sep, "/")


def _files_under(folder: str) -> list[str]:
    """Every file under `folder` (recursively) as a path relative to it, hidden ones included; [] when absent."""
    folder = str(folder).rstrip("/")
    if filesystem.is_remote(folder):
        return sorted(_relative(folder, path) for path, _ in filesystem.match(folder + "/**"))
    found = []
    for root, _dirs, files in os.walk(folder):
        found.extend(_relative(folder, os.path.join(root, name)) for name in files)
    return sorted(found)


def _in_raw(relative: str) -> bool:
    return relative.split("/", 1)[0] == RAW_FOLDER


def is_partial(relative: str) -> bool:
    """Whether a file is a temporary of `publish_atomically` (`.NAME.partial-HEX`), left by a killed run."""
    name = posixpath.basename(relative)
    return name.startswith(".") and PARTIAL_MARK in name


def is_ours(relative: str) -> bool:
    """Whether a file (relative to the output folder) is an output a run of ours writes (raw/ excluded)."""
    if _in_raw(relative) or is_partial(relative) or relative == LOCK_NAME:
        return False
    name = posixpath.basename(relative)
    return relative in OUR_NAMES or name.endswith(OUR_FILES)


def previous_outputs(folder: str) -> list[str]:
    """The files of an earlier run in the folder (relative paths): its summary, COGs, CSVs, dead letters."""
    return [f for f in _files_under(folder) if is_ours(f)]


def raw_files(folder: str) -> list[str]:
    """The `raw/` inference results in the folder (relative paths), for the manifest."""
    return [f"{RAW_FOLDER}/{f}" for f in _files_under(filesystem.join(folder, RAW_FOLDER)) if not is_partial(f)]


# ----------------------------------------------------------------------------------------------------
# The lock


@dataclass(frozen=True)
class Lock:
    """Who holds an output folder: a process on a host since a time (ISO 8601 UTC), for a command."""

    path: str
    pid: int
    host: str
    started: str
    command: str

    def age_s(self) -> float:
        """Seconds since the lock was taken (0 when its time cannot be read)."""
        try:
            started = _dt.datetime.fromisoformat(self.started)
        except ValueError:
            return 0.0
        return (_dt.datetime.now(_dt.UTC) - started).total_seconds()

    def is_stale(self, max_age_s: float = LOCK_MAX_AGE_S) -> bool:
        """Whether the lock's run is gone: its process is not alive on this host, or the lock is too old."""
        if self.age_s() > max_age_s:
            return True
        if self.host == socket.gethostname():
            return not _alive(self.pid)
        return False

    def describe(self) -> str:
        """One phrase naming the lock's holder."""
        return f"'{self.command}' (pid {self.pid} on {self.host}, since {self.started})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def read_lock(folder: str) -> Lock | None:
    """The folder's lock, or None when there is none; an unreadable lock is treated as stale (pid 0)."""
    path = filesystem.join(folder, LOCK_NAME)
    if not filesystem.exists(path):
        return None
    try:
        data = json.loads(filesystem.read_bytes(path).decode("utf-8"))
        return Lock(path, int(data["pid"]), str(data["host"]), str(data["started"]), str(data.get("command", "")))
    except (UserError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return Lock(path, 0, "", "1970-01-01T00:00:00+00:00", "unknown")


def acquire_lock(folder: str, command: str, max_age_s: float = LOCK_MAX_AGE_S) -> Lock:
    """Take the folder's lock, or raise a UserError naming the run that holds it (a stale lock is taken over).

    Locally the lock file is created exclusively (two runs starting together cannot both get it); on
    Cloud Storage, which has no exclusive create through Beam, it is checked then written.
    """
    folder = str(folder).rstrip("/")
    existing = read_lock(folder)
    if existing is not None and not existing.is_stale(max_age_s):
        raise UserError(f"{folder}: another run is writing here, {existing.describe()}; wait for it to end, "
                        f"or choose another output (a lock of a run that is gone is {existing.path})")
    lock = Lock(filesystem.join(folder, LOCK_NAME), os.getpid(), socket.gethostname(),
                now_utc(), command)
    data = json.dumps({"pid": lock.pid, "host": lock.host, "started": lock.started, "command": lock.command}).encode()
    if filesystem.is_remote(folder):
        filesystem.publish_atomically({lock.path: data})
        return lock
    try:
        os.makedirs(folder, exist_ok=True)
        if existing is not None:
            os.remove(lock.path)
        handle = os.open(lock.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UserError(f"{folder}: another run took the lock {lock.path} at the same moment; wait for it to end") from None
    except OSError as error:
        raise UserError(f"{folder}: cannot write the output folder ({error.strerror or error})") from None
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    return lock


def release_lock(lock: Lock) -> None:
    """Remove our lock (only if it is still ours: same pid and start time)."""
    current = read_lock(posixpath.dirname(lock.path) if filesystem.is_remote(lock.path) else os.path.dirname(lock.path))
    if current is not None and (current.pid, current.started) == (lock.pid, lock.started):
        filesystem.delete([lock.path])


# ----------------------------------------------------------------------------------------------------
# Before and after a run


def remove_leftovers(folder: str) -> list[str]:
    """Remove what a killed run left of ours (partial temporaries, empty Beam temp folders); the removed names.

    `raw/` is left alone (its feature manages it).
    """
    folder = str(folder).rstrip("/")
    partials = [f for f in _files_under(folder) if is_partial(f) and not _in_raw(f)]
    if partials:
        filesystem.delete([filesystem.join(folder, *f.split("/")) for f in partials])
    removed = list(partials)
    if not filesystem.is_remote(folder) and os.path.isdir(folder):
        for root, dirs, _files in os.walk(folder, topdown=False):
            for name in dirs:
                path = os.path.join(root, name)
                if name.startswith(BEAM_TEMP_PREFIX) and not os.listdir(path):
                    os.rmdir(path)
                    removed.append(_relative(folder, path))
    return removed


def claim_output(folder: str, command: str, overwrite: bool, *, clean: bool = True) -> Lock:
    """Before a run: refuse another run's folder unless `overwrite`, take the lock, clear a killed run's temporaries.

    The refusal names the folder and `--overwrite`. No output is deleted here: with `overwrite`, the
    earlier run's files are removed by `remove_stale` only once the new set is published. `clean`
    False leaves temporaries alone: a launcher that only submits a job (Dataflow) holds the lock for
    the launch only, so the temporaries it would see may be another submitted job's, still writing.
    """
    folder = str(folder).rstrip("/")
    if filesystem.is_remote(folder):
        is_file = False
    else:
        is_file = os.path.exists(folder) and not os.path.isdir(folder)
    if is_file:
        raise UserError(f"{folder}: the output is a file, not a folder")
    lock = acquire_lock(folder, command)
    try:
        if not overwrite:
            earlier = previous_outputs(folder)
            if earlier:
                shown = ", ".join(earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
                raise UserError(f"{folder}: holds another run's outputs ({shown}); choose an empty output folder, "
                                "or pass --overwrite to replace them with this run's")
        if clean:
            remove_leftovers(folder)
    except BaseException:
        release_lock(lock)
        raise
    return lock


def remove_stale(folder: str, manifest: Iterable[str]) -> list[str]:
    """After the new set is published: remove every file of ours the manifest does not list; the removed names."""
    folder = str(folder).rstrip("/")
    keep = set(manifest)
    stale = [f for f in previous_outputs(folder) if f not in keep]
    if stale:
        filesystem.delete([filesystem.join(folder, *f.split("/")) for f in stale])
    return stale
