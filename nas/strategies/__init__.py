"""Multi-trial ask/tell strategies; importing this package registers every one."""

from nas.strategies import evolution, random
from nas.strategies.base import INFEASIBLE, Strategy, StrategyConfig, build_strategy, score

__all__ = ["INFEASIBLE", "Strategy", "StrategyConfig", "build_strategy", "evolution", "random", "score"]
