"""BossNAS HyTra space: BossNet-T presets against the official counts, blocks, layout rule, supernet, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from itertools import product

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.ops.hytra import DropPath, MultiHeadSelfAttention
from nas.space import load_space, space_of
from nas.spaces.bossnas_hytra import LAYERS, NEVER, POSITIONS, BossNASHyTraSpace, scales
from tests.contracts.test_space_contract import assert_sample_mutate_crossover_are_valid

# Params: counts of the official code (none are published); MACs: README 3.4B / 3.4B / 7.9B MAdds,
# 3.442G / 3.443G / 7.944G under its convention (conv, linear, QK^T, AV), and our exact counts.
PUBLISHED = {
    "bossnet_t0_nose": {"params": 37_319_080, "macs": 3.442e9, "exact_macs": 3_441_888_768},
    "bossnet_t0": {"params": 38_415_960, "macs": 3.443e9, "exact_macs": 3_442_978_304},
    "bossnet_t1": {"params": 38_415_960, "macs": 7.944e9, "exact_macs": 7_944_442_880},
}
T0_ENCODING = [[1], [1], [1, 1, 1, 0, 1], [0, 0, 0, 1, 0, 0, 0, 0, 0]]  # boss_models.py, 0 = ResAtt
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.fixture(scope="module")
def space() -> BossNASHyTraSpace:
    return load_space("bossnas_hytra")


def _forward(net: nn.Module, r: int, batch: int = 1) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(batch, 3, r, r))


def _choices(space: BossNASHyTraSpace, to8: int, to16: int, to32: int, op: str = "resconv") -> dict:
    return {"down.to8": to8, "down.to16": to16, "down.to32": to32, **{f"l{i}.op": op for i in range(2, LAYERS + 1)}}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_params_match_the_official_code(space, name):
    arch = space.preset(name)
    own = space_of(arch)
    assert (own.config.resolution, own.config.num_classes) == (224, 1000)
    params = count_params(own.build(arch))
    assert params == pytest.approx(PUBLISHED[name]["params"], rel=0.01)
    assert params == PUBLISHED[name]["params"] == space.preset_spec(name).published["params"]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_macs_at_224_match_published(space, name):
    arch = space.preset(name)
    own = space_of(arch)
    with torch.device("meta"):  # shapes only: the count needs no arithmetic and no initialised weights
        net = own.build(arch)
        assert _forward(net, 224).shape == (1, 1000)
        macs = count_macs(net, (3, 224, 224))
    assert macs == pytest.approx(PUBLISHED[name]["macs"], rel=0.02)
    assert macs == PUBLISHED[name]["exact_macs"] == space.preset_spec(name).published["macs"]
    assert own.cost(arch) == {"params": PUBLISHED[name]["params"], "macs": macs}


@pytest.mark.exhaustive  # seconds of arithmetic; the count above and the demo-resolution forwards run by default
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_runs_at_224(space, name):
    arch = space.preset(name)
    out = _forward(space_of(arch).build(arch), 224)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [*PUBLISHED, "bossnas_hytra_tiny"])
@pytest.mark.parametrize("resolution", [64, 32])
def test_preset_runs_at_demo_resolution(space, name, resolution):
    spec = space.preset_spec(name)
    demo = load_space("bossnas_hytra", {**spec.config, "resolution": resolution, "num_classes": 10,
                                        "width_mult": 0.25, "head_dim": 16})
    out = _forward(demo.build(demo.make_arch(spec.choices)), resolution, batch=2)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_presets_are_bossnet_t0_and_t1(space):
    t0, t1 = space.preset("bossnet_t0"), space.preset("bossnet_t1")
    assert t0.choices == t1.choices == space.preset("bossnet_t0_nose").choices
    for arch in (t0, t1):
        assert space_of(arch).retrained_encoding(arch) == T0_ENCODING
    # T1 = T0 with last stride 1: layer 8 widens to 2048 at 14x14 and the last stage stays at 14x14.
    keys0, keys1 = space_of(t0).latency_keys(t0), space_of(t1).latency_keys(t1)
    assert keys0[8] == "resatt-in14x14x1024-out7x7x2048-s2-t49-e512-h8x64-mlp0-silu"
    assert keys1[8] == "resatt-in14x14x1024-out14x14x2048-s1-t196-e512-h8x64-mlp0-silu"
    assert keys1[-1] == "head-in14x14x2048-out1000"
    assert keys0[:2] == ["stem-in224x224x3-out56x56x64-k7-silu", "resconv-in56x56x64-out56x56x256-s1-p64-silu-se"]
    nose = space.preset("bossnet_t0_nose")
    assert space_of(nose).latency_keys(nose)[11] == "resconv-in7x7x2048-out7x7x2048-s1-p512-relu"


def test_layer_params_match_the_reference_table():
    """Per-layer parameters of BossNet-T0 (reference section 2.2, counted from the official code)."""
    space = load_space("bossnas_hytra")
    t0, nose = space.preset("bossnet_t0"), space.preset("bossnet_t0_nose")
    net, plain = space_of(t0).build(t0), space_of(nose).build(nose)
    with_se = {name: count_params(child) for name, child in net.named_children()}
    no_se = {name: count_params(child) for name, child in plain.named_children()}
    assert list(with_se) == ["stem", *(f"l{i}" for i in range(1, 17)), "head"]
    assert (with_se["stem"], with_se["head"]) == (9_536, 2_049_000)
    expected = {"l1": (84_112, 75_648), "l2": (413_984, 380_672), "l3": (1_647_168, 1_515_008),
                "l4": (1_251_904, 1_119_744), "l6": (726_528, 726_528), "l8": (4_471_808, 4_471_808),
                "l9": (2_894_848, 2_894_848), "l11": (4_994_176, 4_467_712), "l16": (2_894_848, 2_894_848)}
    for layer, (se, plain_count) in expected.items():
        assert (with_se[layer], no_se[layer]) == (se, plain_count), layer


def test_blocks_follow_the_retrained_code(space):
    t0 = space.preset("bossnet_t0")
    net = space_of(t0).build(t0)
    l8, l11 = net.l8, net.l11  # ResAtt 1024 -> 2048 s2; ResConv 2048 -> 2048 with SE
    assert l8.entry.proj.peg.stride == (2, 2) and l8.entry.proj.peg.groups == 512 and l8.entry.proj.peg.bias is not None
    assert isinstance(l8.entry.shortcut.pool, nn.AvgPool2d) and l8.entry.shortcut.pool.ceil_mode
    assert not any(isinstance(m, (nn.ReLU, nn.SiLU)) for m in l8.entry.shortcut.modules())  # no act on the shortcut
    assert l8.body.attn.heads == 8 and l8.body.attn.head_dim == 64 and l8.body.attn.qkv.out_channels == 3 * 512
    assert isinstance(l11.entry.shortcut, nn.Identity) and l11.body.se.fc1.out_channels == 128
    assert isinstance(l11.body.se.act, nn.ReLU) and isinstance(l11.body.act1, nn.SiLU)  # SE keeps ReLU
    assert (l8.body.last_bn.weight == 0).all() and (l11.body.bn3.weight == 0).all()  # zero-init last BN
    assert not hasattr(net.l6.body, "se")  # ResAtt has no SE


def test_attention_is_standard_multi_head_softmax_over_keys():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(dim=8, heads=2, head_dim=4).eval()
    x = torch.randn(2, 8, 3, 5)
    qkv = attn.qkv(x).flatten(2).reshape(2, 3, 2, 4, 15)  # (B, q|k|v, heads, d, N): channel order q | k | v
    q, k, v = qkv.unbind(1)
    weights = torch.einsum("bhdi,bhdj->bhij", q, k).mul(0.5).softmax(-1)  # softmax over keys j, scale 4^-0.5
    expected = torch.einsum("bhij,bhdj->bhdi", weights, v).reshape(2, 8, 3, 5)
    torch.testing.assert_close(attn(x), expected)


def test_empty_stages_and_small_maps(space):
    arch = space.make_arch(_choices(space, 1, 2, NEVER, "resatt"))
    keys = space.latency_keys(arch)
    assert keys[1] == "conv3x3-in16x16x16-out16x16x64-s1-relu"  # empty 1/4 stage: stride 1 [P6]
    assert keys[2] == "resconv-in16x16x64-out8x8x128-s2-p32-relu"  # layer 1 goes down
    assert keys[-2] == "conv3x3-in4x4x256-out2x2x512-s2-relu"  # empty 1/32 stage
    assert space.retrained_encoding(arch) == [[], [1], [0] * 15, []]
    # At resolution 32 the 1/32 map is 1x1: one token, attention reduces to its values.
    small = load_space("bossnas_hytra", {"resolution": 32})
    late = small.make_arch(_choices(small, 4, 8, 9, "resatt"))
    assert small.latency_keys(late)[9] == "resatt-in2x2x256-out1x1x512-s2-t1-e128-h8x16-mlp0-relu"
    assert _forward(small.build(late), 32).shape == (1, 10)


def test_demo_keys_are_few_and_named(space):
    keys = space.all_latency_keys()
    assert len(keys) == 16 and keys == sorted(keys)
    assert {"stem-in64x64x3-out16x16x16-k7-relu", "head-in2x2x512-out10",
            "resatt-in8x8x128-out4x4x256-s2-t16-e64-h4x16-mlp0-relu",
            "resatt-in2x2x512-out2x2x512-s1-t4-e128-h8x16-mlp0-relu"} <= set(keys)


def test_units_chain_and_match_build(space):
    rng = np.random.default_rng(1)
    for _ in range(3):
        arch = space.sample(rng)
        units = [space.unit(k) for k in space.latency_keys(arch)]
        outputs = [u.input_shape for u in units[1:]] + [(space.config.num_classes,)]
        for unit, expected in zip(units, outputs, strict=True):
            unit.module.eval()
            with torch.no_grad():
                assert unit.module(torch.randn(1, *unit.input_shape)).shape[1:] == expected
        assert [repr(c) for c in space.build(arch).children()] == [repr(u.module) for u in units]


def test_space_size_is_the_reference_count():
    """Distinct networks: valid positions x 2 per layer at 1/16 or 1/32 = the reference's 1,615,872."""
    total = 0
    for to8, to16, to32 in product(*POSITIONS.values()):
        if to8 < to16 < to32:
            total += 2 ** sum(k >= 2 for k in scales(to8, to16, to32))
    assert total == 1_615_872


