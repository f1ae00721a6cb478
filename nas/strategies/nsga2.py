"""NSGA-II, Deb et al., "A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II", IEEE
TEC 2002, through Optuna's own `NSGAIISampler` (not re-implemented here).

Each generation of `population_size` archs is bred from the elite of the previous
generation and its parents: non-dominated sorting, then crowding distance. A child takes
each decision from one of two parents (uniform crossover, with probability
`crossover_prob`; Optuna applies uniform crossover to categorical parameters whatever
crossover is set, so none is offered), then each decision is redrawn at random with
probability `mutation_prob` (None: 1 / number of decisions, the paper's 1/n).
Objectives: with a `pareto` objective the study has one direction per metric
(`nas.objective.directions`) and is told `self.values`; an arch that breaks a hard bound gets
Optuna's constraint (its total relative violation, `Trial.set_constraint`), so constrained
domination ranks it below every feasible arch, and nearer the bounds above farther. With a
scalar objective it is a single-objective GA on `self.score` (with the same constraint).
The study, journal, invalid archs and exact resume are shared with TPE (`nas.strategies._optuna`).
Deviations from the paper: archs come from Optuna's ask/tell, so a generation is the archs
asked while the previous one had fewer than `population_size` told archs (parallel asks can
make a generation larger); invalid archs are pruned and left out of every population.
"""

from __future__ import annotations

from collections.abc import Mapping

from optuna.samplers import BaseSampler, NSGAIISampler
from pydantic import Field

from nas import objective as objectives
from nas.registry import STRATEGIES
from nas.strategies._optuna import OptunaConfig, OptunaStrategy, directions_of
from nas.strategies.base import ALL_KINDS

MAX_POPULATION = 10_000
"""Largest population: Optuna sorts a generation and its parents in memory on each new generation."""


class NSGA2Config(OptunaConfig):
    """Hyper-parameters of NSGA-II (defaults in strategies/nsga2.yaml)."""

    population_size: int = Field(ge=2, le=MAX_POPULATION, description="archs per generation")
    crossover_prob: float = Field(ge=0, le=1, description="chance that a child is bred from two parents, not copied")
    swapping_prob: float = Field(ge=0, le=1, description="chance that crossover takes a decision from the 2nd parent")
    mutation_prob: float | None = Field(ge=0, le=1, description="chance that a child's decision is redrawn at random "
                                                                "(null: 1 / number of decisions)")


@STRATEGIES.register("nsga2")
class NSGA2(OptunaStrategy):
    """Optuna's NSGA-II sampler on any objective: Pareto, or one score."""

    objectives = ALL_KINDS
    config_model = NSGA2Config
    config: NSGA2Config

    @property
    def ask_batch(self) -> int:
        """A generation: Optuna breeds it from the previous generations, not from its own results."""
        return self.config.population_size

    def _make_sampler(self, seed: int) -> BaseSampler:
        config = self.config
        return NSGAIISampler(population_size=config.population_size, crossover_prob=config.crossover_prob,
                             swapping_prob=config.swapping_prob, mutation_prob=config.mutation_prob, seed=seed)

    def _directions(self) -> list[str]:
        if self.objective.kind == "pareto":
            return directions_of(objectives.directions(self.objective))
        return super()._directions()

    def _values(self, metrics: Mapping[str, float]) -> list[float]:
        if self.objective.kind == "pareto":
            return list(self.values(metrics))
        return super()._values(metrics)

    def _constraint(self, metrics: Mapping[str, float]) -> float:
        return sum(value / bound - 1.0 for value, bound in objectives.violations(self.objective, metrics).values())
