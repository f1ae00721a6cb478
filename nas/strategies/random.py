"""Random search: every arch drawn uniformly from the space (the baseline of NAS papers)."""

from __future__ import annotations

from nas.arch import Arch
from nas.registry import STRATEGIES
from nas.strategies.base import ALL_KINDS, Strategy


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    """Uniform sampling; learns nothing from tells, so it follows any objective."""

    objectives = ALL_KINDS

    def _propose(self) -> Arch:
        return self.space.sample(self.rng)
