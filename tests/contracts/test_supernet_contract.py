"""Every registered space's supernet: the supernet, its extracted net and a loaded `build` agree; weights are shared.

Each space runs at its `<space>_tiny` preset's config (CI size), with random weights and
random batch-norm scale, shift and running statistics, so eval mode is not close to an identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.registry import SPACES
from nas.space import SearchSpace, load_space
from nas.supernet import Supernet

SEEDS = (0, 1, 2)
TOLERANCE = 1e-5
BATCH = 3  # > 1 so that train-mode batch norm has statistics at a 1x1 feature map


def _space(space_name: str) -> SearchSpace:
    tiny = load_space(space_name).preset(f"{space_name}_tiny")
    return load_space(space_name, dict(tiny.config))


def _randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """`net` with random batch-norm affine parameters and running statistics (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            n = module.num_features
            if module.affine:
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            if module.track_running_stats:
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return net


def _supernet(space: SearchSpace) -> Supernet:
    torch.manual_seed(0)
    net = space.supernet()
    assert isinstance(net, Supernet)
    return _randomised(net)


def _input(space: SearchSpace, seed: int = 0, arch: Arch | None = None) -> torch.Tensor:
    """A random batch at `arch`'s input resolution (the config's without an arch)."""
    r = space.config.resolution if arch is None else space.input_resolution(arch)
    return torch.randn(BATCH, 3, r, r, generator=torch.Generator().manual_seed(seed))


def _archs(space: SearchSpace) -> list[Arch]:
    return [space.sample(np.random.default_rng(seed)) for seed in SEEDS]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_supernet_extract_and_build_agree_in_eval_mode(space_name: str) -> None:
    space = _space(space_name)
    net = _supernet(space).eval()
    with torch.no_grad():
        for arch in _archs(space):
            x = _input(space, arch=arch)
            out = net(x, arch)
            extracted = net.extract(arch)
            assert not extracted.training
            built = space.build(arch)
            built.load_state_dict(extracted.state_dict(), strict=True)
            assert out.shape == (BATCH, space.config.num_classes)
            assert _max_diff(out, extracted(x)) <= TOLERANCE, arch.short_hash
            assert _max_diff(out, built.eval()(x)) <= TOLERANCE, arch.short_hash
            net.activate(arch)
            assert net.active == arch and _max_diff(net(x), out) == 0


def test_supernet_and_extract_agree_in_train_mode(space_name: str) -> None:
    space = _space(space_name)
    net = _supernet(space).train()
    for arch in _archs(space)[:2]:
        x = _input(space, seed=1, arch=arch)
        torch.manual_seed(7)  # the same dropout masks, if any
        out = net(x, arch)
        extracted = net.extract(arch)
        assert extracted.training
        torch.manual_seed(7)
        assert _max_diff(out, extracted(x)) <= TOLERANCE, arch.short_hash


def test_extract_copies_the_weights(space_name: str) -> None:
    space = _space(space_name)
    net = _supernet(space).eval()
    arch = _archs(space)[0]
    x = _input(space, arch=arch)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        out = net(x, arch)
        extracted = net.extract(arch)
        for tensor in extracted.state_dict().values():
            tensor.add_(1)
        assert _max_diff(net(x, arch), out) == 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_choice_points_name_every_decision(space_name: str) -> None:
    space = _space(space_name)
    points = _supernet(space).choice_points()
    assert set(points) == {d.name for d in space.decisions()}
    assert all(isinstance(module, nn.Module) for module in points.values())


def _active_masks(net: Supernet, arch: Arch) -> dict[str, torch.Tensor]:
    """Per parameter, the elements `arch_state_dict(arch)` covers (its tensors are views of the supernet's)."""
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.zero_()
        for tensor in net.arch_state_dict(arch).values():
            tensor.fill_(1)  # writes through the view into the supernet's storage
        masks = {name: p != 0 for name, p in params.items()}
    net.load_state_dict(saved)
    return masks


def test_gradients_reach_only_the_active_arch(space_name: str) -> None:
    space = _space(space_name)
    net = _supernet(space).train()
    arch = _archs(space)[1]
    masks = _active_masks(net, arch)
    assert any(m.any() for m in masks.values())
    net.zero_grad(set_to_none=True)
    net(_input(space, arch=arch), arch).square().sum().backward()
    # An active weight may get no gradient: a NAS-Bench-201 node that no later edge reads is computed, unused.
    assert any(p.grad is not None and p.grad.any() for p in net.parameters())
    for name, p in net.named_parameters():
        if p.grad is not None:
            assert not p.grad[~masks[name]].any(), (
                f"{name}: an inactive weight got a gradient (or arch_state_dict copied it instead of a view)"
            )


def test_forward_without_an_active_arch_is_a_one_line_error(space_name: str) -> None:
    space = _space(space_name)
    net = _supernet(space)
    with pytest.raises(UserError, match="no arch is active") as info:
        net(_input(space))
    assert "\n" not in str(info.value)


def test_an_arch_of_another_space_or_config_is_refused(space_name: str) -> None:
    space = _space(space_name)
    net = _supernet(space).eval()
    other_config = load_space(space_name, {**space.config.model_dump(), "num_classes": space.config.num_classes + 1})
    other_name = next(n for n in SPACES.names() if n != space_name)
    strangers = [other_config.sample(np.random.default_rng(0)), load_space(other_name).sample(np.random.default_rng(0))]
    x = _input(space)
    for arch in strangers:
        for call in (lambda a: net(x, a), net.activate, net.extract, net.arch_state_dict):
            with pytest.raises(UserError, match="belongs to space"):
                call(arch)
    assert net.active is None

