"""The mixed-op supernets (ProxylessNAS chain, NAS-Bench-201) in a method's modes: binary gates and DARTS weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.ops.mixed import MixedOp, MixedOpGroup
from nas.space import load_space
from nas.supernets.chain import ChainSupernet
from nas.supernets.nasbench201 import NASBench201Supernet


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Each test starts from the same torch seed (one torch thread: conftest)."""
    torch.manual_seed(0)


def _tiny(name: str):
    return load_space(name, dict(load_space(name).preset(f"{name}_tiny").config))


# The detached path passes no gradient to its input either (as the reference's); in a NAS-Bench-201 cell a node
# whose outgoing edges are `none` plus detached paths then gives its incoming gates none, so no path is detached there.
@pytest.mark.parametrize(("name", "detach"), [("proxylessnas", True), ("nasbench201", False)])
def test_one_hot_gates_give_the_active_arch_and_a_gradient_to_every_gate(name: str, detach: bool) -> None:
    space = _tiny(name)
    net = space.supernet().eval()
    assert isinstance(net, ChainSupernet if name == "proxylessnas" else NASBench201Supernet)
    arch = space.sample(np.random.default_rng(0))
    r = space.config.resolution
    x = torch.randn(2, 3, r, r)
    with torch.no_grad():
        expected = net(x, arch)
    gates = {}
    for decision, point in net.choice_points().items():
        assert isinstance(point, MixedOp | MixedOpGroup)
        chosen = str(arch.choices[decision])
        other = next(c for c in point.choices if c not in (chosen, "none"))  # a path that computes: a live graph
        gates[decision] = torch.tensor([1.0, 0.0], requires_grad=True)  # two-path binary gates
        point.set_sampled([chosen, other], gates[decision], no_grad=[other] if detach else [])
    out = net.run(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.square().sum().backward()
    assert all(g.grad is not None for g in gates.values())


def test_proxylessnas_skip_block_is_identity_and_darts_weights_mix_every_candidate() -> None:
    space = _tiny("proxylessnas")
    net = space.supernet()
    block = net.choice_points()["s1.b2.op"]
    assert block.choices[-1] == "zero" and block.candidate("zero") is None and block.zero == "identity"
    x = torch.randn(2, block.candidate("mb3_k3").point_linear.conv.out_channels, 8, 8)
    block.set_active("zero")
    assert torch.equal(block(x), x)
    weights = torch.softmax(torch.randn(len(block.choices)), 0).requires_grad_()
    block.set_all(weights)
    block(x).sum().backward()
    assert weights.grad is not None
    assert all(p.grad is not None for c in block.choices for p in block.candidate_parameters([c]))


def test_nasbench201_decision_is_shared_by_every_cell() -> None:
    space = _tiny("nasbench201")
    net = space.supernet()
    group = net.choice_points()["edge.1<-0"]
    cells = space.config.cells_per_stage * 3
    assert isinstance(group, MixedOpGroup) and len(group.ops) == cells
    assert group.choices == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    arch = space.sample(np.random.default_rng(1))
    net.activate(arch)
    assert all(op.used == (arch.choices["edge.1<-0"],) for op in group.ops)
