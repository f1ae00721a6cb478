"""Help texts of `nas search` that show defaults and ranges, read from where each lives: the run
config models (`RunConfig`, `Objective`, `TrainConfig`, `EvolutionConfig`), `strategies/*.yaml`
and `nas.limits`. Importing this loads neither torch nor ray, so `nas --help` stays fast.
"""

from __future__ import annotations

from pydantic import BaseModel


def search_help() -> tuple[dict[str, str], dict[str, str]]:
    """Help texts with ranges, and defaults, of `nas search` options, by run-config key."""
    from nas.config import Objective, RunConfig, describe_bounds
    from nas.evaluate.evaluators import TrainConfig
    from nas.limits import LOCAL_CPUS_PER_CORE, max_local_cpus
    from nas.space import MAX_CLASSES, MAX_RESOLUTION
    from nas.strategies.base import strategy_defaults
    from nas.strategies.evolution import EvolutionConfig

    def ranged(text: str, model: type[BaseModel], field: str, more: str = "") -> str:
        return f"{text}; {describe_bounds(model, field)}{more}."

    evolution = strategy_defaults("evolution")
    helps = {
        "trials": ranged("Budget: distinct archs to evaluate", RunConfig, "trials"),
        "seed": ranged("Seed of the strategy", RunConfig, "seed"),
        "max_latency_ms": ranged("Latency bound (ms, from the LUT)", Objective, "max_latency_ms"),
        "max_params": ranged("Parameter bound", Objective, "max_params"),
        "target_ms": ranged("Latency target T of the weighted reward (ms)", Objective, "target_ms"),
        "alpha": ranged("Reward exponent within the target (soft -0.07, hard 0)", Objective, "alpha"),
        "beta": ranged("Reward exponent past the target (soft -0.07, hard -1)", Objective, "beta"),
        "evaluator": "How an arch is scored: " + ", ".join(_evaluator_names()) + ".",
        "epochs": ranged("Training epochs per arch (train evaluator)", TrainConfig, "epochs"),
        "population_size": ranged("Evolution population P", EvolutionConfig, "population_size"),
        "sample_size": ranged("Evolution tournament size S", EvolutionConfig, "sample_size", ", at most P"),
        "archs_per_trial": ranged("Archs scored by one Ray Tune trial", RunConfig, "archs_per_trial"),
        "cpus_per_trial": ranged("CPUs reserved per trial", RunConfig, "cpus_per_trial"),
        "resolution": f"Input resolution; at most {MAX_RESOLUTION} (each space sets its minimum).",
        "classes": f"Number of classes; 1 to {MAX_CLASSES:,}.",
        "width_mult": "Width multiplier; in (0, 4] (each space may narrow it).",
        "num_cpus": f"CPUs of the local Ray cluster; 1 to {LOCAL_CPUS_PER_CORE} x this machine's "
                    f"({max_local_cpus()} here).",
    }
    defaults = {field: str(RunConfig.model_fields[field].default)
                for field in ("space", "strategy", "evaluator", "trials", "seed", "cpus_per_trial")}
    defaults.update({key: str(evolution.get(key, "none")) for key in ("population_size", "sample_size")})
    defaults.update({key: str(TrainConfig.model_fields[key].default) for key in ("data", "epochs")})
    defaults.update({key: str(Objective.model_fields[key].default) for key in ("mode", "alpha", "beta")})
    return helps, defaults


def _evaluator_names() -> list[str]:
    """Registered evaluators the CLI takes (`function` is the Python API's), without importing torch (the
    evaluate package imports it lazily)."""
    from nas.registry import EVALUATORS

    return [name for name in EVALUATORS.names() if name != "function"]


def strategy_rows(name: str | None = None) -> list[list[str]]:
    """Rows (strategy, objectives, option, default, allowed) of every registered strategy, or of one."""
    from nas.config import describe_bounds
    from nas.registry import STRATEGIES
    from nas.strategies.base import strategy_defaults

    rows = []
    for strategy in [name] if name is not None else STRATEGIES.names():
        cls = STRATEGIES.get(strategy)
        kinds = ", ".join(sorted(cls.objectives))
        defaults = strategy_defaults(strategy)
        fields = cls.config_model.model_fields
        if not fields:
            rows.append([strategy, kinds, "-", "-", "takes no options"])
        for key, field in fields.items():
            default = defaults.get(key, None if field.is_required() else field.default)
            allowed = describe_bounds(cls.config_model, key) or _choices(field.annotation) or (field.description or "")
            rows.append([strategy, kinds, key, str(default), allowed])
    return rows


def _choices(annotation: object) -> str:
    """`one of: a, b` for a Literal annotation, else ""."""
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(annotation))
    return ""
