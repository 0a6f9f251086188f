"""Errors shared by the library and the command line."""


class UserError(Exception):
    """A problem with the user's input (a file, an option): reported as one clear line naming it."""
