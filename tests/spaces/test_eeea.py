"""EEEA-Net space: presets against the official code's counts, units composing the network, arch validity."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.ops.darts import (
    DartsCell,
    DilConv,
    FactorizedReduce,
    InvertedResidual,
    SepConv,
    SpatialSepConv,
    make_op,
)
from nas.space import load_space, space_of
from nas.spaces.eeea import EEEASpace

PUBLISHED = ["ea_net", "eeea_net_a", "eeea_net_b", "eeea_net_c"]
# Exact counts of our build at C = 36, 20 cells, 32x32, 10 classes (so a regression shows).
OURS = {
    "ea_net": (2_925_046, 466_618_176),
    "eeea_net_a": (1_769_230, 271_008_576),
    "eeea_net_b": (1_870_318, 301_863_744),
    "eeea_net_c": (3_513_358, 562_696_416),
}
# The official code's counts including its never-called Nonlocal modules (what its logs print).
WITH_NONLOCAL = {"ea_net": 2_967_814, "eeea_net_a": 1_809_622, "eeea_net_b": 1_910_710, "eeea_net_c": 3_568_006}
OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7", "inv_res_3x3", "inv_res_5x5")


@pytest.fixture(scope="module")
def space() -> EEEASpace:
    return load_space("eeea")


def _forward(net: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(1, *shape))


def _valid_choices(space: EEEASpace) -> dict:
    return dict(space.preset("eeea_tiny").choices)


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_matches_published_counts(space, name):
    arch, spec = space.preset(name), space.preset_spec(name)
    own = space_of(arch)
    assert (own.config.init_channels, own.config.layers, own.config.resolution) == (36, 20, 32)
    net = own.build(arch)
    assert _forward(net, (3, 32, 32)).shape == (1, 10)
    params, macs = count_params(net), count_macs(net, (3, 32, 32))
    assert (params, macs) == OURS[name]
    assert params == pytest.approx(spec.published["params"], rel=0.01)
    assert macs == pytest.approx(spec.published["macs"], rel=0.02)
    assert own.cost(arch) == {"params": params, "macs": macs}
    # The reference also builds an unused Nonlocal (dw 3x3 + BN on the cell output: 11 * width) per cell.
    widths = [cell.multiplier * cell.preprocess1.conv.out_channels for cell in net.cells]
    assert params + 11 * sum(widths) == WITH_NONLOCAL[name]


def test_published_params_against_the_paper(space):
    """Paper Tab. 3 rounds to 0.1M; EEEA-Net-B's code count is 3.9% above its 1.8M (reference §2)."""
    gaps = {n: OURS[n][0] / space.preset_spec(n).published["paper_params"] - 1 for n in PUBLISHED}
    assert {n: round(100 * g, 1) for n, g in gaps.items()} == {
        "ea_net": 0.9, "eeea_net_a": -1.7, "eeea_net_b": 3.9, "eeea_net_c": -2.4,
    }


@pytest.mark.parametrize("name", [*PUBLISHED, "eeea_tiny"])
def test_preset_runs_at_demo_config(space, name):
    net = space.build(space.make_arch(space.preset_spec(name).choices))
    assert _forward(net, (3, 32, 32)).shape == (1, 10)


def test_loose_end_concat_matches_released_genotypes(space):
    # normal_concat / reduce_concat of genotypes.py EA, EEEA_A, EEEA_B, EEEA_C.
    released = {"ea_net": ([5, 6], [2, 4, 5, 6]), "eeea_net_a": ([5, 6], [4, 5, 6]),
                "eeea_net_b": ([5, 6], [4, 5, 6]), "eeea_net_c": ([3, 5, 6], [5, 6])}
    for name, (normal, reduce) in released.items():
        net = space.build(space.make_arch(space.preset_spec(name).choices))
        kinds = {cell.reduction: list(cell.concat) for cell in net.cells}
        assert kinds == {False: normal, True: reduce}


def test_decisions_and_size(space):
    decisions = space.decisions()
    assert len(decisions) == 40
    assert [d.name for d in decisions[:6]] == [
        "normal.b0.op1", "normal.b0.in1", "normal.b0.op2", "normal.b0.in2", "normal.b1.op1", "normal.b1.in1",
    ]
    assert decisions[-1].name == "reduce.b4.in2"
    by_name = {d.name: d.choices for d in decisions}
    assert by_name["reduce.b3.op2"] == OPS
    assert by_name["normal.b0.in1"] == (0,) and by_name["reduce.b4.in1"] == (0, 1, 2, 3, 4)
    # 10 ops for each of 10 slots; inputs 1 * 4 * 9 * 16 * 25 less the (1 * 1 * 4 * 9 * 16) that never read state 1.
    assert space.size() == (10**10 * (14400 - 576)) ** 2
    small = load_space("eeea", {"blocks": 2, "ops": ["skip_connect", "max_pool_3x3"]})
    names = [d.name for d in small.decisions()]
    valid = set()
    for values in itertools.product(*(d.choices for d in small.decisions())):
        choices = dict(zip(names, values, strict=True))
        if small._cell_ignoring_input1(choices) is None:
            valid.add(small.make_arch(choices).hash)
    assert small.size() == len(valid) == (2**4 * 3) ** 2


