"""Exception hierarchy: one root, and `UserError` for anything the user can fix.

The CLI turns a `UserError` into one line on stderr and exit status 2; any other
exception is a bug and exits 1.
"""


class NasError(Exception):
    """Root of every error this package raises on purpose."""


class UserError(NasError):
    """Bad input the user can fix: the message names the thing, the bad value and the allowed values."""
