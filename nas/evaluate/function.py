"""`function`: an evaluator that scores an arch with a user's Python function, for `nas.search(evaluator=fn)`.

The function takes an `Arch` and returns a mapping of metric names to numbers, at least the metrics
it declares (`measures`); params, MACs and (with a latency table) LUT latency are added as every
evaluator reports them, unless the function returns its own. It runs in the search process, through
the same `Search` and trial log as every evaluator: an exception it raises is an evaluation error
(retried, then a failed trial), and a stopped search resumes. The class registered as `function`
holds no function, since the CLI and Ray workers build evaluators from JSON: its config is refused
without the name `nas.search` stores, and building it is refused. `bind` makes the subclass that
holds one, which `nas.runner.run_search(evaluator_cls=...)` scores archs with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator

from nas.arch import Arch
from nas.config import MetricName
from nas.errors import UserError, shorten
from nas.evaluate.base import Evaluator, EvaluatorConfig
from nas.registry import EVALUATORS

Function = Callable[[Arch], Mapping[str, Any]]
"""A user's evaluator: arch -> metrics."""
_COST = ("params", "macs", "latency_ms")
_FROM_PYTHON = ("the function evaluator scores archs with a Python function, so it runs from Python only: "
                "nas.search(space, evaluator=my_function, measures=[...]); from the CLI choose lut, tabular or train")


class FunctionConfig(EvaluatorConfig):
    """What `nas.search` stores of a function: its name (for the record) and the metrics it declares."""

    function: str = Field(default="", max_length=300, validate_default=True)
    measures: tuple[MetricName, ...] = Field(default=(), max_length=64)

    @field_validator("function")
    @classmethod
    def _named(cls, name: str) -> str:
        if not name:
            raise ValueError(_FROM_PYTHON)
        return name


@EVALUATORS.register("function")
class FunctionEvaluator(Evaluator):
    """Scores archs with `function` (set by `bind`); the registered class has none and is refused when built."""

    config_model = FunctionConfig
    config: FunctionConfig
    metrics = ("params", "macs")
    default_metric = "macs"
    in_process = True
    function: ClassVar[Function | None] = None

    def __init__(self, space: Any, config: FunctionConfig, table: Any | None) -> None:
        if type(self).function is None:
            raise UserError(_FROM_PYTHON)
        super().__init__(space, config, table)
        self._scored: dict[str, tuple[dict[str, Any] | None, Exception | None]] = {}

    def evaluate(self, arch: Arch) -> dict[str, Any]:
        """`function(arch)` with the cost metrics added; what it raises is this arch's evaluation error."""
        metrics, error = self._scored.pop(arch.hash, None) or self._call(arch)
        if error is not None:
            raise error
        return metrics

    def evaluate_many(self, archs: Sequence[Arch]) -> list[dict[str, Any]]:
        """Each arch scored once: should one fail, `nas.runner.score_archs` asks for the archs one by one, and
        each then gets the outcome of this call (the function is not run twice for it)."""
        outcomes = [self._call(arch) for arch in archs]
        errors = [error for _, error in outcomes if error is not None]
        if not errors:
            return [metrics for metrics, _ in outcomes]
        self._scored = {arch.hash: outcome for arch, outcome in zip(archs, outcomes, strict=True)}
        raise errors[0]

    def _call(self, arch: Arch) -> tuple[dict[str, Any] | None, Exception | None]:
        try:
            returned = type(self).function(arch)
            if not isinstance(returned, Mapping):
                raise TypeError(f"the function returned {shorten(returned, 60)}; allowed: a dict of metric names "
                                "to numbers")
            missing = [m for m in self.config.measures if m not in returned]
            if missing:
                raise ValueError(f"the function returned no {missing[0]}; it declares measures "
                                 f"{', '.join(self.config.measures)}; got keys {shorten(sorted(map(str, returned)))}")
            return {**self.cost_metrics(arch), **returned}, None
        except Exception as err:  # the user's code may raise anything: it is this arch's error
            return None, err


def bind(function: Function, measures: Sequence[str]) -> type[FunctionEvaluator]:
    """A `FunctionEvaluator` class that scores archs with `function`, which returns at least `measures`.

    What it measures: `measures`, then params, MACs and LUT latency; the first of `measures` is the
    default metric. Latency counts as measured without a table when the function returns it itself.
    """
    measured = tuple(dict.fromkeys([*measures, *_COST]))
    table_metrics = () if "latency_ms" in measures else ("latency_ms",)
    return type("BoundFunctionEvaluator", (FunctionEvaluator,), {
        "function": staticmethod(function), "metrics": measured, "default_metric": measures[0],
        "table_metrics": table_metrics, "archs_per_trial": 1, "__module__": __name__,
    })


__all__ = ["FunctionConfig", "FunctionEvaluator", "bind"]
