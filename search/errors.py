"""Errors that the command line reports to the user without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing file): shown as one line, no traceback."""
