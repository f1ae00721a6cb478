"""The latency table file, as typed models: metadata, entries, correction and validation report.

`nas.hardware.table.LatencyTable` reads and writes files of this shape; the models are
frozen and reject unknown keys, like every config model.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nas.config import Frozen


class Entry(Frozen):
    """Isolated timing of one unit, in ms (`mean` is the timer's robust per-call figure), and its size.

    `params` and `macs` (the unit's parameters and multiply-accumulates) are features of the fit.
    """

    mean: float = Field(ge=0)
    std: float = Field(ge=0)
    count: int = Field(ge=1)
    params: int | None = Field(default=None, ge=0)
    macs: int | None = Field(default=None, ge=0)


class Rescale(Frozen):
    """How a table was rescaled to the speed of another host (`nas.hardware.rescale`).

    Every millisecond of the table is the original one times `scale`: `measured_ms` of the
    reference network on this host over its `stored_ms` in the original table (times the
    original's own scale when it was a rescaled table already).
    """

    scale: float = Field(gt=0)
    measured_ms: float = Field(gt=0)
    stored_ms: float = Field(gt=0)
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
    batch: int = Field(ge=1)
    dtype: str
    threads: int = Field(ge=1)
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


__all__ = ["Correction", "Entry", "Figures", "Metadata", "Report", "Rescale", "TableFile"]
