"""What a search optimises, as functions of one arch's metrics dict.

An `Objective` (the typed config, in `nas.config`) is one of three kinds:
- `constrained`: one metric, maximised or minimised, under hard bounds;
- `weighted`: the MnasNet/ProxylessNAS reward `metric * (latency / T) ** w`, with `w = alpha`
  when the latency keeps the target T and `beta` otherwise (soft: both -0.07; hard: 0 and -1);
- `pareto`: two or more metrics, each with a direction; the result is a non-dominated set.
Every kind takes the same optional hard bounds (`max_latency_ms`, `max_params`).

Scalar strategies maximise `score`; Pareto strategies read `values` with `directions`. Both
see the whole metrics dict. The multi-objective helpers (non-dominated sorting, hypervolume)
are Optuna's own (its private `_hypervolume` and `_multi_objective` modules, version pinned in
pyproject.toml): re-implementing them would only add another place for a bug.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nas.config import Objective

__all__ = [
    "INFEASIBLE", "describe", "directions", "hypervolume", "metrics_read", "nondominated_ranks", "optimised_metrics",
    "pareto_mask", "reward", "score", "values", "violations",
]

INFEASIBLE = -1e9
"""Score offset of an arch that breaks a bound: below every feasible score."""

_BOUNDS = (("latency_ms", "max_latency_ms"), ("params", "max_params"))


def optimised_metrics(objective: Objective) -> tuple[str, ...]:
    """The metrics the objective optimises (not the ones only bounded)."""
    if objective.kind == "pareto":
        return tuple(objective.metrics or {})
    return (objective.metric,) if objective.metric is not None else ()


def metrics_read(objective: Objective) -> tuple[str, ...]:
    """Every metric the objective reads, in a fixed order (the ones it optimises first)."""
    if objective.kind == "pareto":
        names = list(objective.metrics or {})
    elif objective.kind == "weighted":
        names = [objective.metric, "latency_ms"]
    else:
        names = [objective.metric]
    names += [metric for metric, field in _BOUNDS if getattr(objective, field) is not None]
    return tuple(dict.fromkeys(n for n in names if n is not None))


def violations(objective: Objective, metrics: Mapping[str, float]) -> dict[str, list[float]]:
    """The bounds `metrics` break: metric -> [value, bound] (empty when the arch is feasible)."""
    broken = {}
    for metric, field in _BOUNDS:
        bound = getattr(objective, field)
        if bound is not None and metric in metrics and float(metrics[metric]) > bound:
            broken[metric] = [float(metrics[metric]), float(bound)]
    return broken


def _violation(broken: Mapping[str, list[float]]) -> float:
    """Total relative amount by which the broken bounds (`violations`) are broken (0 when none is)."""
    return sum(value / bound - 1.0 for value, bound in broken.values())


def reward(objective: Objective, metrics: Mapping[str, float]) -> float:
    """The MnasNet/ProxylessNAS reward `metric * (latency / target) ** w` of a `weighted` objective."""
    latency = float(metrics["latency_ms"])
    w = objective.alpha if latency <= objective.target_ms else objective.beta
    return float(metrics[objective.metric]) * (latency / objective.target_ms) ** w


def score(objective: Objective, metrics: Mapping[str, float]) -> float:
    """The scalar a single-objective strategy maximises.

    `constrained`: the metric (negated for `min`); `weighted`: the reward; `pareto`: the first
    metric, signed by its direction (what a scalar strategy given a Pareto objective follows).
    An arch that breaks a hard bound scores `INFEASIBLE * (1 + total relative violation)`, so
    among infeasible archs the one nearer the bounds ranks higher.
    """
    return judge(objective, metrics)[0]


def judge(objective: Objective, metrics: Mapping[str, float]) -> tuple[float, bool]:
    """(`score`, whether `metrics` keep every bound), the bounds checked once."""
    broken = violations(objective, metrics)
    return _score(objective, metrics, broken), not broken


def _score(objective: Objective, metrics: Mapping[str, float], broken: Mapping[str, list[float]]) -> float:
    violation = _violation(broken)
    if violation > 0:
        return INFEASIBLE * (1.0 + violation)
    if objective.kind == "weighted":
        return reward(objective, metrics)
    if objective.kind == "pareto":
        metric, direction = next(iter(objective.metrics.items()))
    else:
        metric, direction = objective.metric, objective.mode
    value = float(metrics[metric])
    return value if direction == "max" else -value


def directions(objective: Objective) -> tuple[str, ...]:
    """`max` or `min` per optimised metric, in the order of `values`."""
    if objective.kind == "pareto":
        return tuple(objective.metrics.values())
    return ("max",) if objective.kind == "weighted" else (objective.mode,)


def values(objective: Objective, metrics: Mapping[str, float]) -> tuple[float, ...]:
    """The optimised metrics in their own units (the reward for `weighted`), in a fixed order."""
    if objective.kind == "pareto":
        return tuple(float(metrics[m]) for m in objective.metrics)
    if objective.kind == "weighted":
        return (reward(objective, metrics),)
    return (float(metrics[objective.metric]),)


def _as_loss(points: np.ndarray, dirs: Sequence[str]) -> np.ndarray:
    """Points turned into losses (lower is better in every column), as Optuna expects."""
    signs = np.array([1.0 if d == "min" else -1.0 for d in dirs])
    return np.asarray(points, dtype=float).reshape(-1, len(dirs)) * signs


def nondominated_ranks(points: np.ndarray, dirs: Sequence[str], penalty: np.ndarray | None = None,
                       top: int | None = None) -> np.ndarray:
    """Front number of each point (0 = non-dominated), infeasible points (penalty > 0) after all
    feasible ones, by their penalty. With `top`, only the first `top` points are sorted exactly."""
    from optuna.study._multi_objective import _fast_non_domination_rank

    if len(points) == 0:
        return np.zeros(0, dtype=int)
    return _fast_non_domination_rank(_as_loss(points, dirs), penalty=penalty, n_below=top)


def pareto_mask(points: np.ndarray, dirs: Sequence[str]) -> np.ndarray:
    """Which points no other point dominates."""
    return nondominated_ranks(points, dirs, top=1) == 0


def hypervolume(points: np.ndarray, dirs: Sequence[str], reference: Sequence[float]) -> float:
    """The volume the points dominate up to `reference` (a point worse than all of them in every
    metric). Points that do not improve on the reference in every metric add nothing."""
    from optuna._hypervolume import compute_hypervolume

    loss = _as_loss(points, dirs)
    ref = _as_loss(np.asarray(reference, dtype=float), dirs)[0]
    loss = loss[np.all(loss < ref, axis=1)]
    if len(loss) == 0:
        return 0.0
    return float(compute_hypervolume(loss, ref))


def describe(objective: Objective) -> str:
    """One line naming what is optimised (`max accuracy`, `pareto: max accuracy, min latency_ms`)."""
    if objective.kind == "pareto":
        return "pareto: " + ", ".join(f"{d} {m}" for m, d in objective.metrics.items())
    if objective.kind == "weighted":
        return (f"weighted: {objective.metric} x (latency_ms / {objective.target_ms:g}) ^ "
                f"({objective.alpha:g} if within, {objective.beta:g} if over)")
    return f"{objective.mode} {objective.metric}"