def test_inactive_ops_do_not_change_the_network(space):
    arch = space.preset("bossnas_hytra_tiny")
    tiny = space_of(arch)
    assert arch.choices["down.to16"] == 4 and arch.choices["l3.op"] == "resconv"
    other = tiny.make_arch({**arch.choices, "l2.op": "resatt", "l3.op": "resatt"})  # layers 2, 3 run at 1/8
    assert other != arch and tiny.latency_keys(other) == tiny.latency_keys(arch)
    assert "l3.op" not in tiny.active_choices(arch) and "l4.op" in tiny.active_choices(arch)


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS)
def test_sampled_mutated_and_crossed_archs_keep_the_layout(space, seed):
    """The space contract checks what every space's archs promise; here the layout rule and the 16 layers."""
    for arch in assert_sample_mutate_crossover_are_valid(space, seed):
        assert arch.choices["down.to8"] < arch.choices["down.to16"] < arch.choices["down.to32"]
        assert sum(len(stage) for stage in space.retrained_encoding(arch)) == LAYERS


def test_latency_terms_give_the_keys(space):
    terms = space.latency_terms()
    rng = np.random.default_rng(2)
    for arch in [space.sample(rng) for _ in range(5)]:
        from_terms = [k for t in terms for k in t.keys(tuple(arch.choices[d] for d in t.decisions))]
        assert Counter(from_terms) == Counter(space.latency_keys(arch))


