"""The sliced supernets (`single_path`, `ofa_mbv3`): supernet, extract and build agree; slices stay slices.

Small configs (width 0.35, 32 px); BN running stats randomised so eval mode is not near identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.ops.elastic import ElasticConv2d
from nas.ops.elastic_mbconv import ElasticMBConv
from nas.space import load_space
from nas.supernets.ofa_mbv3 import OFAMobileNetV3Supernet
from nas.supernets.single_path import SinglePathSupernet, SuperkernelMBConv

CONFIGS = {
    "single_path": {"width_mult": 0.35, "head_width": 64, "dropout": 0.0},
    "ofa_mbv3": {"width_mult": 0.35, "dropout": 0.0},
}
TOL = 1e-5


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws its weights and inputs from the same seed (torch runs on one thread: conftest)."""
    torch.manual_seed(0)


def _randomise(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            for name, p in m.named_parameters(recurse=False):
                if name.endswith("_matrix"):  # OFA's kernel transform, away from the identity
                    p.add_(0.05 * torch.randn_like(p))
    return net


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=["ofa_mbv3", "ofa_mbv3_transform", "single_path"])
def case(request):
    """(space, supernet with random BN stats); `ofa_mbv3_transform`: with OFA's kernel transform matrices."""
    name = request.param.removesuffix("_transform")
    space = load_space(name, CONFIGS[name])
    torch.manual_seed(0)
    if request.param.endswith("_transform"):
        return space, _randomise(OFAMobileNetV3Supernet(space, kernel_transform=True))
    return space, _randomise(space.supernet())


def test_supernet_extract_and_build_agree_in_eval_mode(case):
    space, supernet = case
    supernet.eval()
    x = torch.randn(2, 3, 32, 32)
    archs = [space.sample(np.random.default_rng(seed)) for seed in range(4)]
    for arch in archs:
        with torch.no_grad():
            a = supernet(x, arch)
            extracted = supernet.extract(arch)
            b = extracted(x)
            built = space.build(arch)
            built.load_state_dict(extracted.state_dict())
            c = built.eval()(x)
        assert a.shape == (2, space.config.num_classes)
        assert _max_diff(a, b) < TOL and _max_diff(a, c) < TOL, arch.short_hash
    assert supernet.active == archs[-1]


def test_train_mode_agrees_and_updates_only_the_active_running_stats(case):
    space, supernet = case
    arch = space.sample(np.random.default_rng(7))
    supernet.train()
    extracted = supernet.extract(arch)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    a = supernet(x, arch)
    assert _max_diff(a, extracted(x)) < TOL
    after = supernet.arch_state_dict(arch)
    for name, tensor in extracted.state_dict().items():  # the same running-stat updates
        assert _max_diff(after[name].float(), tensor.float()) < TOL, name
    changed = [k for k, v in supernet.state_dict().items() if "running" in k and not torch.equal(v, before[k])]
    assert changed  # the active path's statistics moved, and
    for name in changed:  # only within the active widths
        width = _active_width(supernet, name)
        assert torch.equal(supernet.state_dict()[name][width:], before[name][width:]), name
    supernet.eval()


def _active_width(supernet: nn.Module, name: str) -> int:
    """The active channels of the batch norm whose buffer is `name` (all of a fixed one)."""
    bn = supernet.get_submodule(name.rsplit(".", 1)[0])
    return getattr(bn, "active_features", bn.num_features)


def test_extract_copies_and_gradients_reach_only_the_active_arch(case):
    space, supernet = case
    supernet.eval()
    arch = space.sample(np.random.default_rng(3))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    extracted = supernet.extract(arch)
    with torch.no_grad():
        for tensor in extracted.state_dict().values():
            tensor.add_(1)
    assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())
    supernet.zero_grad(set_to_none=True)
    supernet(torch.randn(2, 3, 32, 32), arch).sum().backward()
    active = {p for m in _active_modules(supernet, arch) for p in m.parameters()}
    for name, p in supernet.named_parameters():
        if p not in active:
            assert p.grad is None or p.grad.abs().max() == 0, name
    for m in supernet.modules():  # elastic convs: nothing outside the active slice
        if isinstance(m, ElasticConv2d) and m.weight.grad is not None:
            # a kernel made by OFA's transform depends on the whole largest kernel: check channels only
            big = m.weight.size(-1)
            k = big if m.kernel_transform else m.active_kernel
            k0 = (big - k) // 2
            mask = torch.zeros_like(m.weight, dtype=torch.bool)
            mask[: m.active_out, : 1 if m.depthwise else m.active_in, k0 : k0 + k, k0 : k0 + k] = True
            assert m.weight.grad[~mask].abs().sum() == 0


