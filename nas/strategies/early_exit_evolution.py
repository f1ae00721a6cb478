"""EEEA: early exit evolution, Termritthikun et al., "EEEA-Net: An Early Exit Evolutionary Neural
Architecture Search", Eng. Appl. AI 104:104397 (2021), arXiv 2108.06156 (reference: chakkritte/EEEA-Net,
`EEEA/cifar/eeea/genetic/optimizer.py` and `search_space.py`; notes in shared/reference/eeea_net.md §5).

Early Exit Population Initialisation (EE-PI, paper Eq. 6): each member of the initial population is drawn
uniformly and drawn again while its parameter count is above the threshold beta, so no trial is spent on a
large arch. Params are counted without training (`space.cost(arch)["params"]`, a sum of cached per-unit
counts). Then the genetic loop of the paper's Algorithm 1 on a population of 40 (its settings): each child
comes from two parents picked by tournament (size 2, NSGA-II's binary tournament; the code's k = 4 // 2 is
also 2), uniform crossover (each decision from either parent with p = 0.5; op and input genes independent,
paper Fig. 4), then with p = 0.1 (the code's `--mutate_prob`; the paper gives no rate) one decision mutated.
When as many children as the population have been told, the next population is the best `population_size`
of parents and children together (elitist survival, paper Algorithm 1: R = P u Q, keep n).
Deviations and choices (paper vs code, shared/reference/eeea_net.md §5.1):
- Scalar objectives only: the population is ranked by `self.score(metrics)` (ties: earlier told first),
  not by NSGA-II ranks and crowding on (error, params, FLOPs). A params bound belongs in the objective
  (`max_params`), which ranks every arch above it below every arch within it.
- Survival follows the paper (keep the best n of parents plus children), not the code, which keeps only
  the best 10% (`--crossover_prob 0.1` used as a survivor fraction) and breeds 36 children from those 4.
- No "inversion" operator (code only, p = 0.1; it copies one gene pair over its neighbour and is specific
  to the EEEA cell encoding); mutation changes one decision (`space.mutate`), not one (op, input) pair.
- One child per tournament pair (the code makes two, each drawn independently: the same distribution).
- beta is tested as params <= beta (paper Eq. 6; the code refuses params >= beta). Params are those of the
  searched space config, or of `params_config` on top of it: the paper and code count the C=36, 20-cell
  evaluation network while training the 8-cell proxy (`params_config: {init_channels: 36, layers: 20}`).
  beta = 0 turns the early exit off (the paper's EA-Net).
- `early_exit_offspring` (off by default, as in the paper) applies beta to children too, as the code does
  (there a child above beta scores 0 without training; here it is drawn again, so it costs no trial).
- Generations last as long as the run's `--trials` allows (the paper's 30 x 40 is `--trials 1200`).
- Asynchronous tells: every told arch joins the current children; when `population_size` of them are in,
  survival runs. Asks made before the first survival (parallel workers with the initial population still
  in flight) are further EE-PI samples, as in `evolution`.
Duplicates are the run loop's business (the `Deduplicated` wrapper), as for every strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from nas.arch import Arch
from nas.errors import NasError, UserError, shorten
from nas.registry import STRATEGIES
from nas.space import SearchSpace, load_space
from nas.strategies.base import Strategy, StrategyConfig, at_most_population

MAX_POPULATION = 10_000
"""Largest population: it is saved in `strategy.json` after every ask and tell (about 1 KB per arch)."""


class EarlyExitEvolutionConfig(StrategyConfig):
    """Hyper-parameters of EEEA (defaults and the paper's values in strategies/early_exit_evolution.yaml).

    `population_size` is n, in [2, `MAX_POPULATION`]; `tournament_size` in [1, n]; `mutation_prob` in
    [0, 1]; `beta` the parameter threshold of EE-PI, in [0, 10^13] (0: no early exit); `params_config`
    space config keys over the searched one at which params are counted for beta (empty: the searched
    config); `early_exit_offspring` applies beta to children too.
    """

    population_size: int = Field(ge=2, le=MAX_POPULATION, description="n, archs per generation (paper: 40)")
    tournament_size: int = Field(ge=1, le=MAX_POPULATION, description="members per tournament (NSGA-II: 2)")
    mutation_prob: float = Field(ge=0, le=1, description="chance a child gets one mutated decision (code: 0.1)")
    beta: int = Field(ge=0, le=10**13, description="EE-PI params threshold; 0 = off (paper: 3M, 4M, 5M)")
    params_config: dict[str, Any] = Field(default_factory=dict,
                                          description="space config keys at which params are counted for beta")
    early_exit_offspring: bool = Field(default=False, description="apply beta to children too (the code does)")

    @field_validator("tournament_size")
    @classmethod
    def _at_most_population(cls, size: int, info: ValidationInfo) -> int:
        return at_most_population(size, info, "tournament size")


@STRATEGIES.register("early_exit_evolution")
class EarlyExitEvolution(Strategy):
    """EE-PI initial population under the params threshold beta, then elitist genetic generations."""

    config_model = EarlyExitEvolutionConfig
    config: EarlyExitEvolutionConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.population: list[tuple[Arch, float]] = []  # the survivors (parents), best first
        self.children: list[tuple[Arch, float]] = []  # told since the last survival, in tell order
        self.generation = 0
        self.n_rejected = 0  # archs drawn above beta and never asked
        self._params_space = _params_space(self.space, self.config.params_config)
        self._params: dict[str, int] = {}  # arch hash -> params, a cache for the beta test

    # -- proposing -------------------------------------------------------------------
    @property
    def ask_batch(self) -> int:
        """A generation: its children are bred from the survivors, which change only when it is all told."""
        return self.config.population_size

    def _propose(self) -> Arch:
        if not self.population:
            return self._under_beta(lambda: self.space.sample(self.rng), "an initial arch")
        if self.config.early_exit_offspring:
            return self._under_beta(self._breed, "a child")
        return self._breed()

    def _breed(self) -> Arch:
        """Tournament-selected parents, uniform crossover, then one mutated decision with `mutation_prob`."""
        mother, father = self._tournament(), self._tournament()
        child = self.space.crossover(mother, father, self.rng)
        if self.rng.random() < self.config.mutation_prob:
            child = self.space.mutate(child, self.rng)
        return child

    def _tournament(self) -> Arch:
        """The best of `tournament_size` distinct members drawn at random (the first drawn wins a tie)."""
        size = min(self.config.tournament_size, len(self.population))
        picks = self.rng.choice(len(self.population), size=size, replace=False)
        return max((self.population[i] for i in picks), key=lambda member: member[1])[0]

    def _under_beta(self, draw: Any, what: str) -> Arch:
        """The first of up to `space.max_draws` draws whose params are at most beta (any draw when beta is 0)."""
        beta = self.config.beta
        if beta == 0:
            return draw()
        smallest = None
        for _ in range(self.space.max_draws):
            arch = draw()
            params = self.params(arch)
            if params <= beta:
                return arch
            self.n_rejected += 1
            smallest = params if smallest is None else min(smallest, params)
        raise UserError(f"--set beta={beta}: early_exit_evolution drew {self.space.max_draws} archs for {what} and "
                        f"none had at most {beta:,} params (the smallest had {smallest:,}); allowed: a beta the "
                        f"space can meet, e.g. above {smallest:,}, or 0 for no early exit")

    def params(self, arch: Arch) -> int:
        """Params of `arch` as the beta test counts them (at `params_config`), without training."""
        cached = self._params.get(arch.hash)
        if cached is None:
            counted = arch if self._params_space is self.space else self._params_space.make_arch(arch.choices)
            cached = self._params[arch.hash] = int(self._params_space.cost(counted)["params"])
        return cached

    # -- learning --------------------------------------------------------------------
    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        self.children.append((arch, self.score(metrics)))
        if len(self.children) >= self.config.population_size:
            self._survive()

    def _survive(self) -> None:
        """Keep the best `population_size` of parents and children (a stable sort: earlier first on ties)."""
        merged = self.population + self.children
        order = sorted(range(len(merged)), key=lambda i: -merged[i][1])
        self.population = [merged[i] for i in order[: self.config.population_size]]
        self.children = []
        self.generation += 1

    # -- state -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "population": [[a.to_dict(), v] for a, v in self.population],
            "children": [[a.to_dict(), v] for a, v in self.children],
            "generation": self.generation,
            "n_rejected": self.n_rejected,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        for key in ("population", "children", "generation", "n_rejected"):
            if key not in state:
                raise NasError(f"early_exit_evolution state has no {key!r}; it was saved by another strategy")
        self.population = [(Arch.from_dict(a), float(v)) for a, v in state["population"]]
        self.children = [(Arch.from_dict(a), float(v)) for a, v in state["children"]]
        self.generation, self.n_rejected = int(state["generation"]), int(state["n_rejected"])


def _params_space(space: SearchSpace, overrides: Mapping[str, Any]) -> SearchSpace:
    """The space at which params are counted for beta: `space` itself, or its config with `overrides` on top."""
    if not overrides:
        return space
    try:
        counted = load_space(space.name, {**space.config.model_dump(), **overrides})
        counted.make_arch(space.sample(np.random.default_rng(0)).choices)  # same decisions at both configs
    except UserError as err:
        raise UserError(f"--set params_config={shorten(dict(overrides))}: {err}") from None
    return counted
