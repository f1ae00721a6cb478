"""Corrections: fit a latency table to end-to-end timings of whole networks.

The naive prediction (plain sum of isolated timings) misses what isolation hides at
batch 1 - per-call overhead, cache state, load on a shared machine - so the default
correction, `fit_ridge`, keeps prediction a sum over keys plus one intercept and fits it
in two stages, both by bounded least squares on relative errors (so small and large archs
count alike):

1. an intercept `c` and non-negative weights of three features of each key: its
   isolated timing p_k, its parameters w_k and its MACs m_k (millions):
   t ~ c + sum_k (s * p_k + beta * w_k + gamma * m_k). Isolation hides what a unit
   costs inside a network: in isolation its weights stay in L1/L2, in a network they
   come from the last-level cache, so the weight term carries the cost of reading
   them. The intercept may be negative (see `_fit_stage1`). Where a network reads
   megabytes of weights in under a millisecond (ONNX Runtime at 32x32) this stage does most
   of the work (figures: `benchmarks/lut_accuracy.json`);
2. one relative deviation `z_k >= -1` per key, ridge-penalised toward 0, on the
   residuals: x_k = base_k * (1 + z_k), so a key seen in no fit arch keeps its
   stage-1 cost. The ridge weight is chosen by 5-fold cross-validation on
   the fit set only (including "no stage 2"), with the one-standard-error rule: the
   strongest penalty whose CV error is within one standard error of the lowest.

A negative intercept fits the random archs but extrapolates: the cheapest arch of the
space may then be predicted to take no time. `fit_positive` wraps a fit and raises the
intercept's lower bound until the space's cheapest arch is predicted at least a floor.
A correction is any function from (entries, rows) to a `Correction`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nas.errors import NasError
from nas.hardware.schema import Correction, Entry
from nas.hardware.table import term_costs

if TYPE_CHECKING:
    from nas.space import SearchSpace

Row = tuple[Sequence[str], float]
"""The latency keys of one arch and its measured end-to-end latency in ms."""
CorrectionFn = Callable[[Mapping[str, Entry], Sequence[Row]], Correction]

FLOOR_SHARE = 0.1
"""`fit_positive`'s default floor: this share of the fastest fit arch's measured time."""
_RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, float("inf"))
_FEATURES = ("scale", "ms_per_mparam", "ms_per_mmac")
"""Stage-1 weights: of the isolated timing, of the unit's parameters (millions), of its MACs (millions)."""
_MAX_STEPS = 30


def fit_ridge(entries: Mapping[str, Entry], rows: Sequence[Row], *, min_intercept: float = -np.inf) -> Correction:
    """Two-stage fit (intercept and feature weights, then ridge per-key deviations); see the module docstring.

    Args:
        min_intercept: lower bound of the intercept (ms); `fit_positive` raises it.
    """
    keys = sorted(entries)
    a, f, t = _design(keys, entries, rows)
    folds = np.arange(len(t)) % 5
    cv = {}
    for lam in _RIDGE_GRID:
        errors = []
        for fold in range(min(5, len(t))):
            train, test = folds != fold, folds == fold
            if train.sum() < 2:
                continue
            c, x = _fit_two_stage(a[train], f, t[train], lam, min_intercept)
            errors.extend(np.abs(c + a[test] @ x - t[test]) / t[test])
        cv[lam] = np.array(errors)
    if not len(cv[_RIDGE_GRID[0]]):
        best = float("inf")
    else:
        # One-standard-error rule: the strongest penalty whose CV error is within one standard error of the
        # lowest, since per-key freedom that CV cannot tell from noise costs rank accuracy on new archs.
        lowest = min(cv, key=lambda lam: cv[lam].mean())
        bar = cv[lowest].mean() + cv[lowest].std(ddof=1) / np.sqrt(len(cv[lowest]))
        best = max(lam for lam in _RIDGE_GRID if cv[lam].mean() <= bar)
    c, x = _fit_two_stage(a, f, t, best, min_intercept)
    weights = _fit_stage1(a, f, t, min_intercept)[1]
    params = {**{name: _round(w) for name, w in zip(_FEATURES, weights, strict=False)}, "ridge": float(best),
              "cv_mape": _round(cv[best].mean() * 100) if len(cv[best]) else None}
    if np.isfinite(min_intercept):
        params["min_intercept"] = _round(min_intercept)
    return Correction(method="ridge", intercept_ms=float(c), params=params, fit_ms=[_round(ms) for ms in t],
                      entries={k: float(v) for k, v in zip(keys, x, strict=True)})


def fit_none(entries: Mapping[str, Entry], rows: Sequence[Row]) -> Correction:
    """No correction: the plain sum of isolated timings (for comparison)."""
    return Correction(method="none", intercept_ms=0.0, entries={k: e.mean for k, e in entries.items()})