def _active_modules(supernet: nn.Module, arch) -> list[nn.Module]:
    if isinstance(supernet, SinglePathSupernet):
        names = supernet._active_names()
    else:
        names = [*supernet._front, *supernet._back]
        names += [f"{stage}.{child}" for stage in supernet._stages
                  for child, _ in supernet.get_submodule(stage).active_blocks()]
    return [supernet.get_submodule(n) for n in names]


def test_choice_points_and_refusals(case):
    space, supernet = case
    assert list(supernet.choice_points()) == [d.name for d in space.decisions()]
    fresh = space.supernet()
    with pytest.raises(UserError, match="no arch is active"):
        fresh(torch.zeros(1, 3, 32, 32))
    other = load_space(space.name, {**CONFIGS[space.name], "num_classes": 3})
    with pytest.raises(UserError, match="not this one"):
        fresh.activate(other.sample(np.random.default_rng(0)))


def test_single_path_choices_are_slices_of_one_k5e6_superkernel():
    space = load_space("single_path", CONFIGS["single_path"])
    supernet = space.supernet()
    layer = supernet.choice_points()["s2.b2.op"]
    assert isinstance(layer, SuperkernelMBConv)
    assert layer.depth_conv.conv.weight.shape[-2:] == (5, 5)
    assert layer.mid_channels == 6 * layer.in_channels
    skip_all = {d.name: ("skip" if "skip" in d.choices else "k3e3") for d in space.decisions()}
    arch = space.make_arch({**skip_all, "s2.b2.op": "k3e3"})
    state = supernet.arch_state_dict(arch)
    dw = state["s2_b2.depth_conv.conv.weight"]
    assert torch.equal(dw, layer.depth_conv.conv.weight[: 3 * layer.in_channels, :, 1:4, 1:4])
    assert "s2_b3.depth_conv.conv.weight" not in state  # skipped layers hold nothing


def test_single_path_threshold_formula_pieces():
    space = load_space("single_path", CONFIGS["single_path"])
    supernet = _randomise(space.supernet()).eval()
    layer = supernet.choice_points()["s2.b2.op"]
    inner, ring = layer.kernel_parts()
    w = layer.depth_conv.conv.weight
    assert torch.equal(inner + ring, w)
    assert ring[:, :, 1:4, 1:4].abs().max() == 0 and inner[:, :, 0].abs().max() == 0
    half = 3 * layer.in_channels
    first, second = layer.channel_halves(w)
    assert second[:half].abs().max() == 0 and first[half:].abs().max() == 0
    one, zero = torch.tensor(1.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    assert layer.threshold_kernel(one, one, zero).abs().max() == 0  # skip
    x = torch.randn(2, layer.in_channels, 8, 8)
    for op, (k5, e6) in {"k5e6": (one, one), "k3e6": (zero, one)}.items():
        # At full width the paper's masked kernel is exactly the sliced choice (a zero ring = a 3x3 conv).
        layer.set_op(op)
        sliced = layer(x)
        masked = layer.forward_with_kernel(x, layer.threshold_kernel(k5, e6))
        assert _max_diff(sliced, masked) < TOL, op
    masked.sum().backward()
    assert one.grad is not None and zero.grad is not None  # the indicators are differentiable
    with torch.no_grad():  # e3: the reference's masked channels still pass BN, so it differs from the slice
        layer.set_op("k5e3")
        sliced = layer(x)
        masked = layer.forward_with_kernel(x, layer.threshold_kernel(1.0, 0.0))
    assert _max_diff(sliced, masked) > TOL


def test_ofa_inactive_slots_do_not_run_and_expansion_uses_ofa_rounding():
    space = load_space("ofa_mbv3", CONFIGS["ofa_mbv3"])
    supernet = space.supernet()
    assert isinstance(supernet, OFAMobileNetV3Supernet)
    arch = space.preset("ofa_mbv3_tiny")
    supernet.activate(arch)
    calls: list[str] = []
    for name, module in supernet.named_modules():
        if isinstance(module, ElasticMBConv):
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        supernet.eval()(torch.zeros(1, 3, 32, 32))
    expected = [f"s{s}.s{s}_b{b}" for s in range(1, 6) for b in range(1, arch.choices[f"s{s}.depth"] + 1)]
    assert calls == expected
    block = supernet.choice_points()["s2.b1.expand"]  # in 8 channels at width 0.35, expand 4 -> 32
    assert arch.choices["s2.b1.expand"] == 4 and block.active_mid == 32
    assert block.active_kernel == arch.choices["s2.b1.kernel"]
