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
from nas.registry import SPACES
from nas.space import SearchSpace, load_space

# Spaces where a mutation can keep the latency keys: a cell's keys name each op and its shapes but not the state it
# reads, so rewiring an input keeps them (eeea, nasnet), and NAS-Bench-201's `none` and `skip_connect` both time
# nothing. Every other space's mutation changes the timed network.
MUTATION_MAY_KEEP_KEYS = frozenset({"eeea", "nasbench201", "nasnet"})


def assert_sample_mutate_crossover_are_valid(space: SearchSpace, seed: int) -> tuple[Arch, ...]:
    """Check the archs `space` samples, mutates and crosses from `seed`; return them, for a space's own checks.

    Each is valid (rebuilding it from its choices passes the space's checks), survives JSON with its hash, has
    latency keys the space enumerates and an input resolution it lists; a mutation changes one active decision
    (and the latency keys, outside `MUTATION_MAY_KEEP_KEYS`); a crossover takes each choice from a parent.
    """
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    child = space.mutate(a, rng)
    mixed = space.crossover(a, b, rng)
    archs = (a, b, child, mixed, space.crossover(a, child, rng))
    every = set(space.all_latency_keys())
    for arch in archs:
        assert space.make_arch(dict(arch.choices)) == arch
        again = Arch.from_json(arch.to_json())
        assert again == arch and again.hash == arch.hash
        assert set(space.latency_keys(arch)) <= every
        assert space.input_resolution(arch) in space.input_resolutions()
    changed = [name for name in a.choices if child.choices[name] != a.choices[name]]
    assert len(changed) == 1 and changed[0] in space.active_choices(a), changed  # one decision that matters
    assert space.active_choices(child) != space.active_choices(a)
    if space.name not in MUTATION_MAY_KEEP_KEYS:
        assert space.latency_keys(child) != space.latency_keys(a), changed
    assert all(mixed.choices[n] in (a.choices[n], b.choices[n]) for n in a.choices)
    return archs


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_sample_mutate_crossover_give_valid_archs(space_name: str, seed: int) -> None:
    assert_sample_mutate_crossover_are_valid(load_space(space_name), seed)


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


@pytest.fixture(scope="module")
def hashes_in_another_process() -> dict[str, str]:
    """Every space's arch of `test_hash_is_stable_across_processes` -> its hash in one other process with another
    PYTHONHASHSEED (one process for all spaces: each start imports torch, seconds on two cores)."""
    archs = [load_space(name).sample(np.random.default_rng(3)).to_json() for name in SPACES.names()]
    code = "import sys; from nas.arch import Arch; print(*(Arch.from_json(a).hash for a in sys.stdin))"
    out = subprocess.run([sys.executable, "-c", code], input="\n".join(archs), capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(zip(archs, out.stdout.split(), strict=True))


def test_hash_is_stable_across_processes(space_name: str, hashes_in_another_process: dict[str, str]) -> None:
    arch = load_space(space_name).sample(np.random.default_rng(3))
    assert hashes_in_another_process[arch.to_json()] == arch.hash


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
