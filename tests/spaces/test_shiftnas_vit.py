"""ShiftNAS ViT space: AutoFormer-T/S/B presets against NNI's exact counts, units, inactive layers, bad input."""

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
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.space import load_space, space_of
from nas.spaces.shiftnas_vit import SUPERNETS, ShiftNASViTSpace
from tests.contracts.test_space_contract import assert_sample_mutate_crossover_are_valid

# params: NNI 3.0's hub model (nni/nas/hub/pytorch/autoformer.py), relative-position tables included, head dim 64.
# macs: ours (torch.utils.flop_counter, halved), with and without the relative-position products (2 N^2 64 h
# per layer; without them it is the formula of shared/reference/shiftnas.md exactly: 1.283G / 4.774G / 11.045G).
# AutoFormer publishes 1.3G / 5.1G / 11.0G FLOPs (= MACs). Differences to published:
# T +14.0% / -1.3%, S +1.2% / -6.4%, B +6.3% / +0.4% (with / without relative positions).
PRESETS = {
    "autoformer_t": {"params": 5_867_944, "macs": 1_481_938_432, "no_rpe": 1_283_236_352, "published": 1.3e9},
    "autoformer_s": {"params": 22_891_432, "macs": 5_161_400_832, "no_rpe": 4_773_931_776, "published": 5.1e9},
    "autoformer_b": {"params": 53_691_688, "macs": 11_691_179_008, "no_rpe": 11_045_397_248, "published": 11.0e9},
}
TOKENS = 197  # 224 / 16 = 14 patches per side, plus the class token
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.fixture(scope="module")
def space() -> ShiftNASViTSpace:
    return load_space("shiftnas_vit")


def _forward(net: nn.Module, shape: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.zeros(batch, *shape))


