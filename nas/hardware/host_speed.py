"""This host's time for a table's reference network, remembered for a few minutes.

Every search priced with a latency table checks that this host runs the table's reference
network at the table's speed (`nas.hardware.rescale.scale_warning`), a timing of about two
seconds. A shared host re-times the same network 30-50% apart over minutes anyway, so a timing
from the last few minutes says as much as a new one: it is kept for `TTL_S` in
`host_speed.json` under `$NAS_CACHE_DIR` (default `$XDG_CACHE_HOME/nas`, else `~/.cache/nas`),
per table (its sha256) and host name. The file is only a cache: a missing, damaged, oversized or
unwritable one is ignored (and replaced when it can be), never an error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nas.errors import UserError
from nas.files import load_json

log = logging.getLogger(__name__)

ENV_DIR = "NAS_CACHE_DIR"
TTL_S = 600.0
"""How long a timing is reused, in seconds."""
MAX_BYTES = 256 * 1024
MAX_ENTRIES = 256
"""Entries kept (the newest); each is about 150 bytes."""

Timing = tuple[float, float]
"""(ms measured here, ms the table stored) of a table's reference network."""


def cache_dir() -> Path:
    """`$NAS_CACHE_DIR`, else the XDG cache directory's `nas` folder."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative paths are ignored
    return base / "nas"


def remembered(table_sha256: str | None, measure: Callable[[], Timing]) -> Timing:
    """The timing of the table with this sha256 on this host from the last `TTL_S` seconds, else `measure()`'s
    (then kept). A table built in memory (no sha256) is always measured."""
    if table_sha256 is None:
        return measure()
    path = cache_dir() / "host_speed.json"
    key = f"{table_sha256}@{socket.gethostname()}"
    entries = _read(path)
    now = time.time()
    hit = entries.get(key)
    if hit is not None and 0.0 <= now - hit["at"] <= TTL_S:
        return hit["measured_ms"], hit["stored_ms"]
    measured, stored = measure()
    entries[key] = {"measured_ms": measured, "stored_ms": stored, "at": now}
    fresh = {k: e for k, e in entries.items() if 0.0 <= now - e["at"] <= TTL_S}
    newest = dict(sorted(fresh.items(), key=lambda item: item[1]["at"])[-MAX_ENTRIES:])
    _write(path, newest)
    return measured, stored


def _read(path: Path) -> dict[str, dict[str, float]]:
    """The cache's valid entries; {} for a missing or damaged file (each entry checked, bad ones dropped)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return {}
        data = load_json(path.read_bytes(), str(path), max_bytes=MAX_BYTES, max_depth=4)
    except (OSError, UserError) as err:
        log.debug("host speed cache %s not read: %s", path, err)
        return {}
    if not isinstance(data, dict):
        return {}
    good = {}
    for key, entry in data.items():
        if isinstance(entry, dict) and all(_positive(entry.get(f)) for f in ("measured_ms", "stored_ms", "at")):
            good[key] = {f: float(entry[f]) for f in ("measured_ms", "stored_ms", "at")}
    return good


def _positive(value: object) -> bool:
    return type(value) in (int, float) and 0.0 < value < 1e12  # type: ignore[operator]


def _write(path: Path, entries: dict[str, dict[str, float]]) -> None:
    """Replace the cache file whole (a temp file renamed over it); a failure is logged, not raised."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".host_speed.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle, sort_keys=True)
        os.replace(tmp, path)
    except OSError as err:
        log.debug("host speed cache %s not written: %s", path, err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
