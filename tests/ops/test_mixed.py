"""`MixedOp` and `MixedOpGroup`: the active choice, weighted sums over some or all choices, zero ops, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.ops.mixed import MixedOp, MixedOpGroup


def _op(zero: str = "identity") -> MixedOp:
    torch.manual_seed(0)
    return MixedOp({"conv3": nn.Conv2d(4, 4, 3, padding=1), "conv1": nn.Conv2d(4, 4, 1), "zero": None}, zero=zero)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))


def _grads(module: nn.Module | None) -> list[torch.Tensor | None]:
    return [] if module is None else [p.grad for p in module.parameters()]


@pytest.mark.parametrize("zero", ["identity", "zeros"])
def test_active_choice_is_its_module_alone(zero: str) -> None:
    op, x = _op(zero), _x()
    op.set_active("conv1")
    assert torch.equal(op(x), op.candidate("conv1")(x))
    op.set_active("zero")
    assert torch.equal(op(x), x if zero == "identity" else torch.zeros_like(x))
    assert op.is_zero == (zero == "zeros")
    assert op.mode == "active" and op.used == ("zero",)


def test_active_mode_runs_and_trains_the_active_choice_only() -> None:
    op = _op()
    op.set_active("conv3")
    op(_x()).sum().backward()
    assert all(g is not None and g.any() for g in _grads(op.candidate("conv3")))
    assert all(g is None for g in _grads(op.candidate("conv1")))


@pytest.mark.parametrize("zero", ["identity", "zeros"])
def test_all_is_the_explicit_weighted_sum_and_trains_every_choice(zero: str) -> None:
    op, x = _op(zero), _x()
    weights = torch.tensor([0.5, 0.3, 0.2], requires_grad=True)
    op.set_all(weights)
    out = op(x)
    paths = [op.candidate("conv3")(x), op.candidate("conv1")(x), x if zero == "identity" else torch.zeros_like(x)]
    expected = sum(w * path for w, path in zip(weights, paths, strict=True))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    # d out / d w_i = path_i: the gate gradient of each choice is <dL/dout, path_i>.
    torch.testing.assert_close(weights.grad, torch.stack([(grad_out * p.detach()).sum() for p in paths]))
    assert all(g is not None and g.any() for name in ("conv3", "conv1") for g in _grads(op.candidate(name)))
    assert op.mode == "all" and op.used == op.choices


def test_sampled_two_paths_train_only_those_and_the_detached_one_only_through_its_gate() -> None:
    op, x = _op(), _x()
    gates = torch.tensor([1.0, 0.0], requires_grad=True)  # binary gates, one-hot in value
    op.set_sampled(["conv1", "zero"], gates)
    out = op(x)
    assert torch.equal(out, op.candidate("conv1")(x))  # one-hot gates: the active path's value exactly
    out.sum().backward()
    torch.testing.assert_close(gates.grad[1], x.sum())  # the zero (identity) path's gate
    assert all(g is not None for g in _grads(op.candidate("conv1")))
    assert all(g is None for g in _grads(op.candidate("conv3")))

    op.zero_grad(set_to_none=True)
    gates = torch.tensor([1.0, 0.0], requires_grad=True)
    op.set_sampled(["conv3", "conv1"], gates, no_grad=["conv1"])
    out = op(x)
    out.sum().backward()
    assert all(g is not None for g in _grads(op.candidate("conv3")))
    assert all(g is None for g in _grads(op.candidate("conv1")))  # ran without autograd
    torch.testing.assert_close(gates.grad[1], op.candidate("conv1")(x).sum())  # its gate still learns


def test_zeros_only_gives_zeros() -> None:
    op, x = _op("zeros"), _x()
    op.set_sampled(["zero"], torch.ones(1))
    assert op.is_zero and torch.equal(op(x), torch.zeros_like(x))


def test_choice_state_dict_is_the_standalone_modules_under_a_prefix() -> None:
    op = _op()
    state = op.choice_state_dict("conv1", prefix="block.")
    assert set(state) == {"block.weight", "block.bias"}
    standalone = nn.Conv2d(4, 4, 1)
    standalone.load_state_dict({k.removeprefix("block."): v for k, v in state.items()})
    assert torch.equal(standalone.weight, op.candidate("conv1").weight)
    assert state["block.weight"].data_ptr() == op.candidate("conv1").weight.data_ptr()  # a view, not a copy
    assert op.choice_state_dict("zero", prefix="block.") == {}
    assert list(op.candidate_parameters(["conv1", "zero"])) == list(op.candidate("conv1").parameters())


def test_choice_tokens_with_dots_and_ints_are_module_names() -> None:
    op = MixedOp({"a.b": nn.Identity(), 3: nn.ReLU()})
    assert op.choices == ("a.b", "3") and set(op.candidates) == {"a__b", "3"}
    op.set_active(3)
    assert isinstance(op.candidate("3"), nn.ReLU)


def test_bad_use_is_an_error_naming_the_problem() -> None:
    op, x = _op(), _x()
    with pytest.raises(RuntimeError, match="no choice is set"):
        op(x)
    op.set_active("conv1")
    with pytest.raises(ValueError, match="no choice 'conv5'"):
        op.set_active("conv5")
    with pytest.raises(ValueError, match=r"weights need shape \(2,\)"):
        op.set_sampled(["conv1", "conv3"], torch.ones(3))
    with pytest.raises(ValueError, match="distinct"):
        op.set_sampled(["conv1", "conv1"], torch.ones(2))
    with pytest.raises(ValueError, match="not sampled"):
        op.set_sampled(["conv1"], torch.ones(1), no_grad=["conv3"])
    with pytest.raises(ValueError, match="distinct"):
        MixedOp({1: nn.Identity(), "1": None})
    with pytest.raises(ValueError, match="zero must be"):
        MixedOp({"a": nn.Identity()}, zero="nothing")
    assert op.mode == "active" and op.used == ("conv1",)  # failed setters left the op as it was


def test_group_sets_every_member_and_one_weights_tensor_collects_all_gradients() -> None:
    a, b, x = _op(), _op(), _x()
    group = MixedOpGroup([a, b])
    group.set_active("conv3")
    assert a.used == b.used == ("conv3",) and group.mode == "active"
    weights = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    group.set_all(weights)
    (a(x) + b(x)).sum().backward()
    alone = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    a.set_all(alone)
    a(x).sum().backward()
    torch.testing.assert_close(weights.grad, 2 * alone.grad)  # the members are equal copies
    assert len(list(group.candidate_parameters(["conv1"]))) == 4
    with pytest.raises(ValueError, match="same choices"):
        MixedOpGroup([a, MixedOp({"x": nn.Identity()})])
