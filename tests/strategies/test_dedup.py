"""`Deduplicated`: every ask is a new arch, repeats teach the strategy, a small space runs out cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas.arch import Arch
from nas.config import Objective
from nas.space import load_space
from nas.strategies import build_strategy
from nas.strategies.base import Strategy, StrategyConfig
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


# --- a converged strategy is not an exhausted space ----------------------------------------------------------

_CONVERGING = [
    pytest.param("evolution", {"population_size": 4, "sample_size": 4}, id="evolution"),
    pytest.param("early_exit_evolution", {"population_size": 4, "beta": 0}, id="early_exit_evolution"),
    pytest.param("tpe", {}, id="tpe"),
    pytest.param("nsga2", {"population_size": 4}, id="nsga2"),
    pytest.param("rl", {"batch_size": 4, "hidden_size": 16}, id="rl"),
    pytest.param("nni", {"tuner": "TPE", "n_startup_jobs": 4}, id="nni_tpe"),
    pytest.param("nni", {"tuner": "RegularizedEvolution", "population_size": 4, "sample_size": 4},
                 id="nni_regularized_evolution"),
    pytest.param("nni", {"tuner": "Evolution", "population_size": 4}, id="nni_evolution"),
    pytest.param("random", {}, id="random"),
]


def _fake_metrics(space, arch) -> dict[str, float]:
    """A score with one best arch (all k5): a strategy that learns converges onto it and proposes it again."""
    macs = sum({"k5": 3, "k3": 1, "skip": 0}[arch.choices[f"b{i}.op"]] for i in range(1, 5))
    return {"macs": float(macs), "params": 1.0, "latency_ms": 1.0}


def _until_exhausted(strategy: Deduplicated, space, batch: int = 1) -> list[str]:
    asked = []
    for _ in range(200):
        try:
            archs = strategy.ask(batch)
        except SpaceExhausted as err:  # the archs it found are run, as the search runs them
            asked += [a.hash for a in err.archs]
            for arch in err.archs:
                strategy.tell(arch, _fake_metrics(space, arch))
            return asked
        asked += [a.hash for a in archs]
        for arch in archs:
            strategy.tell(arch, _fake_metrics(space, arch))
    raise AssertionError(f"no SpaceExhausted after {len(asked)} asks of a space of {space.size()} archs")


@pytest.mark.parametrize(("name", "overrides"), _CONVERGING)
def test_a_strategy_that_repeats_itself_goes_on_until_the_space_is_exhausted(name: str, overrides: dict) -> None:
    """Evolution with a small population, TPE and the rest converge onto the best of 81 archs and then propose
    little but repeats. Before, 1,000 repeats in a row ended the search as if the space were exhausted, after
    14 (EEEA) to 76 of its 81 archs (only TPE and random search reached 81); now each repeat past `patience` is
    replaced by an unseen arch the strategy adopts and learns from, so every arch is evaluated once, and only
    then is the space exhausted."""
    space = FakeSpace(FakeConfig())
    inner = build_strategy(name, overrides, space, OBJECTIVE, seed=0)
    strategy = Deduplicated(inner, patience=3)
    asked = _until_exhausted(strategy, space)
    assert len(asked) == len(set(asked)) == 81
    assert inner.pending() == []
    if name != "random":
        assert strategy.n_adopted > 0


class _Stuck(Strategy):
    """Proposes one arch forever: a strategy converged as far as it goes."""

    def _propose(self) -> Arch:
        return self.space.sample(np.random.default_rng(0))


def test_each_repeat_past_patience_is_replaced_by_an_unseen_neighbour() -> None:
    """The unseen arch comes from a walk of mutations from the repeat: with most of the space unseen it is the
    repeat's neighbour, not a uniform draw; the strategy is told each repeat, and each adopted arch, as its own."""
    space = load_space("proxylessnas")
    inner = _Stuck(space, StrategyConfig(), OBJECTIVE, seed=0)
    strategy = Deduplicated(inner, patience=3)
    (stuck,) = strategy.ask()
    strategy.tell(stuck, _metrics(space, stuck))
    archs = strategy.ask(5)
    assert strategy.n_adopted == 5 and strategy.repeats == 3 + 4  # 3 repeats, then every repeat is replaced
    assert inner.n_told == 1 + 7 and len({a.hash for a in archs}) == 5
    assert all(1 <= sum(a.choices[k] != stuck.choices[k] for k in stuck.choices) <= 2 for a in archs)
    for arch in archs:
        strategy.tell(arch, _metrics(space, arch))
    assert inner.pending() == [] and inner.n_told == 13


def test_a_space_exhausted_in_a_batch_hands_back_what_it_found_and_leaves_nothing_dangling() -> None:
    space = FakeSpace(FakeConfig())
    inner = build_strategy("evolution", {"population_size": 4, "sample_size": 2}, space, OBJECTIVE, seed=2)
    strategy = Deduplicated(inner, patience=3)
    asked = _until_exhausted(strategy, space, batch=7)
    assert sorted(asked) == sorted(set(asked)) and len(asked) == 81
    assert inner.pending() == []


@pytest.mark.parametrize(("name", "overrides"), [p for p in _CONVERGING if p.id != "random"])
def test_resume_with_adopted_archs_in_flight_is_exact(name: str, overrides: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk draws from the strategy's own RNG, saved with its state: a strategy built with another seed and
    resumed from the state (archs in flight, some adopted) asks exactly what the unbroken one asks."""
    import nas.space

    space, real = FakeSpace(FakeConfig()), nas.space.load_space
    monkeypatch.setattr(nas.space, "load_space", lambda n, o=None: space if n == space.name else real(n, o))

    def wrapped(seed: int) -> Deduplicated:
        return Deduplicated(build_strategy(name, overrides, space, OBJECTIVE, seed=seed), patience=2)

    def drive(strategy: Deduplicated, rounds: int) -> list[str]:
        asked = []
        for _ in range(rounds):
            pair = strategy.ask(2)
            asked += [a.hash for a in pair]
            for arch in reversed(pair):
                strategy.tell(arch, _fake_metrics(space, arch))
        return asked

    first = wrapped(3)
    drive(first, 12)
    in_flight = first.ask(3)
    state = json.loads(json.dumps(first.state_dict()))
    told = {h: dict(m) for h, m in first._seen.items() if isinstance(m, dict)}
    resumed = wrapped(99)
    resumed.load_state_dict(state)
    for arch_hash, metrics in told.items():
        resumed.remember(arch_hash, metrics)
    for arch in resumed.pending():
        resumed.remember(arch.hash, None)
    assert sorted(a.hash for a in resumed.pending()) == sorted(a.hash for a in in_flight)
    for strategy in (first, resumed):
        for arch in in_flight:
            strategy.tell(arch, _fake_metrics(space, arch))
    assert drive(resumed, 8) == drive(first, 8)
    assert first.n_adopted > 0, "no arch was adopted: the test exercised nothing"
