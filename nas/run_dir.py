"""The run directory of a search: its lock, config, trial log, strategy state and best archs.

Files (all JSON/YAML written with sorted keys):
- `.lock`: held for the whole search, so two searches never share a run dir;
- `config.yaml`: the run config and the latency table it priced archs with, written only
  once the search can start; a re-run must match it (only `trials` may grow);
- `trials.jsonl`: append-only, one line per finished arch (`trial` numbers 0, 1, 2, ...),
  flushed and fsynced per batch. An append that fails partway (a full disk) is cut back to
  the last complete line, so a torn piece never joins the next line; a torn last line left
  by a kill is ignored when read and cut off by the next append;
- `strategy.json`: the strategy's `state_dict` plus how many trial lines it has seen
  (`n_recorded`), replaced atomically after every ask and every tell. A log with fewer
  lines than that has lost finished archs, and is refused;
- `best.json`: the best archs, rewritten at the end.

Every file is replaced through `write_atomic`, whose temp files carry the writer's pid:
one left by a killed process is removed by the next write beside it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from nas.arch import canonical_json
from nas.errors import NasError, UserError, shorten

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(NasError):
    """A write failed for lack of space; nothing half-written was left behind."""


def disk_full(err: OSError, path: Path, what: str) -> DiskFullError | None:
    """A `DiskFullError` for `err` if it means the disk (or quota) is full, else None."""
    if err.errno not in _DISK_FULL:
        return None
    return DiskFullError(f"disk full while writing {path} ({os.strerror(err.errno)}); {what}")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename it over `path`.

    `path` keeps its old content if anything fails; a full disk raises `DiskFullError`.
    """
    path = Path(path)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        full = disk_full(err, path, "the previous version is unchanged; free space and run the command again")
        if full is not None:
            raise full from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def arch_hash(arch: dict[str, Any]) -> str:
    """The hash `Arch.hash` gives the arch of this plain dict (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(arch).encode()).hexdigest()


_MAX_LINE = 1 << 20
"""Longest trial line read (bytes): a line is an arch and a few metrics, a few KB."""
_MAX_STATE = 256 << 20
"""Largest strategy state read (bytes): populations and learned weights, far below this."""


class RunDir:
    """One search's directory. Use as a context manager: entering takes the lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.trials_path = self.path / "trials.jsonl"
        self.state_path = self.path / "strategy.json"
        self.config_path = self.path / "config.yaml"
        self._lock: FileLock | None = None
        self._good_length: int | None = None  # bytes of complete lines in trials.jsonl, once read
        self._created = False

    def __enter__(self) -> RunDir:
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise UserError(f"run dir {self.path} is not writable ({err.strerror}); choose another --run-dir") from None
        self._lock = FileLock(self.path / ".lock")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            self._lock = None
            raise UserError(
                f"run dir {self.path} is in use by another search; wait for it to finish or choose another --run-dir"
            ) from None
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if exc_type is not None and self._created:
            self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """Remove the run dir this search created if it failed before writing anything but its lock."""
        try:
            if {p.name for p in self.path.iterdir()} <= {".lock"}:
                (self.path / ".lock").unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass  # left in place: an empty dir is harmless, and a later search reuses it

    # -- config ---------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """The stored config, or None for a new run dir."""
        if not self.config_path.exists():
            return None
        from nas.config import load_yaml

        stored = load_yaml(self.config_path)
        if not isinstance(stored, dict):
            raise UserError(f"{self.config_path} is not a run config (a mapping); the run dir is damaged; "
                            "restore it or choose another --run-dir")
        return stored

    def check_config(self, config: dict[str, Any], ignore: Iterable[str] = ()) -> None:
        """Refuse `config` unless it is the stored search; `trials` may only grow, keys in `ignore` may differ."""
        stored = self.read_config()
        if stored is None:
            return
        skip = {"trials", *ignore}
        for key in sorted(set(stored) | set(config)):
            if key not in skip and stored.get(key) != config.get(key):
                raise UserError(
                    f"run dir {self.path} holds a different search ({key}: stored {shorten(stored.get(key))}, "
                    f"given {shorten(config.get(key))}); re-run with the same settings or choose another --run-dir"
                )
        if isinstance(stored.get("trials"), int) and config["trials"] < stored["trials"]:
            raise UserError(
                f"--trials {config['trials']}: run dir {self.path} holds a search with a budget of "
                f"{stored['trials']}; a budget may grow but not shrink; re-run with --trials {stored['trials']} "
                "or more, or choose another --run-dir"
            )

    def write_config(self, config: dict[str, Any]) -> None:
        """Store `config` (atomically); only when it differs from the stored one."""
        if self.read_config() != config:
            write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=True))

    # -- trials ---------------------------------------------------------------------
    def read_trials(self) -> list[dict[str, Any]]:
        """Every complete trial line, checked; a torn last line is ignored (the next append cuts it off).

        A line that is not a trial record, a `trial` number out of sequence or an arch that does not
        match its hash means the log was damaged or edited: a `UserError` names the line.
        """
        if not self.trials_path.exists():
            self._good_length = 0
            return []
        from nas.config import check_regular

        check_regular(self.trials_path, "the trial log")
        data = self.trials_path.read_bytes()
        end = data.rfind(b"\n") + 1
        records = []
        for number, line in enumerate(data[:end].splitlines(), 1):
            records.append(self._check_line(number, line))
        self._good_length = end
        return records

    def _check_line(self, number: int, line: bytes) -> dict[str, Any]:
        where = f"{self.trials_path}: line {number}"
        fix = "the trial log is damaged; restore it from a backup or choose another --run-dir"
        if len(line) > _MAX_LINE:
            raise UserError(f"{where} is longer than {_MAX_LINE} bytes; {fix}")
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UserError(f"{where} is not JSON; {fix}") from None
        if not isinstance(record, dict) or not {"trial", "arch", "hash", "metrics"} <= set(record):
            raise UserError(f"{where} is not a trial record (needs trial, arch, hash, metrics); {fix}")
        if record["trial"] != number - 1:
            raise UserError(f"{where} has trial number {shorten(record['trial'])}, expected {number - 1} "
                            f"(lines were removed or reordered); {fix}")
        if not isinstance(record["arch"], dict) or arch_hash(record["arch"]) != record["hash"]:
            raise UserError(f"{where}: the arch does not match its hash (the line was edited); {fix}")
        return record

    def append_trials(self, records: Iterable[dict[str, Any]]) -> None:
        """Append trial lines and fsync, so a finished trial survives a crash.

        Writes at the end of the last complete line (cutting off a torn one). If the write fails
        partway, the file is cut back to that length, so nothing torn stays behind.
        """
        if self._good_length is None:
            self.read_trials()
        assert self._good_length is not None
        data = "".join(canonical_json(r) + "\n" for r in records).encode()
        with open(self.trials_path, "r+b" if self.trials_path.exists() else "w+b") as handle:
            try:
                handle.seek(self._good_length)
                handle.truncate()
                view = memoryview(data)
                while view:
                    view = view[os.write(handle.fileno(), view):]
                os.fsync(handle.fileno())
            except OSError as err:
                handle.truncate(self._good_length)
                handle.flush()
                os.fsync(handle.fileno())
                full = disk_full(err, self.trials_path, "the finished archs of this batch were not recorded (the "
                                 "log is intact); free space and re-run the same command to resume")
                if full is not None:
                    raise full from None
                raise
        self._good_length += len(data)

    # -- strategy state ---------------------------------------------------------------
    def read_state(self) -> dict[str, Any] | None:
        """The saved strategy state, or None before the first save."""
        if not self.state_path.exists():
            return None
        from nas.config import check_regular, load_json

        fix = "the run dir is damaged; restore it or choose another --run-dir"
        try:
            check_regular(self.state_path, "the strategy state")
            state = load_json(self.state_path.read_bytes(), str(self.state_path), max_bytes=_MAX_STATE)
        except UserError as err:
            raise UserError(f"{err}; {fix}") from None
        if not isinstance(state, dict) or not isinstance(state.get("n_recorded"), int) or "strategy" not in state:
            raise UserError(f"{self.state_path} is not a strategy state (needs n_recorded, strategy); {fix}")
        return state

    def write_state(self, state: dict[str, Any], n_recorded: int) -> None:
        """Atomically save the strategy state and the number of trial lines it reflects."""
        write_atomic(self.state_path, canonical_json({"n_recorded": n_recorded, "strategy": state}))

    def write_best(self, best: list[dict[str, Any]]) -> None:
        """Write the best records (ranked by the caller)."""
        write_atomic(self.path / "best.json", json.dumps(best, sort_keys=True, indent=1))

