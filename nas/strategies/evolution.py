"""Regularized (aging) evolution, Real et al., "Regularized Evolution for Image
Classifier Architecture Search", AAAI 2019, Algorithm 1.

The population is a queue of the last `population_size` scored archs. Until that
many archs have been asked, asks are uniform samples; after that each ask draws
`sample_size` members at random, mutates the best of them, and each tell appends
the child and drops the oldest member (aging), not the worst.
Deviations: with parallel trials, tells arrive in completion order; while the
population is still empty (every early ask in flight) asks stay random samples.
A batch of asks draws its tournaments and mutations with a few array draws
(`SearchSpace.mutate_many`): the same distributions as one ask at a time, at a
fraction of the cost, in another order of random numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from nas.arch import Arch
from nas.errors import NasError
from nas.registry import STRATEGIES
from nas.strategies.base import Strategy, StrategyConfig, at_most_population

_SCORE = itemgetter(1)  # of a population member (arch, score)
MAX_POPULATION = 10_000
"""Largest population: the whole population is saved in `strategy.json` after every ask and tell
(about 1 KB per arch), and the paper's largest was 1,000."""


class EvolutionConfig(StrategyConfig):
    """Hyper-parameters of regularized evolution (defaults in strategies/evolution.yaml).

    `population_size` is P, in [2, `MAX_POPULATION`]; `sample_size` is S, the tournament size, in
    [1, P] (the paper's Algorithm 1 samples S of the P members).
    """

    population_size: int = Field(ge=2, le=MAX_POPULATION)
    sample_size: int = Field(ge=1, le=MAX_POPULATION)

    @field_validator("sample_size")
    @classmethod
    def _at_most_population(cls, size: int, info: ValidationInfo) -> int:
        return at_most_population(size, info, "sample size")


@STRATEGIES.register("evolution")
class RegularizedEvolution(Strategy):
    """Aging evolution with tournament selection and single-decision mutation."""

    config_model = EvolutionConfig
    config: EvolutionConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.population: deque[tuple[Arch, float]] = deque(maxlen=self.config.population_size)

    @property
    def ask_batch(self) -> int:
        """A fifth of the population (10 of the default 50): a batch's children are bred without their siblings'
        results. On NAS-Bench-201 (population 50, 40 seeds) batches of 1, 5, 10 and 25 found equally good archs
        at 100 and 300 archs; a batch of the whole population was worse at 100."""
        return max(1, self.config.population_size // 5)

    def _propose(self) -> Arch:
        return self._propose_many(1)[0]

    def _propose_many(self, n: int) -> list[Arch]:
        if self.n_asked < self.config.population_size or not self.population:
            return [self.space.sample(self.rng) for _ in range(n)]
        population = self.population
        rows = _tournaments(self.rng, n, len(population), min(self.config.sample_size, len(population)))
        parents = [max([population[i] for i in row], key=_SCORE)[0] for row in rows.tolist()]  # first of equals
        return self.space.mutate_many(parents, self.rng)

    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        self.population.append((arch, self.score(metrics)))

    def _state(self) -> dict[str, Any]:
        return {"population": [[a.to_dict(), v] for a, v in self.population]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.population.clear()
        self.population.extend((Arch.from_dict(a), v) for a, v in state["population"])


def _tournaments(rng: np.random.Generator, n: int, population: int, size: int) -> np.ndarray:
    """(n, size) member indices, each row `size` distinct members drawn uniformly (a tournament)."""
    if size * size > population:  # rows of distinct draws would be rare: sort random keys instead
        return rng.random((n, population)).argsort(axis=1)[:, :size]
    rows = rng.integers(population, size=(n, size))
    for _ in range(1000):  # a row with a repeat is drawn again: uniform over rows of distinct members
        ordered = np.sort(rows, axis=1)
        repeats = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(repeats):
            return rows
        rows[repeats] = rng.integers(population, size=(len(repeats), size))
    raise NasError(f"evolution: no tournament of {size} distinct members of {population} in 1000 draws")
