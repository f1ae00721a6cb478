"""OFA MobileNetV3 space: EEEA-Net presets against published counts, OFA totals, units, inactive slots, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.ops.mbconv import BN_EPS, MBConv, SqueezeExcite
from nas.space import load_space, space_of
from nas.spaces.ofa_mbv3 import DEPTHS, EXPANDS, KERNELS, OFAMobileNetV3Space

# Acceptance figures (conv + FC MACs at 192x192) and our exact counts of the released configs.
PUBLISHED = {
    "eeea_net_c1": {"params": 5_068_128, "macs": 135.5e6, "exact_macs": 135_518_720},
    "eeea_net_c2": {"params": 5_995_904, "macs": 215.0e6, "exact_macs": 215_040_256},
}
# Compact per-active-block lists as released (jitdee-ai/darmo darmo/config/eeea_c{1,2}.subnet).
COMPACT = {
    "eeea_net_c1": {"d": [2, 2, 2, 2, 4], "ks": [3, 5, 7, 5, 7, 7, 5, 3, 7, 3, 3, 7],
                    "e": [3, 3, 3, 3, 3, 4, 4, 4, 6, 4, 6, 3]},
    "eeea_net_c2": {"d": [3, 3, 4, 4, 4], "ks": [3, 5, 3, 7, 3, 7, 5, 7, 5, 3, 7, 5, 3, 3, 5, 3, 5, 7],
                    "e": [3, 4, 3, 4, 3, 3, 6, 6, 3, 3, 6, 4, 3, 3, 6, 6, 6, 3]},
}


@pytest.fixture(scope="module")
def space() -> OFAMobileNetV3Space:
    return load_space("ofa_mbv3")


def _forward(net: nn.Module, shape: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.zeros(batch, *shape))


def _uniform(space: OFAMobileNetV3Space, depth: int, kernel: int, expand: int) -> Arch:
    pick = {"depth": depth, "kernel": kernel, "expand": expand}
    return space.make_arch({d.name: pick[d.name.rsplit(".", 1)[1]] for d in space.decisions()})


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_matches_published_counts(space, name):
    arch = space.preset(name)
    spec, want = space.preset_spec(name), PUBLISHED[name]
    own = space_of(arch)
    assert (own.config.resolution, own.config.num_classes, own.config.width_mult) == (192, 1000, 1.0)
    net = own.build(arch)
    assert _forward(net, (3, 192, 192)).shape == (1, 1000)
    params, macs = count_params(net), count_macs(net, (3, 192, 192))
    assert params == pytest.approx(want["params"], rel=0.01)
    assert macs == pytest.approx(want["macs"], rel=0.02)
    assert (params, macs) == (want["params"], want["exact_macs"])
    assert (params, macs) == (spec.published["params"], spec.published["macs"])
    assert own.cost(arch) == {"params": params, "macs": macs}


@pytest.mark.parametrize("name", list(COMPACT))
def test_presets_are_the_compact_lists_padded_to_four_slots(space, name):
    lists, arch = COMPACT[name], space.preset(name)
    depths = [arch.choices[f"s{s}.depth"] for s in range(1, 6)]
    active = [(arch.choices[f"s{s}.b{b}.kernel"], arch.choices[f"s{s}.b{b}.expand"])
              for s, d in enumerate(depths, 1) for b in range(1, d + 1)]
    assert depths == lists["d"]
    assert active == list(zip(lists["ks"], lists["e"], strict=True))


@pytest.mark.parametrize("name", [*PUBLISHED, "ofa_mbv3_tiny"])
def test_preset_runs_at_demo_resolution(space, name):
    spec = space.preset_spec(name)
    demo = load_space("ofa_mbv3", {**spec.config, "resolution": 32, "num_classes": 10})
    net = demo.build(demo.make_arch(spec.choices))
    assert _forward(net, (3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("width", "depth", "kernel", "expand", "params", "macs"),
    [
        (1.0, 4, 7, 6, 7_664_760, 566_170_656),  # OFA w1.0 largest subnet
        (1.0, 2, 3, 3, 3_410_792, 121_278_672),  # OFA w1.0 smallest subnet
        (1.2, 4, 7, 6, 10_701_632, 843_101_040),
        (1.2, 2, 3, 3, 4_602_456, 193_078_200),
    ],
)
def test_ofa_supernet_extremes_at_224(width, depth, kernel, expand, params, macs):
    space = load_space("ofa_mbv3", {"resolution": 224, "num_classes": 1000, "width_mult": width})
    assert space.cost(_uniform(space, depth, kernel, expand)) == {"params": params, "macs": macs}


def test_decisions_and_size(space):
    decisions = space.decisions()
    assert len(decisions) == 5 * (1 + 2 * 4)
    assert [d.name for d in decisions[:4]] == ["s1.depth", "s1.b1.kernel", "s1.b1.expand", "s1.b2.kernel"]
    assert decisions[-1].name == "s5.b4.expand"
    for d in decisions:
        assert d.choices == {"depth": DEPTHS, "kernel": KERNELS, "expand": EXPANDS}[d.name.rsplit(".", 1)[1]]
    assert space.size() == 3**45


def test_example_keys_at_demo_config(space):
    keys = space.all_latency_keys()
    assert len(keys) == 2 + 5 * 2 * 9 + 2  # stem, first; per stage first slot and later slot x 9 ops; tail
    assert {
        "stem-in32x32x3-out16x16x16-hswish",
        "mbconv-in16x16x16-out16x16x16-k3-e1-s1-relu-res",
        "mbconv-in16x16x16-out8x8x24-k7-e6-s2-relu",
        "mbconv-in4x4x40-out4x4x40-k5-e4-s1-relu-se-res",
        "mbconv-in2x2x80-out2x2x112-k3-e3-s1-hswish-se",
        "mbconv-in2x2x80-out2x2x80-k7-e6-s1-hswish-res",
        "conv1x1-in1x1x160-out1x1x960-hswish",
        "head-in1x1x960-mix1280-out10",
    } <= set(keys)
    assert keys == sorted(keys)


@pytest.mark.parametrize("overrides", [{}, {"resolution": 72, "width_mult": 1.2, "num_classes": 7}])
def test_unit_costs_sum_to_network(overrides):
    space = load_space("ofa_mbv3", overrides)
    rng = np.random.default_rng(0)
    r = space.config.resolution
    for _ in range(3):
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
        assert len(keys) == 2 + sum(arch.choices[f"s{s}.depth"] for s in range(1, 6)) + 2
        units = [space.unit(k) for k in keys]
        assert units[0].input_shape == (3, 32, 32)
        outputs = [u.input_shape for u in units[1:]] + [(space.config.num_classes,)]
        for unit, expected in zip(units, outputs, strict=True):
            assert _forward(unit.module, unit.input_shape).shape[1:] == expected
        children = list(space.build(arch).children())
        assert [repr(c) for c in children] == [repr(u.module) for u in units]


def test_blocks_follow_ofa(space):
    c1 = space.preset("eeea_net_c1")
    net = space_of(c1).build(c1)
    first, s2_b2, s3_b2, s4_b1 = net.first, net.s2_b2, net.s3_b2, net.s4_b1
    assert first.inverted_bottleneck is None and first.residual and isinstance(first.depth_conv.act, nn.ReLU)
    assert hasattr(s2_b2.depth_conv, "se") and s2_b2.residual and isinstance(s2_b2.depth_conv.act, nn.ReLU)
    assert not hasattr(s3_b2.depth_conv, "se") and isinstance(s3_b2.depth_conv.act, nn.Hardswish)
    assert not s4_b1.residual and s4_b1.depth_conv.conv.stride == (1, 1)  # stride-1 stage, 80 -> 112
    # Hidden width make_divisible(round(in * e), 8); SE bottleneck make_divisible(mid // 4, 8).
    assert s3_b2.depth_conv.conv.out_channels == 320
    assert s2_b2.depth_conv.se.fc.reduce.out_channels == 32  # mid 120
    assert net.stem.bn.eps == 1e-5 and net.head.feature_mix.conv.bias is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.head.modules())


def test_inactive_slots_do_not_change_the_network(space):
    arch = space.make_arch(space.preset_spec("ofa_mbv3_tiny").choices)
    assert arch.choices["s1.depth"] == 2
    other = space.make_arch({**arch.choices, "s1.b3.kernel": 7, "s1.b4.expand": 6})
    assert other != arch
    assert space.latency_keys(other) == space.latency_keys(arch)
    assert space.active_choices(other) == space.active_choices(arch)
    assert "s1.b3.kernel" not in space.active_choices(arch) and "s2.b3.kernel" in space.active_choices(arch)


def test_latency_terms_give_the_keys_and_stay_small(space):
    terms = space.latency_terms()
    assert max(len(t.decisions) for t in terms) == 3  # depth, kernel, expand of slots 3-4
    rng = np.random.default_rng(2)
    for arch in [space.sample(rng) for _ in range(5)] + [space.make_arch(space.preset_spec("eeea_net_c1").choices)]:
        from_terms = [k for t in terms for k in t.keys(tuple(arch.choices[d] for d in t.decisions))]
        assert Counter(from_terms) == Counter(space.latency_keys(arch))


@pytest.mark.parametrize(
    ("decision", "value", "allowed"),
    [("s3.depth", 5, "2, 3, 4"), ("s2.b1.kernel", 9, "3, 5, 7"), ("s5.b4.expand", 5, "3, 4, 6"),
     ("s1.b1.kernel", "3", "3, 5, 7")],
)
def test_make_arch_rejects_bad_choices(space, decision, value, allowed):
    choices = dict(space.preset("ofa_mbv3_tiny").choices)
    with pytest.raises(UserError, match=rf"'{decision}' has no choice {value!r}; allowed: {allowed}$"):
        space.make_arch({**choices, decision: value})


def test_no_cross_decision_constraint(space):
    """Every depth goes with any slot choices: inactive slots are free, as in OFA's 20-slot encoding."""
    for depth in DEPTHS:
        assert len(space.latency_keys(_uniform(space, depth, 7, 3))) == 4 + 5 * depth


