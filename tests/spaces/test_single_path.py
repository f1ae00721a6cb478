"""Single-Path NAS space: the published model against timm's counts, units composing the network, bad input."""

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

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.space import load_space, space_of
from nas.spaces.single_path import SKIP, SinglePathSpace

OPS = ("k3e3", "k3e6", "k5e3", "k5e6")
# Our exact counts of the published model at 224x224 (equal to timm's spnasnet_100 counted the same way).
SPNAS_PARAMS, SPNAS_MACS = 4_421_616, 333_467_072


@pytest.fixture(scope="module")
def space() -> SinglePathSpace:
    return load_space("single_path")


def _forward(net: torch.nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.zeros(1, *shape))


# One torch thread, as in the test process (tests/conftest.py): on two cores shared with the test run, two
# threads make an export's forward passes three times slower (38 s against 12 s for shiftnas_vit_tiny).
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_published_model_matches_timm_counts(space):
    arch = space.preset("single_path_nas")
    spec = space.preset_spec("single_path_nas")
    own = space_of(arch)
    assert (own.config.resolution, own.config.num_classes) == (224, 1000)
    net = own.build(arch)
    assert _forward(net, (3, 224, 224)).shape == (1, 1000)
    params, macs = count_params(net), count_macs(net, (3, 224, 224))
    assert params == pytest.approx(spec.published["params"], rel=0.01)
    assert macs == pytest.approx(spec.published["macs"], rel=0.02)
    assert (params, macs) == (SPNAS_PARAMS, SPNAS_MACS)
    assert own.cost(arch) == {"params": params, "macs": macs}
    # timm's _gen_spnasnet: 1 + 3 + 4 + 4 + 4 + 4 + 1 MBConv layers between stem and head.
    assert len(own.latency_keys(arch)) == 1 + 21 + 2


@pytest.mark.parametrize("name", ["single_path_nas", "single_path_tiny"])
def test_preset_runs_at_demo_resolution(name, space):
    spec = space.preset_spec(name)
    demo = load_space("single_path", {**spec.config, "resolution": 32, "num_classes": 10})
    arch = demo.make_arch(spec.choices)
    net = demo.build(arch)
    assert _forward(net, (3, 32, 32)).shape == (1, 10)
    assert demo.cost(arch) == {"params": count_params(net), "macs": count_macs(net, (3, 32, 32))}


def test_decisions_and_size(space):
    decisions = space.decisions()
    assert [d.name for d in decisions] == [f"s{s}.b{b}.op" for s in range(1, 6) for b in range(1, 5)]
    for d in decisions:
        # A stage's first layer changes stride or width, so it can never be skipped [superkernel.py].
        assert d.choices == (OPS if d.name.endswith(".b1.op") else (*OPS, SKIP))
    assert space.size() == 5**15 * 4**5


def test_example_keys_and_shortcuts_at_demo_config(space):
    keys = space.all_latency_keys()
    assert {
        "stem-in32x32x3-out16x16x32",
        "mbconv-in16x16x32-out16x16x16-k3-e1-s1",  # fixed block 0, no shortcut ("noskip")
        "mbconv-in16x16x16-out8x8x24-k5-e6-s2",
        "mbconv-in8x8x24-out8x8x24-k3-e3-s1-res",
        "mbconv-in2x2x80-out2x2x96-k5-e3-s1",  # s4.b1: stride 1 but 80 -> 96, no shortcut
        "mbconv-in1x1x192-out1x1x320-k3-e6-s1",  # fixed block 21, no shortcut
        "conv1x1-in1x1x320-out1x1x1280",
        "head-in1x1x1280-out10",
    } <= set(keys)
    assert keys == sorted(set(keys)) and len(keys) == 45  # few enough to time every one


@pytest.mark.parametrize("overrides", [{}, {"resolution": 72, "width_mult": 0.5, "num_classes": 7, "head_width": 96}])
def test_unit_costs_sum_to_network(overrides):
    space = load_space("single_path", overrides)
    rng = np.random.default_rng(0)
    r = space.config.resolution
    for _ in range(3):
        arch = space.sample(rng)
        net = space.build(arch)
        assert space.cost(arch) == {"params": count_params(net), "macs": count_macs(net, (3, r, r))}


