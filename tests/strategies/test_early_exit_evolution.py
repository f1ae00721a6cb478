"""`early_exit_evolution` (EEEA): EE-PI rejects archs above beta, elitist generations, exact resume, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas.config import Objective
from nas.errors import UserError
from nas.space import load_space
from nas.strategies import build_strategy

OBJECTIVE = Objective(metric="macs", mode="max", max_params=3_000_000)


def _metrics(space, arch) -> dict[str, float]:
    return {**space.cost(arch), "latency_ms": 1.0}


def _make(overrides=None, seed: int = 3, space_name: str = "proxylessnas"):
    config = {"population_size": 8, **(overrides or {})}
    return build_strategy("early_exit_evolution", config, load_space(space_name), OBJECTIVE, seed)


def _drive(strategy, rounds: int, batch: int = 3) -> list[str]:
    """Ask a batch, tell it in reverse order; repeat. Returns the asked hashes."""
    asked = []
    for _ in range(rounds):
        archs = strategy.ask(batch)
        asked += [a.hash for a in archs]
        for arch in reversed(archs):
            strategy.tell(arch, _metrics(strategy.space, arch))
    return asked


def test_beta_rejects_every_initial_arch_above_it() -> None:
    space = load_space("proxylessnas")
    rng = np.random.default_rng(0)
    unconstrained = [space.cost(space.sample(rng))["params"] for _ in range(200)]
    beta = int(np.quantile(unconstrained, 0.2))  # about 80% of uniform draws are above it
    strategy = _make({"beta": beta, "population_size": 30})
    initial = strategy.ask(30)
    params = [space.cost(a)["params"] for a in initial]
    assert max(params) <= beta < max(unconstrained)
    assert strategy.n_rejected > 30  # most draws were turned away without a trial
    # Off (beta 0): the same seed draws archs above that threshold.
    plain = _make({"beta": 0, "population_size": 30}).ask(30)
    assert max(space.cost(a)["params"] for a in plain) > beta


def test_beta_applies_to_children_only_when_asked_to() -> None:
    space = load_space("proxylessnas")
    beta = 2_300_000
    for offspring, expect_all_under in ((True, True), (False, False)):
        strategy = _make({"beta": beta, "early_exit_offspring": offspring, "mutation_prob": 1.0})
        _drive(strategy, 3, batch=8)  # 24 tells: two survivals
        children = [space.cost(a)["params"] for a in strategy.ask(60)]
        assert (max(children) <= beta) == expect_all_under, (offspring, max(children))


def test_beta_counted_at_params_config_like_the_paper() -> None:
    """EEEA counts params on the C=36, 20-cell network while searching a small proxy."""
    proxy = load_space("eeea")
    big = load_space("eeea", {"init_channels": 36, "layers": 20})
    strategy = build_strategy("early_exit_evolution", {
        "population_size": 6, "beta": 3_000_000, "params_config": {"init_channels": 36, "layers": 20}},
        proxy, OBJECTIVE, seed=0)
    for arch in strategy.ask(6):
        assert arch.space == "eeea" and dict(arch.config) == proxy._config_dump  # searched at the proxy config
        assert strategy.params(arch) == big.cost(big.make_arch(arch.choices))["params"] <= 3_000_000
        assert proxy.cost(arch)["params"] < strategy.params(arch)


def test_unreachable_beta_is_one_user_error_naming_it() -> None:
    strategy = _make({"beta": 1000})
    with pytest.raises(UserError, match=r"beta=1000: .*none had at most 1,000 params .*allowed"):
        strategy.ask()


@pytest.mark.parametrize(("overrides", "key"), [
    ({"population_size": 0}, "population_size"), ({"mutation_prob": 1.5}, "mutation_prob"),
    ({"tournament_size": 9}, "tournament_size"), ({"beta": -1}, "beta"),
    ({"params_config": {"init_channels": 0}}, "init_channels"),
])
def test_bad_options_are_user_errors_naming_the_key(overrides, key) -> None:
    with pytest.raises(UserError, match=key):
        build_strategy("early_exit_evolution", {"population_size": 8, **overrides},
                       load_space("eeea" if key == "init_channels" else "proxylessnas"), OBJECTIVE, 0)


def test_survival_keeps_the_best_of_parents_and_children() -> None:
    strategy = _make({"beta": 0, "population_size": 4})
    archs = strategy.ask(4)
    for i, arch in enumerate(archs):
        strategy.tell(arch, {"macs": float(i), "params": 1.0, "latency_ms": 1.0})
    assert strategy.generation == 1 and [v for _, v in strategy.population] == [3.0, 2.0, 1.0, 0.0]
    children = strategy.ask(4)
    for arch, value in zip(children, (10.0, -5.0, 2.5, 0.5), strict=True):
        strategy.tell(arch, {"macs": value, "params": 1.0, "latency_ms": 1.0})
    assert strategy.generation == 2 and [v for _, v in strategy.population] == [10.0, 3.0, 2.5, 2.0]
    assert strategy.children == []


def test_same_seed_and_tells_give_the_same_asks() -> None:
    assert _drive(_make({"beta": 2_500_000}), 8) == _drive(_make({"beta": 2_500_000}), 8)
    assert _drive(_make(), 8) != _drive(_make(seed=4), 8)


def test_resume_is_exact_with_archs_in_flight() -> None:
    first = _make({"beta": 2_500_000, "early_exit_offspring": True})
    _drive(first, 5)
    in_flight = first.ask(4)  # a generation's worth in flight across a survival
    first.tell(in_flight[2], _metrics(first.space, in_flight[2]))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _make({"beta": 2_500_000, "early_exit_offspring": True}, seed=99)
    resumed.load_state_dict(state)
    assert sorted(a.hash for a in resumed.pending()) == sorted(a.hash for i, a in enumerate(in_flight) if i != 2)
    assert resumed.state_dict() == state
    for strategy in (first, resumed):
        for arch in (in_flight[3], in_flight[0], in_flight[1]):
            strategy.tell(arch, _metrics(strategy.space, arch))
    assert _drive(resumed, 6) == _drive(first, 6)
    assert resumed.state_dict() == first.state_dict()


def _best(strategy_name: str, overrides: dict, seed: int, budget: int) -> float:
    space = load_space("proxylessnas")
    strategy = build_strategy(strategy_name, overrides, space, OBJECTIVE, seed)
    best = -np.inf
    for _ in range(budget // 10):
        archs = strategy.ask(10)
        for arch in archs:
            best = max(best, strategy.tell(arch, _metrics(space, arch)))
    return best


def test_beats_random_search_on_macs_under_a_params_bound() -> None:
    """Maximise MACs with at most 3M params on proxylessnas, 200 archs, 6 seeds (the lut-like synthetic task)."""
    eeea = [_best("early_exit_evolution", {"population_size": 20, "beta": 3_000_000}, s, 200) for s in range(6)]
    rand = [_best("random", {}, s, 200) for s in range(6)]
    wins = sum(e > r for e, r in zip(eeea, rand, strict=True))
    assert np.mean(eeea) > np.mean(rand) and wins >= 5, (eeea, rand)
