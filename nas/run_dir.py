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
- `best.json`: the best archs, rewritten at the end;
- `strategy/`: a strategy library's own store (Optuna's journal), brought back to the state
  of `strategy.json` on resume by the strategy itself;
- `report/`: the plots and figures of `nas report`.

Every file is replaced through `nas.atomic.write_atomic`, whose temp files carry the writer's
pid: one left by a killed process is removed by the next write beside it.

Everything read back is checked before use: each trial line field by field (`nas.trial_log`),
`n_recorded`, and sizes (the log is read line by line with a per-line limit, the state with a
size limit), so a damaged or edited file is one `UserError` line naming the file, the line,
the field, the bad value and what is allowed. A directory that holds other files but none of
the above is not a run dir and is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock, Timeout

from nas.atomic import DiskFullError as DiskFullError  # re-exported, as are the next two: callers import them here
from nas.atomic import disk_full, write_atomic
from nas.atomic import is_running as is_running
from nas.atomic import remove_stale_temps as remove_stale_temps
from nas.errors import UserError, shorten
from nas.run_json import encode_trial, state_json
from nas.trial_log import HEX64, is_number, trial_problem
from nas.trial_log import arch_hash as arch_hash  # re-exported: callers import it from here

if TYPE_CHECKING:
    from nas.arch import Arch

_MAX_LINE = 1 << 20
"""Longest trial line read (bytes): a line is an arch and a few metrics, a few KB."""
_MAX_STATE = 256 << 20
"""Largest strategy state read (bytes): populations and learned weights, far below this."""
_RUN_DATA = ("trials.jsonl", "strategy.json", "best.json", "tune")
"""What a search writes once its config is stored: without `config.yaml` beside them, the run dir is damaged."""
_RUN_FILES = ("config.yaml", *_RUN_DATA)
"""What only a search writes: a directory holding any of these is a run dir."""
_SCRATCH = re.compile(r"\.lock|\.write-probe|strategy|data-[0-9a-f]{16}\.npz"
                      r"|\.(config\.yaml|strategy\.json|best\.json|data-[0-9a-f]{16}\.npz)\.\d+\..*\.tmp")
"""What a search leaves before its first file (its lock, a probe, a temp file left by a kill, the
`strategy` folder of a library's store, opened before the first state save, or the data set that
`nas.search` writes before the search starts, `data-<sha256 prefix>.npz`)."""


def _has_constant(data: bytes) -> bool:
    """Whether JSON `data` holds a NaN or Infinity number, not just the word in a string (parsed again: rare)."""
    found: list[str] = []
    json.loads(data, parse_constant=found.append)
    return bool(found)


