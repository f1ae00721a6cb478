"""TPE: the Tree-structured Parzen Estimator, Bergstra et al., "Algorithms for Hyper-Parameter
Optimization", NeurIPS 2011, through Optuna's own `TPESampler` (not re-implemented here).

After `n_startup_trials` random trials, TPE splits the told archs into the best few (by
`self.score`, maximised) and the rest, fits a categorical Parzen estimator to each, and asks
the best of `n_ei_candidates` draws from the good one by the ratio of the two densities.
The study, the journal, invalid archs and exact resume are shared with NSGA-II
(`nas.strategies._optuna`). Choices for NAS spaces:
- `multivariate` (Falkner et al., BOHB, ICML 2018; Optuna's default for one objective): one
  joint estimator over all decisions, so choices that only work together are learnt together.
- Optuna's `group` decomposition is not offered: it splits the space by which parameters each
  trial has, and every trial here has every decision, so it would be one group, the same
  as `multivariate`.
- `constant_liar` (on by default): archs in flight count as bad archs, so a batch `ask(n)`
  spreads its archs instead of asking n times near the same point.
Deviations from the paper: Optuna's TPE (Watanabe, arXiv:2304.11127) weights, bandwidths and
its gamma (10% of the trials, at most 25) replace the paper's; pruned (invalid) archs count
among the bad ones.
"""

from __future__ import annotations

from optuna.samplers import BaseSampler, TPESampler
from pydantic import Field

from nas.registry import STRATEGIES
from nas.strategies._optuna import OptunaConfig, OptunaStrategy


class TPEConfig(OptunaConfig):
    """Hyper-parameters of TPE (defaults in strategies/tpe.yaml)."""

    n_startup_trials: int = Field(ge=0, le=100_000,
                                  description="random trials (told or pruned) before TPE models the results")
    n_ei_candidates: int = Field(ge=1, le=10_000,
                                 description="draws from the good archs' density scored per ask; the best is asked")
    multivariate: bool = Field(description="one joint density over all decisions (true) or one per decision")
    constant_liar: bool = Field(description="count archs in flight as bad ones, so a batch spreads out")


@STRATEGIES.register("tpe")
class TPE(OptunaStrategy):
    """Optuna's TPE sampler maximising the objective's score."""

    config_model = TPEConfig
    config: TPEConfig

    def _make_sampler(self, seed: int) -> BaseSampler:
        config = self.config
        return TPESampler(n_startup_trials=config.n_startup_trials, n_ei_candidates=config.n_ei_candidates,
                          multivariate=config.multivariate, constant_liar=config.constant_liar, seed=seed)