@pytest.mark.parametrize(
    ("to8", "to16", "to32", "decision", "after", "allowed"),
    [(3, 3, 9, "down.to16", "down.to8 = 3", "4, 5, 6, 7, 8"), (4, 2, 9, "down.to16", "down.to8 = 4", "5, 6, 7, 8"),
     (1, 8, 8, "down.to32", "down.to16 = 8", "9, 10, 11, 12, 13, 14, 15, 16, 17"),
     (2, 6, 4, "down.to32", "down.to16 = 6", "7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17")],
)
def test_layout_that_skips_a_scale_is_refused(space, to8, to16, to32, decision, after, allowed):
    with pytest.raises(UserError) as info:
        space.make_arch(_choices(space, to8, to16, to32))
    message = str(info.value)
    assert "\n" not in message and f"decision '{decision}'" in message
    assert message.endswith(f"allowed with {after}: {allowed}")


@pytest.mark.parametrize(("decision", "value", "allowed"),
                         [("down.to8", 5, "1, 2, 3, 4"), ("down.to16", 9, "2, 3, 4, 5, 6, 7, 8"),
                          ("l5.op", "mhsa", "resconv, resatt"), ("down.to32", "9", "3, 4, 5")])
def test_bad_choices_name_the_decision(space, decision, value, allowed):
    with pytest.raises(UserError, match=rf"'{decision}' has no choice {value!r}; allowed: {allowed}"):
        space.make_arch({**space.preset("bossnas_hytra_tiny").choices, decision: value})


