"""Supernets of the cell spaces (NASNet, EEEA): exact agreement with `build` where widths and modules vary.

The registry-wide contract (`tests/contracts/test_supernet_contract.py`) runs each space's tiny
preset config on random archs; these tests aim at what depends on the arch beyond the ops:
configs with projected extra states, the ImageNet stem and slim's skip_reduction_layer_input,
the identity `pre1` of a one-state concat, concat readers at every width, stride variants of a
branch, and the choice points carrying out every decision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nas.arch import Arch
from nas.ops.mixed import MixedOp, MixedOpGroup
from nas.space import SearchSpace, load_space
from nas.supernet import Supernet
from nas.supernets._cells import ConcatConv2d, InputChoice
from nas.supernets.eeea import EEEASupernet
from nas.supernets.nasnet import NASNetSupernet

TOLERANCE = 1e-5
NASNET_SMALL = {"resolution": 16, "num_classes": 5, "num_filters": 4, "cells_per_stack": 1}
# Slim's wiring of NASNet-A Large, states 0 and 1 projected into the reduction cell's output, dropout.
NASNET_SLIM = {"resolution": 19, "num_classes": 3, "stem": "imagenet", "num_filters": 8, "cells_per_stack": 1,
               "stem_multiplier": 1.0, "skip_reduction_layer_input": True, "normal_concat_extra": [1],
               "reduction_concat_extra": [0, 1, 3], "dropout": 0.5}
EEEA_SMALL = {"resolution": 8, "num_classes": 5, "init_channels": 4, "layers": 4, "blocks": 4,
              "ops": ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "inv_res_3x3", "conv_7x1_1x7"]}


def _randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """`net` with random weights and batch-norm statistics, so eval mode is far from an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net


def _input(space: SearchSpace) -> torch.Tensor:
    r = space.config.resolution
    return torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(1))


def _assert_three_way(net: Supernet, space: SearchSpace, arch: Arch, x: torch.Tensor) -> None:
    """supernet(x, arch) == extract(arch)(x) == build(arch) loaded with the extracted weights, in eval mode."""
    with torch.no_grad():
        out = net(x, arch)
        extracted = net.extract(arch)
        built = space.build(arch)
        built.load_state_dict(extracted.state_dict(), strict=True)
        assert (out - extracted(x)).abs().max().item() <= TOLERANCE, arch.short_hash
        assert (out - built.eval()(x)).abs().max().item() <= TOLERANCE, arch.short_hash


@pytest.fixture(scope="module")
def nasnet() -> tuple[SearchSpace, Supernet]:
    space = load_space("nasnet", NASNET_SMALL)
    torch.manual_seed(0)
    return space, _randomised(space.supernet()).eval()


@pytest.fixture(scope="module")
def eeea() -> tuple[SearchSpace, Supernet]:
    space = load_space("eeea", EEEA_SMALL)
    torch.manual_seed(0)
    return space, _randomised(space.supernet()).eval()


def _chain_arch(space: SearchSpace) -> Arch:
    """A NASNet arch whose normal cell reads every block output (concat = the last block only, F wide)."""
    choices = dict(space.sample(np.random.default_rng(0)).choices)
    for b, pair in enumerate(("0+1", "1+2", "0+3", "1+4", "0+5")):
        choices[f"normal.b{b}.inputs"] = pair
    return space.make_arch(choices)


def test_space_supernet_methods_return_the_cell_supernets(nasnet, eeea) -> None:
    assert isinstance(nasnet[1], NASNetSupernet) and isinstance(eeea[1], EEEASupernet)


@pytest.mark.parametrize("overrides", [NASNET_SLIM, {**NASNET_SMALL, "normal_concat_extra": [0, 1]}],
                         ids=["imagenet_slim", "cifar_extra_inputs"])
