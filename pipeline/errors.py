"""Errors shared by the library and the command line."""


class UserError(Exception):
    """A problem with the user's input (a file, an option): reported as one clear line naming it."""


class ExportError(UserError):
    """A problem with an Earth Engine export; the message names the file."""


class MissingExportError(ExportError):
    """The export folder, or its mixer, is absent."""


class ExportFormatError(ExportError):
    """A file of the export exists but is not what Earth Engine writes (bad mixer, ambiguous shards)."""


class RecordError(ExportError):
    """One record cannot be used (not an Example, a band missing, a band of the wrong length)."""


class ShardError(ExportError):
    """A shard's TFRecord framing or compression is broken at some record: the rest of it is unreadable."""

    def __init__(self, message: str, records_read: int):
        super().__init__(message)
        self.records_read = records_read


EXIT_OK = 0
"""Every grid-year asked for was written, or skipped because it has no export."""
EXIT_USAGE = 2
"""A usage error (a bad flag, path or input, or nothing to do): one line on stderr, nothing run."""
EXIT_FAILED = 3
"""The run finished and its summary was written, but at least one grid-year failed (see the summary)."""
EXIT_STATUS_HELP = (
    "exit status: 0 every grid-year asked for was written (or skipped: it has no export); "
    "3 the run finished and wrote its summary, but at least one grid-year failed; "
    "2 usage error (a bad flag, path or input, an output that holds another run, or nothing to do)."
)
