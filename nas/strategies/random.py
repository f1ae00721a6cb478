"""Random search: every arch drawn uniformly from the space (the baseline of NAS papers)."""

from __future__ import annotations

from nas.arch import Arch
from nas.registry import STRATEGIES
from nas.strategies.base import ALL_KINDS, ANY_BATCH, Strategy


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    """Uniform sampling; learns nothing from tells, so it follows any objective and asks batches of any size."""

    objectives = ALL_KINDS
    ask_batch = ANY_BATCH

    def _propose(self) -> Arch:
        return self.space.sample(self.rng)
