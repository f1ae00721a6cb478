"""ViT-ResNAS space: presets against the reference's counts and network_defs, units, supernet, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.ops.vit_resnas import SpatialReduction, attend
from nas.space import load_space, space_of
from nas.spaces.vit_resnas import ViTResNASSpace
from tests.cli_harness import assert_user_error, run_cli
from tests.contracts.test_space_contract import assert_sample_mutate_crossover_are_valid

# Counted from the reference's classes (yilunliao/vit-search) at 224x224, 1000 classes: inference params
# (no per-patch head), params with the per-patch head (the training log's count), MACs of the reference's
# estimator; the acceptance figures are 1% (params) and 2% (MACs, 1.783G / 2.846G / 4.513G / 1.794G).
PUBLISHED = {
    "vit_resnas_tiny": (40_793_552, 41_498_552, 1_782_630_272),
    "vit_resnas_small": (63_724_108, 64_605_108, 2_845_501_856),
    "vit_resnas_medium": (96_442_672, 97_323_672, 4_513_135_936),
    "vit_res_tiny": (42_012_736, 42_781_736, 1_794_378_240),
}
ROUNDED_MACS = {"vit_resnas_tiny": 1.783e9, "vit_resnas_small": 2.846e9, "vit_resnas_medium": 4.513e9,
                "vit_res_tiny": 1.794e9}


def _blocks(width: int, head_dim: int, blocks: list[tuple[int, int]]) -> str:
    return ", ".join(f"(1, ({width}, {h}, {head_dim}), ({width}, {m}), 1)" for h, m in blocks)


# The retraining scripts' network_def (scripts/vit-sr-nas/searched_net/*.sh, reference_net/tiny.sh).
NETWORK_DEFS = {
    "vit_resnas_tiny": (
        f"((4, 176), {_blocks(176, 32, [(3, 704), (3, 576), (3, 640), (4, 576), (4, 704)])}, (3, 176, 352), "
        f"{_blocks(352, 48, [(10, 1408), (8, 1408), (8, 1280), (8, 1408), (10, 1280), (10, 1024)])}, "
        f"(3, 352, 704), {_blocks(704, 64, [(10, 2560), (10, 1792), (10, 2816), (8, 2816), (8, 2560)])}, "
        "(2, 704, 1000))"),
    "vit_resnas_small": (
        f"((4, 220), {_blocks(220, 32, [(5, 880), (5, 880), (7, 800), (5, 720), (5, 720), (5, 720)])}, "
        f"(3, 220, 440), {_blocks(440, 48, [(10, 1760), (10, 1440), (10, 1920), (10, 1600), (12, 1600)])}, "
        f"{_blocks(440, 48, [(12, 1440)])}, (3, 440, 880), "
        f"{_blocks(880, 64, [(16, 3200), (12, 3200), (16, 2880), (12, 2240), (14, 2560)])}, (2, 880, 1000))"),
    "vit_resnas_medium": (
        f"((4, 240), {_blocks(240, 32, [(7, 960), (6, 960), (7, 800), (8, 960), (7, 880), (8, 880), (6, 800)])}, "
        f"(3, 240, 640), {_blocks(640, 48, [(10, 1120), (14, 1760), (14, 1920), (16, 1760), (14, 1440)])}, "
        f"{_blocks(640, 48, [(16, 1760), (16, 1920)])}, (3, 640, 880), "
        f"{_blocks(880, 64, [(16, 3200), (10, 3840), (16, 3840), (12, 3200), (16, 3520), (14, 3520)])}, "
        "(2, 880, 1000))"),
    "vit_res_tiny": (
        f"((4, 192), {_blocks(192, 64, [(3, 768)] * 4)}, (3, 192, 384), {_blocks(384, 64, [(6, 1536)] * 4)}, "
        f"(3, 384, 768), {_blocks(768, 64, [(12, 3072)] * 4)}, (2, 768, 1000))"),
}
# The README's search output of ViT-ResNAS-Small: all 21 slots, the removed ones with exists 0.
SMALL_REMOVED = {("s1", 4): (7, 800), ("s2", 6): (12, 1120), ("s3", 4): (12, 3200), ("s3", 6): (12, 3520)}
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.fixture(scope="module")
def space() -> ViTResNASSpace:
    return load_space("vit_resnas")


def _on_meta(space: ViTResNASSpace, arch) -> torch.nn.Module:
    """`build(arch)` without allocating or initialising its tensors (parameter counts of 224-px models in ms)."""
    with torch.device("meta"):
        return space.build(arch)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_counts_match_the_reference(space, name):
    params, with_patch_head, macs = PUBLISHED[name]
    arch, spec = space.preset(name), space.preset_spec(name)
    own = space_of(arch)
    assert (own.config.resolution, own.config.num_classes, own.config.patch_head) == (224, 1000, False)
    counted = count_params(_on_meta(own, arch))
    cost = own.cost(arch)
    assert counted == pytest.approx(params, rel=0.01) and cost["macs"] == pytest.approx(ROUNDED_MACS[name], rel=0.02)
    assert (counted, cost) == (params, {"params": params, "macs": macs})
    assert (spec.published["params"], spec.published["macs"]) == (params, macs)
    patched = load_space("vit_resnas", {**own.config.model_dump(), "patch_head": True})
    assert count_params(_on_meta(patched, patched.make_arch(dict(arch.choices)))) == with_patch_head


@pytest.mark.parametrize("name", list(NETWORK_DEFS))
def test_presets_are_the_reference_network_defs(space, name):
    arch = space.preset(name)
    own = space_of(arch)
    assert str(own.to_network_def(arch, keep_removed=False)) == NETWORK_DEFS[name]
    again = own.from_network_def(NETWORK_DEFS[name])  # the retraining form: removed slots are the last optional ones
    assert own.to_network_def(again, keep_removed=False) == own.to_network_def(arch, keep_removed=False)
    assert (again == arch) == (name != "vit_resnas_small")  # Small's search removed other slots (README)
    full = own.to_network_def(arch)  # every slot, removed ones with exists 0, as a search writes it
    assert own.from_network_def(full) == arch
    assert len([e for e in full if e[0] == 1]) == 3 * own.stages[0].slots


def test_small_preset_is_the_readme_search_output(space):
    arch = space.preset("vit_resnas_small")
    assert space_of(arch).depths(arch) == (6, 6, 5)
    with pytest.raises(UserError, match="belongs to space"):
        space.depths(arch)
    for (stage, slot), (heads, mlp) in SMALL_REMOVED.items():
        assert (arch.choices[f"{stage}.b{slot}.exists"], arch.choices[f"{stage}.b{slot}.heads"],
                arch.choices[f"{stage}.b{slot}.mlp"]) == (0, heads, mlp)


def test_presets_count_at_native_resolution_as_their_units(space):
    """Every preset at 224x224 on the meta device (shapes only, no arithmetic): the counts of the whole module
    equal the unit sums, and its output has the classes' shape."""
    for name, (params, _, macs) in PUBLISHED.items():
        arch = space.preset(name)
        net = _on_meta(space_of(arch), arch).eval()
        with torch.device("meta"), torch.no_grad():
            assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
            assert (count_params(net), count_macs(net, (3, 224, 224))) == (params, macs), name


