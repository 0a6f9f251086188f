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
