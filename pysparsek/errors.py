"""The base of every error that reaches the user as one clear line (exit code 2) instead of a traceback.

Each module defines its own errors as subclasses of `UserError`; the command line catches this one class.
"""


class UserError(Exception):
    """Something the user can fix (a missing file, a bad setting, a tool that failed): shown as one line."""
