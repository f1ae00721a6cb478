"""Pricing a batch of archs with arrays: their choices as a matrix of indices, their costs summed over
latency terms.

A batch of archs of one space is an (archs, decisions) matrix of choice indices (`choice_indices`).
Per latency term (`nas.space.LatencyTerm`) a small array holds a cost of every combination of the
term's decisions' choices (`term_arrays`), and an arch's cost is the sum over the terms of that
array at its choices (`sum_terms`): the terms' keys together are the arch's keys, so this equals the
sum over its latency keys, with one fancy-indexing step per term instead of one dict lookup per key
and arch. The latency table keeps its latency arrays (`LatencyTable.predict_many`); params and MACs
come from the space's unit costs here (`cost_many`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import numpy as np

if TYPE_CHECKING:
    from nas.arch import Arch
    from nas.space import SearchSpace

__all__ = ["choice_indices", "cost_many", "sum_terms", "term_arrays", "term_columns", "unit_costs"]

_INDICES: WeakKeyDictionary[SearchSpace, list[tuple[str, dict[Any, int]]]] = WeakKeyDictionary()
_COLUMNS: WeakKeyDictionary[SearchSpace, list[tuple[int, ...]]] = WeakKeyDictionary()
_TERM_COSTS: WeakKeyDictionary[SearchSpace, list[np.ndarray]] = WeakKeyDictionary()
_UNIT_COSTS: WeakKeyDictionary[SearchSpace, dict[str, tuple[int, int]]] = WeakKeyDictionary()


def choice_indices(space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
    """(archs, decisions) array: the index of each arch's choice of each decision, in `decisions()` order.

    Raises:
        UserError: an arch of another space or config, or with a choice this space lacks.
    """
    columns = _INDICES.get(space)
    if columns is None:
        columns = _INDICES[space] = [(d.name, {c: i for i, c in enumerate(d.choices)}) for d in space.decisions()]
    config = space.arch_config  # shared by the archs the space made: an identity check suffices for those
    try:
        flat = [index[choices[name]] for arch in archs
                if arch.config is config or arch.space == space.name and arch.config == config
                for choices in (arch.choices,) for name, index in columns]
    except KeyError:
        flat = []
    if len(flat) != len(archs) * len(columns):
        for arch in archs:
            space.check_own(arch)
            space.make_arch(dict(arch.choices))  # names the decision and the choice
    return np.array(flat, dtype=np.intp).reshape(len(archs), len(columns))


def term_columns(space: SearchSpace) -> list[tuple[int, ...]]:
    """Per latency term of `space`, the columns of `choice_indices` that hold its decisions (cached)."""
    columns = _COLUMNS.get(space)
    if columns is None:
        column = {d.name: i for i, d in enumerate(space.decisions())}
        columns = _COLUMNS[space] = [tuple(column[n] for n in term.decisions) for term in space.latency_terms()]
    return columns


def term_arrays(space: SearchSpace, value: Callable[[tuple[str, ...]], Any], shape: tuple[int, ...] = (),
                dtype: Any = float) -> list[np.ndarray]:
    """Per latency term of `space`, `value(keys)` of every combination of its decisions' choices: an array
    of shape (choices of each decision..., *shape)."""
    choices = {d.name: d.choices for d in space.decisions()}
    arrays = []
    for term in space.latency_terms():
        axes = [choices[name] for name in term.decisions]
        array = np.zeros([len(a) for a in axes] + list(shape), dtype=dtype)
        for index in np.ndindex(*array.shape[: len(axes)]):
            array[index] = value(term.keys(tuple(axis[i] for axis, i in zip(axes, index, strict=True))))
        arrays.append(array)
    return arrays


def sum_terms(space: SearchSpace, costs: Sequence[np.ndarray], indices: np.ndarray, start: Any) -> Any:
    """`start` plus, per latency term of `space`, its cost (`costs[t]`) at each row's choices."""
    total = start
    for cost, columns in zip(costs, term_columns(space), strict=True):
        total = total + cost[tuple(indices[:, c] for c in columns)]
    return total


def cost_many(space: SearchSpace, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Params and MACs (int64 arrays) of the archs whose `choice_indices` are `indices`: the same as
    `space.cost` of each. The first call counts every unit of the space."""
    costs = _TERM_COSTS.get(space)
    if costs is None:
        unit_costs(space, space.all_latency_keys())

        def params_and_macs(keys: tuple[str, ...]) -> list[int]:
            units = unit_costs(space, keys)
            return [sum(u[0] for u in units), sum(u[1] for u in units)]

        costs = _TERM_COSTS[space] = term_arrays(space, params_and_macs, (2,), np.int64)
    total = sum_terms(space, costs, indices, np.zeros((len(indices), 2), np.int64))
    return total[:, 0], total[:, 1]


def unit_costs(space: SearchSpace, keys: Sequence[str]) -> list[tuple[int, int]]:
    """(params, MACs) of each unit `keys` of `space` (`SearchSpace.unit_cost`), counted once per process.

    Counted on one torch thread: a unit's forward pass at batch 1 is tiny, and more threads only
    wait on each other (ten times the time on a busy 2-core machine).
    """
    known = _UNIT_COSTS.setdefault(space, {})
    missing = [k for k in dict.fromkeys(keys) if k not in known]
    if missing:
        import torch

        from nas.evaluate.metrics import count_macs, count_params

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for key in missing:
                unit = space.unit(key)
                known[key] = (count_params(unit.module), count_macs(unit.module, unit.input_shape))
        finally:
            torch.set_num_threads(threads)
    return [known[k] for k in keys]
