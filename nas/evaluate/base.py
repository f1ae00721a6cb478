"""`Evaluator`: turns an `Arch` into a plain dict of metrics.

Kinds (registered in `EVALUATORS`): `lut` prices an arch from the latency table and
its unit costs without training; `train` trains it briefly on a data set. Every
evaluator reports `params` and `macs` (counted from built modules) and `latency_ms`
when a latency table is given. An evaluator is built inside a Ray worker from a plain
`EvaluatorSpec`, so nothing but JSON crosses the wire; one that is a table lookup
(`in_process`: `lut`, `tabular`) is built in the search process instead, and scores a
whole batch at once (`evaluate_many`, priced with arrays by `cost_metrics_many`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from nas.arch import Arch
from nas.config import Frozen
from nas.errors import UserError
from nas.registry import EVALUATORS
from nas.space import SearchSpace, load_space

if TYPE_CHECKING:
    import numpy as np


class EvaluatorConfig(Frozen):
    """Config keys every evaluator accepts; subclasses add their own."""


class EvaluatorSpec(Frozen):
    """Everything a worker needs to build an evaluator: plain, JSON-ready data."""

    space: str
    space_config: dict[str, Any] = Field(default_factory=dict)
    evaluator: str
    config: dict[str, Any] = Field(default_factory=dict)
    table: str | None = None
    table_sha256: str | None = None
    """sha256 of the table file the driver checked: a worker refuses a file changed since."""


class Evaluator(ABC):
    """Base class of evaluators.

    Attributes:
        metrics: names of the metrics `evaluate` returns.
        default_metric: what a search optimises when the objective names nothing else.
        archs_per_trial: archs scored by one trial by default (many for cheap evaluators,
            since one Ray Tune trial costs about a second to schedule).
        needs_table: whether a latency table is required.
        in_process: whether scoring an arch is a table lookup, cheaper than a Ray Tune trial by far:
            a search without a cluster (`nas.runner.runs_in_process`) then scores archs in its own
            process, a batch at a time with `evaluate_many`.
        table_metrics: the metrics measured only when a latency table is given.
    """

    config_model: ClassVar[type[EvaluatorConfig]] = EvaluatorConfig
    metrics: ClassVar[tuple[str, ...]]
    default_metric: ClassVar[str]
    archs_per_trial: ClassVar[int] = 1
    needs_table: ClassVar[bool] = False
    in_process: ClassVar[bool] = False
    table_metrics: ClassVar[tuple[str, ...]] = ("latency_ms",)
    """Metrics measured only with a latency table (`cost_metrics` prices latency from one)."""

    def __init__(self, space: SearchSpace, config: EvaluatorConfig, table: Any | None) -> None:
        if self.needs_table and table is None:
            raise UserError(f"evaluator {type(self).__name__} needs a latency table (--hardware)")
        if table is not None:
            table.check_covers(space)  # fail when the search starts, not when a worker meets the key
        self.space = space
        self.config = config
        self.table = table

    @abstractmethod
    def evaluate(self, arch: Arch) -> dict[str, float]:
        """Metrics of `arch`."""

    def evaluate_many(self, archs: Sequence[Arch]) -> list[dict[str, float]]:
        """Metrics of each of `archs`, in order: `evaluate` one by one unless an evaluator prices a batch at once."""
        return [self.evaluate(arch) for arch in archs]

    def cost_metrics(self, arch: Arch) -> dict[str, float]:
        """Params, MACs and (with a table) LUT latency of `arch`: the metrics every evaluator has."""
        keys = self.space.latency_keys(arch)
        metrics: dict[str, float] = dict(self.space.cost_of_keys(keys))
        if self.table is not None:
            metrics["latency_ms"] = self.table.predict_keys(keys, what=f"arch {arch.short_hash}")
        return metrics

    def cost_metrics_many(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        """`cost_metrics` of many archs as arrays (one entry per arch), summed over the space's latency terms
        (`nas.pricing.cost_many`, `LatencyTable.predict_many`) instead of each arch's keys: the same numbers
        (latency within float rounding: another order of summation). The first call counts every unit."""
        from nas.pricing import choice_indices, cost_many

        indices = choice_indices(self.space, archs)
        params, macs = cost_many(self.space, indices)
        metrics = {"params": params, "macs": macs}
        if self.table is not None:
            metrics["latency_ms"] = self.table.predict_many(self.space, indices)
        return metrics


def metric_rows(columns: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """Metrics given as arrays (one entry per arch) as one plain dict per arch (Python ints and floats)."""
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*(columns[n].tolist() for n in names), strict=True)]


def evaluator_class(name: str) -> type[Evaluator]:
    """The registered evaluator class `name` (a `UserError` lists the known ones)."""
    return EVALUATORS.get(name)


def build_evaluator(spec: EvaluatorSpec) -> Evaluator:
    """Build the evaluator a spec describes (validates its config)."""
    from nas.config import parse
    from nas.hardware import LatencyTable

    cls = evaluator_class(spec.evaluator)
    config = parse(cls.config_model, spec.config, f"evaluator {spec.evaluator} config")
    space = load_space(spec.space, spec.space_config)
    table = LatencyTable.load(spec.table) if spec.table else None
    if table is not None and spec.table_sha256 is not None and table.sha256 != spec.table_sha256:
        raise UserError(f"latency table {spec.table} changed since the search started (sha256 {table.sha256[:12]}, "
                        f"was {spec.table_sha256[:12]}); re-run the same command to price with one table")
    return cls(space, config, table)
