"""Every registered strategy: deterministic batch asks, exact resume from its saved state (and its
library's store, copied at save time as a kill -9 would leave it), tell rules, and learning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nas.config import Objective
from nas.errors import NasError
from nas.registry import STRATEGIES
from nas.space import load_space
from nas.strategies import build_strategy
from nas.strategies.dedup import Deduplicated

OBJECTIVE = Objective(metric="macs", mode="max", max_params=3_000_000)
_SMALL = {"evolution": {"population_size": 6, "sample_size": 3}, "nsga2": {"population_size": 6},
          "early_exit_evolution": {"population_size": 6}, "rl": {"batch_size": 4}}
"""Small populations and batches, so a few dozen asks reach each strategy's learning phase."""


def _metrics(arch) -> dict[str, float]:
    cost = load_space(arch.space, dict(arch.config)).cost(arch)
    return {**cost, "latency_ms": cost["macs"] / 1e6}


def _drive(strategy, steps: int) -> list[str]:
    """Ask two at once, tell them in reverse order; repeat. Returns the asked hashes."""
    asked = []
    for _ in range(steps):
        pair = strategy.ask(2)
        asked += [a.hash for a in pair]
        for arch in reversed(pair):
            strategy.tell(arch, _metrics(arch))
    return asked


def _options(name: str) -> dict:
    fields = STRATEGIES.get(name).config_model.model_fields
    return {k: v for k, v in _SMALL.get(name, {}).items() if k in fields}


def _make(name: str, seed: int = 7, workdir: Path | None = None, objective: Objective = OBJECTIVE):
    return build_strategy(name, _options(name), load_space("proxylessnas"), objective, seed, workdir)


def test_same_seed_same_asks(strategy_name: str, tmp_path: Path) -> None:
    runs = [_drive(_make(strategy_name, seed, tmp_path / str(i)), 12) for i, seed in enumerate((7, 7, 8))]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resume_from_saved_state_is_exact(strategy_name: str, tmp_path: Path) -> None:
    """Save the state with archs in flight and let the original go on a little, then copy its folder (its
    library's store is now ahead of the saved state, as after a kill -9 between two saves). A strategy
    built with another seed and resumed from the state and that copy asks exactly what the original asks."""
    first = _make(strategy_name, workdir=tmp_path / "run")
    _drive(first, 5)
    in_flight = first.ask(3)
    state = json.loads(json.dumps(first.state_dict()))
    first.tell(in_flight[0], _metrics(in_flight[0]))
    first.ask(1)
    if (tmp_path / "run").exists():
        shutil.copytree(tmp_path / "run", tmp_path / "killed")
    resumed = _make(strategy_name, seed=99, workdir=tmp_path / "killed" if (tmp_path / "run").exists() else None)
    resumed.load_state_dict(state)
    assert sorted(a.hash for a in resumed.pending()) == sorted(a.hash for a in in_flight)

    unbroken = _make(strategy_name, workdir=tmp_path / "unbroken")
    _drive(unbroken, 5)
    assert [a.hash for a in unbroken.ask(3)] == [a.hash for a in in_flight]
    for strategy in (unbroken, resumed):
        for arch in in_flight:
            strategy.tell(arch, _metrics(arch))
    assert _drive(resumed, 8) == _drive(unbroken, 8)


def test_telling_an_unasked_arch_is_an_error(strategy_name: str, tmp_path: Path) -> None:
    strategy = _make(strategy_name, workdir=tmp_path)
    arch = load_space("proxylessnas").sample(np.random.default_rng(0))
    with pytest.raises(NasError, match="never asked"):
        strategy.tell(arch, _metrics(arch))
    (asked,) = strategy.ask()
    strategy.tell(asked, _metrics(asked))
    with pytest.raises(NasError):
        strategy.tell(asked, _metrics(asked))


def _best_found(name: str, seed: int, budget: int) -> float:
    """The best feasible MACs a deduplicated strategy finds in `budget` archs (batches of 4, as with 4 workers)."""
    strategy = Deduplicated(_make(name, seed))
    best = -np.inf
    while strategy.strategy.n_told < budget:
        batch = strategy.ask(4)
        for arch in batch:
            metrics = _metrics(arch)
            strategy.tell(arch, metrics)
            if metrics["params"] <= OBJECTIVE.max_params:
                best = max(best, metrics["macs"])
    return best


@pytest.mark.slow
def test_every_learning_strategy_beats_random_search(strategy_name: str) -> None:
    """Largest MACs under a 3M-parameter bound on ProxylessNAS, 120 archs, 6 seeds: a strategy that
    learns from its tells must find a better mean best than uniform random search."""
    if strategy_name == "random":
        pytest.skip("random search is the baseline")
    seeds = range(6)
    ours = np.mean([_best_found(strategy_name, s, 120) for s in seeds])
    baseline = np.mean([_best_found("random", s, 120) for s in seeds])
    assert ours > baseline, f"{strategy_name}: mean best {ours / 1e6:.2f}M MACs, random {baseline / 1e6:.2f}M"
