"""Bounds of command-line input that no config model holds: paths, the local cluster's CPUs, and
the options of `nas profile`.

Each range lives here once; the CLI checks every flag against it before anything is read,
started or written, and a value outside it is one `UserError` line naming the flag, the value
(cut short) and the allowed range. Config keys that are paths (`hardware`, `data_dir`) use the
same `path_problem`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from nas.errors import UserError, shorten

MAX_PATH_BYTES = 4096
"""Longest path accepted (Linux PATH_MAX, counting the final NUL)."""
MAX_NAME_BYTES = 255
"""Longest path component accepted (NAME_MAX of common file systems)."""

SEED_LIMIT = 2**32
"""Seeds are 0 <= seed < 2**32: what every consumer (numpy, torch, Ray) accepts alike."""

LOCAL_CPUS_PER_CORE = 4
"""`--num-cpus` may oversubscribe this machine's CPUs this many times; beyond that more trials only
start more worker processes than the cores can serve (each holds its own copy of the data)."""

MAX_PROFILE_BATCH = 1024
"""Largest `nas profile --batch`: a latency table is a latency figure, and at 224 px a batch of
1024 inputs alone takes 600 MB."""

MAX_N_VALIDATE = 10_000
"""Most held-out archs `nas profile` times (each twice, end to end: hours at 10,000)."""


def path_problem(text: str) -> str | None:
    """Why `text` cannot be a path (empty, a NUL byte, too long, a component too long), or None.

    The absolute form counts too: a relative path is made absolute before it is stored or sent to
    Ray workers.
    """
    if not text:
        return "an empty path (give a file or directory name)"
    if "\0" in text:
        return "a path with a NUL byte"
    if len(text) >= MAX_PATH_BYTES:  # a character takes at least one byte: no need to encode a huge one
        return f"a path of {len(text):,} characters (the limit is {MAX_PATH_BYTES - 1:,} bytes)"
    try:
        size = len(os.fsencode(os.path.abspath(text)))
        longest = max((len(os.fsencode(part)), part) for part in text.split(os.sep))
    except UnicodeEncodeError:
        return "a path that is not valid text (a lone surrogate)"
    if size >= MAX_PATH_BYTES:
        return f"a path of {size:,} bytes once absolute (the limit is {MAX_PATH_BYTES - 1:,})"
    if longest[0] > MAX_NAME_BYTES:
        return (f"a path with a component of {longest[0]:,} bytes ({shorten(longest[1], 40)}; "
                f"the limit is {MAX_NAME_BYTES})")
    return None


def check_path(value: str | Path | None, flag: str) -> Path | None:
    """`value` as a `Path` (None stays None); a value that cannot be a path is a `UserError` naming `flag`.

    Checked on the text given, before any file-system call: a 130 KB path would fail there with
    ENAMETOOLONG, and `Path("")` would silently mean the current directory.
    """
    if value is None:
        return None
    text = os.fspath(value)
    problem = path_problem(text)
    if problem is not None:
        raise UserError(f"{flag}: {problem}; got {shorten(text)}")
    return Path(text)


def max_local_cpus() -> int:
    """The most CPUs a local Ray cluster may claim: `LOCAL_CPUS_PER_CORE` times this machine's."""
    return LOCAL_CPUS_PER_CORE * (os.cpu_count() or 1)


def check_num_cpus(num_cpus: int | None) -> None:
    """Refuse a `--num-cpus` outside [1, `max_local_cpus()`]."""
    if num_cpus is not None:
        check_range("--num-cpus", num_cpus, 1, max_local_cpus(),
                    f"{LOCAL_CPUS_PER_CORE} x this machine's {os.cpu_count() or 1} CPUs")


def check_profile_options(*, threads: int, batch: int, n_validate: int, seed: int) -> None:
    """Refuse `nas profile` options outside their ranges, before anything is timed or written.

    `--threads` is at most this machine's CPUs (`os.cpu_count()`): more intra-op threads than
    CPUs time the scheduler, not the network, and a huge count crashes the backend.
    """
    cpus = os.cpu_count() or 1
    check_range("--threads", threads, 1, cpus, f"at most this machine's {cpus} CPUs")
    check_range("--batch", batch, 1, MAX_PROFILE_BATCH)
    check_range("--n-validate", n_validate, 2, MAX_N_VALIDATE, "a rank correlation needs two archs")
    check_range("--seed", seed, 0, SEED_LIMIT - 1)


def check_range(flag: str, value: int | float, low: int | float, high: int | float, why: str = "") -> None:
    """Refuse `value` (NaN and infinity too) unless `low <= value <= high`, in one line naming `flag`."""
    is_int = isinstance(low, int) and isinstance(high, int)
    if isinstance(value, bool) or not isinstance(value, int | float) or (is_int and not isinstance(value, int)) \
            or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        kind = "an integer" if is_int else "a finite number"
        note = f" ({why})" if why else ""
        raise UserError(f"{flag}: must be {kind} in [{low:,}, {high:,}]{note}; got {shorten(value)}")


__all__ = ["MAX_NAME_BYTES", "MAX_N_VALIDATE", "MAX_PATH_BYTES", "MAX_PROFILE_BATCH", "SEED_LIMIT", "check_num_cpus",
           "check_path", "check_profile_options", "check_range", "max_local_cpus", "path_problem"]
