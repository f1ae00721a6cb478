"""Multi-trial ask/tell strategies; importing this package registers every one.

A strategy is one module plus one YAML file with the same stem (`nas/strategies/tpe.py` and
`strategies/tpe.yaml`), and nothing else changes when one is added: the YAML files are the
list of strategies, and this package imports the module each one names. The import is
explicit by name, never a scan of the package, so a stray module registers nothing.
"""

import importlib

from nas.config import STRATEGIES_DIR
from nas.strategies.base import Strategy, StrategyConfig, build_strategy, check_objective_kind, parse_strategy_config

for _yaml in sorted(STRATEGIES_DIR.glob("*.yaml")):
    importlib.import_module(f"nas.strategies.{_yaml.stem}")

__all__ = ["Strategy", "StrategyConfig", "build_strategy", "check_objective_kind", "parse_strategy_config"]