def test_units_chain_and_match_build(space):
    arch = space.sample(np.random.default_rng(1))
    keys = space.latency_keys(arch)
    units = [space.unit(k) for k in keys]
    assert units[0].input_shape == (3, 32, 32)
    outputs = [u.input_shape for u in units[1:]] + [(space.config.num_classes,)]
    for unit, expected in zip(units, outputs, strict=True):
        assert _forward(unit.module, unit.input_shape).shape[1:] == expected
    assert [repr(c) for c in space.build(arch).children()] == [repr(u.module) for u in units]


def test_latency_terms_give_the_keys(space):
    terms = space.latency_terms()
    assert sum(len(t.decisions) for t in terms) == 20 and all(len(t.decisions) <= 1 for t in terms)
    rng = np.random.default_rng(2)
    for arch in [space.sample(rng) for _ in range(5)]:
        union = Counter(k for t in terms for k in t.keys(tuple(arch.choices[d] for d in t.decisions)))
        assert union == Counter(space.latency_keys(arch))


def test_skips_drop_units_and_width_can_add_a_shortcut():
    space = load_space("single_path")
    all_skip = {d.name: (SKIP if SKIP in d.choices else "k3e3") for d in space.decisions()}
    keys = space.latency_keys(space.make_arch(all_skip))
    assert len(keys) == 2 + 5 + 3  # stem, block 0, the five stage-first layers, block 21, head conv, classifier
    # At width 0.35 stages 3 and 4 are both 32 wide: s4.b1 gets a shortcut, yet it still cannot be skipped.
    narrow = load_space("single_path", {"width_mult": 0.35})
    assert SKIP not in narrow._decisions["s4.b1.op"].choices
    assert "mbconv-in2x2x32-out2x2x32-k5-e6-s1-res" in narrow.all_latency_keys()


def test_bad_choices_are_user_errors_naming_the_decision(space):
    choices = {d.name: d.choices[0] for d in space.decisions()}
    with pytest.raises(UserError, match=r"'s2\.b3\.op' has no choice 'k7e6'; allowed: k3e3, k3e6, k5e3, k5e6, skip$"):
        space.make_arch({**choices, "s2.b3.op": "k7e6"})
    with pytest.raises(UserError, match=r"'s3\.b1\.op' has no choice 'skip'; allowed: k3e3, k3e6, k5e3, k5e6$"):
        space.make_arch({**choices, "s3.b1.op": SKIP})
    with pytest.raises(UserError, match="space_of"):
        space.latency_keys(space.preset("single_path_tiny"))
    with pytest.raises(UserError, match="not a latency key"):
        space.unit("mbconv-in9x9x9-out9x9x9-k3-e3-s1")


@pytest.mark.parametrize("overrides", [{"resolution": 16}, {"width_mult": 0}, {"dropout": 1.0}, {"depth": 3}])
def test_config_validation(overrides):
    with pytest.raises(UserError):
        load_space("single_path", overrides)


def test_cli_rejects_a_skipped_stage_first_layer(space, tmp_path):
    arch = json.loads(space.sample(np.random.default_rng(3)).to_json())
    arch["choices"]["s5.b1.op"] = SKIP
    (tmp_path / "bad.json").write_text(json.dumps(arch))
    out = _cli("export", "--arch", "bad.json", "--format", "json", "--out", "out", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "'s5.b1.op'" in out.stderr and "allowed: k3e3, k3e6, k5e3, k5e6" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()


# Exhaustive: the CLI's --preset path is every space's (tests/test_export.py runs it by default), and
# test_sampled_arch_exports_and_verifies exports this space in every format in process.
@pytest.mark.exhaustive
def test_cli_exports_tiny_preset_in_every_format(tmp_path):
    out = _cli(
        "export", "--preset", "single_path_tiny", "--format", "json,pt,torchscript,onnx", "--out", "out", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".json", ".onnx", ".pt", ".pt"]


def test_sampled_arch_exports_and_verifies(space, tmp_path):
    arch = space.sample(np.random.default_rng(4))
    results = export(arch, ["json", "pt", "torchscript", "onnx"], tmp_path)
    assert list(results) == ["json", "pt", "torchscript", "onnx"]
    assert all(r.path.exists() and r.max_abs_diff <= 1e-4 for r in results.values())
    assert Arch.from_json(results["json"].path.read_text()) == arch