@pytest.mark.parametrize("overrides", [{"resolution": 16}, {"head_dim": 24}, {"last_stride": 3}, {"act": "gelu"},
                                       {"width_mult": 0}, {"drop_path": 1.0}, {"heads": 4}])
def test_config_validation(overrides):
    with pytest.raises(UserError) as info:
        load_space("bossnas_hytra", overrides)
    assert "\n" not in str(info.value)


def test_head_dim_error_lists_allowed_widths():
    with pytest.raises(UserError, match=r"head_dim 24 does not divide the attention width 64 .* allowed: 1, 2, 4, "
                                        r"8, 16, 32, 64$"):
        load_space("bossnas_hytra", {"head_dim": 24})


def _randomise_bn(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()


def test_attention_arch_exports_in_every_format_within_tolerance(space, tmp_path):
    # Random last-BN gammas (zero at init) so the attention paths reach the output the exporter checks.
    arch = space.make_arch(_choices(space, 1, 2, 6, "resatt"))
    written = export(arch, ["json", "pt", "torchscript", "onnx"], tmp_path, model=_randomise_bn(space.build(arch)))
    assert all(w.path.is_file() for w in written.values()) and written["onnx"].max_abs_diff <= 1e-4
    assert written["torchscript"].max_abs_diff <= 1e-5 and written["pt"].max_abs_diff <= 1e-5


def test_supernet_child_matches_build_at_another_config():
    space = load_space("bossnas_hytra", {"resolution": 48, "act": "silu", "se": True, "last_stride": 1,
                                         "width_mult": 0.125, "drop_path": 0.1})
    net = _randomise_bn(space.supernet())
    x = torch.randn(2, 3, 48, 48)
    for seed in range(3):
        arch = space.sample(np.random.default_rng(seed))
        with torch.no_grad():
            out, child = net(x, arch), net.extract(arch)
            torch.testing.assert_close(child(x), out, atol=1e-5, rtol=0)
        rates = [m.p for m in child.modules() if isinstance(m, DropPath)]
        assert rates and max(rates) <= 0.1
    # Train mode: drop-path draws the same masks in the supernet and its child (same layers, same order).
    arch = space.make_arch(_choices(space, 1, 2, 9, "resconv"))
    net.train()
    torch.manual_seed(3)
    out = net(x, arch)
    child = net.extract(arch)
    assert child.training
    torch.manual_seed(3)
    torch.testing.assert_close(child(x), out, atol=1e-5, rtol=0)
    torch.manual_seed(4)
    assert not torch.allclose(child(x), out)  # other masks: drop-path is on


# One torch thread, as in the test process (tests/conftest.py): on two cores shared with the test run, two
# threads make an export's forward passes three times slower (38 s against 12 s for shiftnas_vit_tiny).
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_rejects_a_layout_that_skips_a_scale(space, tmp_path):
    data = space.preset("bossnas_hytra_tiny").to_dict()
    data["choices"]["down.to8"] = 4  # down.to16 is 4 too: 1/8 would be skipped
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = _cli("export", "--arch", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "'down.to16' = 4" in result.stderr and "allowed with down.to8 = 4: 5, 6, 7, 8" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# Exhaustive: the CLI's --preset path is every space's (tests/test_export.py runs it by default), and
# test_attention_arch_exports_in_every_format_within_tolerance exports this space in every format in process.
@pytest.mark.exhaustive
def test_cli_exports_tiny_preset_in_all_formats(tmp_path):
    result = _cli("export", "--preset", "bossnas_hytra_tiny", "--format", "json,pt,torchscript,onnx",
                  "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    assert [f["format"] for f in files] == ["json", "pt", "torchscript", "onnx"]
    assert files[-1]["max_abs_diff"] <= 1e-4
