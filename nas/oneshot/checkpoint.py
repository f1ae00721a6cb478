"""Checkpoints of a one-shot training run in its run dir: `checkpoints/step-<n>/{state.pt,meta.json}`.

`state.pt` holds the method's `state_dict()` and the RNG states (`torch.save`; read back with
`weights_only=True`, so a checkpoint can hold no code); `meta.json` says whose it is (space, space
config, method, method config, data, seed), where training stood (step, epoch) and the sha256 and size
of `state.pt`. A checkpoint is written into a temp dir and renamed into place, so a kill at any moment
leaves either the whole checkpoint or none; the newest `KEEP` are kept. On resume the newest one is
checked against the run (`check`) before anything is written: another run's, a corrupt or a truncated
checkpoint is refused with one line naming the file, never skipped for an older one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import UserError, shorten
from nas.run_dir import disk_full, is_running

KEEP = 2
FORMAT = 1
CHECKPOINTS = "checkpoints"
STATE = "state.pt"
META = "meta.json"
_NAME = re.compile(r"step-(\d{8,})")
_TEMP = re.compile(r"\.tmp-(\d+)-step-\d+")
IDENTITY = ("space", "space_config", "method", "method_config", "data", "seed")
"""Meta keys that must match the run for a checkpoint to be resumed."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk: its directory and its meta."""

    path: Path
    meta: Mapping[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    def load_state(self) -> dict[str, Any]:
        """The saved state (tensors only; no pickled code), checked against the meta's sha256 first."""
        import torch

        raw = self.state_path.read_bytes()
        _check_bytes(raw, self.meta, self.state_path)
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def directory(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _listed(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete-looking checkpoint (renamed into place), oldest first."""
    root = directory(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def latest(run_dir: Path, identity: Mapping[str, Any]) -> Checkpoint | None:
    """The newest checkpoint of `run_dir`, checked against the run's `identity` (the `IDENTITY` keys); None
    when there is none. Raises a one-line `UserError` for a checkpoint that is unreadable, corrupt,
    truncated or of another run."""
    listed = _listed(run_dir)
    if not listed:
        return None
    step, path = listed[-1]
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{meta_path}: unreadable checkpoint meta ({shorten(str(err), 80)}); "
                        f"{_fix(run_dir)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("step") != step:
        raise UserError(f"{meta_path}: not a checkpoint meta of format {FORMAT} for step {step}; {_fix(run_dir)}")
    check_identity(meta, identity, meta_path)
    state_path = path / STATE
    try:
        raw = state_path.read_bytes()
    except OSError as err:
        raise UserError(f"{state_path}: unreadable checkpoint ({err.strerror}); {_fix(run_dir)}") from None
    _check_bytes(raw, meta, state_path)
    return Checkpoint(path, meta)


def check_identity(meta: Mapping[str, Any], identity: Mapping[str, Any], where: Path) -> None:
    """Refuse a checkpoint whose space, configs, method, data or seed differ from the run's, naming the first
    difference."""
    for key in IDENTITY:
        diff = _difference(key, meta.get(key), identity[key])
        if diff is not None:
            raise UserError(f"{where}: checkpoint of another run: {diff}; re-run with the checkpoint's settings, "
                            f"or use another --run-dir")


def _difference(key: str, saved: Any, wanted: Any) -> str | None:
    """`key.sub: checkpoint X, this run Y` for the first differing leaf, or None if equal."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for sub in sorted(set(saved) | set(wanted)):
            diff = _difference(f"{key}.{sub}", saved.get(sub), wanted.get(sub))
            if diff is not None:
                return diff
        return None
    if saved == wanted and type(saved) is type(wanted):
        return None
    return f"{key}: checkpoint {_cut(json.dumps(saved))}, this run {_cut(json.dumps(wanted))}"


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_bytes(raw: bytes, meta: Mapping[str, Any], path: Path) -> None:
    size = meta.get("state_bytes")
    if len(raw) != size:
        raise UserError(f"{path}: truncated or corrupt checkpoint ({len(raw)} bytes, meta says {size}); "
                        f"{_fix(path.parent.parent.parent)}")
    if hashlib.sha256(raw).hexdigest() != meta.get("state_sha256"):
        raise UserError(f"{path}: corrupt checkpoint (sha256 differs from its meta); {_fix(path.parent.parent.parent)}")


def _fix(run_dir: Path) -> str:
    return (f"remove that checkpoint dir to resume from an older one (or {Path(run_dir) / CHECKPOINTS} to start "
            f"over), or use another --run-dir")


def save(run_dir: Path, state: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Write a checkpoint of `meta["step"]` atomically (temp dir, fsync, rename) and prune to the newest `KEEP`.

    Returns the checkpoint's directory. A full disk raises `DiskFullError` and leaves older checkpoints as they
    were; a checkpoint of the same step (a re-run after a stop) is replaced.
    """
    import torch

    root = directory(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    step = int(meta["step"])
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{os.getpid()}-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    raw = buffer.getvalue()
    full_meta = {**meta, "format": FORMAT, "state_bytes": len(raw),
                 "state_sha256": hashlib.sha256(raw).hexdigest()}
    try:
        tmp.mkdir()
        _write_synced(tmp / STATE, raw)
        _write_synced(tmp / META, json.dumps(full_meta, sort_keys=True, indent=1).encode())
        if final.exists():  # a replaced checkpoint of the same step: out of the way first, then removed
            old = root / f".tmp-{os.getpid()}-step-{step:08d}-old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _sync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(err, final, "older checkpoints are unchanged; free space and run the command again")
        if full is not None:
            raise full from None
        raise
    for _, old_path in _listed(run_dir)[:-KEEP]:
        shutil.rmtree(old_path, ignore_errors=True)
    return final


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(root: Path) -> None:
    """Remove temp dirs of checkpoint writers that no longer run (a kill -9 mid-write)."""
    for path in root.iterdir():
        m = _TEMP.match(path.name)
        if m and not is_running(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)


__all__ = ["CHECKPOINTS", "IDENTITY", "KEEP", "Checkpoint", "check_identity", "directory", "latest", "save"]
