"""Exception hierarchy: one root, and `UserError` for anything the user can fix.

The CLI turns a `UserError` into one line on stderr and exit status 2; any other
exception is a bug and exits 1. `shorten` cuts user input echoed in a message, so a
10 MB value gives a one-line error, not a 10 MB one.
"""

from typing import Any


class NasError(Exception):
    """Root of every error this package raises on purpose."""


class UserError(NasError):
    """Bad input the user can fix: the message names the thing, the bad value and the allowed values."""


def shorten(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to about `limit` characters with an ellipsis and the full length.

    `shorten("a" * 10_485_760)` is `'aaa…' (10485760 chars)`. A long string or bytes value is
    cut before `repr`, so a huge one costs little; other values are formatted whole first
    (user files are size-limited when read, so they are not huge).
    """
    if isinstance(value, str | bytes) and len(value) > limit:
        head = repr(value[:limit])
        unit = "chars" if isinstance(value, str) else "bytes"
        return f"{head[:-1][: limit + 1]}…{head[-1]} ({len(value)} {unit})"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"
