"""`Strategy`: the ask/tell contract every multi-trial search strategy implements.

A strategy proposes archs (`ask(n)`) and learns from their metrics (`tell`); it holds no
loop, Ray or timer. `ask` may run many times before any `tell`, and tells may come in any
order. A strategy sees the whole metrics dict of each arch and reads it through the search's
objective (`nas.objective`): a scalar strategy maximises `self.score(metrics)`, a Pareto one
reads `self.values(metrics)`. A strategy learns between batches of asks, so it says how many archs
are worth asking at once (`ask_batch`). Its whole state is JSON (`state_dict`), so a search resumes
exactly: same seed and same tell history give the same asks. A strategy whose library keeps
its own store (Optuna's journal) gets a `workdir` inside the run dir for it, and must bring
that store back to its saved state in `load_state_dict`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas import objective as objectives
from nas.arch import Arch
from nas.config import Frozen, Objective
from nas.errors import NasError, UserError, shorten
from nas.space import SearchSpace

SCALAR_KINDS = frozenset({"constrained", "weighted"})
ALL_KINDS = frozenset({"constrained", "weighted", "pareto"})
ANY_BATCH = 1_000_000_000
"""`Strategy.ask_batch` of a strategy whose asks never depend on its tells: a batch of any size."""


class StrategyConfig(Frozen):
    """Config keys every strategy accepts; a strategy subclasses this with its own."""


def at_most_population(size: int, info: Any, what: str) -> int:
    """A pydantic field check: a tournament's `size` draws distinct members, so it is at most the
    config's `population_size` (absent from `info.data` when that field failed its own check)."""
    population = info.data.get("population_size")
    if population is not None and size > population:
        raise ValueError(f"must be at most population_size ({population}), since a tournament draws distinct "
                         f"members of the population; lower the {what} or raise the population")
    return size