def fit_positive(space: SearchSpace, floor_ms: float | None = None,
                 fit: Callable[..., Correction] = fit_ridge) -> CorrectionFn:
    """`fit` (which takes `min_intercept`), refitted with a higher intercept bound while the cheapest arch
    of `space` is predicted below `floor_ms`.

    Args:
        floor_ms: the least time the cheapest arch may be predicted; by default `FLOOR_SHARE` of the
            fastest fit arch's measured time (a positive floor, well below any arch the fit saw).
    """

    def correct(entries: Mapping[str, Entry], rows: Sequence[Row]) -> Correction:
        floor = floor_ms if floor_ms is not None else FLOOR_SHARE * min(ms for _, ms in rows)
        fitted = fit(entries, rows)
        bound = lower_bound(fitted, space)
        if bound >= floor:
            return fitted
        # A raised intercept takes time from the slopes, so the bound moves less than the intercept. Find an
        # intercept bound high enough (doubling steps), then bisect to the lowest one, within 1% of the floor.
        low, step, high = fitted.intercept_ms, floor - bound, None
        for _ in range(_MAX_STEPS):
            candidate = fit(entries, rows, min_intercept=low + step)
            if lower_bound(candidate, space) >= floor:
                high, fitted = low + step, candidate
                break
            low, step = low + step, 2 * step
        if high is None:
            raise NasError(f"fit_positive: the cheapest {space.name} arch is still predicted below {floor:.4g} ms "
                           f"with the intercept at least {low:.4g} ms")
        for _ in range(_MAX_STEPS):  # bisection halves the gap: 30 steps reach 1e-9 of the first step
            if high - low <= 0.01 * floor:
                break
            candidate = fit(entries, rows, min_intercept=(low + high) / 2)
            if lower_bound(candidate, space) >= floor:
                high, fitted = (low + high) / 2, candidate
            else:
                low = (low + high) / 2
        return fitted

    return correct


def lower_bound(correction: Correction, space: SearchSpace) -> float:
    """The least prediction of `correction` over the archs of `space` (see `LatencyTable.lower_bound`)."""
    return correction.intercept_ms + sum(float(cost.min()) for cost in term_costs(correction.entries, space))


def _design(keys: list[str], entries: Mapping[str, Entry], rows: Sequence[Row]):
    """Key-count matrix (archs, keys), key features (keys, features) and measured times (archs,).

    Features: the isolated timing, and the unit's parameters and MACs (millions) when every entry has them.
    """
    index = {k: i for i, k in enumerate(keys)}
    a = np.zeros((len(rows), len(keys)))
    for r, (row_keys, _) in enumerate(rows):
        for k in row_keys:
            a[r, index[k]] += 1
    columns = [[entries[k].mean for k in keys]]
    if all(entries[k].params is not None and entries[k].macs is not None for k in keys):
        columns += [[entries[k].params / 1e6 for k in keys], [entries[k].macs / 1e6 for k in keys]]
    return a, np.array(columns).T, np.array([ms for _, ms in rows])


def _fit_stage1(a: np.ndarray, f: np.ndarray, t: np.ndarray, min_intercept: float = -np.inf,
                ) -> tuple[float, np.ndarray]:
    """Intercept (>= `min_intercept`, either sign) and non-negative feature weights minimising relative squared
    error of c + a @ f @ w.

    The intercept may be negative: cache pressure makes a network's time grow faster than its
    size (a larger network evicts more of its own weights), and a negative intercept is the
    additive linearisation of that over the range of the fit archs.
    """
    from scipy.optimize import lsq_linear

    m = np.column_stack([np.ones_like(t), a @ f]) / t[:, None]
    lower = np.concatenate([[min_intercept], np.zeros(f.shape[1])])
    x = lsq_linear(m, np.ones_like(t), bounds=(lower, np.inf), method="bvls").x  # exact; trf trips on -inf
    return float(x[0]), x[1:]


def _fit_two_stage(a: np.ndarray, f: np.ndarray, t: np.ndarray, lam: float, min_intercept: float = -np.inf,
                   ) -> tuple[float, np.ndarray]:
    """Stage 1, then ridge deviations z >= -1 on the relative residuals (lam = inf skips stage 2)."""
    from scipy.optimize import lsq_linear

    c, w = _fit_stage1(a, f, t, min_intercept)
    base = f @ w
    if not np.isfinite(lam):
        return c, base
    residual = (t - c - a @ base) / t
    m = np.vstack([a * base / t[:, None], np.sqrt(lam) * np.eye(len(base))])
    z = lsq_linear(m, np.concatenate([residual, np.zeros(len(base))]), bounds=(-1, np.inf)).x
    return c, base * (1 + z)


def _round(value: float) -> float:
    """Six significant digits: far below the timing noise, and the table files diff readably."""
    return float(f"{float(value):.6g}")


__all__ = ["FLOOR_SHARE", "CorrectionFn", "Row", "fit_none", "fit_positive", "fit_ridge", "lower_bound"]