@pytest.mark.exhaustive  # seconds of arithmetic; the counts above and the demo-resolution forwards run by default
def test_presets_run_at_native_resolution(space):
    for name in PUBLISHED:
        arch = space.preset(name)
        net = space_of(arch).build(arch).eval()
        with torch.no_grad():
            out = net(torch.randn(1, 3, 224, 224))
        assert out.shape == (1, 1000) and torch.isfinite(out).all(), name


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_run_at_demo_resolution(space, name):
    spec = space.preset_spec(name)
    demo = load_space("vit_resnas", {**spec.config, "resolution": 56, "num_classes": 10})
    net = demo.build(demo.make_arch(spec.choices)).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 56, 56)).shape == (2, 10)


def test_supernet_extremes_match_the_reference():
    """Largest children (the supernets, with the per-patch head) and smallest children at 224 [derived counts]."""
    for supernet, params, big_macs, small_macs in (("tiny", 85_839_464, 3_497_553_920, 752_489_984),
                                                   ("small", 156_599_528, 6_260_342_784, 1_470_482_304)):
        space = load_space("vit_resnas", {"resolution": 224, "num_classes": 1000, "supernet": supernet,
                                          "width_mult": 1.0, "head_dims": [32, 48, 64], "patch_head": True})
        big = space.make_arch({d.name: max(d.choices) for d in space.decisions()})
        small = space.make_arch({d.name: min(d.choices) for d in space.decisions()})
        with torch.device("meta"):
            assert count_params(space.supernet()) == count_params(space.build(big)) == params
        assert (space.cost(big)["macs"], space.cost(small)["macs"]) == (big_macs, small_macs)