class Strategy(ABC):
    """Base class of ask/tell strategies.

    Subclasses register with `@STRATEGIES.register(name)`, set `config_model` (and `objectives`,
    the objective kinds they take), and implement `_propose` (and `_observe`, `_state`,
    `_load_state` when they learn; `_propose_many` when asking for several at once is cheaper;
    `ask_batch` when a batch of asks loses nothing; `_adopted` when a told arch must be one the
    strategy's library opened).
    """

    config_model: ClassVar[type[StrategyConfig]] = StrategyConfig
    objectives: ClassVar[frozenset[str]] = SCALAR_KINDS
    """Objective kinds (`nas.objective`) the strategy can follow."""

    def __init__(self, space: SearchSpace, config: StrategyConfig, objective: Objective, seed: int,
                 workdir: Path | None = None) -> None:
        self.space = space
        self.config = config
        self.objective = objective
        self.seed = seed
        self.workdir = workdir
        self.rng = np.random.default_rng(seed)
        self._pending: Counter[str] = Counter()
        self._pending_archs: dict[str, Arch] = {}
        self.n_asked = 0
        self.n_told = 0
        self._telling: tuple[Mapping[str, float], float] | None = None
        """During a tell: its metrics and their score, so `_observe` calling `score` does not score them again."""

    @property
    def ask_batch(self) -> int:
        """The most archs worth asking at once, before their results come back.

        A strategy learns only between batches: asked all at once, a search's archs all come from the
        strategy's initial state, as in random search. Where a batch may be of any size (archs scored in
        the search process, `nas.plan`), a search asks at most this many at once. 1 by default (learn
        from every tell); a strategy whose asks do not change until several tells are in (a generation
        of a genetic algorithm, a policy update) or never change (random search) says more.
        """
        return 1

    def ask(self, n: int = 1) -> list[Arch]:
        """The next `n` archs to evaluate (a batch: one per free worker)."""
        archs = self._propose_many(n)
        for arch in archs:
            self._add_pending(arch)
        return archs

    def adopt(self, arch: Arch) -> None:
        """Take `arch`, chosen outside the strategy, as if the strategy had asked it: it is pending, and its
        tell (or forget) teaches the strategy as one of its own asks would.

        The dedup wrapper adopts an unseen arch when the strategy proposes only archs the search has seen
        (`nas.strategies.dedup`), so a converged strategy goes on past its repeats.
        """
        self._adopted(arch)
        self._add_pending(arch)

    def _add_pending(self, arch: Arch) -> None:
        self._pending[arch.hash] += 1
        self._pending_archs[arch.hash] = arch
        self.n_asked += 1

    def tell(self, arch: Arch, metrics: Mapping[str, float]) -> float:
        """Report the metrics of an asked arch; returns its scalar score (`nas.objective.score`)."""
        self._unpend(arch)
        self.n_told += 1
        value = self.score(metrics)
        self._telling = (metrics, value)
        try:
            self._observe(arch, metrics)
        finally:
            self._telling = None
        return value

    def forget(self, arch: Arch) -> None:
        """Drop an asked arch that will never be told: it failed, or it duplicates an arch in flight.

        The strategy learns nothing from it; only the bookkeeping of pending archs changes.
        """
        self._unpend(arch)
        self._forgotten(arch)

    def score(self, metrics: Mapping[str, float]) -> float:
        """The scalar to maximise for these metrics (infeasible archs below every feasible one)."""
        if self._telling is not None and self._telling[0] is metrics:
            return self._telling[1]
        return objectives.score(self.objective, metrics)

    def values(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        """The optimised metrics, one per direction of `nas.objective.directions`."""
        return objectives.values(self.objective, metrics)

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

    def _propose_many(self, n: int) -> list[Arch]:
        """`n` new archs; by default `_propose` n times."""
        return [self._propose() for _ in range(n)]

    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        """Learn from one scored arch (no-op by default)."""

    def _forgotten(self, arch: Arch) -> None:
        """An asked arch will never be told (no-op by default; a library's open trial is closed here)."""

    def _adopted(self, arch: Arch) -> None:
        """`arch` is taken as asked though `_propose` did not give it (`adopt`; no-op by default: a strategy
        that learns from any told arch needs nothing; a library opens a trial with these choices here)."""

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


def parse_strategy_config(
    name: str, overrides: Mapping[str, Any], where: str | None = None, *, prefix: str = "",
    flags: Mapping[str, str] | None = None,
) -> StrategyConfig:
    """The checked config of strategy `name`: `strategies/<name>.yaml` with `overrides` on top.

    Args:
        name: a registered strategy (an unknown one is a `UserError` listing the known ones).
        overrides: the run config's `strategy_config`.
        where: the source, for messages (default `strategy <name> (<name>.yaml)`).
        prefix: key path of `overrides` in a larger config (`strategy_config.`), for messages.
        flags: full key path -> CLI flag, for messages (`--population-size`).
    """
    from nas.config import parse
    from nas.registry import STRATEGIES

    cls = STRATEGIES.get(name)
    if not isinstance(overrides, Mapping):
        raise UserError(f"{where or name}: strategy_config must be a mapping of keys; got {shorten(overrides)}")
    return parse(cls.config_model, {**strategy_defaults(name), **overrides}, where or f"strategy {name} ({name}.yaml)",
                 prefix=prefix, flags=flags, owner=f"the {name} strategy")


def strategy_defaults(name: str) -> dict[str, Any]:
    """The defaults of strategy `name`: its `strategies/<name>.yaml` (the one place they live), or none."""
    from nas.config import STRATEGIES_DIR
    from nas.files import load_yaml

    path = STRATEGIES_DIR / f"{name}.yaml"
    defaults = load_yaml(path) if path.exists() else None
    if defaults is not None and not isinstance(defaults, dict):
        raise UserError(f"{path}: strategy defaults must be a mapping of keys; got {shorten(defaults)}")
    return dict(defaults or {})


def build_strategy(
    name: str, overrides: Mapping[str, Any], space: SearchSpace, objective: Objective, seed: int,
    workdir: Path | None = None,
) -> Strategy:
    """The registered strategy `name` with `strategies/<name>.yaml` merged with `overrides`.

    Raises:
        UserError: the strategy cannot follow this kind of objective (e.g. `pareto` for a scalar one).
    """
    from nas.registry import STRATEGIES

    cls = STRATEGIES.get(name)
    check_objective_kind(name, objective)
    return cls(space, parse_strategy_config(name, overrides), objective, seed, workdir)


def check_objective_kind(name: str, objective: Objective) -> None:
    """Refuse an objective kind the strategy `name` cannot follow, naming the kinds it takes."""
    from nas.registry import STRATEGIES

    kinds = STRATEGIES.get(name).objectives
    if objective.kind not in kinds:
        able = sorted(n for n in STRATEGIES.names() if objective.kind in STRATEGIES.get(n).objectives)
        raise UserError(f"--strategy {name}: takes objectives {', '.join(sorted(kinds))}, not {objective.kind}; "
                        f"strategies for {objective.kind}: {', '.join(able)}")
