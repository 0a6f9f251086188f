"""Files, local or on Cloud Storage, through Beam's FileSystems: the project's one filesystem module.

Every read, listing and write of the pipeline and the commands goes through here, so `gs://` paths work
the same as local ones (GDAL, which opens rasters itself, gets `/vsigs/` names from `gdal_path`).
Outputs are published atomically: each file is written under a hidden temporary name and renamed only
once every file of the set is complete, so a failed run never leaves a half-written output set.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Mapping

from pipeline.errors import UserError

REMOTE_PREFIXES = ("gs://",)


PARTIAL_MARK = ".partial-"
"""In the name of a temporary of `publish_atomically` (`.NAME.partial-HEX`)."""


def _filesystems():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_remote(path: str) -> bool:
    """True for a path that GDAL and Beam reach over the network (``gs://``)."""
    return str(path).startswith(REMOTE_PREFIXES)


def gdal_path(path: str) -> str:
    """The name GDAL opens: ``gs://b/k`` → ``/vsigs/b/k``; local paths unchanged."""
    path = str(path)
    if path.startswith("gs://"):
        return "/vsigs/" + path[len("gs://"):]
    return path


def join(directory: str, *names: str) -> str:
    """Join path parts with '/' for remote paths and os.path.join for local ones."""
    directory = str(directory)
    if is_remote(directory):
        return "/".join([directory.rstrip("/"), *[str(n).strip("/") for n in names]])
    return os.path.join(directory, *[str(n) for n in names])


def basename(path: str) -> str:
    """The last component of a local or remote path."""
    return posixpath.basename(str(path).rstrip("/")) if is_remote(path) else os.path.basename(str(path))


def parent_name(path: str) -> str:
    """The name of the folder holding `path` (local or remote)."""
    path = str(path)
    if is_remote(path):
        parts = path.rstrip("/").split("/")
        return parts[-2] if len(parts) > 3 else ""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def absolute_uri(path: str) -> str:
    """`path` as an absolute URI: gs:// and other URIs unchanged, a local path as file:///absolute/path.

    Summaries and COG tags name their inputs and outputs so; a relative path would mean nothing once the
    file is copied.
    """
    path = str(path)
    return path if "://" in path else "file://" + os.path.abspath(path)


def local_or_remote(uri: str) -> str:
    """The path to open for an absolute URI: `file:///a/b` → `/a/b`; gs:// and plain paths unchanged."""
    uri = str(uri)
    return uri[len("file://"):] if uri.startswith("file://") else uri


def read_bytes(path: str) -> bytes:
    """The whole content of a (small) file, local or gs://; a UserError naming it if it cannot be read."""
    from apache_beam.io.filesystem import CompressionTypes

    try:
        with _filesystems().open(str(path), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except Exception as error:  # noqa: BLE001 - Beam wraps I/O errors in BeamIOError, GCS in its own types
        raise UserError(f"{path}: cannot read ({error})") from None


def read_json(path: str):
    """A JSON document from a local or remote file; a UserError names the file when it is not JSON."""
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def exists(path: str) -> bool:
    """Whether a local or remote file exists."""
    return _filesystems().exists(str(path))


def match(pattern: str) -> list[tuple[str, int]]:
    """(path, size) of every file matching a Beam pattern ('*' stays in a folder, '**' crosses them), sorted."""
    return [(path, size) for path, size, _ in match_identity(pattern)]


def match_identity(pattern: str) -> list[tuple[str, int, float]]:
    """(path, size, last modified in seconds) of every file matching a Beam pattern, sorted by path.

    What identifies a file's content without reading it: Beam's match metadata `last_updated_in_seconds`
    is the mtime locally and the object's update time on Cloud Storage (a new generation changes it).
    Raw inference results are fingerprinted with it (pipeline/io/raw.py).
    """
    try:
        results = _filesystems().match([str(pattern)])
    except Exception as error:  # noqa: BLE001 - Beam raises BeamIOError with per-pattern causes
        raise UserError(f"{pattern}: cannot list ({error})") from None
    return sorted((m.path, m.size_in_bytes, float(m.last_updated_in_seconds)) for r in results for m in r.metadata_list)


def list_sizes(folder: str) -> dict[str, int]:
    """name -> size of the files directly in `folder` (empty when it is absent)."""
    found = {}
    for path, size in match(join(folder, "*")):
        name = posixpath.basename(path.rstrip("/"))
        if name:
            found[name] = size
    return found


def size_of(path: str) -> int:
    """The size in bytes of one file (UserError naming it when it cannot be found)."""
    found = match(path)
    if not found:
        raise UserError(f"{path}: no such file")
    return found[0][1]


def delete(paths: list[str]) -> None:
    """Delete files, local or gs:// (a UserError naming the first that cannot be deleted)."""
    if not paths:
        return
    try:
        _filesystems().delete([str(p) for p in paths])
    except Exception as error:  # noqa: BLE001 - Beam wraps per-file causes in BeamIOError
        raise UserError(f"{paths[0]}: cannot delete ({error})") from None


def open_read(path: str):
    """A binary stream on a file, read as stored (no decompression: callers inflate gzip themselves)."""
    from apache_beam.io.filesystem import CompressionTypes

    return _filesystems().open(str(path), compression_type=CompressionTypes.UNCOMPRESSED)


def write_atomically(path: str, data: bytes) -> None:
    """Write bytes to `path` (local or any Beam filesystem) under a temporary name, then rename.

    A reader never sees a partial file, and a retried or repeated write leaves one complete file.
    """
    publish_atomically({path: data})


def publish_atomically(files: Mapping[str, bytes | os.PathLike]) -> None:
    """Write several files as one step: all under temporary names first, then each renamed into place.

    A value is the file's bytes, or a local file to stream (large COGs need not be held in memory).
    If any write fails, every temporary is removed and no final name is touched, so a failed run
    never leaves a half-written output set. Works for local paths and gs:// through Beam's FileSystems
    (a rename onto an existing object replaces it, locally and on Cloud Storage).
    """
    filesystems = _filesystems()
    staged: dict[str, str] = {}
    try:
        for path, data in files.items():
            path = str(path)
            directory, name = path.rsplit("/", 1) if "://" in path else os.path.split(path)
            temporary = join(directory, f".{name}{PARTIAL_MARK}{uuid.uuid4().hex}")
            staged[temporary] = path
            try:
                with filesystems.create(temporary) as handle:
                    if isinstance(data, (bytes, bytearray)):
                        handle.write(data)
                    else:
                        with open(data, "rb") as source:
                            shutil.copyfileobj(source, handle, 8 << 20)
            except OSError as error:
                if error.filename is None and error.errno is not None:  # a failed write (full disk) names no file
                    raise OSError(error.errno, error.strerror, path) from error
                raise
    except BaseException:
        leftovers = [t for t in staged if filesystems.exists(t)]
        if leftovers:
            filesystems.delete(leftovers)
        raise
    filesystems.rename(list(staged), list(staged.values()))


def relative_href(target: str, start_dir: str) -> str:
    """A link from a page in `start_dir` to `target`: relative for local files, the URL for gs:// ones."""
    if is_remote(target):
        return "https://storage.cloud.google.com/" + str(target)[len("gs://"):]
    if is_remote(start_dir):
        return os.path.abspath(target)
    return os.path.relpath(os.path.abspath(target), os.path.abspath(start_dir)).replace(os.sep, "/")