def test_decisions_follow_the_reference_configs():
    for supernet, slots, heads, mlp1 in (("tiny", 6, [(3, 4, 5, 6), (6, 8, 10, 12), (6, 8, 10, 12)], (384, 768, 64)),
                                         ("small", 7, [(5, 6, 7, 8), (10, 12, 14, 16), (10, 12, 14, 16)],
                                          (480, 960, 80))):
        space = load_space("vit_resnas", {"resolution": 224, "num_classes": 1000, "supernet": supernet,
                                          "width_mult": 1.0, "head_dims": [32, 48, 64]})
        choices = {d.name: d.choices for d in space.decisions()}
        assert len(choices) == 3 + 3 * (2 * slots + 3)
        assert [choices[f"s{s}.b1.heads"] for s in (1, 2, 3)] == heads
        assert choices["s1.b1.mlp"] == tuple(range(mlp1[0], mlp1[1] + 1, mlp1[2]))
        assert choices["s3.b1.mlp"] == tuple(range(mlp1[0] * 4, mlp1[1] * 4 + 1, mlp1[2] * 4))
        assert {n for n in choices if n.endswith(".exists")} == {f"s{s}.b{j}.exists" for s in (1, 2, 3)
                                                                  for j in (2, 4, 6)}
        assert space.size() == 5**3 * 28 ** (3 * slots - 9) * 56**9  # removed slots keep heads and MLP choices


def test_demo_config_keys(space):
    keys = space.all_latency_keys()
    assert len(keys) == 5 + 3 * 5 * 4 * 7 + 2 * 25 + 5 == 480  # stem, blocks, reductions, head
    assert {
        "vitres-stem-in56x56x3-mid24-out4x4x64-cls",
        "vitres-block-n17-e40-h3-d8-mlp96",
        "vitres-block-n5-e128-h12-d12-mlp384",
        "vitres-block-n2-e176-h10-d16-mlp640",
        "vitres-sr-in4x4x64-out2x2x80-cls",
        "vitres-sr-in2x2x128-out1x1x256-cls",
        "vitres-head-n2-e256-out10",
    } <= set(keys)
    big = space.make_arch({d.name: max(d.choices) for d in space.decisions()})
    assert space.cost(big) == {"params": 5_325_666, "macs": 26_691_968}


@pytest.mark.parametrize("overrides", [{}, {"supernet": "small", "resolution": 112, "num_classes": 7,
                                             "head_dims": [8, 12, 16], "patch_head": True}])
def test_units_chain_and_costs_sum_to_the_network(overrides):
    space = load_space("vit_resnas", overrides)
    r = space.config.resolution
    rng = np.random.default_rng(0)
    for _ in range(2):
        arch = space.sample(rng)
        net = space.build(arch)
        units = [space.unit(k) for k in space.latency_keys(arch)]
        assert [repr(u.module) for u in units] == [repr(c) for c in net.children()]
        shapes = [u.input_shape for u in units[1:]] + [(space.config.num_classes,)]
        for unit, shape in zip(units, shapes, strict=True):
            with torch.no_grad():
                assert unit.module.eval()(torch.zeros(1, *unit.input_shape)).shape[1:] == shape
        assert space.cost(arch) == {"params": count_params(net), "macs": count_macs(net, (3, r, r))}


