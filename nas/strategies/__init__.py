"""Multi-trial ask/tell strategies.

A strategy is one module plus one YAML file with the same stem (`nas/strategies/tpe.py` and
`strategies/tpe.yaml`), and nothing else changes when one is added: the YAML files are the
list of strategies, and `nas.registry.STRATEGIES` imports the module a name's file names when
that name is looked up (every one when the names are listed), explicitly by name, never by a
scan of the package, so a stray module registers nothing.
"""

from nas.strategies.base import Strategy, StrategyConfig, build_strategy, check_objective_kind, parse_strategy_config

__all__ = ["Strategy", "StrategyConfig", "build_strategy", "check_objective_kind", "parse_strategy_config"]
