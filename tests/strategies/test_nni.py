"""`nni`: NNI's tuners behind ask/tell: real spaces, determinism, exact resume, limits, quiet and lazy import."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from nas.config import Objective
from nas.errors import UserError
from nas.space import load_space
from nas.strategies import build_strategy

OBJECTIVE = Objective(metric="macs", mode="max", max_params=3_000_000)
SMALL = {"TPE": {"n_startup_jobs": 6}, "Evolution": {"population_size": 6},
         "RegularizedEvolution": {"population_size": 6, "sample_size": 3},
         "PPO": {"trials_per_update": 6, "minibatch_size": 2}, "Anneal": {}}


def _installed(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


TUNERS = [
    "TPE", "Evolution", "RegularizedEvolution",
    pytest.param("Anneal", marks=pytest.mark.skipif(not _installed("hyperopt"), reason="hyperopt not installed")),
    pytest.param("PPO", marks=[pytest.mark.slow, pytest.mark.skipif(
        not _installed("tensorflow", "tf_keras", "gym"), reason="tensorflow, tf_keras or gym not installed")]),
]


def _metrics(arch) -> dict[str, float]:
    cost = load_space(arch.space, dict(arch.config)).cost(arch)
    return {**cost, "latency_ms": cost["macs"] / 1e6}


def _make(tuner: str, seed: int = 5, space: str = "proxylessnas", **overrides):
    return build_strategy("nni", {"tuner": tuner, **SMALL[tuner], **overrides}, load_space(space), OBJECTIVE, seed)


def _drive(strategy, rounds: int, batch: int = 2) -> list[str]:
    """Ask a batch, tell it in reverse order; repeat. Returns the asked hashes."""
    asked = []
    for _ in range(rounds):
        archs = strategy.ask(batch)
        asked += [a.hash for a in archs]
        for arch in reversed(archs):
            strategy.tell(arch, _metrics(arch))
    return asked


@pytest.mark.parametrize("tuner", TUNERS)
@pytest.mark.parametrize("space", ["proxylessnas", "nasbench201"])
def test_tuner_learns_from_tells_on_a_real_space(tuner: str, space: str) -> None:
    strategy = _make(tuner, space=space)
    asked = _drive(strategy, 12)
    assert len(asked) == 24 and strategy.n_told == 24 and strategy.pending() == []
    told = [e for e in strategy.events if e[0] == 1]
    assert len(told) + strategy.n_random == 24  # every NNI ask was told to NNI
    assert {p for p in strategy.params} == set(range(len(strategy.params)))


@pytest.mark.parametrize("tuner", TUNERS)
def test_same_seed_same_asks_and_global_rngs_untouched(tuner: str) -> None:
    random.seed(1)
    np.random.seed(1)
    before = random.random(), np.random.random()
    random.seed(1)
    np.random.seed(1)
    first = _drive(_make(tuner), 10)
    assert (random.random(), np.random.random()) == before  # NNI's global draws ran on private states
    assert _drive(_make(tuner), 10) == first
    assert _drive(_make(tuner, seed=6), 10) != first


@pytest.mark.parametrize("tuner", TUNERS)
def test_resume_is_exact_with_archs_in_flight_and_forgotten(tuner: str) -> None:
    first = _make(tuner)
    _drive(first, 5)
    in_flight = first.ask(3)
    first.forget(in_flight[1])  # a failed trial: NNI's trial_end(id, False)
    first.tell(in_flight[2], _metrics(in_flight[2]))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _make(tuner, seed=99)
    resumed.load_state_dict(state)
    assert [a.hash for a in resumed.pending()] == [in_flight[0].hash]
    assert resumed.state_dict() == state
    for strategy in (first, resumed):
        strategy.tell(in_flight[0], _metrics(in_flight[0]))
    assert _drive(resumed, 8, batch=3) == _drive(first, 8, batch=3)
    assert resumed.state_dict() == first.state_dict()


def test_asks_beyond_what_nni_can_propose_are_uniform_and_resume_exactly() -> None:
    """Evolution has nothing to mutate once its whole first population is in flight."""
    first = _make("Evolution")
    archs = first.ask(9)  # 6 from NNI's population, 3 uniform draws
    assert first.n_random == 3 and len(first.params) == 6
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _make("Evolution", seed=42)
    resumed.load_state_dict(state)
    for strategy in (first, resumed):
        for arch in archs:
            strategy.tell(arch, _metrics(arch))
    assert _drive(resumed, 6) == _drive(first, 6)


def test_tpe_learns_the_uniform_fills_through_import_data() -> None:
    strategy = _make("TPE")
    strategy.host.ask = lambda pid: None  # as if NNI had nothing to give while asks are in flight
    strategy.ids[load_space("proxylessnas").sample(np.random.default_rng(0)).hash] = [0]
    (arch,) = strategy.ask()
    strategy.tell(arch, _metrics(arch))
    assert strategy.events[-1][0] == 3 and len(strategy.host.tuner._history) == 21  # one record per decision


def test_proposals_that_break_the_space_rules_are_ended_and_drawn_again() -> None:
    """eeea cells must read the previous cell: about 8% of uniform cells do not."""
    strategy = _make("RegularizedEvolution", space="eeea", population_size=60)
    archs = strategy.ask(60)
    ended = [e[1] for e in strategy.events if e[0] == 2]
    assert ended and len(strategy.params) == 60 + len(ended) and len({a.hash for a in archs}) == 60
    for pid in ended:
        with pytest.raises(UserError, match="never choose 1"):
            load_space("eeea").make_arch(strategy.host.choices(strategy.params[pid]))


@pytest.mark.parametrize(("overrides", "match"), [
    ({"tuner": "SMAC"}, "tuner"),
    ({"tuner": "TPE", "population_size": 10}, r"population_size: an option of the Evolution and Regular"),
    ({"tuner": "Evolution", "population_size": 0}, "population_size"),
    ({"tuner": "RegularizedEvolution", "population_size": 5, "sample_size": 6}, "sample_size: must be at most"),
    ({"tuner": "PPO", "trials_per_update": 10}, r"minibatch_size: 4 must divide trials_per_update \(10\)"),
    ({"tuner": "PPO", "trials_per_update": 10, "minibatch_size": 3}, "minibatch_size: 3 must divide"),
    ({"tuner": "TPE", "gamma": 0.0}, "gamma"),
    ({"tuner": "TPE", "constant_liar_type": "median"}, "constant_liar_type"),
    ({"tuner": "TPE", "lr": 0.1}, "lr: an option of the PPO tuner, not of TPE"),
])
def test_bad_options_are_one_line_user_errors(overrides, match) -> None:
    with pytest.raises(UserError, match=match) as err:
        build_strategy("nni", overrides, load_space("proxylessnas"), OBJECTIVE, 0)
    assert "\n" not in str(err.value)


def test_a_tuner_without_its_packages_is_refused_naming_them(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hyperopt" else real(name, *a))
    with pytest.raises(UserError, match=r"tuner=Anneal: .*needs hyperopt, not installed; allowed: pip install"):
        build_strategy("nni", {"tuner": "Anneal"}, load_space("proxylessnas"), OBJECTIVE, 0)


def test_pareto_objectives_are_refused() -> None:
    pareto = Objective(kind="pareto", metrics={"macs": "max", "params": "min"})
    with pytest.raises(UserError, match="takes objectives constrained, weighted, not pareto"):
        build_strategy("nni", {"tuner": "TPE"}, load_space("proxylessnas"), pareto, 0)


@pytest.mark.slow
def test_nni_is_imported_lazily_and_prints_nothing_on_stdout() -> None:
    code = ("import sys, nas, nas.strategies, nas.cli; assert 'nni' not in sys.modules, 'nni imported'\n"
            "from nas.config import Objective\nfrom nas.space import load_space\n"
            "from nas.strategies import build_strategy\n"
            "s = build_strategy('nni', {'tuner': 'TPE'}, load_space('nasbench201'), Objective(metric='macs'), 0)\n"
            "for _ in range(25):\n    (a,) = s.ask(); s.tell(a, {'macs': 1.0, 'params': 1.0})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", done.stdout
    assert "INFO" not in done.stderr, done.stderr


def _nb201_best(strategy, evaluator, archs: int) -> float:
    """The best validation accuracy of `archs` distinct archs, asked one at a time as an in-process search does."""
    from nas.strategies.dedup import Deduplicated

    search, best = Deduplicated(strategy), 0.0
    for _ in range(archs):
        (arch,) = search.ask()
        metrics = evaluator.evaluate(arch)
        search.tell(arch, metrics)
        best = max(best, metrics["accuracy"])
    return best


def test_nni_tpe_beats_random_search_on_nas_bench_201() -> None:
    """NNI's TPE proposes repeats of its few best archs from about its 25th ask on; NNI's own Deduplicator turned
    them into grid-search points (about 88% of its proposals), and its best stayed at the 25-arch value: below
    random search at 100 archs (150 seeds: 90.82% against 91.05%). Its repeats now go to the run loop's
    deduplication, which tells them and then adopts an unseen neighbour (10 seeds: 91.36%)."""
    from nas.evaluate.tabular import TabularConfig, TabularEvaluator
    from nas.strategies.base import StrategyConfig
    from nas.strategies.random import RandomSearch

    space = load_space("nasbench201")
    objective = Objective(metric="accuracy", mode="max")
    seeds = range(6)
    tpe, rs = [], []
    for seed in seeds:
        evaluator = TabularEvaluator(space, TabularConfig(seed=seed), None)
        tpe.append(_nb201_best(build_strategy("nni", {"tuner": "TPE"}, space, objective, seed), evaluator, 100))
        evaluator = TabularEvaluator(space, TabularConfig(seed=seed), None)
        rs.append(_nb201_best(RandomSearch(space, StrategyConfig(), objective, seed), evaluator, 100))
    assert np.mean(tpe) > np.mean(rs), (tpe, rs)
