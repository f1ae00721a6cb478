"""The latency table file, as typed models: metadata, entries, correction and validation report.

`nas.hardware.table.LatencyTable` reads and writes files of this shape; the models are
frozen and reject unknown keys, like every config model. `RULES` gives every numeric field
its allowed range, in one place: `find_bad_number` checks a table's plain data against
them (type, finiteness, range, presence) before the models see it, since the models
would turn the string "0.5" into a number and a few fields (`metadata.protocol`,
`correction.params`) are free-form mappings whose known keys still have ranges.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pydantic import Field

from nas.config import Frozen
from nas.errors import shorten

MAX_MS = 1e6
"""The most milliseconds any timing may say: 1000 s for one forward pass. More is a unit mix-up
(microseconds written as ms) or a damaged file, and sums of such values overflow to infinity."""


@dataclass(frozen=True)
class Range:
    """The values one numeric field allows: a closed interval (open at `low` when `low_open`)."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    required: bool = True
    nullable: bool = False
    """Whether the field may be null (YAML `null`), meaning "not recorded"."""

    @property
    def optional(self) -> Range:
        return replace(self, required=False)

    @property
    def or_null(self) -> Range:
        return replace(self, nullable=True)

    def describe(self) -> str:
        """`a finite number in (0, 1e+06]`, `an integer in [1, 4096]`, `a number in [0, inf]`."""
        kind = "an integer" if self.integer else "a finite number" if math.isfinite(self.high) else "a number"
        text = f"{kind} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"
        return text + (" or null" if self.nullable else "")

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high  # ints compare exactly, however large


@dataclass(frozen=True)
class Each:
    """The rule of every item of a list."""

    rule: Rule


Rule = Range | Mapping[str, "Rule"] | Each | tuple["Rule", ...]
"""A `Range` for a number; a mapping of rules for a mapping (key `*`: every key); `Each` for a list;
a tuple for a list of fixed length, item by item."""

MS = Range(0, MAX_MS)
POSITIVE_MS = Range(0, MAX_MS, low_open=True)
SIGNED_MS = Range(-MAX_MS, MAX_MS)
COUNT = Range(1, 10**9, integer=True)
SIZE = Range(0, 10**15, integer=True)  # parameters or multiply-accumulates of one unit
SEED = Range(0, 2**64 - 1, integer=True)
SHARE = Range(0, 1)
PERCENT = Range(0, 1e6)  # an error in per cent: large for a bad table, never negative
SCALE = Range(1e-3, 1e3)
"""A rescale factor: a host a thousand times faster or slower is not another host of the same kind."""

_FIGURES: dict[str, Rule] = {"mape": PERCENT, "within_5": SHARE, "within_10": SHARE, "spearman": Range(-1, 1)}
RULES: dict[str, Rule] = {
    "metadata": {
        "batch": Range(1, 10**6, integer=True),
        "threads": Range(1, 4096, integer=True),
        # Written by `Timer.protocol` and `nas.hardware.profile`; older tables lack some keys.
        "protocol": {"blocks": COUNT.optional, "block_ms": POSITIVE_MS.optional, "warmup_ms": MS.optional,
                     "budget_ms": POSITIVE_MS.optional, "reference_ms": POSITIVE_MS.optional,
                     "network_reference": {"ms": POSITIVE_MS}},
        "rescaled": {"scale": SCALE, "measured_ms": POSITIVE_MS, "stored_ms": POSITIVE_MS},
    },
    "entries": {"*": {"mean": MS, "std": MS, "count": COUNT, "params": SIZE.optional.or_null,
                      "macs": SIZE.optional.or_null}},
    "correction": {
        "intercept_ms": SIGNED_MS,  # may be negative (see `nas.hardware.fit`)
        "entries": {"*": MS},
        "fit_ms": Each(POSITIVE_MS),
        # What `nas.hardware.fit` records; a ridge weight of inf means no per-key stage.
        "params": {"scale": Range(0, 1e3).optional, "ms_per_mparam": MS.optional, "ms_per_mmac": MS.optional,
                   "ridge": Range(0, math.inf).optional, "cv_mape": PERCENT.optional.or_null,
                   "min_intercept": SIGNED_MS.optional, "n_fit": Range(0, 10**6, integer=True).optional,
                   "seed": SEED.optional},
    },
    "validation": {
        **_FIGURES, "naive": _FIGURES, "n_archs": Range(2, 10**6, integer=True), "noise": PERCENT, "seed": SEED,
        "seconds": Range(0, 1e9).optional.or_null,
        "points": Each((POSITIVE_MS, SIGNED_MS, MS)),  # measured, predicted, naive
    },
}