def test_rejects_foreign_arch_and_unknown_key(space):
    tiny = space.preset("ofa_mbv3_tiny")
    with pytest.raises(UserError, match="space_of"):
        space.latency_keys(tiny)
    with pytest.raises(UserError, match="not a latency key"):
        space.unit("mbconv-in9x9x9-out9x9x9-k3-e3-s1-relu")


@pytest.mark.parametrize(
    "overrides", [{"resolution": 16}, {"width_mult": 0}, {"dropout": 1.0}, {"num_classes": 0}, {"depth": 3}]
)
def test_config_validation(overrides):
    with pytest.raises(UserError):
        load_space("ofa_mbv3", overrides)


def test_mbconv_squeeze_excite_and_defaults():
    # OFA parameter formula: in*mid + mid*k^2 + mid*out + BN 2(2 mid + out) + SE 2 mid se + se + mid.
    block = MBConv(40, 40, 5, 3, residual=True, act=nn.Hardswish, mid_channels=120, has_se=True, bn_eps=1e-5)
    mid, se = 120, 32
    assert count_params(block) == 40 * mid + mid * 25 + mid * 40 + 2 * (2 * mid + 40) + 2 * mid * se + se + mid
    assert SqueezeExcite(72).fc.reduce.out_channels == 24  # 72 // 4 = 18 rounds to 16 < 0.9 * 18, so 24
    plain = MBConv(16, 24, 3, 6, stride=2)
    assert not hasattr(plain.depth_conv, "se") and plain.depth_conv.conv.out_channels == 96
    assert plain.point_linear.bn.eps == BN_EPS and isinstance(plain.depth_conv.act, nn.ReLU6)
    x = torch.linspace(-5, 5, 41)
    assert torch.allclose(nn.Hardswish()(x), x * torch.clamp(x + 3, 0, 6) / 6)


