"""People's mistakes that surface as OS or network errors, told in one line (issue 16, deliverable 6).

`describe(error)` turns an error that is the environment's fault, not the program's, into one line naming
the path (or host) and the cause: a read-only or full disk, an output path that is a file, a folder that
is missing or not writable, a connection that cannot be made. `report` prints that line (or a UserError's)
for `pipeline.cli` and `pipeline.run` (hence the Flex Template) alike, for exit status 2 (`-v` also prints
the traceback); any other error is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback

from pipeline.errors import EXIT_USAGE, UserError

# errno → what to do about it, for the paths a command reads or writes.
_ADVICE = {
    errno.EROFS: "read-only file system: choose a writable output location",
    errno.EACCES: "permission denied: choose a location you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a location you may write to, or fix its permissions",
    errno.ENOSPC: "no space left on the device: free some space or choose another output location",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another output location",
    errno.EEXIST: "exists and is a file, not a folder: choose another output folder or remove the file",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another output folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def report(error: BaseException, command: str, verbose: bool = False) -> int | None:
    """Print a person's mistake as `mining-mapper COMMAND: error: LINE` on stderr (after the traceback when
    `verbose`) and return the exit status EXIT_USAGE; None, printing nothing, for a bug (the caller re-raises).

    A mistake is a UserError, or an error `describe` can name; one function so that every entry point
    (the `mining-mapper` command, `python -m pipeline.run`, the Flex Template) says it the same way.
    """
    message = str(error) if isinstance(error, UserError) else describe(error)
    if message is None:
        return None
    if verbose:
        traceback.print_exception(error)
    print(f"mining-mapper {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _cause_chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def describe(error: BaseException) -> str | None:
    """One line naming the path or host and what is wrong, or None when `error` is not the environment's fault."""
    for link in _cause_chain(error):
        line = _describe_one(link)
        if line is not None:
            return line
    return None


def _describe_one(error: BaseException) -> str | None:
    details = getattr(error, "exception_details", None)  # Beam's BeamIOError: {path or (src, dest): error}
    if isinstance(details, dict):
        for inner in details.values():
            if isinstance(inner, BaseException):
                line = describe(inner)
                if line is not None:
                    return line
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with every Google client
        requests = None
    if requests is not None and isinstance(error, requests.exceptions.RequestException):
        url = getattr(getattr(error, "request", None), "url", None) or first_line(error)
        return f"{url}: cannot connect ({first_line(error)}): check the network, proxy and firewall"
    try:
        import google.auth.exceptions as auth_errors
    except ImportError:  # pragma: no cover
        auth_errors = None
    if auth_errors is not None and isinstance(error, auth_errors.TransportError):
        return f"Google Cloud: cannot connect ({first_line(error)}): check the network, proxy and firewall"
    try:
        from google.api_core import exceptions as api
    except ImportError:  # pragma: no cover
        api = None
    if api is not None and isinstance(error, (api.Unauthorized, api.Forbidden, api.NotFound)):
        # Google's text names the request's URL (bucket and object) and the missing permission.
        return f"Google Cloud refused a request ({first_line(error)}): check the bucket, the path and the account's roles"
    if isinstance(error, OSError) and error.errno in _ADVICE:
        path = error.filename if error.filename is not None else error.filename2
        if path is None:
            return None
        advice = _ADVICE[error.errno]
        if error.errno in (errno.EEXIST, errno.ENOTDIR) and os.path.isfile(os.fspath(path)):
            advice = _ADVICE[errno.EEXIST]
        return f"{os.fsdecode(path)}: {advice}"
    if isinstance(error, OSError) and isinstance(error, (ConnectionError, TimeoutError)):
        return f"{first_line(error)}: cannot connect: check the network, proxy and firewall"
    return None


def first_line(error: BaseException, limit: int = 240) -> str:
    """The first line of an error's text (its type's name when it has none), cut to at most `limit` characters (ending in "…").

    Why: a one-line message quotes the cause, and a library's error text can run to pages (a server's
    HTML, a traceback); every one-line report of the project quotes it through here.
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit - 3] + "…"