def test_keys_at_demo_config(space):
    keys = space.all_latency_keys()
    assert len(keys) == 77 and keys == sorted(keys)
    assert {
        "stem-in32x32x3-out32x32x24",
        "relu_conv1x1_bn-in32x32x24-out32x32x8",
        "factorized_reduce-in32x32x40-out16x16x16",
        "sep_conv_3x3-in32x32x16-out16x16x16-s2",
        "skip_connect-in16x16x32-out8x8x32-s2",
        "inv_res_5x5-in8x8x32-out8x8x32-s1",
        "head-in8x8x160-out10",
    } <= set(keys)
    assert not any(k.startswith("skip_connect") and k.endswith("-s1") for k in keys)


@pytest.mark.parametrize("overrides", [{}, {"resolution": 40, "init_channels": 6, "layers": 7, "blocks": 4,
                                            "num_classes": 7}])
def test_unit_costs_sum_to_network_and_units_are_built(overrides):
    space = load_space("eeea", overrides)
    rng = np.random.default_rng(0)
    r = space.config.resolution
    for _ in range(2):
        arch = space.sample(rng)
        net = space.build(arch)
        assert _forward(net, (3, r, r)).shape == (1, space.config.num_classes)
        assert space.cost(arch) == {"params": count_params(net), "macs": count_macs(net, (3, r, r))}
        built = [net.stem, net.head]
        for cell in net.cells:
            built += [cell.preprocess0, cell.preprocess1, *(op for op in cell.ops if not isinstance(op, nn.Identity))]
        units = [space.unit(k) for k in space.latency_keys(arch)]
        assert Counter(map(repr, built)) == Counter(repr(u.module) for u in units)
        for unit in units:
            assert _forward(unit.module, unit.input_shape).dim() in (2, 4)


@pytest.mark.parametrize("overrides", [{}, {"blocks": 3, "layers": 4}])
def test_latency_terms_cover_every_key(overrides):
    space = load_space("eeea", overrides)
    terms = space.latency_terms()
    sizes = [math.prod(len(space._decisions[d].choices) for d in t.decisions) for t in terms]
    assert max(sizes) <= 1e5
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        arch = space.sample(rng)
        keys = space.latency_keys(arch)
        from_terms = Counter()
        for term in terms:
            from_terms.update(term.keys(tuple(arch.choices[d] for d in term.decisions)))
        assert from_terms == Counter(keys)
        seen.update(keys)
    assert seen == set(space.all_latency_keys())


def test_bad_choices_name_the_decision(space):
    choices = _valid_choices(space)
    with pytest.raises(UserError, match=r"'normal\.b2\.in1' has no choice 3; allowed: 0, 1, 2$"):
        space.make_arch({**choices, "normal.b2.in1": 3})
    with pytest.raises(UserError, match=r"'reduce\.b1\.op2' has no choice 'sep_conv_7x7'; allowed: max_pool_3x3"):
        space.make_arch({**choices, "reduce.b1.op2": "sep_conv_7x7"})
    with pytest.raises(UserError, match=r"'normal\.b1\.in1' has no choice '1'"):
        space.make_arch({**choices, "normal.b1.in1": "1"})


def test_cell_that_ignores_its_previous_cell_is_rejected(space):
    choices = _valid_choices(space)
    dead = {f"reduce.b{i}.in{s}": 0 for i in range(1, 5) for s in (1, 2)}
    with pytest.raises(UserError, match=r"reduce\.b1\.in1 \.\. reduce\.b4\.in2 never choose 1.*allowed: 1 in") as err:
        space.make_arch({**choices, **dead})
    assert "\n" not in str(err.value)
    space.make_arch({**choices, **dead, "reduce.b4.in2": 1})


def test_sample_mutate_crossover_respect_the_constraint(space):
    rng = np.random.default_rng(7)
    archs = [space.sample(rng) for _ in range(200)]
    assert len({a.hash for a in archs}) == 200
    for a, b in zip(archs[::2], archs[1::2], strict=True):
        child = space.mutate(a, rng)
        assert sum(child.choices[n] != a.choices[n] for n in a.choices) == 1
        mixed = space.crossover(a, b, rng)
        assert all(mixed.choices[n] in (a.choices[n], b.choices[n]) for n in a.choices)
        for arch in (a, child, mixed):
            assert space._cell_ignoring_input1(arch.choices) is None
    assert Arch.from_json(archs[0].to_json()) == archs[0]


