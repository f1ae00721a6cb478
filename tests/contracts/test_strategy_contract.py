"""Every registered strategy: deterministic asks, exact resume from a JSON state, tell rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas.config import Objective
from nas.errors import NasError
from nas.space import load_space
from nas.strategies import build_strategy

OBJECTIVE = Objective(metric="macs", mode="max", max_params=3_000_000)


def _metrics(arch) -> dict[str, float]:
    cost = load_space(arch.space, dict(arch.config)).cost(arch)
    return {**cost, "latency_ms": cost["macs"] / 1e6}


def _drive(strategy, steps: int, start: int = 0) -> list[str]:
    """Ask two, tell them in reverse order; repeat. Returns the asked hashes."""
    asked = []
    for _ in range(start, steps):
        pair = strategy.ask(2)
        asked += [a.hash for a in pair]
        for arch in reversed(pair):
            strategy.tell(arch, _metrics(arch))
    return asked


def _make(strategy_name: str, seed: int = 7):
    overrides = {"population_size": 6, "sample_size": 3} if strategy_name == "evolution" else {}
    return build_strategy(strategy_name, overrides, load_space("proxylessnas"), OBJECTIVE, seed)


def test_same_seed_same_asks(strategy_name: str) -> None:
    assert _drive(_make(strategy_name), 12) == _drive(_make(strategy_name), 12)
    assert _drive(_make(strategy_name), 12) != _drive(_make(strategy_name, seed=8), 12)


def test_resume_from_json_state_is_exact(strategy_name: str) -> None:
    first = _make(strategy_name)
    _drive(first, 5)
    (in_flight,) = first.ask()
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _make(strategy_name, seed=99)
    resumed.load_state_dict(state)
    assert [a.hash for a in resumed.pending()] == [in_flight.hash]
    assert resumed.state_dict() == state
    for strategy in (first, resumed):
        strategy.tell(in_flight, _metrics(in_flight))
    assert _drive(resumed, 10) == _drive(first, 10)


def test_telling_an_unasked_arch_is_an_error(strategy_name: str) -> None:
    strategy = _make(strategy_name)
    arch = load_space("proxylessnas").sample(np.random.default_rng(0))
    with pytest.raises(NasError, match="never asked"):
        strategy.tell(arch, _metrics(arch))
    (asked,) = strategy.ask()
    strategy.tell(asked, _metrics(asked))
    with pytest.raises(NasError):
        strategy.tell(asked, _metrics(asked))
