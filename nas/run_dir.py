"""The run directory of a search: its lock, config, trial log, strategy state and best archs.

Files (all JSON/YAML written with sorted keys):
- `.lock`: held for the whole search, so two searches never share a run dir;
- `config.yaml`: the merged run config; a re-run must match it (only `trials` may grow);
- `trials.jsonl`: append-only, one line per finished arch, flushed and fsynced per batch;
  a torn last line (the process killed mid-write) is cut off on the next open;
- `strategy.json`: the strategy's `state_dict` plus how many trial lines it has seen,
  replaced atomically after every ask and every tell;
- `best.json`: the best archs by score, rewritten at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from nas.arch import canonical_json
from nas.errors import UserError


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """One search's directory. Use as a context manager: entering takes the lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.trials_path = self.path / "trials.jsonl"
        self.state_path = self.path / "strategy.json"
        self.config_path = self.path / "config.yaml"
        self._lock: FileLock | None = None

    def __enter__(self) -> RunDir:
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

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- config ---------------------------------------------------------------------
    def check_or_write_config(self, config: dict[str, Any]) -> None:
        """Store `config`, or check that it matches the stored one (`trials` may differ)."""
        if not self.config_path.exists():
            write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=True))
            return
        stored = yaml.safe_load(self.config_path.read_text()) or {}
        for key in sorted(set(stored) | set(config)):
            if key != "trials" and stored.get(key) != config.get(key):
                raise UserError(
                    f"run dir {self.path} holds a different search ({key}: stored {stored.get(key)!r}, "
                    f"given {config.get(key)!r}); re-run with the same settings or choose another --run-dir"
                )
        if stored.get("trials") != config.get("trials"):
            write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=True))

    # -- trials ---------------------------------------------------------------------
    def read_trials(self) -> list[dict[str, Any]]:
        """Every complete trial line; a torn last line is cut off the file."""
        if not self.trials_path.exists():
            return []
        data = self.trials_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.trials_path, "r+b") as handle:
                handle.truncate(end)
        records = []
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{self.trials_path}: line {number} is not JSON; the trial log is damaged") from None
        return records

    def append_trials(self, records: Iterable[dict[str, Any]]) -> None:
        """Append trial lines and fsync, so a finished trial survives a crash."""
        text = "".join(canonical_json(r) + "\n" for r in records)
        with open(self.trials_path, "a") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    # -- strategy state ---------------------------------------------------------------
    def read_state(self) -> dict[str, Any] | None:
        """The saved strategy state, or None before the first save."""
        if not self.state_path.exists():
            return None
        return json.loads(self.state_path.read_text())

    def write_state(self, state: dict[str, Any], n_recorded: int) -> None:
        """Atomically save the strategy state and the number of trial lines it reflects."""
        write_atomic(self.state_path, canonical_json({"n_recorded": n_recorded, "strategy": state}))

    def write_best(self, records: list[dict[str, Any]], top: int = 10) -> list[dict[str, Any]]:
        """Write and return the `top` records by score."""
        best = sorted(records, key=lambda r: r["score"], reverse=True)[:top]
        write_atomic(self.path / "best.json", json.dumps(best, sort_keys=True, indent=1))
        return best