def test_removed_blocks_do_not_change_the_network(space):
    arch = space.make_arch({**space.sample(np.random.default_rng(1)).choices, "s2.b4.exists": 0})
    others = {name: next(c for c in space._decisions[name].choices if c != arch.choices[name])
              for name in ("s2.b4.heads", "s2.b4.mlp")}
    other = space.make_arch({**arch.choices, **others})
    assert other != arch and space.latency_keys(other) == space.latency_keys(arch)
    assert space.active_choices(other) == space.active_choices(arch) and "s2.b4.heads" not in space.active_choices(arch)
    assert "s2_b4" not in dict(space.build(arch).named_children())


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS)
def test_sampled_mutated_and_crossed_archs_keep_depths_and_network_defs(space, seed):
    """The space contract checks what every space's archs promise; here the stage depths and network_def form."""
    for arch in assert_sample_mutate_crossover_are_valid(space, seed):
        assert all(3 <= d <= 6 for d in space.depths(arch))
        assert space.from_network_def(space.to_network_def(arch)) == arch


def test_drop_path_rates_are_linear_over_every_slot():
    space = load_space("vit_resnas", {"drop_path": 0.17})
    assert space.drop_path_rate("s1_b1") == 0.0 and space.drop_path_rate("s3_b6") == pytest.approx(0.17)
    assert space.drop_path_rate("s2_b1") == pytest.approx(0.17 * 6 / 17)
    arch = space.make_arch({**space.sample(np.random.default_rng(3)).choices, "s1.b2.exists": 0})
    net = space.build(arch)
    assert net.s1_b3.drop_path.p == pytest.approx(0.17 * 2 / 17)  # its slot's rate, block 2 removed or not


def test_patch_head_gives_patch_logits():
    space = load_space("vit_resnas", {"patch_head": True, "resolution": 112})
    arch = space.sample(np.random.default_rng(0))
    supernet = space.supernet().eval()
    supernet.activate(arch)
    net = supernet.extract(arch)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        cls, patches = net.forward_with_patches(x)
        cls2, patches2 = supernet.forward_with_patches(x)
        assert torch.allclose(cls, net(x))
    assert cls.shape == (2, 10) and patches.shape == (2, 4, 10)  # 2x2 patches in stage 3
    assert torch.allclose(cls, cls2, atol=1e-5) and torch.allclose(patches, patches2, atol=1e-5)
    plain = load_space("vit_resnas")
    with pytest.raises(ValueError, match="patch head"):
        plain.build(plain.sample(np.random.default_rng(0))).forward_with_patches(torch.randn(1, 3, 56, 56))


def test_attention_and_reduction_follow_their_definitions():
    torch.manual_seed(0)
    qkv = torch.randn(2, 5, 3 * 4 * 6)
    q, k, v = qkv.reshape(2, 5, 3, 4, 6).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 24)
    assert torch.allclose(attend(qkv, 4, 6), expected, atol=1e-6)
    sr = SpatialReduction(6, 10, 4)
    with torch.no_grad():  # main path zero: the output is the skip path, pooled and zero-padded
        for t in (sr.patch_reduce.weight, sr.patch_reduce.bias, sr.token_transform.weight, sr.token_transform.bias,
                  sr.pos_embed):
            t.zero_()
        x = torch.randn(2, 17, 6)
        out = sr(x)
    pooled = F.avg_pool2d(x[:, 1:].transpose(1, 2).reshape(2, 6, 4, 4), 2).flatten(2).transpose(1, 2)
    assert out.shape == (2, 5, 10) and not out[..., 6:].any()
    assert torch.allclose(out[:, 0, :6], x[:, 0]) and torch.allclose(out[:, 1:, :6], pooled)