def test_nasnet_agrees_with_build_at_projected_and_imagenet_configs(overrides) -> None:
    space = load_space("nasnet", overrides)
    torch.manual_seed(0)
    net = _randomised(space.supernet()).eval()
    x = _input(space)
    for seed in range(2):
        _assert_three_way(net, space, space.sample(np.random.default_rng(seed)), x)
    _assert_gradients_only_on(net.train(), space.sample(np.random.default_rng(2)), x)


def _assert_gradients_only_on(net: Supernet, arch: Arch, x: torch.Tensor) -> None:
    """A loss on the supernet's output gives gradients exactly on the elements `arch_state_dict` views."""
    params = dict(net.named_parameters())
    saved = {k: v.clone() for k, v in params.items()}
    with torch.no_grad():
        for p in params.values():
            p.zero_()
        for tensor in net.arch_state_dict(arch).values():
            tensor.fill_(1)  # a view: marks the supernet's elements
        masks = {k: p != 0 for k, p in params.items()}
        for k, p in params.items():
            p.copy_(saved[k])
    net.zero_grad(set_to_none=True)
    net(x, arch).square().sum().backward()
    for name, p in params.items():
        assert (p.grad is not None) == bool(masks[name].any()), name
        if p.grad is not None:
            assert not p.grad[~masks[name]].any(), name


def test_nasnet_identity_pre1_of_a_one_state_concat(nasnet) -> None:
    """A normal cell that concats one state is F wide, so the next normal cell's equal-size pre1 is no module."""
    space = load_space("nasnet", {**NASNET_SMALL, "cells_per_stack": 3})
    torch.manual_seed(0)
    net = _randomised(space.supernet()).eval()
    arch = _chain_arch(space)
    built_names = set(space.build(arch).state_dict())
    assert net.cells[2].pre1.conv.weight.shape[1] == 5 * 4  # up to 5 states of F = 4 ...
    assert not any(n.startswith("cells.2.pre1.") for n in built_names)  # ... here 1: cell 2 reads cell 0 as is
    assert set(net.arch_state_dict(arch)) == built_names
    _assert_three_way(net, space, arch, _input(space))


def test_nasnet_preset_cells_agree_at_a_small_width() -> None:
    """NASNet-A's cells (slim's extra concat states) in a narrow network."""
    preset = load_space("nasnet").preset("nasnet_a_cifar")
    space = load_space("nasnet", {**dict(preset.config), **NASNET_SMALL})
    torch.manual_seed(0)
    net = _randomised(space.supernet()).eval()
    _assert_three_way(net, space, space.make_arch(preset.choices), _input(space))


def test_eeea_agrees_with_build_on_presets_and_random_archs(eeea) -> None:
    space, net = eeea
    x = _input(space)
    archs = [space.sample(np.random.default_rng(seed)) for seed in range(4)]
    preset = load_space("eeea").preset("eeea_net_c")
    full_space = load_space("eeea", {**EEEA_SMALL, "blocks": 5, "ops": load_space("eeea").config.ops})
    torch.manual_seed(0)
    full = _randomised(full_space.supernet()).eval()
    _assert_three_way(full, full_space, full_space.make_arch(preset.choices), _input(full_space))
    for arch in archs:
        _assert_three_way(net, space, arch, x)


def test_eeea_two_blocks_always_concat_both(eeea) -> None:
    space = load_space("eeea", {**EEEA_SMALL, "blocks": 2})
    torch.manual_seed(0)
    net = _randomised(space.supernet()).eval()
    for seed in range(2):
        _assert_three_way(net, space, space.sample(np.random.default_rng(seed)), _input(space))


@pytest.mark.parametrize("which", ["nasnet", "eeea"])
def test_choice_points_carry_out_every_decision(which, request) -> None:
    """Setting each choice point by hand runs the same network as activate(arch); every mixed op is in one group."""
    space, net = request.getfixturevalue(which)
    x = _input(space)
    arch = space.sample(np.random.default_rng(5))
    points = net.choice_points()
    with torch.no_grad():
        expected = net(x, arch)
        net.activate(space.sample(np.random.default_rng(6)))
        for decision, point in points.items():
            point.set_active(arch.choices[decision])
        assert torch.equal(net.run(x), expected)
    grouped = [id(op) for p in points.values() if isinstance(p, MixedOpGroup) for op in p.ops]
    assert sorted(grouped) == sorted(id(m) for m in net.modules() if isinstance(m, MixedOp))
    inputs = [p for p in points.values() if isinstance(p, InputChoice)]
    assert inputs and all(not list(p.parameters()) for p in inputs)


