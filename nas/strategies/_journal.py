"""Optuna journal backends that a strategy can rewind to the point its saved state recorded.

An Optuna study in `JournalStorage` is the replay of a log of operations. The strategy saves a
`mark` of the log in its JSON state after every ask and tell; `load_state_dict` opens the log
at that mark, dropping whatever was appended after it (a search killed with -9 between its
last state save and its death leaves such a tail, half a line included), so the study is
exactly the one the state was saved with. Two backends:
- `FileJournal`: Optuna's `JournalFileBackend` reading the file `optuna.journal` in the
  strategy's workdir; the mark is the byte size plus the sha256 of those bytes, so a journal
  that was cut short or replaced is refused with one line instead of resuming another study.
- `MemoryJournal`: the log as a list of JSON lines, kept whole in the mark (no workdir: unit
  tests and throw-away searches; the state grows with the study).
Deviations from `JournalFileBackend`: appends take no lock file and are not fsynced one by
one. One process writes the journal (the search holds its run dir), and a lock file left by a
kill -9 would stall the resume for its 30 s grace period. The file is fsynced once per `mark`,
that is once per state save, which is the only point a resume goes back to.
Size: Optuna logs each parameter of each trial with its distribution, about 7 KB per arch on
`proxylessnas` (7 MB per 1,000 archs), in the file or, without a workdir, in the state.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

from nas.errors import NasError, UserError, shorten
from nas.files import check_regular

JOURNAL_NAME = "optuna.journal"
"""The journal's file name inside the strategy's workdir."""

_CHUNK = 1 << 20


def _dump(log: dict[str, Any]) -> str:
    """One log as Optuna's file backend writes it (compact JSON, one line)."""
    return json.dumps(log, separators=(",", ":"))


class FileJournal(JournalFileBackend):
    """The journal file `path`, opened at `mark` (None: a new, empty journal).

    Raises:
        UserError: the file is not a regular file, is shorter than the mark, or its first
            `mark["bytes"]` bytes are not the ones the mark recorded.
    """

    def __init__(self, path: Path, mark: dict[str, Any] | None) -> None:
        where = f"strategy journal {path}"
        size = 0 if mark is None else int(mark["bytes"])
        if mark is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                check_regular(path, where)
            # A fresh search: a journal left by an attempt killed before its first state save is stale.
            path.write_bytes(b"")
            digest = hashlib.sha256()
        else:
            digest = self._check_prefix(path, where, size, str(mark["sha256"]))
            os.truncate(path, size)
        super().__init__(str(path))
        self.path = path
        self.size = size
        self._digest = digest
        self._broken: str | None = None

    @staticmethod
    def _check_prefix(path: Path, where: str, size: int, sha256: str) -> Any:
        """The running sha256 of the first `size` bytes of `path`, which must equal `sha256`."""
        if not path.exists():
            raise UserError(f"{where}: missing, but the saved strategy state needs its first {size} bytes; "
                            "restore the run dir's strategy folder, or start a new run dir")
        check_regular(path, where)
        actual = path.stat().st_size
        if actual < size:
            raise UserError(f"{where}: {actual} bytes, but the saved strategy state needs its first {size}; the "
                            "journal was cut short: restore it, or start a new run dir")
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            left = size
            while left:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    raise UserError(f"{where}: shrank while it was read; run one search per run dir")
                digest.update(chunk)
                left -= len(chunk)
        if digest.hexdigest() != sha256:
            raise UserError(f"{where}: its first {size} bytes have sha256 {digest.hexdigest()[:12]}, but the saved "
                            f"strategy state recorded {shorten(sha256, 20)}; the journal was replaced or edited: "
                            "restore it, or start a new run dir")
        return digest

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append whole lines; a failed write (full disk) is cut off again, so the file never ends mid-line."""
        if self._broken is not None:
            raise NasError(f"strategy journal {self.path}: {self._broken}; resume the search from its saved state")
        data = "".join(_dump(log) + "\n" for log in logs).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException:
            try:
                os.ftruncate(fd, self.size)
            except OSError as err:
                self._broken = f"a failed append could not be cut off ({err.strerror})"
            raise
        finally:
            os.close(fd)
        self.size += len(data)
        self._digest.update(data)

    def mark(self) -> dict[str, Any]:
        """The journal's size and sha256, after syncing it to disk: what the saved state resumes from."""
        if self._broken is not None:
            raise NasError(f"strategy journal {self.path}: {self._broken}; resume the search from its saved state")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as err:
            if err.errno != errno.EINVAL:  # a file system without fsync (some tmpfs setups)
                raise
        finally:
            os.close(fd)
        return {"bytes": self.size, "sha256": self._digest.hexdigest()}


class MemoryJournal(BaseJournalBackend):
    """The journal as JSON lines in memory, opened at `mark` (None: empty)."""

    def __init__(self, mark: dict[str, Any] | None) -> None:
        lines = [] if mark is None else mark["lines"]
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ValueError(f"journal lines must be a list of JSON strings; got {shorten(lines)}")
        self._lines: list[str] = list(lines)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        # Parsed afresh on every read, as the file backend does: Optuna keeps parts of a log in its trials.
        return (json.loads(line) for line in self._lines[log_number_from:])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._lines.extend(_dump(log) for log in logs)

    def mark(self) -> dict[str, Any]:
        """Every line so far (the whole study)."""
        return {"lines": list(self._lines)}


def open_journal(workdir: Path | None, mark: dict[str, Any] | None) -> FileJournal | MemoryJournal:
    """The journal in `workdir` (in memory when None), rewound to `mark` (None: a new one)."""
    if workdir is None:
        if mark is not None and "lines" not in mark:
            raise ValueError("the saved state has a journal file, but this strategy has no workdir to read it from")
        return MemoryJournal(mark)
    if mark is not None and "bytes" not in mark:
        raise ValueError("the saved state holds an in-memory journal, but this strategy keeps its journal in a file")
    return FileJournal(Path(workdir) / JOURNAL_NAME, mark)
