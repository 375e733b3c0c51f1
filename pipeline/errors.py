"""Errors the command line turns into one clear line and a non-zero exit."""


class UsageError(Exception):
    """Bad input (a file, key or value): the message names it; exit status 2, no traceback."""


class StorageError(Exception):
    """Writing an output failed (a full disk, a quota): the message names the path, what was kept and how to go on;
    exit status 1, no traceback. Partial outputs are removed before it is raised."""