def _heads(arch: Arch) -> list[int]:
    return [arch.choices[f"l{i}.heads"] for i in range(1, arch.choices["depth"] + 1)]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_params_match_nni_exactly(space, name):
    arch, want = space.preset(name), PRESETS[name]
    own = space_of(arch)
    assert (own.config.resolution, own.config.num_classes, own.config.patch_size) == (224, 1000, 16)
    assert count_params(own.build(arch)) == want["params"] == space.preset_spec(name).published["params"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_macs_at_native_resolution_are_reported(space, name):
    arch, want = space.preset(name), PRESETS[name]
    own = space_of(arch)
    with torch.device("meta"):  # shapes only: the count needs no arithmetic and no initialised weights
        net = own.build(arch)
        assert _forward(net, (3, 224, 224)).shape == (1, 1000)
        macs = count_macs(net, (3, 224, 224))
    assert macs == want["macs"]
    assert own.cost(arch) == {"params": want["params"], "macs": macs}
    relative = 2 * TOKENS**2 * 64 * sum(_heads(arch))  # q . r_k and attn . r_v, per layer
    assert macs - relative == want["no_rpe"]
    assert space.preset_spec(name).published["macs"] == want["published"]


@pytest.mark.exhaustive  # seconds of arithmetic; the count above and the demo-resolution forwards run by default
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_runs_at_native_resolution(space, name):
    arch = space.preset(name)
    out = _forward(space_of(arch).build(arch), (3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [*PRESETS, "shiftnas_vit_tiny"])
def test_preset_runs_at_demo_resolution(space, name):
    spec = space.preset_spec(name)
    demo = load_space("shiftnas_vit", {**spec.config, "resolution": 32, "patch_size": 8, "num_classes": 10})
    net = demo.build(demo.make_arch(spec.choices))
    assert _forward(net, (3, 32, 32), batch=2).shape == (2, 10)


def test_presets_are_autoformers_released_subnets(space):
    t, s, b = (space.preset(f"autoformer_{x}") for x in "tsb")
    assert (t.choices["embed_dim"], s.choices["embed_dim"], b.choices["embed_dim"]) == (192, 384, 576)
    assert (t.choices["depth"], s.choices["depth"], b.choices["depth"]) == (13, 13, 14)
    assert _heads(t) == [3] * 10 + [4, 3, 3]
    assert _heads(s) == [6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7]
    assert _heads(b) == [9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10]
    assert [b.choices[f"l{i}.mlp_ratio"] for i in range(1, 15)] == [
        "3.5", "3.5", "4.0", "3.5", "4.0", "3.5", "3.5", "3.0", "4.0", "4.0", "3.0", "4.0", "3.0", "3.5"]


def test_decisions_and_size(space):
    names = [d.name for d in space.decisions()]
    assert names[:4] == ["embed_dim", "depth", "l1.heads", "l1.mlp_ratio"] and names[-1] == "l14.mlp_ratio"
    assert space.size() == 3 * 3 * (2 * 3) ** 14
    base = load_space("shiftnas_vit", {"supernet": "base"})
    assert len(base.decisions()) == 2 + 2 * 16
    assert base.decisions()[2].choices == (8, 9, 10) and base.decisions()[1].choices == (14, 15, 16)


@pytest.mark.parametrize(("supernet", "count"), [("tiny", 3 + 18 + 3), ("small", 3 + 27 + 3), ("base", 3 + 27 + 3)])
def test_demo_table_is_small(supernet, count):
    space = load_space("shiftnas_vit", {"supernet": supernet})
    keys = space.all_latency_keys()
    assert len(keys) == count and keys == sorted(keys)
    assert {"patch_embed-in32x32x3-p8-out17x192", "vit_block-in17x216-h4x64-mlp756-rpe4",
            "vit_head-in17x240-gap-out10"} <= set(load_space("shiftnas_vit").all_latency_keys())


@pytest.mark.parametrize("overrides", [{}, {"supernet": "small", "resolution": 48, "patch_size": 16, "num_classes": 7}])
def test_unit_costs_sum_to_network(overrides):
    space = load_space("shiftnas_vit", overrides)
    rng = np.random.default_rng(0)
    r = space.config.resolution
    for _ in range(2):
        arch = space.sample(rng)
        net = space.build(arch)
        assert space.cost(arch) == {"params": count_params(net), "macs": count_macs(net, (3, r, r))}


def test_units_chain_and_match_build(space):
    arch = space.sample(np.random.default_rng(1))
    keys = space.latency_keys(arch)
    assert len(keys) == arch.choices["depth"] + 2
    units = [space.unit(k) for k in keys]
    assert units[0].input_shape == (3, 32, 32)
    e = arch.choices["embed_dim"]
    outputs = [u.input_shape for u in units[1:]] + [(10,)]
    assert all(shape == (17, e) for shape in outputs[:-1])
    for unit, expected in zip(units, outputs, strict=True):
        assert _forward(unit.module, unit.input_shape).shape[1:] == expected
    children = list(space.build(arch).children())
    assert [repr(c) for c in children] == [repr(u.module) for u in units]


def test_width_need_not_be_a_multiple_of_the_head_dim(space):
    """AutoFormer's q/k/v width is 64 * heads whatever E is: E 216 with 3 heads (192 units) is a child."""
    arch = space.make_arch({**space.preset("shiftnas_vit_tiny").choices, "embed_dim": 216})
    net = space.build(arch)
    assert net.l1.qkv.weight.shape == (3 * 64 * arch.choices["l1.heads"], 216)
    assert _forward(net, (3, 32, 32)).shape == (1, 10)


def test_inactive_layers_do_not_change_the_network(space):
    arch = space.preset("shiftnas_vit_tiny")
    assert arch.choices["depth"] == 12
    other = space.make_arch({**arch.choices, "l13.heads": 4, "l14.mlp_ratio": "4.0"})
    assert other != arch
    assert space.latency_keys(other) == space.latency_keys(arch)
    assert space.active_choices(other) == space.active_choices(arch)
    assert "l13.heads" not in space.active_choices(arch) and "l12.heads" in space.active_choices(arch)


def test_latency_terms_give_the_keys(space):
    terms = space.latency_terms()
    assert max(len(t.decisions) for t in terms) == 4  # width, depth, heads, ratio of layers 13-14
    rng = np.random.default_rng(2)
    for arch in [space.sample(rng) for _ in range(5)] + [space.preset("shiftnas_vit_tiny")]:
        from_terms = [k for t in terms for k in t.keys(tuple(arch.choices[d] for d in t.decisions))]
        assert Counter(from_terms) == Counter(space.latency_keys(arch))


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS)
@pytest.mark.parametrize("supernet", sorted(set(SUPERNETS) - {"tiny"}))
def test_other_supernets_keep_the_space_contract(seed, supernet):
    """The space contract runs at the default (tiny) supernet; the small and base ones have other ranges."""
    assert_sample_mutate_crossover_are_valid(load_space("shiftnas_vit", {"supernet": supernet}), seed)


def test_json_keeps_ratio_tokens_and_ints(space):
    arch = space.preset("autoformer_t")
    data = json.loads(arch.to_json())
    assert data["choices"]["l3.mlp_ratio"] == "3.0" and data["choices"]["embed_dim"] == 192
    assert data["config"] == {"num_classes": 1000, "patch_size": 16, "resolution": 224, "supernet": "tiny"}


@pytest.mark.parametrize(
    ("decision", "value", "allowed"),
    [("depth", 15, "12, 13, 14"), ("depth", 11, "12, 13, 14"), ("l3.heads", 5, "3, 4"),
     ("l2.mlp_ratio", "4.5", "3.0, 3.5, 4.0"), ("l2.mlp_ratio", 4, "'3.0', '3.5', '4.0'"),
     ("embed_dim", 256, "192, 216, 240"), ("embed_dim", 200, "192, 216, 240")],
)
def test_make_arch_rejects_bad_choices(space, decision, value, allowed):
    choices = dict(space.preset("shiftnas_vit_tiny").choices)
    with pytest.raises(UserError, match=rf"'{decision}' has no choice {value!r}; allowed: {allowed}$"):
        space.make_arch({**choices, decision: value})


def test_small_heads_do_not_fit_the_tiny_supernet():
    small = load_space("shiftnas_vit", {"supernet": "small"}).sample(np.random.default_rng(0))
    tiny = load_space("shiftnas_vit")
    with pytest.raises(UserError, match=r"'embed_dim' has no choice \d+; allowed: 192, 216, 240"):
        tiny.make_arch(dict(small.choices))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"supernet": "huge"}, "supernet: Input should be 'tiny', 'small' or 'base'"),
     ({"patch_size": 7}, "patch_size: must divide resolution 32 .*; allowed: 1, 2, 4, 8, 16, 32; got 7"),
     ({"patch_size": 0}, "patch_size: must divide"), ({"resolution": 224, "patch_size": 1}, "allowed: 4, 7, 8"),
     ({"num_classes": 0}, "num_classes"), ({"heads": 3}, "unknown key")],
)
def test_config_validation(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        load_space("shiftnas_vit", overrides)
    assert "\n" not in str(info.value)


def test_supernet_holds_the_largest_child():
    net = load_space("shiftnas_vit", {"supernet": "small"}).supernet()
    assert net.embed.weight.shape == (448, 3, 8, 8) and len(net.layers) == 14
    assert net.layers.l14.qkv.weight.shape == (3 * 7 * 64, 448) and net.layers.l1.fc1.weight.shape == (1792, 448)
    assert net.layers.l1.rel_pos_embed_k.embeddings_table_v.shape == (2 * 4 + 2, 64)
    assert net.head.linear.weight.shape == (10, 448)


# One torch thread, as in the test process (tests/conftest.py): on two cores shared with the test run, two
# threads make an export's forward passes three times slower (38 s against 12 s for shiftnas_vit_tiny).
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize(("decision", "value", "allowed"), [("depth", 16, "12, 13, 14"), ("l1.heads", 7, "3, 4")])
def test_cli_rejects_bad_arch(space, tmp_path, decision, value, allowed):
    data = space.preset("shiftnas_vit_tiny").to_dict()
    data["choices"][decision] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = _cli("export", "--arch", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert decision in result.stderr and f"allowed: {allowed}" in result.stderr


# Exhaustive: the CLI's --preset path is every space's (tests/test_export.py runs it by default), and
# test_sampled_arch_exports_in_every_format_onnx_with_standard_ops exports this space in every format in process.
@pytest.mark.exhaustive
def test_cli_exports_tiny_preset(tmp_path):
    result = _cli("export", "--preset", "shiftnas_vit_tiny", "--format", "json,pt,torchscript,onnx",
                  "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    assert [f["format"] for f in files] == ["json", "pt", "torchscript", "onnx"]
    assert all(Path(f["path"]).is_file() and f["max_abs_diff"] <= 1e-4 for f in files)
    assert Arch.from_json(Path(files[0]["path"]).read_text()) == load_space("shiftnas_vit").preset("shiftnas_vit_tiny")


def test_sampled_arch_exports_in_every_format_onnx_with_standard_ops(space, tmp_path):
    import onnx

    arch = space.sample(np.random.default_rng(7))
    written = export(arch, ["json", "pt", "torchscript", "onnx"], tmp_path)
    assert all(w.path.is_file() and w.max_abs_diff <= 1e-4 for w in written.values()), written
    assert Arch.from_json(written["json"].path.read_text()) == arch
    graph = onnx.load(str(written["onnx"].path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"MatMul", "Softmax", "Gather", "LayerNormalization"} <= ops
    assert {node.domain for node in graph.node} <= {""}  # the standard opset only