# One torch thread, as in the test process (tests/conftest.py): on two cores shared with the test run, two
# threads make an export's forward passes three times slower (38 s against 12 s for shiftnas_vit_tiny).
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize(("decision", "value", "allowed"), [("s3.depth", 5, "2, 3, 4"), ("s2.b1.expand", 5, "3, 4, 6")])
def test_cli_rejects_bad_arch(space, tmp_path, decision, value, allowed):
    data = space.preset("ofa_mbv3_tiny").to_dict()
    data["choices"][decision] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = _cli("export", "--arch", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert decision in result.stderr and f"allowed: {allowed}" in result.stderr


# Exhaustive: the CLI's --preset path is every space's (tests/test_export.py runs it by default), and
# test_sampled_arch_exports_in_every_format exports this space in every format in process.
@pytest.mark.exhaustive
def test_cli_exports_tiny_preset(tmp_path):
    result = _cli("export", "--preset", "ofa_mbv3_tiny", "--format", "json,pt,torchscript,onnx",
                  "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    assert [f["format"] for f in files] == ["json", "pt", "torchscript", "onnx"]
    assert all(Path(f["path"]).is_file() for f in files)
    tiny = load_space("ofa_mbv3").preset("ofa_mbv3_tiny")
    assert Arch.from_json(Path(files[0]["path"]).read_text()) == tiny


def test_sampled_arch_exports_in_every_format(space, tmp_path):
    arch = space.sample(np.random.default_rng(7))
    written = export(arch, ["json", "pt", "torchscript", "onnx"], tmp_path)
    assert all(w.path.is_file() and w.max_abs_diff <= 1e-4 for w in written.values()), written
    assert Arch.from_json(written["json"].path.read_text()) == arch