class BadNumber(NamedTuple):
    """The first bad number of a table: its key path, its value (None when missing) and what is allowed."""

    path: str
    value: Any
    allowed: str
    missing: bool = False

    def describe(self) -> str:
        """`entries.k.mean is -1; allowed: a finite number in [0, 1e+06]` (the value cut short)."""
        if self.missing:
            return f"{self.path} is missing; allowed: {self.allowed}"
        if self.value is None:
            return f"{self.path} is null; allowed: {self.allowed}"
        kind = "" if _is_number(self.value) else f" (a {type(self.value).__name__}, not a number)"
        return f"{self.path} is {shorten(self.value)}{kind}; allowed: {self.allowed}"


def find_bad_number(data: Any, rule: Rule | None = RULES, path: str = "") -> BadNumber | None:
    """The first number of `data` (a table as plain data) outside its `RULES` range, or missing; None if none.

    A number no rule names must still be finite. Shapes the rules do not expect (a list where a
    mapping belongs, a point of two numbers) are left to the models, which name them.
    """
    if isinstance(rule, Range):
        return None if rule.allows(data) else BadNumber(path, data, rule.describe())
    if isinstance(data, Mapping):
        rules = rule if isinstance(rule, Mapping) else {}
        for key, value in data.items():
            bad = find_bad_number(value, rules.get(key, rules.get("*")), _join(path, key))
            if bad:
                return bad
        for key, sub in rules.items():
            if isinstance(sub, Range) and sub.required and key != "*" and key not in data:
                return BadNumber(_join(path, key), None, sub.describe(), missing=True)
        return None
    if isinstance(data, list | tuple):
        items = [rule.rule] * len(data) if isinstance(rule, Each) else list(rule) if isinstance(rule, tuple) else []
        for i, value in enumerate(data):
            bad = find_bad_number(value, items[i] if i < len(items) else None, f"{path}[{i}]")
            if bad:
                return bad
        return None
    if isinstance(data, float) and not math.isfinite(data):
        return BadNumber(path or "(top level)", data, "a finite number")
    return None


def _join(path: str, key: Any) -> str:
    part = key if isinstance(key, str) and len(key) <= 120 else shorten(key)
    return f"{path}.{part}" if path else str(part)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else "inf" if value == math.inf else f"{value:g}"


class Entry(Frozen):
    """Isolated timing of one unit, in ms (`mean` is the timer's robust per-call figure), and its size.

    `params` and `macs` (the unit's parameters and multiply-accumulates) are features of the fit.
    """

    mean: float
    std: float
    count: int
    params: int | None = None
    macs: int | None = None


class Rescale(Frozen):
    """How a table was rescaled to the speed of another host (`nas.hardware.rescale`).

    Every millisecond of the table is the original one times `scale`: `measured_ms` of the
    reference network on this host over its `stored_ms` in the original table (times the
    original's own scale when it was a rescaled table already).
    """

    scale: float
    measured_ms: float
    stored_ms: float
    source: str
    source_sha256: str
    source_device_id: str
    rescaled_at: str


class Metadata(Frozen):
    """What was measured, where and how; `rescaled` when the milliseconds were rescaled to another host."""

    space: str
    space_config: dict[str, Any]
    device_id: str
    backend: str
    hardware: str
    batch: int
    dtype: str
    threads: int
    versions: dict[str, str]
    measured_at: str
    protocol: dict[str, Any] = Field(default_factory=dict)
    rescaled: Rescale | None = None


class Correction(Frozen):
    """A fitted correction: prediction = `intercept_ms` + sum of `entries[key]` over the arch's keys."""

    method: str
    intercept_ms: float
    entries: dict[str, float]
    params: dict[str, Any] = Field(default_factory=dict)
    fit_ms: list[float] = Field(default_factory=list)
    """Measured end-to-end ms of the fit archs, in draw order (seed stream [seed, 0]), for refitting."""


class Figures(Frozen):
    """Accuracy of one predictor against measured end-to-end latencies."""

    mape: float
    within_5: float
    within_10: float
    spearman: float


class Report(Figures):
    """Validation on held-out archs: corrected figures, naive (plain sum) figures and the noise floor.

    `points` holds one [measured, predicted, naive] triple (ms) per held-out arch, for plots.
    """

    n_archs: int
    noise: float
    naive: Figures
    passes: bool
    seed: int
    measured_at: str
    seconds: float | None = None
    points: list[tuple[float, float, float]] = Field(default_factory=list)


class TableFile(Frozen):
    """The whole table file."""

    metadata: Metadata
    entries: dict[str, Entry]
    correction: Correction | None = None
    validation: Report | None = None


__all__ = [
    "MAX_MS",
    "RULES",
    "SCALE",
    "BadNumber",
    "Correction",
    "Each",
    "Entry",
    "Figures",
    "Metadata",
    "Range",
    "Report",
    "Rescale",
    "TableFile",
    "find_bad_number",
]
