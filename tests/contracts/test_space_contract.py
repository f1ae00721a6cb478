"""Every registered space: archs are valid values, presets build and run, costs add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.space import load_space


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_sample_mutate_crossover_give_valid_archs(space_name: str, seed: int) -> None:
    space = load_space(space_name)
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    child = space.mutate(a, rng)
    every = set(space.all_latency_keys())
    for arch in (a, b, child, space.crossover(a, b, rng), space.crossover(a, child, rng)):
        assert space.make_arch(dict(arch.choices)) == arch  # valid: rebuilding from its choices passes checks
        assert set(space.latency_keys(arch)) <= every
    changed = [name for name in a.choices if child.choices[name] != a.choices[name]]
    assert len(changed) == 1 and changed[0] in space.active_choices(a), changed  # one decision that matters


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_latency_terms_give_the_latency_keys(space_name: str, seed: int) -> None:
    space = load_space(space_name)
    arch = space.sample(np.random.default_rng(seed))
    from_terms = [k for t in space.latency_terms() for k in t.keys(tuple(arch.choices[d] for d in t.decisions))]
    assert Counter(from_terms) == Counter(space.latency_keys(arch))


def test_latency_terms_are_small_and_name_real_decisions(space_name: str) -> None:
    space = load_space(space_name)
    choices = {d.name: len(d.choices) for d in space.decisions()}
    for term in space.latency_terms():
        assert set(term.decisions) <= set(choices)
        assert np.prod([choices[d] for d in term.decisions]) <= 1e5


def test_json_round_trip_keeps_hash(space_name: str) -> None:
    arch = load_space(space_name).sample(np.random.default_rng(2))
    again = Arch.from_json(arch.to_json())
    assert again == arch and again.hash == arch.hash
    assert json.loads(arch.to_json())["space"] == space_name


def test_hash_is_stable_across_processes(space_name: str) -> None:
    arch = load_space(space_name).sample(np.random.default_rng(3))
    code = "import sys; from nas.arch import Arch; print(Arch.from_json(sys.stdin.read()).hash)"
    out = subprocess.run([sys.executable, "-c", code], input=arch.to_json(), capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)
    assert out.stdout.strip() == arch.hash


def test_unknown_choice_is_a_user_error(space_name: str) -> None:
    space = load_space(space_name)
    arch = space.sample(np.random.default_rng(4))
    name = next(iter(arch.choices))
    with pytest.raises(UserError, match=name):
        space.make_arch({**arch.choices, name: "no_such_op"})
    with pytest.raises(UserError, match="unknown decision"):
        space.make_arch({**arch.choices, "no.such.decision": 1})


def test_tiny_preset_builds_runs_and_costs_add_up(space_name: str) -> None:
    space = load_space(space_name)
    tiny = space.preset(f"{space_name}_tiny")
    tiny_space = load_space(space_name, dict(tiny.config))
    model = tiny_space.build(tiny).eval()
    res = tiny_space.input_resolution(tiny)
    with torch.no_grad():
        out = model(torch.randn(2, 3, res, res))
    assert out.shape == (2, tiny.config["num_classes"])
    assert tiny_space.cost(tiny) == {"params": count_params(model), "macs": count_macs(model, (3, res, res))}


def test_latency_keys_are_all_enumerated(space_name: str) -> None:
    space = load_space(space_name)
    every = set(space.all_latency_keys())
    rng = np.random.default_rng(5)
    for _ in range(20):
        assert set(space.latency_keys(space.sample(rng))) <= every


def test_input_resolutions_bound_every_arch(space_name: str) -> None:
    space = load_space(space_name)
    resolutions = space.input_resolutions()
    assert list(resolutions) == sorted(set(resolutions)) and resolutions[-1] == space.config.resolution
    rng = np.random.default_rng(6)
    for _ in range(10):
        arch = space.sample(rng)
        r = space.input_resolution(arch)
        assert r in resolutions
        if len(resolutions) > 1:  # a searched resolution shows in the stem's input shape
            assert space.unit(space.latency_keys(arch)[0]).input_shape[-2:] == (r, r)
