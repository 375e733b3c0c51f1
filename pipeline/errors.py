"""Errors the command line turns into one clear line and a non-zero exit."""


class UsageError(Exception):
    """Bad input (a file, key or value): the message names it; exit status 2, no traceback."""
