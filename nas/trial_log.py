"""What a line of `trials.jsonl` is: its fields by status, their types and ranges.

`nas.trials.Search.record` writes the lines (its metrics passed through `clean_metrics`, so a
NaN becomes null instead of invalid JSON); `nas.run_dir.RunDir.read_trials` reads them back and
refuses any line `trial_problem` finds fault with. Both sides use this one definition, so the
reader accepts exactly what the writer writes.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nas.arch import canonical_json
from nas.errors import shorten

ERROR_CHARS = 500
"""Longest `error` of a failed trial line: the first line of the exception, cut."""

_COMMON_FIELDS = ("trial", "arch", "hash", "status", "metrics", "score", "node", "host", "pid", "finished_at")
_FIELDS = {"ok": {*_COMMON_FIELDS, "feasible"}, "failed": {*_COMMON_FIELDS, "error"}}
"""The fields of a trial line by its status: what `nas.trials.Search.record` writes, no more, no less."""
_OPTIONAL_FIELDS = {"ok": {"stopped_early"}, "failed": set()}
"""Fields a line of that status may have besides: `stopped_early` (true) on an arch an early-stopping scheduler
(`--scheduler asha`) stopped, whose metrics are those of the epochs it reached (`metrics.epochs`)."""
HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_INT = 2**63


def is_number(value: Any) -> bool:
    """Whether `value` is a finite JSON number: an int (within 64 bits) or a finite float, not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_MAX_INT < value < _MAX_INT
    return isinstance(value, float) and math.isfinite(value)


def clean_metrics(metrics: Any) -> dict[str, int | float | None]:
    """Metrics as a trial line stores them: NaN or infinity (a diverged `train_loss`) becomes null.

    Raises:
        ValueError: a metric that is no number (named, with its value cut short).
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics are {shorten(metrics)}; allowed: a mapping of metric names to numbers")
    clean: dict[str, int | float | None] = {}
    for name, value in metrics.items():
        kind = type(value)  # plain floats and ints first: an evaluator's usual output, checked fast
        if kind is float:
            value = value if math.isfinite(value) else None
        elif kind is not int:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)  # numpy integers as plain ints
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                value = float(value) if math.isfinite(value) else None
        problem = _metric_problem(name, value)
        if problem:
            raise ValueError(problem)
        clean[name] = value
    return clean


def _metric_problem(name: Any, value: Any) -> str | None:
    kind = type(value)
    if type(name) is str and 0 < len(name) <= 100 and (
            value is None or kind is float and math.isfinite(value) or kind is int and -_MAX_INT < value < _MAX_INT):
        return None  # the usual case, checked fast
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        return f"metric name {shorten(name)} is not allowed; allowed: a name of 1 to 100 characters"
    if value is not None and not is_number(value):
        return f"metrics.{name} is {shorten(value)}; allowed: a finite number, or null for one that was not"
    return None


def _is_time(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 40:
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _optional_text(limit: int) -> Any:
    return lambda v: v is None or isinstance(v, str) and len(v) <= limit


_CHECKS: dict[str, tuple[Any, str]] = {
    "trial": (lambda v: isinstance(v, int) and not isinstance(v, bool), "the line's index (0, 1, 2, ...)"),
    "arch": (lambda v: isinstance(v, dict) and set(v) == {"space", "choices", "config"}
             and isinstance(v["space"], str) and isinstance(v["choices"], dict) and isinstance(v["config"], dict),
             "an object with space (a name), choices and config (objects)"),
    "hash": (lambda v: isinstance(v, str) and HEX64.fullmatch(v) is not None, "64 lowercase hex digits (sha256)"),
    "node": (_optional_text(200), "a Ray node id or null"),
    "host": (_optional_text(255), "a host name or null"),
    "pid": (lambda v: v is None or is_number(v) and isinstance(v, int) and 0 < v < 2**32, "a process id or null"),
    "finished_at": (_is_time, "an ISO 8601 time with a zone (2026-01-31T12:00:00+00:00)"),
    "feasible": (lambda v: isinstance(v, bool), "true or false"),
    "error": (lambda v: isinstance(v, str) and len(v) <= ERROR_CHARS, f"a message of at most {ERROR_CHARS} chars"),
    "stopped_early": (lambda v: v is True, "true, on an arch stopped early (absent otherwise)"),
}


def trial_problem(record: Any) -> str | None:
    """Why `record` is not a trial line a search writes (field, bad value, what is allowed), or None.

    Checks each field's type and range, the fields a status needs (unknown fields are refused:
    a search writes exactly these) and that the arch matches its hash. Not checked here: the
    `trial` number's place and repeats (the log's order), and the arch's space (`nas.trials`).
    """
    if not isinstance(record, dict):
        return f"{shorten(record)} is not a trial record (a JSON object)"
    if "status" not in record:
        return "not a trial record: it lacks field status ('ok' or 'failed')"
    status = record["status"]
    if not isinstance(status, str) or status not in _FIELDS:
        return f"status is {shorten(status)}; allowed: 'failed', 'ok'"
    fields = _FIELDS[status]
    missing, unknown = sorted(fields - set(record)), sorted(set(record) - fields - _OPTIONAL_FIELDS[status])
    if missing or unknown:
        what = f"lacks field {missing[0]}" if missing else f"has unknown field {shorten(unknown[0])}"
        return f"not a trial record: it {what} (a status-{status} record has {', '.join(sorted(fields))})"
    for field, (is_valid, allowed) in _CHECKS.items():
        if field in record and not is_valid(record[field]):
            return f"{field} is {shorten(record[field])}; allowed: {allowed}"
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or status == "failed" and metrics:
        allowed = "{} (a failed arch has no metrics)" if status == "failed" else "an object of metric numbers"
        return f"metrics is {shorten(metrics)}; allowed: {allowed}"
    problem = next(filter(None, (_metric_problem(k, v) for k, v in metrics.items())), None)
    if problem:
        return problem
    score = record["score"]
    if status == "ok" and not is_number(score) or status == "failed" and score is not None:
        return f"score is {shorten(score)}; allowed: {'a finite number' if status == 'ok' else 'null'}"
    if arch_hash(record["arch"]) != record["hash"]:
        return "the arch does not match its hash (the line was edited)"
    return None


def arch_hash(arch: dict[str, Any]) -> str:
    """The hash `Arch.hash` gives the arch of this plain dict (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(arch).encode()).hexdigest()
