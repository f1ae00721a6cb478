"""ProxylessNAS space: presets against published counts, units composing the network, arch validity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.ops.mbconv import MBConv, make_divisible
from nas.space import load_space, space_of
from nas.spaces.proxylessnas import ZERO, ProxylessNASSpace

PUBLISHED = ["proxyless_mobile", "proxyless_cpu", "proxyless_gpu", "proxyless_mobile_14"]


@pytest.fixture(scope="module")
def space() -> ProxylessNASSpace:
    return load_space("proxylessnas")


def _forward(net: torch.nn.Module, shape: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.zeros(batch, *shape))


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_matches_published_counts(space, name):
    arch = space.preset(name)
    spec = space.preset_spec(name)
    own = space_of(arch)
    net = own.build(arch)
    r = own.config.resolution
    assert (r, own.config.num_classes) == (224, 1000)
    assert _forward(net, (3, r, r)).shape == (1, 1000)
    params, macs = count_params(net), count_macs(net, (3, r, r))
    assert params == pytest.approx(spec.published["params"], rel=0.01)
    assert macs == pytest.approx(spec.published["macs"], rel=0.02)
    assert own.cost(arch) == {"params": params, "macs": macs}


@pytest.mark.parametrize("name", [*PUBLISHED, "proxylessnas_tiny"])
def test_preset_runs_at_demo_resolution(space, name):
    spec = space.preset_spec(name)
    demo = load_space("proxylessnas", {**spec.config, "resolution": 32, "num_classes": 10})
    net = demo.build(demo.make_arch(spec.choices))
    assert _forward(net, (3, 32, 32), batch=2).shape == (2, 10)


def test_preset_json_round_trip(space):
    arch = space.preset("proxyless_cpu")
    assert Arch.from_json(arch.to_json()) == arch


def test_decisions_and_size(space):
    decisions = space.decisions()
    assert len(decisions) == 21
    assert [d.name for d in decisions[:5]] == ["s1.b1.op", "s1.b2.op", "s1.b3.op", "s1.b4.op", "s2.b1.op"]
    assert decisions[-1].name == "s6.b1.op"
    ops = ("mb3_k3", "mb6_k3", "mb3_k5", "mb6_k5", "mb3_k7", "mb6_k7")
    first = {f"s{s}.b1.op" for s in range(1, 7)}
    for d in decisions:
        assert d.choices == (ops if d.name in first else (*ops, ZERO))
    # 6 stage-first blocks (6 choices) and 15 skippable blocks (7 choices).
    assert space.size() == 7**15 * 6**6


def test_example_keys_at_demo_config(space):
    keys = set(space.all_latency_keys())
    assert {
        "stem-in32x32x3-out16x16x32",
        "mbconv-in16x16x32-out16x16x16-k3-e1-s1",
        "mbconv-in8x8x24-out8x8x24-k5-e3-s1-res",
        "mbconv-in16x16x16-out8x8x24-k7-e6-s2",
        "conv1x1-in1x1x320-out1x1x1280",
        "head-in1x1x1280-out10",
    } <= keys
    assert space.all_latency_keys() == sorted(keys)


@pytest.mark.parametrize("overrides", [{}, {"resolution": 72, "width_mult": 0.5, "num_classes": 7}])
def test_unit_costs_sum_to_network(overrides):
    space = load_space("proxylessnas", overrides)
    rng = np.random.default_rng(0)
    r = space.config.resolution
    for _ in range(4):
        arch = space.sample(rng)
        net = space.build(arch)
        assert space.cost(arch) == {"params": count_params(net), "macs": count_macs(net, (3, r, r))}


def test_units_chain_and_match_build(space):
    rng = np.random.default_rng(1)
    all_keys = set(space.all_latency_keys())
    for _ in range(3):
        arch = space.sample(rng)
        keys = space.latency_keys(arch)
        assert set(keys) <= all_keys
        units = [space.unit(k) for k in keys]
        assert units[0].input_shape == (3, 32, 32)
        outputs = [u.input_shape for u in units[1:]] + [(space.config.num_classes,)]
        for unit, expected in zip(units, outputs, strict=True):
            assert _forward(unit.module, unit.input_shape).shape[1:] == expected
        children = list(space.build(arch).children())
        assert [repr(c) for c in children] == [repr(u.module) for u in units]


def test_zero_blocks_produce_no_key(space):
    all_zero = {d.name: (ZERO if ZERO in d.choices else "mb3_k3") for d in space.decisions()}
    keys = space.latency_keys(space.make_arch(all_zero))
    assert len(keys) == 2 + 6 + 2  # stem, first block, 6 stage-first blocks, feature mix, head
    assert not any(k.endswith("-res") for k in keys)
    mobile = space.preset("proxyless_mobile")
    assert len(space_of(mobile).latency_keys(mobile)) == 4 + 21 - 2


def test_make_arch_rejects_bad_choices(space):
    choices = {d.name: d.choices[0] for d in space.decisions()}
    with pytest.raises(UserError, match=r"s7\.b1\.op"):
        space.make_arch({**choices, "s7.b1.op": "mb3_k3"})
    allowed = "mb3_k3, mb6_k3, mb3_k5, mb6_k5, mb3_k7, mb6_k7"
    with pytest.raises(UserError, match=rf"s2\.b1\.op.*'zero'.*{allowed}$"):
        space.make_arch({**choices, "s2.b1.op": ZERO})


def test_rejects_foreign_arch_and_unknown_key(space):
    tiny = space.preset("proxylessnas_tiny")
    with pytest.raises(UserError, match="space_of"):
        space.latency_keys(tiny)
    with pytest.raises(UserError, match="not a latency key"):
        space.unit("mbconv-in9x9x9-out9x9x9-k3-e3-s1")


@pytest.mark.parametrize(
    "overrides",
    [{"resolution": 16}, {"stage_widths": [24, 40, 80]}, {"stem_width": 0}, {"dropout": 1.0}, {"depth": 3}],
)
def test_config_validation(overrides):
    with pytest.raises(UserError):
        load_space("proxylessnas", overrides)


def test_width_rules():
    assert [make_divisible(v) for v in (11.2, 5.6, 8.4, 134.4, 1792.0, 3.0)] == [16, 8, 8, 136, 1792, 8]
    # width_mult 0.35 makes stages 3 and 4 equally wide, so s4.b1 becomes skippable as in the reference.
    tiny = load_space("proxylessnas", {"width_mult": 0.35})
    assert ZERO in tiny._decisions["s4.b1.op"].choices
    assert MBConv(16, 16, 3, 1).inverted_bottleneck is None
    with pytest.raises(ValueError, match="residual"):
        MBConv(16, 24, 3, 3, residual=True)
