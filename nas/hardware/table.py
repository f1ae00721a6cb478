"""`LatencyTable`: a measured latency lookup table for one space, device and batch size.

A table file (`hardware_profiles/<device-id>/<space>-r<resolution>.yaml`) holds the
metadata of the measurement (space and its config, device id, backend, batch, dtype,
threads, library versions, date, timing protocol), one entry per latency key (the
isolated timing of that unit: mean, std, count), the fitted correction (an intercept
and one corrected value per key, see `nas.hardware.profile`) and the validation
report. `predict(arch)` is the intercept plus the sum of the corrected values of the
arch's keys (the plain isolated means when there is no correction): dict look-ups
only, so it is cheap enough to call inside a search loop. Files are written to a
temp file in the same directory and `os.replace`d, so a table is never half-written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field

from nas.config import PROFILES_DIR, Frozen, load_yaml, parse
from nas.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from nas.arch import Arch
    from nas.space import SearchSpace


class Entry(Frozen):
    """Isolated timing of one unit, in ms (`mean` is the timer's robust per-call figure), and its size.

    `params` and `macs` (the unit's parameters and multiply-accumulates) are features of the fit.
    """

    mean: float = Field(ge=0)
    std: float = Field(ge=0)
    count: int = Field(ge=1)
    params: int | None = Field(default=None, ge=0)
    macs: int | None = Field(default=None, ge=0)


class Metadata(Frozen):
    """What was measured, where and how."""

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


class LatencyTable:
    """A latency lookup table, optionally bound to its space (`load(path, space)`).

    Args:
        data: the parsed table.
        source: where it came from, for messages (a path or `<memory>`).
        space: the space whose archs it prices (checked); when absent, `predict` loads it by name.
    """

    def __init__(self, data: TableFile, source: str = "<memory>", space: SearchSpace | None = None) -> None:
        if data.correction is not None and set(data.correction.entries) != set(data.entries):
            extra = sorted(set(data.correction.entries) ^ set(data.entries))
            raise UserError(f"{source}: correction keys differ from entry keys ({len(extra)} differ, "
                            f"e.g. {extra[0]!r}); re-profile the table")
        self.data = data
        self.source = source
        self._space: SearchSpace | None = None
        self._costs_cache: dict[int, list[np.ndarray]] = {}
        if data.correction is None:
            self._values = {k: e.mean for k, e in data.entries.items()}
            self._intercept = 0.0
        else:
            self._values = dict(data.correction.entries)
            self._intercept = data.correction.intercept_ms
        if space is not None:
            self.check_matches(space)
            self._space = space

    # -- files ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None, batch: int | None = None) -> LatencyTable:
        """Read a table file, checked against `space` and `batch` when given.

        A missing, corrupt or wrong-shaped file is a `UserError` naming it.
        """
        data = load_yaml(Path(path))
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a latency table (expected a mapping with metadata and entries, "
                            f"got {type(data).__name__}); re-profile it with `nas profile`")
        table = cls(parse(TableFile, data, str(path)), str(path))
        if space is not None:
            table.check_matches(space, batch)
            table._space = space
        return table

    def save(self, path: str | Path) -> None:
        """Write the table atomically (temp file in the same directory, then `os.replace`)."""
        from nas.run_dir import write_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(self.data.model_dump(), sort_keys=True))
        self.source = str(path)

    def replace(self, **fields: Any) -> LatencyTable:
        """A copy with top-level fields (`correction`, `validation`) replaced."""
        return LatencyTable(self.data.model_copy(update=fields), self.source, self._space)

    # -- views --------------------------------------------------------------------------
    @property
    def metadata(self) -> Metadata:
        return self.data.metadata

    @property
    def entries(self) -> Mapping[str, Entry]:
        return self.data.entries

    @property
    def correction(self) -> Correction | None:
        return self.data.correction

    @property
    def validation(self) -> Report | None:
        return self.data.validation

    # -- prediction ---------------------------------------------------------------------
    def predict(self, arch: Arch) -> float:
        """Predicted latency of `arch` in ms."""
        meta = self.data.metadata
        if arch.space != meta.space or arch.config != meta.space_config:
            raise UserError(f"{self.source}: table is for space {meta.space} at {meta.space_config}; "
                            f"arch {arch.short_hash} is {arch.space} at {dict(arch.config)}")
        space = self._space
        if space is None:
            from nas.space import space_of

            space = self._space = space_of(arch)
        return self.predict_keys(space.latency_keys(arch), what=f"arch {arch.short_hash}")

    def predict_keys(self, keys: Iterable[str], what: str = "these keys") -> float:
        """Intercept plus the sum of the (corrected) entries of `keys`."""
        values = self._values
        try:
            return self._intercept + sum([values[k] for k in keys])
        except KeyError:
            self._raise_missing(list(keys), what)
            raise

    def expected_latency(self, probs: Mapping[str, torch.Tensor], space: SearchSpace | None = None) -> torch.Tensor:
        """Expected latency (ms) of an arch whose decisions are drawn independently from `probs`.

        A differentiable torch expression for one-shot methods: the intercept plus, for every
        latency term of the space (`SearchSpace.latency_terms`), the cost of each combination of
        the term's choices weighted by the product of their probabilities. Exact under
        independent decisions; with one-hot `probs` it equals `predict` of that arch.

        Args:
            probs: decision name -> probabilities over its choices (in the decision's order),
                one 1-D tensor each; decisions that no latency term reads may be left out.
            space: the space of the table (the bound one, or loaded by name, by default).
        """
        import torch

        if space is None:
            space = self._space or _load_table_space(self.data.metadata)
        elif space is not self._space:
            self.check_matches(space)
        decisions = {d.name: d for d in space.decisions()}
        total = None
        for term, cost in zip(space.latency_terms(), self._term_costs(space), strict=True):
            value = torch.as_tensor(cost)
            for name in reversed(term.decisions):  # contract the last axis with its probabilities
                p = probs.get(name)
                allowed = len(decisions[name].choices)
                if p is None or p.dim() != 1 or p.shape[0] != allowed:
                    got = "nothing" if p is None else f"shape {tuple(p.shape)}"
                    raise UserError(f"expected latency: decision {name!r} needs a 1-D tensor of {allowed} "
                                    f"probabilities ({', '.join(map(str, decisions[name].choices))}); got {got}")
                value = value.to(p.dtype) @ p
            total = value if total is None else total + value
        return total + self._intercept

    def lower_bound(self, space: SearchSpace | None = None) -> float:
        """A lower bound (ms) of the predicted latency of every arch of the space: the intercept plus each
        latency term's cheapest combination (exact where terms share no decisions).

        A fitted intercept may be negative (see `nas.hardware.profile`), so this is what shows that
        no arch is predicted to take no time.
        """
        if space is None:
            space = self._space or _load_table_space(self.data.metadata)
        elif space is not self._space:
            self.check_matches(space)
        return self._intercept + sum(float(cost.min()) for cost in self._term_costs(space))

    def _term_costs(self, space: SearchSpace) -> list[np.ndarray]:
        """Per term, the cost (ms) of every combination of its decisions' choices, cached per space."""
        import numpy as np

        cached = self._costs_cache.get(id(space))
        if cached is None:
            choices = {d.name: d.choices for d in space.decisions()}
            cached = []
            for term in space.latency_terms():
                axes = [choices[name] for name in term.decisions]
                cost = np.zeros([len(a) for a in axes])
                for index in np.ndindex(*cost.shape):
                    keys = term.keys(tuple(axis[i] for axis, i in zip(axes, index, strict=True)))
                    cost[index] = self.predict_keys(keys, what=f"latency term {term.decisions}") - self._intercept
                cached.append(cost)
            self._costs_cache[id(space)] = cached
        return cached

    def predict_naive(self, keys: Iterable[str]) -> float:
        """Plain sum of the isolated timings of `keys` (no correction)."""
        entries = self.data.entries
        try:
            return sum(entries[k].mean for k in keys)
        except KeyError:
            self._raise_missing(list(keys), "these keys")
            raise

    def _raise_missing(self, keys: list[str], what: str) -> None:
        missing = sorted({k for k in keys if k not in self._values})
        if missing:
            meta = self.data.metadata
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise UserError(
                f"{self.source}: latency table lacks {len(missing)} of the {len(set(keys))} keys of {what} "
                f"({shown}); re-profile with `{profile_command(meta.space, meta.backend, meta.batch, meta.threads)}`"
            )

    # -- matching -----------------------------------------------------------------------
    def check_covers(self, space: SearchSpace) -> None:
        """Refuse a table lacking keys some arch of `space` needs, before a search prices any arch."""
        self._raise_missing(space.all_latency_keys(), f"space {space.name}")

    def check_matches(self, space: SearchSpace, batch: int | None = None) -> None:
        """Refuse a table measured for another space, space config (resolution, classes, ...) or batch."""
        meta = self.data.metadata
        fix = f"profile it with `{profile_command(space.name, meta.backend, batch or meta.batch, meta.threads)}`"
        if meta.space != space.name:
            raise UserError(f"{self.source}: table is for space {meta.space!r}, not {space.name!r}; {fix}")
        config = space.config.model_dump(mode="json")
        if meta.space_config != config:
            diff = sorted(k for k in set(config) | set(meta.space_config)
                          if config.get(k) != meta.space_config.get(k))
            shown = ", ".join(f"{k}={meta.space_config.get(k)!r} (want {config.get(k)!r})" for k in diff)
            raise UserError(f"{self.source}: table was measured at another {space.name} config: {shown}; {fix}")
        if batch is not None and batch != meta.batch:
            raise UserError(f"{self.source}: table was measured at batch {meta.batch}, not {batch}; {fix}")


def _load_table_space(meta: Metadata) -> SearchSpace:
    from nas.space import load_space

    return load_space(meta.space, meta.space_config)


def profile_command(space: str, backend: str, batch: int, threads: int) -> str:
    """The `nas profile` command line that measures a table."""
    return f"nas profile --space {space} --device {backend} --batch {batch} --threads {threads}"


def table_path(device_id: str, space: SearchSpace) -> Path:
    """Where the table of `space` measured on `device_id` lives: `hardware_profiles/<id>/<space>-r<R>.yaml`."""
    return PROFILES_DIR / device_id / f"{space.name}-r{space.config.resolution}.yaml"


def resolve_table(
    hardware: str | None, space: SearchSpace, batch: int, backend: str = "cpu", threads: int = 1
) -> LatencyTable:
    """Find, load and check the table that prices `space` at `batch`, bound to `space`.

    Args:
        hardware: a table file path, a device id under `hardware_profiles/`, or None for the
            default device id of this machine's `backend` timer with `threads` threads.
    """
    command = profile_command(space.name, backend, batch, threads)
    if hardware is not None and (hardware.endswith((".yaml", ".yml")) or os.sep in hardware):
        path = Path(hardware)
        if not path.is_file():
            raise UserError(f"latency table {path} not found; make it with `{command}`")
        return LatencyTable.load(path, space, batch)
    if hardware is None:
        from nas.registry import TIMERS

        hardware = TIMERS.get(backend)(threads=threads, batch=batch).device_id
    path = table_path(hardware, space)
    if not path.is_file():
        known = sorted(p.name for p in PROFILES_DIR.iterdir() if p.is_dir()) if PROFILES_DIR.is_dir() else []
        raise UserError(f"no latency table for device {hardware!r}: looked for {path}; make it with "
                        f"`{command}` (profiled devices: {', '.join(known) or 'none'})")
    return LatencyTable.load(path, space, batch)


__all__ = [
    "Correction",
    "Entry",
    "Figures",
    "LatencyTable",
    "Metadata",
    "Report",
    "TableFile",
    "profile_command",
    "resolve_table",
    "table_path",
]
