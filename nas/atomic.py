"""Writing a file whole or not at all: a temp file beside it, fsynced, renamed over it.

`write_atomic` names its temp files after the writing process (`.<name>.<pid>.<random>.tmp`), so
`remove_stale_temps` can tell one a killed writer left (its pid no longer runs) from one being
written now. A full disk (or quota) is a `DiskFullError` naming the file, and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from nas.errors import NasError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(NasError):
    """A write failed for lack of space; nothing half-written was left behind."""


def disk_full(err: OSError, path: Path, what: str) -> DiskFullError | None:
    """A `DiskFullError` for `err` if it means the disk (or quota) is full, else None."""
    if err.errno not in _DISK_FULL:
        return None
    return DiskFullError(f"disk full while writing {path} ({os.strerror(err.errno)}); {what}")


def write_atomic(path: Path, content: str | bytes | Callable[[BinaryIO], None],
                 if_full: str = "the previous version is unchanged; free space and run the command again") -> None:
    """Write `content` (text, bytes, or a function that writes to a binary file) to a temp file beside `path`,
    fsync it, then rename it over `path`.

    `path` keeps its old content if anything fails; a full disk raises `DiskFullError`, whose message ends
    with `if_full`.
    """
    path = Path(path)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp's 0600 would make a shared table or run file private
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        full = disk_full(err, path, if_full)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The permission bits a replaced file keeps, or those `open` gives a new one (0666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read from /proc where possible: setting it to read it races with other threads."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of `write_atomic(path, ...)` whose writing process no longer runs."""
    removed = []
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        pid = tmp.name[len(Path(path).name) + 2:].split(".", 1)[0]
        if pid.isdigit() and is_running(int(pid)):
            continue  # a live writer's file (or an unrelated process that reuses the pid: left alone)
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def is_running(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):  # no such pid can exist
        return False
    return True