@pytest.mark.parametrize("which", ["nasnet", "eeea"])
def test_reduction_branches_hold_a_variant_per_stride(which, request) -> None:
    """A reduction cell's branch that can read a cell input or a block output has both strides' ops."""
    space, net = request.getfixturevalue(which)
    kind = "reduction" if which == "nasnet" else "reduce"
    group = net.choice_points()[f"{kind}.b3.op1"]
    cells = sum(1 for cell in net.cells if any(m in list(cell.modules()) for m in group.ops))
    assert cells >= 1 and len(group.ops) == 2 * cells
    first = net.choice_points()[f"{kind}.b0.op1"]  # reads only cell inputs: stride 2 only
    assert len(first.ops) == cells


def test_concat_readers_share_the_trailing_columns(eeea) -> None:
    """Two archs whose normal cells concat 2 and 4 states: the narrower reader is the wider one's trailing slice,
    a view of the supernet's weight."""
    space, net = eeea
    base = dict(space.sample(np.random.default_rng(0)).choices)
    wide = {**base, "normal.b1.in1": 1, "normal.b1.in2": 1, "normal.b2.in1": 1, "normal.b2.in2": 1,
            "normal.b3.in1": 1, "normal.b3.in2": 0}  # nothing reads a block output: 4 loose ends
    narrow = {**wide, "normal.b2.in1": 2, "normal.b3.in1": 3}  # blocks 0 and 1 read: 2 loose ends
    name = "cells.1.preprocess1.conv.weight"  # cell 1 (normal) reads normal cell 0
    w_wide = net.arch_state_dict(space.make_arch(wide))[name]
    w_narrow = net.arch_state_dict(space.make_arch(narrow))[name]
    c = space.config.init_channels
    assert w_wide.shape[1] == 4 * c and w_narrow.shape[1] == 2 * c
    assert torch.equal(w_narrow, w_wide[:, 2 * c:])
    param = net.cells[1].preprocess1.conv.weight
    assert w_narrow.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()


def test_sgd_step_on_one_arch_leaves_another_arch_disjoint_part_unchanged(eeea) -> None:
    """Weight sharing: a training step on arch a changes a's extracted net and not the ops only b uses."""
    space, _ = eeea
    torch.manual_seed(0)
    net = space.supernet().train()
    a, b = (space.sample(np.random.default_rng(s)) for s in (10, 11))
    only_b = {k for k in net.arch_state_dict(b) if ".ops." in k} - set(net.arch_state_dict(a))
    before_b = {k: v.clone() for k, v in net.arch_state_dict(b).items()}
    before_a = {k: v.clone() for k, v in net.arch_state_dict(a).items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(_input(space), a).square().mean().backward()
    opt.step()
    after_a, after_b = net.arch_state_dict(a), net.arch_state_dict(b)
    assert any(not torch.equal(before_a[k], after_a[k]) for k in before_a)
    assert only_b and all(torch.equal(before_b[k], after_b[k]) for k in only_b)


def test_bad_uses_of_the_shared_pieces_raise() -> None:
    choice = InputChoice({"0+1": (0, 1)})
    with pytest.raises(RuntimeError, match="no choice is set"):
        choice.states()
    with pytest.raises(ValueError, match="no choice '0\\+2'"):
        choice.set_active("0+2")
    conv = ConcatConv2d(3, 2, 4)
    with pytest.raises(ValueError, match="a concat of 4 states; this layer reads 1 .. 3"):
        conv(torch.zeros(1, 8, 2, 2), (2, 3, 4, 5))