@pytest.mark.parametrize(("overrides", "needles"), [
    ({"resolution": 100}, ["resolution", "multiple of 56"]),
    ({"width_mult": 0.3}, ["width_mult", "multiple of 1/16"]),
    ({"supernet": "small", "width_mult": 0.125}, ["width_mult", "multiple of 1/4"]),
    ({"head_dims": [100, 12, 16]}, ["head_dims[0] = 100", "24, 32, 40, 48", "e.g. 8"]),
    ({"supernet": "huge"}, ["supernet", "tiny", "small"]),
])
def test_bad_config_is_a_one_line_error(overrides, needles):
    with pytest.raises(UserError) as info:
        load_space("vit_resnas", overrides)
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles), str(info.value)


@pytest.mark.parametrize(("change", "needles"), [
    ({"s1.b1.heads": 7}, ["s1.b1.heads", "allowed: 3, 4, 5, 6"]),
    ({"s2.b3.mlp": 200}, ["s2.b3.mlp", "192, 224"]),
    ({"s3.width": 150}, ["s3.width", "160, 176, 192, 224, 256"]),
    ({"s1.b2.exists": 2}, ["s1.b2.exists", "allowed: 0, 1"]),
])
def test_bad_choice_is_a_one_line_error(space, change, needles):
    arch = space.sample(np.random.default_rng(0))
    with pytest.raises(UserError) as info:
        space.make_arch({**arch.choices, **change})
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles), str(info.value)


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda d: d.replace("(3, 176, 352), ", "(3, 176, 352), " + _blocks(352, 48, [(8, 1024)]) + ", "),
     ["stage 2 depth 7", "allowed: 3..6"]),
    (lambda d: d.replace(_blocks(176, 32, [(3, 704), (3, 576), (3, 640), (4, 576), (4, 704)]),
                         _blocks(176, 32, [(3, 704), (3, 576)])), ["stage 1 depth 2", "allowed: 3..6"]),
    (lambda d: d.replace("(176, 3, 32)", "(176, 3, 64)", 1), ["head dim 64", "32", "head_dims"]),
    (lambda d: d.replace("(352, 10, 48), (352, 1408)", "(320, 10, 48), (320, 1408)", 1), ["width 352"]),
    (lambda d: d.replace(", (3, 352, 704)", ""), ["1 reductions", "allowed: 2"]),
    (lambda d: d.replace("(2, 704, 1000)", "(2, 704, 10)"), ["(2, 704, 1000)"]),
    (lambda d: d.replace("(1, (176, 3, 32), (176, 704), 1)", "(1, (176, 3, 32), (176, 704), 0)", 1),
     ["slot 1 of stage 1 cannot be removed", "2, 4, 6"]),
    (lambda d: d.replace("(176, 704), 1)", "(176, 704))", 1), ["expected an entry (1, (E, heads"]),
    (lambda d: d[:-3], ["not a Python tuple literal"]),
])
def test_bad_network_def_is_a_one_line_error(space, edit, needles):
    own = space_of(space.preset("vit_resnas_tiny"))
    with pytest.raises(UserError) as info:
        own.from_network_def(edit(NETWORK_DEFS["vit_resnas_tiny"]))
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles), str(info.value)


def test_cli_refuses_a_bad_arch_with_one_line(space, tmp_path: Path):
    arch = space.sample(np.random.default_rng(0))
    bad = tmp_path / "bad.json"
    bad.write_text(arch.to_json().replace('"s1.b1.heads":' + str(arch.choices["s1.b1.heads"]), '"s1.b1.heads":9'))
    proc = run_cli("export", "--arch", bad, "--format", "json", "--out", tmp_path / "out")
    assert_user_error(proc, "s1.b1.heads", "allowed: 3, 4, 5, 6")


def test_latency_terms_give_the_keys(space):
    rng = np.random.default_rng(4)
    for arch in [space.sample(rng) for _ in range(5)]:
        from_terms = [k for t in space.latency_terms() for k in t.keys(tuple(arch.choices[d] for d in t.decisions))]
        assert Counter(from_terms) == Counter(space.latency_keys(arch))
    assert max(len(t.decisions) for t in space.latency_terms()) == 4  # exists, width, heads, mlp
