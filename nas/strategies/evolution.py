"""Regularized (aging) evolution, Real et al., "Regularized Evolution for Image
Classifier Architecture Search", AAAI 2019, Algorithm 1.

The population is a queue of the last `population_size` scored archs. Until that
many archs have been asked, asks are uniform samples; after that each ask draws
`sample_size` members at random, mutates the best of them, and each tell appends
the child and drops the oldest member (aging), not the worst.
Deviation: with parallel trials, tells arrive in completion order; while the
population is still empty (every early ask in flight) asks stay random samples.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from nas.arch import Arch
from nas.registry import STRATEGIES
from nas.strategies.base import Strategy, StrategyConfig

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
    def _at_most_population(cls, sample_size: int, info: ValidationInfo) -> int:
        population = info.data.get("population_size")  # absent when it failed its own check
        if population is not None and sample_size > population:
            raise ValueError(f"must be at most population_size ({population}), since a tournament samples "
                             "members of the population; lower the sample size or raise the population")
        return sample_size


@STRATEGIES.register("evolution")
class RegularizedEvolution(Strategy):
    """Aging evolution with tournament selection and single-decision mutation."""

    config_model = EvolutionConfig
    config: EvolutionConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.population: deque[tuple[Arch, float]] = deque(maxlen=self.config.population_size)

    def _propose(self) -> Arch:
        if self.n_asked < self.config.population_size or not self.population:
            return self.space.sample(self.rng)
        size = min(self.config.sample_size, len(self.population))
        picks = self.rng.choice(len(self.population), size=size, replace=False).tolist()
        members = [self.population[i] for i in picks]
        return self.space.mutate(max(members, key=_SCORE)[0], self.rng)  # the first of equal scores

    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        self.population.append((arch, self.score(metrics)))

    def _state(self) -> dict[str, Any]:
        return {"population": [[a.to_dict(), v] for a, v in self.population]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.population.clear()
        self.population.extend((Arch.from_dict(a), v) for a, v in state["population"])
