"""`Strategy`: the ask/tell contract every multi-trial search strategy implements.

A strategy proposes archs (`ask`) and learns from their metrics (`tell`); it holds
no loop, Ray, timer or file handle. `ask` may run many times before any `tell`, and
tells may come in any order. Its whole state is JSON (`state_dict`), so a search
resumes exactly: same seed and same tell history give the same asks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from nas.arch import Arch
from nas.config import Frozen, Objective
from nas.errors import NasError, UserError
from nas.space import SearchSpace

INFEASIBLE = -1e9
"""Score offset of an arch that breaks a bound: below every feasible score."""


_BOUNDS = (("latency_ms", "max_latency_ms"), ("params", "max_params"))


def violations(objective: Objective, metrics: Mapping[str, float]) -> dict[str, list[float]]:
    """The bounds `metrics` break: metric -> [value, bound] (empty when the arch is feasible)."""
    broken = {}
    for metric, field in _BOUNDS:
        bound = getattr(objective, field)
        if bound is not None and metric in metrics and float(metrics[metric]) > bound:
            broken[metric] = [float(metrics[metric]), float(bound)]
    return broken


def score(objective: Objective, metrics: Mapping[str, float]) -> float:
    """Scalar to maximise: the objective's metric (negated for `min`) if every bound holds.

    An arch that breaks a bound scores `INFEASIBLE * (1 + total relative violation)`,
    so among infeasible archs the one nearer the bounds ranks higher.
    """
    if objective.metric not in metrics:
        raise UserError(
            f"objective metric {objective.metric!r} is not measured by this evaluator; "
            f"available: {', '.join(sorted(metrics))}"
        )
    violation = 0.0
    for metric, bound in (("latency_ms", objective.max_latency_ms), ("params", objective.max_params)):
        if bound is not None:
            violation += max(0.0, float(metrics[metric]) / bound - 1.0)
    if violation > 0:
        return INFEASIBLE * (1.0 + violation)
    value = float(metrics[objective.metric])
    return value if objective.mode == "max" else -value


class StrategyConfig(Frozen):
    """Config keys every strategy accepts; a strategy subclasses this with its own."""


class Strategy(ABC):
    """Base class of ask/tell strategies.

    Subclasses register with `@STRATEGIES.register(name)`, set `config_model`, and
    implement `_propose` (and `_observe`, `_state`, `_load_state` when they learn).
    """

    config_model: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, space: SearchSpace, config: StrategyConfig, objective: Objective, seed: int) -> None:
        self.space = space
        self.config = config
        self.objective = objective
        self.rng = np.random.default_rng(seed)
        self._pending: Counter[str] = Counter()
        self._pending_archs: dict[str, Arch] = {}
        self.n_asked = 0
        self.n_told = 0

    def ask(self) -> Arch:
        """The next arch to evaluate."""
        arch = self._propose()
        self._pending[arch.hash] += 1
        self._pending_archs[arch.hash] = arch
        self.n_asked += 1
        return arch

    def tell(self, arch: Arch, metrics: Mapping[str, float]) -> float:
        """Report the metrics of an asked arch; returns the score it got."""
        self._unpend(arch)
        value = score(self.objective, metrics)
        self.n_told += 1
        self._observe(arch, value)
        return value

    def forget(self, arch: Arch) -> None:
        """Drop an asked arch that will never be told: it failed, or it duplicates an arch in flight.

        The strategy learns nothing from it; only the bookkeeping of pending archs changes.
        """
        self._unpend(arch)

    def _unpend(self, arch: Arch) -> None:
        if self._pending[arch.hash] <= 0:
            raise NasError(f"told {arch!r}, which was never asked (or was told already)")
        self._pending[arch.hash] -= 1
        if not self._pending[arch.hash]:
            del self._pending[arch.hash], self._pending_archs[arch.hash]

    def pending(self) -> list[Arch]:
        """Archs asked but not told yet (in-flight), each as often as it is pending."""
        return [self._pending_archs[h] for h, n in self._pending.items() for _ in range(n)]

    @abstractmethod
    def _propose(self) -> Arch:
        """A new arch (the base records it as pending)."""

    def _observe(self, arch: Arch, value: float) -> None:
        """Learn from one scored arch (no-op by default)."""

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `_state` saved (no-op by default)."""

    def state_dict(self) -> dict[str, Any]:
        """The whole state as JSON-ready data: counters, pending archs, RNG state, subclass state."""
        return {
            "rng": self.rng.bit_generator.state,
            "n_asked": self.n_asked,
            "n_told": self.n_told,
            "pending": [a.to_dict() for a in self.pending()],
            **self._state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by `state_dict`, in a strategy built with the same space and config."""
        self.rng.bit_generator.state = state["rng"]
        self.n_asked, self.n_told = state["n_asked"], state["n_told"]
        self._pending.clear()
        self._pending_archs.clear()
        for data in state["pending"]:
            arch = Arch.from_dict(data)
            self._pending[arch.hash] += 1
            self._pending_archs[arch.hash] = arch
        self._load_state(state)


def build_strategy(
    name: str, overrides: Mapping[str, Any], space: SearchSpace, objective: Objective, seed: int
) -> Strategy:
    """The registered strategy `name` with `strategies/<name>.yaml` merged with `overrides`."""
    from nas.config import STRATEGIES_DIR, load_yaml, parse
    from nas.registry import STRATEGIES

    cls = STRATEGIES.get(name)
    path = STRATEGIES_DIR / f"{name}.yaml"
    defaults = load_yaml(path) if path.exists() else {}
    config = parse(cls.config_model, {**(defaults or {}), **overrides}, f"strategy {name} ({path.name})")
    return cls(space, config, objective, seed)