class RunDir:
    """One search's directory. Use as a context manager: entering takes the lock."""

    def __init__(self, path: str | Path) -> None:
        if str(path) == "":  # a str: `Path("")` is already "."
            raise UserError("--run-dir '': an empty path; give a directory, e.g. runs/demo")
        try:
            self.path = Path(path).resolve()
        except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte
            raise UserError(f"--run-dir {shorten(str(path))}: not a usable path ({err}); give another") from None
        self.trials_path = self.path / "trials.jsonl"
        self.state_path = self.path / "strategy.json"
        self.config_path = self.path / "config.yaml"
        self._lock: FileLock | None = None
        self._good_length: int | None = None  # bytes of complete lines in trials.jsonl, once read
        self._created = False

    def __enter__(self) -> RunDir:
        self._check_is_run_dir()
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

    def _check_is_run_dir(self) -> None:
        """Refuse a directory that holds files but none a search writes (`/`, a home or a repo), before
        anything is written there; a new or empty directory, or a run dir, is fine."""
        if not os.path.lexists(self.path):
            return
        if not self.path.is_dir():
            raise UserError(f"run dir {self.path} exists and is not a directory; choose an empty or new directory "
                            "as --run-dir")
        if any(os.path.lexists(self.path / name) for name in _RUN_FILES):
            return
        try:
            with os.scandir(self.path) as entries:  # stops at the first other file: `/` costs one entry
                other = next((e.name for e in entries if not _SCRATCH.fullmatch(e.name)), None)
        except OSError as err:
            raise UserError(f"run dir {self.path} cannot be listed ({err.strerror}); choose another --run-dir") \
                from None
        if other is not None:
            raise UserError(f"run dir {self.path} exists and is not a run dir (it holds other files, e.g. "
                            f"{shorten(other)}); choose an empty or new directory as --run-dir")

    def _remove_if_unused(self) -> None:
        """Remove the run dir this search created if it failed before writing anything but its lock."""
        try:
            if {p.name for p in self.path.iterdir()} <= {".lock", "strategy"}:
                shutil.rmtree(self.path / "strategy", ignore_errors=True)
                (self.path / ".lock").unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass  # left in place: an empty dir is harmless, and a later search reuses it

    # -- config ---------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """The stored config, or None for a new run dir.

        A run dir that holds a trial log, a strategy state or best archs but no `config.yaml`
        (deleted) is refused: another search must not take over its trials.
        """
        stored = self._stored_config()
        if stored is None:
            found = [name for name in _RUN_DATA if os.path.lexists(self.path / name)]
            if found:
                raise UserError(f"run dir {self.path} holds {', '.join(found)} but no config.yaml (deleted?), so "
                                "it is not taken over by another search; restore config.yaml or choose another "
                                "--run-dir")
        return stored

    def _stored_config(self) -> dict[str, Any] | None:
        """`config.yaml` (read within the YAML size limit), its keys that may differ between runs checked;
        the others must equal the given config (`check_config`)."""
        if not os.path.lexists(self.config_path):
            return None
        from nas.files import load_yaml

        fix = "the run dir is damaged; restore it or choose another --run-dir"
        try:
            stored = load_yaml(self.config_path)  # at most `MAX_FILE_BYTES` are read
        except UserError as err:
            raise UserError(f"{err}; {fix}") from None
        if not isinstance(stored, dict):
            raise UserError(f"{self.config_path} is {shorten(stored)}, not a run config (a mapping); {fix}")
        trials = stored.get("trials")
        if not is_number(trials) or not isinstance(trials, int) or trials < 1:
            raise UserError(f"{self.config_path}: trials is {shorten(trials)}; allowed: a positive integer; {fix}")
        if stored.get("hardware") is not None and not isinstance(stored["hardware"], str):
            raise UserError(f"{self.config_path}: hardware is {shorten(stored['hardware'])}; allowed: a table "
                            f"path or null; {fix}")
        table = stored.get("latency_table")
        if table is not None and not (isinstance(table, dict) and isinstance(table.get("path"), str)
                                      and isinstance(table.get("sha256"), str)
                                      and HEX64.fullmatch(table["sha256"])):
            raise UserError(f"{self.config_path}: latency_table is {shorten(table)}; allowed: null or a mapping "
                            f"with path and sha256 (64 hex digits); {fix}")
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
        if self._stored_config() != config:
            write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=True))

    # -- trials ---------------------------------------------------------------------
    def read_trials(self) -> list[dict[str, Any]]:
        """Every complete trial line, checked; a torn last line is ignored (the next append cuts it off).

        The log is read as a stream, one line of at most `_MAX_LINE` bytes at a time, so a damaged
        file (gigabytes of NUL bytes) fails on its first bad line without being read whole. A line
        that is not a trial record (`trial_problem`), a `trial` number out of sequence or an arch
        recorded twice means the log was damaged or edited: a `UserError` names the line and field.
        """
        if not os.path.lexists(self.trials_path):
            self._good_length = 0
            return []
        from nas.files import check_regular

        records: list[dict[str, Any]] = []
        first_line: dict[str, int] = {}  # hash -> line number
        good = 0
        try:
            check_regular(self.trials_path, "the trial log")
            with open(self.trials_path, "rb") as handle:
                while line := handle.readline(_MAX_LINE + 1):
                    if not line.endswith(b"\n"):
                        if len(line) > _MAX_LINE:
                            self._refuse(len(records) + 1, f"longer than {_MAX_LINE} bytes")
                        break  # a torn last line
                    records.append(self._check_line(len(records) + 1, line, first_line))
                    good += len(line)
        except OSError as err:
            raise UserError(f"{self.trials_path}: cannot read ({err.strerror}); the run dir is damaged; restore it "
                            "or choose another --run-dir") from None
        self._good_length = good
        return records

    def _refuse(self, number: int, problem: str) -> None:
        raise UserError(f"{self.trials_path}: line {number}: {problem}; the trial log is damaged or edited; "
                        "restore it from a backup or choose another --run-dir")

    def _check_line(self, number: int, line: bytes, first_line: dict[str, int]) -> dict[str, Any]:
        from nas.files import load_json

        try:
            record = load_json(line, f"line {number}", max_bytes=_MAX_LINE + 1)
        except UserError as err:  # "line 3 is not valid JSON (...)", "line 3: JSON nested deeper than ..."
            raise UserError(f"{self.trials_path}: {err}; the trial log is damaged or edited; restore it from a "
                            "backup or choose another --run-dir") from None
        problem = trial_problem(record)
        if problem:
            self._refuse(number, problem)
        if record["trial"] != number - 1:
            self._refuse(number, f"trial number {shorten(record['trial'])}, expected {number - 1} "
                         "(lines were removed, added or reordered)")
        first = first_line.setdefault(record["hash"], number)
        if first != number:
            self._refuse(number, f"arch {record['hash'][:12]} recorded again (first on line {first}); a search "
                         "records each arch once")
        return record

    def append_trials(self, records: Iterable[dict[str, Any]]) -> None:
        """Append trial lines and fsync, so a finished trial survives a crash.

        Writes at the end of the last complete line (cutting off a torn one). If the write fails
        partway, the file is cut back to that length, so nothing torn stays behind. A record made by
        `nas.run_json.trial_line` brings its line already encoded.
        """
        if self._good_length is None:
            self.read_trials()
        assert self._good_length is not None
        data = "".join(encode_trial(r) + "\n" for r in records).encode()
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
        if not os.path.lexists(self.state_path):
            return None
        from nas.files import check_regular, load_json

        fix = "the run dir is damaged; restore it or choose another --run-dir"
        try:
            check_regular(self.state_path, "the strategy state")
            with open(self.state_path, "rb") as handle:  # the size first: a sparse 3 GB file is not read
                if os.fstat(handle.fileno()).st_size > _MAX_STATE:
                    raise UserError(f"{self.state_path}: larger than the {_MAX_STATE} bytes limit for JSON")
                data = handle.read(_MAX_STATE + 1)
            state = load_json(data, str(self.state_path), max_bytes=_MAX_STATE)
            if (b"NaN" in data or b"Infinity" in data) and _has_constant(data):
                raise UserError(f"{self.state_path}: holds NaN or Infinity, which no search writes")
        except UserError as err:
            raise UserError(f"{err}; {fix}") from None
        except OSError as err:
            raise UserError(f"{self.state_path}: cannot read ({err.strerror}); {fix}") from None
        if not isinstance(state, dict) or set(state) != {"n_recorded", "strategy"}:
            got = shorten(sorted(state)) if isinstance(state, dict) else shorten(state)
            raise UserError(f"{self.state_path} is not a strategy state (an object with keys n_recorded, strategy; "
                            f"got {got}); {fix}")
        n_recorded = state["n_recorded"]
        if not is_number(n_recorded) or not isinstance(n_recorded, int) or n_recorded < 0:
            raise UserError(f"{self.state_path}: n_recorded is {shorten(n_recorded)}; allowed: an integer from 0 "
                            f"to the number of lines in trials.jsonl; {fix}")
        if not isinstance(state["strategy"], dict):
            raise UserError(f"{self.state_path}: strategy is {shorten(state['strategy'])}; allowed: a strategy "
                            f"state (an object); {fix}")
        return state

    def write_state(self, state: dict[str, Any], n_recorded: int, pending: Sequence[Arch] = ()) -> None:
        """Atomically save the strategy state and the number of trial lines it reflects.

        `pending`: the archs of `state["pending"]` (the strategy's `pending()`), whose cached JSON is
        used instead of encoding thousands of arch dicts again; checked to be those archs.
        """
        write_atomic(self.state_path, state_json({"n_recorded": n_recorded, "strategy": state}, pending))

    def write_best(self, best: list[dict[str, Any]]) -> None:
        """Write the best records (ranked by the caller)."""
        write_atomic(self.path / "best.json", json.dumps(best, sort_keys=True, indent=1))

