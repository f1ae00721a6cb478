"""The batch a search asks at once (`nas.plan.default_batch`, `Strategy.ask_batch`): a cheap search asks in
batches its strategy learns between, so a learning strategy run by `run_search` beats random search; an explicit
`archs_per_trial` is kept; a 100,000-arch search still asks thousands at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nas.config import Objective, RunConfig
from nas.plan import MAX_ROUNDS, default_batch, plan_search
from nas.runner import run_search
from nas.strategies.base import ANY_BATCH


def _batch(strategy: str, trials: int, **kw) -> int:
    kw.setdefault("space", "nasbench201")
    kw.setdefault("evaluator", "tabular")
    return plan_search(RunConfig(strategy=strategy, trials=trials, **kw)).batch


@pytest.mark.parametrize(("strategy", "overrides", "expected"), [
    ("tpe", {}, 2),  # learns after every tell; 100 archs in at most MAX_ROUNDS batches
    ("nni", {}, 2),  # NNI's TPE, likewise
    ("rl", {}, 10),  # one policy update
    ("rl", {"batch_size": 4}, 4),
    ("evolution", {}, 10),  # a fifth of the population of 50
    ("early_exit_evolution", {}, 40),  # a generation
    ("nsga2", {}, 50),  # a generation
    ("random", {}, 100),  # anything: the whole budget at once
])
def test_a_cheap_search_asks_a_batch_its_strategy_learns_between(strategy: str, overrides: dict,
                                                                 expected: int) -> None:
    assert _batch(strategy, 100, strategy_config=overrides) == expected


def test_a_short_search_asks_one_arch_at_a_time_and_an_explicit_batch_is_kept() -> None:
    assert _batch("tpe", MAX_ROUNDS) == 1
    assert _batch("tpe", 100, archs_per_trial=30) == 30  # the user's choice, on both paths alike
    assert _batch("random", 100, archs_per_trial=30) == 30


def test_a_long_search_still_asks_thousands_at_once(lut_path: Path) -> None:
    """The LUT benchmark's search (`benchmarks/lut_search_speed.py`) asks as many at once as before, and a search
    of a small population is not cut into a hundred thousand saves either."""
    lut = {"space": "proxylessnas", "evaluator": "lut", "hardware": str(lut_path)}
    big = _batch("evolution", 100_000, strategy_config={"population_size": 1000, "sample_size": 10}, **lut)
    assert big == _batch("evolution", 100_000, **lut) == 100_000 // MAX_ROUNDS == 2000
    assert _batch("evolution", 100_000, space="proxylessnas", evaluator="train") == 1  # one arch per trial


@pytest.mark.parametrize(("evaluator_batch", "ask_batch", "trials", "expected"), [
    (4096, 1, 100, 2), (4096, 1, 50, 1), (4096, 1, 51, 2), (2048, 200, 100_000, 2000), (2048, 5000, 100_000, 2048),
    (1, 10, 300, 1), (4096, ANY_BATCH, 300, 300), (4096, 40, 30, 30),
])
def test_default_batch(evaluator_batch: int, ask_batch: int, trials: int, expected: int) -> None:
    assert default_batch(evaluator_batch, ask_batch, trials) == expected


def _accuracies(strategy: str, seed: int, run_dir: Path, trials: int) -> list[float]:
    run_search(RunConfig(space="nasbench201", strategy=strategy, evaluator="tabular", trials=trials, seed=seed,
                         objective=Objective(metric="accuracy", mode="max")), run_dir)
    lines = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    return [line["metrics"]["accuracy"] for line in lines]


def test_tpe_run_by_run_search_learns_within_a_short_search(tmp_path: Path) -> None:
    """60 archs on NAS-Bench-201, in process: TPE's last 30 archs are far better than random search's. Asked all at
    once they were random (TPE's first 10 archs are random, and it learns only from told ones)."""
    seeds = range(2)
    tpe = [np.mean(_accuracies("tpe", s, tmp_path / f"tpe{s}", 60)[30:]) for s in seeds]
    rs = [np.mean(_accuracies("random", s, tmp_path / f"rs{s}", 60)[30:]) for s in seeds]
    assert np.mean(tpe) > np.mean(rs) + 0.02, (tpe, rs)


# Exhaustive: TPE and RL (make test: TPE learning within a short search above, and every strategy beating random
# search in tests/contracts/test_strategy_contract.py); evolution, the default strategy, runs by default.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", [pytest.param("tpe", marks=pytest.mark.exhaustive),
                                      pytest.param("rl", marks=pytest.mark.exhaustive), "evolution"])
def test_a_learning_strategy_run_by_run_search_beats_random_search(strategy: str, tmp_path: Path) -> None:
    """The best accuracy of 200 archs on NAS-Bench-201 in process, mean over 4 seeds, against random search's."""
    seeds = range(4)
    ours = [max(_accuracies(strategy, s, tmp_path / f"{strategy}{s}", 200)) for s in seeds]
    rs = [max(_accuracies("random", s, tmp_path / f"rs{s}", 200)) for s in seeds]
    assert np.mean(ours) > np.mean(rs), (ours, rs)