@pytest.mark.parametrize(
    "overrides",
    [{"resolution": 30}, {"layers": 2}, {"blocks": 6}, {"ops": ["sep_conv_3x3", "no_op"]},
     {"ops": ["max_pool_3x3", "max_pool_3x3"]}, {"ops": []}, {"width_mult": 1.0}],
)
def test_config_validation(overrides):
    with pytest.raises(UserError):
        load_space("eeea", overrides)


def test_op_subset_config():
    nine = [op for op in OPS if op != "conv_7x1_1x7"]  # the paper's 9 candidates
    space = load_space("eeea", {"ops": nine})
    assert space.decisions()[0].choices == tuple(nine)
    assert not any(k.startswith("conv_7x1_1x7") for k in space.all_latency_keys())


def test_rejects_foreign_arch_and_unknown_key(space):
    with pytest.raises(UserError, match="space_of"):
        space.latency_keys(space.preset("ea_net"))
    with pytest.raises(UserError, match="not a latency key"):
        space.unit("sep_conv_3x3-in9x9x9-out9x9x9-s1")


def test_darts_ops_match_reference_formulas():
    c = 12
    expected = {  # parameter formulas of the reference (§1.1), C -> C channels
        "sep_conv_3x3": 2 * c * 9 + 2 * c * c + 4 * c,
        "sep_conv_5x5": 2 * c * 25 + 2 * c * c + 4 * c,
        "dil_conv_3x3": c * 9 + c * c + 2 * c,
        "dil_conv_5x5": c * 25 + c * c + 2 * c,
        "inv_res_3x3": 2 * c * c + c * 9 + 6 * c,
        "inv_res_5x5": 2 * c * c + c * 25 + 6 * c,
        "conv_7x1_1x7": 14 * c * c + 2 * c,
        "max_pool_3x3": 0,
        "avg_pool_3x3": 0,
        "skip_connect": 0,
    }
    x = torch.randn(2, c, 16, 16)
    for name, params in expected.items():
        for stride in (1, 2):
            op = make_op(name, c, stride)
            want = c * c + 2 * c if (name, stride) == ("skip_connect", 2) else params
            assert count_params(op) == want, (name, stride)
            assert op(x).shape == (2, c, 16 // stride, 16 // stride), (name, stride)
    assert isinstance(make_op("skip_connect", c, 1), nn.Identity)
    assert isinstance(make_op("skip_connect", c, 2), FactorizedReduce)
    assert InvertedResidual(c, c, 3).residual and not InvertedResidual(c, c, 3, 2).residual
    assert SepConv(8, 16, 3)(torch.zeros(1, 8, 8, 8)).shape == (1, 16, 8, 8)
    assert DilConv(8, 16, 5, 2)(torch.zeros(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    assert SpatialSepConv(8, 16, 3, 2)(torch.zeros(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    with pytest.raises(ValueError, match="unknown operation"):
        make_op("conv_9x9", c)
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(c, 5)


def test_darts_cell_reduction_and_concat():
    genotype = [("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2), ("inv_res_3x3", 0)]
    cell = DartsCell(24, 20, 8, genotype, concat=[2, 3], reduction=True, reduction_prev=False)
    assert [op.__class__.__name__ for op in cell.ops] == ["SepConv", "FactorizedReduce", "MaxPool2d",
                                                          "InvertedResidual"]
    assert cell.multiplier == 2
    out = cell(torch.randn(1, 24, 16, 16), torch.randn(1, 20, 16, 16))
    assert out.shape == (1, 16, 8, 8)


# One torch thread, as in the test process (tests/conftest.py): on two cores shared with the test run, two
# threads make an export's forward passes three times slower (38 s against 12 s for shiftnas_vit_tiny).
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_rejects_a_bad_arch_file(space, tmp_path):
    data = space.make_arch(_valid_choices(space)).to_dict()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "choices": {**data["choices"], "normal.b3.in2": 4}}))
    out = _cli("export", "--arch", str(bad), "--out", str(tmp_path / "x"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "'normal.b3.in2' has no choice 4; allowed: 0, 1, 2, 3" in out.stderr


# Exhaustive: the CLI's --preset path is every space's (tests/test_export.py runs it by default), and
# test_export_of_a_searched_arch exports this space in every format in process.
@pytest.mark.exhaustive
def test_cli_exports_the_tiny_preset_in_every_format(tmp_path):
    out = _cli("export", "--preset", "eeea_tiny", "--format", "json,pt,torchscript,onnx", "--out", str(tmp_path),
               "--json")
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["files"]
    assert [f["format"] for f in files] == ["json", "pt", "torchscript", "onnx"]
    assert all((tmp_path / f["path"]).is_file() for f in files)


def test_export_of_a_searched_arch(tmp_path):
    space = load_space("eeea", {"init_channels": 4, "layers": 3})
    arch = space.mutate(space.sample(np.random.default_rng(3)), np.random.default_rng(4))
    written = export(arch, ["json", "pt", "torchscript", "onnx"], tmp_path)
    assert all(w.path.is_file() and w.max_abs_diff <= 1e-4 for w in written.values()), written
