"""`Deduplicated`: every ask is a new arch, repeats teach the strategy, a small space runs out cleanly."""

from __future__ import annotations

import pytest

from nas.config import Objective
from nas.space import load_space
from nas.strategies import build_strategy
from nas.strategies.dedup import Deduplicated, SpaceExhausted
from tests.hardware.conftest import FakeConfig, FakeSpace

OBJECTIVE = Objective(metric="macs", mode="max")


def _metrics(space, arch) -> dict[str, float]:
    return {**space.cost(arch), "latency_ms": 1.0}


def test_asks_are_distinct_and_the_budget_counts_distinct_archs(strategy_name: str) -> None:
    """Every registered strategy, wrapped (strategy_name is enrolled from the registry)."""
    space = load_space("proxylessnas")
    overrides = {"population_size": 8, "sample_size": 4} if strategy_name == "evolution" else {}
    inner = build_strategy(strategy_name, overrides, space, OBJECTIVE, seed=0)
    strategy = Deduplicated(inner)
    asked = []
    for _ in range(300):
        (arch,) = strategy.ask()
        asked.append(arch.hash)
        strategy.tell(arch, _metrics(space, arch))
    assert len(set(asked)) == 300
    assert inner.pending() == []  # every repeat was told or forgotten, none left dangling


def test_a_small_space_is_exhausted_not_looped() -> None:
    space = FakeSpace(FakeConfig())  # 81 archs
    strategy = Deduplicated(build_strategy("random", {}, space, OBJECTIVE, seed=0), max_draws=2000)
    seen = set()
    with pytest.raises(SpaceExhausted, match="already seen .81 distinct archs"):
        for _ in range(200):
            (arch,) = strategy.ask()
            seen.add(arch.hash)
            strategy.tell(arch, {"macs": 1.0, "params": 1.0, "latency_ms": 1.0})
    assert len(seen) == 81


def test_repeat_of_an_arch_in_flight_is_forgotten_and_of_a_scored_arch_is_told() -> None:
    space = FakeSpace(FakeConfig())
    inner = build_strategy("random", {}, space, OBJECTIVE, seed=1)
    strategy = Deduplicated(inner, max_draws=5000)
    in_flight = strategy.ask(40)  # nothing told: repeats of these are forgotten
    assert len({a.hash for a in in_flight}) == 40
    assert len(inner.pending()) == 40
    for arch in in_flight:
        strategy.tell(arch, {"macs": 1.0, "params": 1.0, "latency_ms": 1.0})
    for _ in range(41):
        (arch,) = strategy.ask()
        strategy.tell(arch, {"macs": 1.0, "params": 1.0, "latency_ms": 1.0})
    assert strategy.repeats > 0
    assert inner.pending() == []  # repeats of archs in flight were forgotten, of scored archs told
    assert inner.n_told > 81  # the repeats of scored archs were told their known metrics


def test_a_batch_ask_that_runs_out_hands_back_the_new_archs_it_found() -> None:
    space = FakeSpace(FakeConfig())  # 81 archs
    strategy = Deduplicated(build_strategy("random", {}, space, OBJECTIVE, seed=3), max_draws=500)
    with pytest.raises(SpaceExhausted) as err:
        strategy.ask(100)
    assert len({a.hash for a in err.value.archs}) == len(err.value.archs) == 81
    assert len(strategy.pending()) == 81  # the repeats were forgotten, the new archs are in flight
