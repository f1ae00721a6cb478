"""`nas.run_json` writes exactly what `canonical_json` writes, and refuses what it refuses (NaN, infinity, objects
that are not JSON) with the same exception types: metrics through its reused C encoder, strategy states with
the cached JSON of archs in flight and of archs told since the last save (an evolution's population)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from nas.arch import canonical_json
from nas.config import Objective, RunConfig
from nas.run_json import _encode_flat, state_json, trial_line
from nas.space import load_space

NUMBERS = [0, -0.0, 1e-7, 1.5e16, -3.25, 1e300, 2**62, -(2**63) + 1, 0.1 + 0.2, 5e-324, None, True, "x\u00e9\"\\"]


def test_metrics_are_encoded_as_canonical_json() -> None:
    rng = np.random.default_rng(0)
    names = ["latency_ms", "macs", "params", "accuracy", "a", "Z", "\u2603", "train_loss"]
    for _ in range(500):
        keys = rng.choice(names, size=rng.integers(0, len(names) + 1), replace=False)
        metrics = {str(k): NUMBERS[rng.integers(len(NUMBERS))] for k in keys}
        assert _encode_flat(metrics) == canonical_json(metrics), metrics


@pytest.mark.parametrize(("value", "error"), [
    ({"a": math.nan}, ValueError), ({"a": math.inf}, ValueError), ({"a": -math.inf}, ValueError),
    ({"a": object()}, TypeError), ({"a": {1, 2}}, TypeError),
])
def test_what_canonical_json_refuses_is_refused_alike(value: dict, error: type) -> None:
    with pytest.raises(error):
        canonical_json(value)
    with pytest.raises(error):
        _encode_flat(value)


@pytest.mark.parametrize("value", [[1, 2], "text", None, {"nested": {"b": 1, "a": [1.5, None]}}])
def test_other_values_are_encoded_as_canonical_json(value) -> None:
    assert _encode_flat(value) == canonical_json(value)


def test_a_failed_encoding_leaves_the_encoder_usable() -> None:
    with pytest.raises(ValueError):
        _encode_flat({"a": 1, "b": math.nan})
    assert _encode_flat({"b": 2, "a": 1}) == '{"a":1,"b":2}'


def test_an_ok_line_with_odd_field_types_is_still_canonical() -> None:
    arch = load_space("proxylessnas").sample(np.random.default_rng(3))
    fields = {"feasible": 1, "finished_at": None, "hash": 7, "host": 2.5, "metrics": {"macs": 3, "a": None},
              "node": ["n"], "pid": "p", "score": math.pi, "status": ["ok"], "trial": 4}
    assert trial_line(arch, fields).text == canonical_json({**fields, "arch": arch.to_dict()})


def _strategy(lut_path: Path, population: int):
    from nas.plan import plan_search

    config = RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=10_000,
                       hardware=str(lut_path), strategy_config={"population_size": population, "sample_size": 3},
                       objective=Objective(metric="macs", max_latency_ms=1.2))
    return plan_search(config).new_strategy()


def _saved(strategy) -> dict:
    return {"n_recorded": strategy.strategy.n_told, "strategy": strategy.state_dict()}


@pytest.mark.parametrize(("population", "batch"), [(20, 30), (50, 30), (8, 8)])
def test_states_of_a_running_evolution_are_canonical(lut_path: Path, population: int, batch: int) -> None:
    """Batch after batch, as a search saves them: the population is made of archs told since the last save
    (all of them when the batch is larger), or of older ones too."""
    strategy = _strategy(lut_path, population)
    space = strategy.strategy.space
    for round_ in range(6):
        archs = strategy.ask(batch)
        saved = _saved(strategy)
        assert state_json(saved, strategy.pending()) == canonical_json(saved), round_
        for k, arch in enumerate(archs):
            strategy.tell(arch, {**space.cost(arch), "latency_ms": 1.0 + (k % 5) / 10})
    assert len(saved["strategy"]["population"]) == population


def _population_state(lut_path: Path) -> tuple[dict, list]:
    strategy = _strategy(lut_path, 10)
    space = strategy.strategy.space
    for _ in range(2):
        for arch in strategy.ask(12):
            strategy.tell(arch, {**space.cost(arch), "latency_ms": 1.0})
    strategy.ask(12)
    saved = _saved(strategy)
    assert state_json(saved, strategy.pending()) == canonical_json(saved)  # the save before: remembers its archs
    for arch in strategy.pending():
        strategy.tell(arch, {**space.cost(arch), "latency_ms": 1.1})
    strategy.ask(12)
    return _saved(strategy), strategy.pending()


@pytest.mark.parametrize("edit", [
    lambda s: s["population"][0][0]["choices"].update({next(iter(s["population"][0][0]["choices"])): "zzz"}),
    lambda s: s["population"][3][0]["config"].update(resolution=64),
    lambda s: s["population"][0][0].update(extra=1),
    lambda s: s["population"][2][0].update(space="other"),
    lambda s: s["population"][1].append({"note": [1, 2]}),
    lambda s: s["population"][4].__setitem__(1, "text"),
    lambda s: s["population"][5].__setitem__(0, {"choices": {"a": [1]}, "config": {}, "space": "x"}),
    lambda s: s["population"].append(7),
    lambda s: s.update(archs=[p[0] for p in s["population"]]),
    lambda s: s.update(other=[[{"choices": {}}], 1]),
    lambda s: s["population"][0][0]["choices"].update(dict(reversed(list(s["population"][0][0]["choices"].items())))),
], ids=["choice", "config", "extra_key", "space", "longer_pair", "score_text", "unhashable", "not_a_pair",
        "list_of_archs", "odd_list", "choices_order"])
def test_edited_states_are_still_canonical(lut_path: Path, edit) -> None:
    saved, pending = _population_state(lut_path)
    edited = copy.deepcopy(saved)
    edit(edited["strategy"])
    assert state_json(copy.deepcopy(edited), pending) == canonical_json(edited)


@pytest.mark.parametrize(("edit", "error"), [
    (lambda s: s["population"][0].__setitem__(1, math.nan), ValueError),
    (lambda s: s["population"][0].__setitem__(1, math.inf), ValueError),
    (lambda s: s["population"][1].__setitem__(1, object()), TypeError),
    (lambda s: s.update(extra={(1, 2): "x"}), TypeError),
])
def test_a_state_canonical_json_refuses_is_refused_alike(lut_path: Path, edit, error: type) -> None:
    saved, pending = _population_state(lut_path)
    edit(saved["strategy"])
    with pytest.raises(error):
        canonical_json(saved)
    with pytest.raises(error):
        state_json(saved, pending)


def test_states_of_other_shapes_are_encoded_plainly(lut_path: Path) -> None:
    saved, pending = _population_state(lut_path)
    for odd in ({**saved, "extra": 1}, {**saved, "strategy": {**saved["strategy"], 3: "int key"}}):
        if 3 in odd["strategy"]:  # mixed keys: neither encoder can sort them
            with pytest.raises(TypeError):
                canonical_json(odd)
            with pytest.raises(TypeError):
                state_json(odd, pending)
        else:
            assert state_json(odd, pending) == canonical_json(odd)
