"""Elastic ops: every setting equals the standalone torch module loaded with `active_state_dict()`.

Checked in train and eval mode, with running-statistic updates, gradients that reach only the
active slice, the superkernel's centre-crop rule, OFA's kernel transform, and bad settings.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from nas.ops.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticDepth,
    ElasticLayerNorm,
    ElasticLinear,
    collect_active_state,
)
from nas.ops.elastic_mbconv import ElasticMBConv, ElasticSqueezeExcite
from nas.ops.mbconv import MBConv, SqueezeExcite

TOL = 1e-6


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws its weights and inputs from the same seed (torch runs on one thread: conftest)."""
    torch.manual_seed(0)


def _load(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    module.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    return module


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.2)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("transform", [False, True])
def test_conv_each_setting_equals_nn_conv2d(transform):
    op = ElasticConv2d(6, 10, (3, 5, 7), stride=2, bias=True, kernel_transform=transform)
    for name, p in op.named_parameters():
        if name.endswith("_matrix"):  # away from the identity, so the transform matters
            p.data += 0.1 * torch.randn_like(p)
    for cin, cout, k in itertools.product((2, 6), (1, 7, 10), (3, 5, 7)):
        op.set_active(in_channels=cin, out_channels=cout, kernel_size=k)
        ref = _load(nn.Conv2d(cin, cout, k, 2, k // 2, bias=True), op.active_state_dict())
        x = torch.randn(2, cin, 9, 9)
        assert _max_diff(op(x), ref(x)) < TOL, (cin, cout, k)
        if not transform:  # the superkernel rule: the centre crop of the 7x7, leading channels
            s = (7 - k) // 2
            assert torch.equal(ref.weight, op.weight[:cout, :cin, s : s + k, s : s + k])


def test_kernel_transform_starts_as_the_centre_crop_and_chains_matrices():
    op = ElasticConv2d(4, 4, (3, 5, 7), kernel_transform=True)
    names = {n for n, _ in op.named_parameters()}
    assert names == {"weight", "7to5_matrix", "5to3_matrix"}  # OFA's names
    op.set_active(kernel_size=3)
    assert torch.allclose(op.active_weight(), op.weight[:, :, 2:5, 2:5])  # identity at init
    getattr(op, "5to3_matrix").data.zero_()
    assert op.active_weight().abs().max() == 0  # 3x3 goes through 5to3
    op.set_active(kernel_size=5)
    assert op.active_weight().abs().max() > 0  # 5x5 does not


def test_depthwise_groups_follow_active_channels():
    op = ElasticConv2d(12, 12, (3, 5), stride=1, depthwise=True)
    for c, k in itertools.product((1, 6, 12), (3, 5)):
        op.set_active(in_channels=c, kernel_size=k)
        assert (op.active_in, op.active_out) == (c, c)
        ref = _load(nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False), op.active_state_dict())
        x = torch.randn(3, c, 7, 7)
        assert _max_diff(op(x), ref(x)) < TOL


def test_conv_gradient_reaches_only_the_active_slice():
    op = ElasticConv2d(6, 8, (3, 5), depthwise=False)
    op.set_active(in_channels=4, out_channels=5, kernel_size=3)
    op(torch.randn(2, 4, 6, 6)).square().sum().backward()
    grad = op.weight.grad
    inside = torch.zeros_like(grad, dtype=torch.bool)
    inside[:5, :4, 1:4, 1:4] = True
    assert grad[inside].abs().sum() > 0
    assert grad[~inside].abs().max() == 0


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_train_and_eval_equal_a_standalone_bn(momentum):
    op = ElasticBatchNorm2d(16, eps=1e-3, momentum=momentum)
    _randomise_bn(op)
    for width in (16, 9, 1):
        op.set_active(width)
        ref = _load(nn.BatchNorm2d(width, eps=1e-3, momentum=momentum), op.active_state_dict())
        before = op.running_mean.clone(), op.running_var.clone()
        op.train(), ref.train()
        for _ in range(2):  # two steps: the running stats follow, step by step
            x = torch.randn(4, width, 5, 5) * 3 + 1
            assert _max_diff(op(x), ref(x)) < TOL
        assert _max_diff(op.running_mean[:width], ref.running_mean) < TOL
        assert _max_diff(op.running_var[:width], ref.running_var) < TOL
        assert op.num_batches_tracked == ref.num_batches_tracked
        assert torch.equal(op.running_mean[width:], before[0][width:])  # inactive channels untouched
        assert torch.equal(op.running_var[width:], before[1][width:])
        op.eval(), ref.eval()
        x = torch.randn(4, width, 5, 5)
        assert _max_diff(op(x), ref(x)) < TOL
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in op.active_state_dict().items())


def test_batchnorm_gradient_reaches_only_active_channels():
    op = ElasticBatchNorm2d(8)
    op.set_active(3)
    op(torch.randn(4, 3, 2, 2)).pow(3).sum().backward()
    assert op.weight.grad[:3].abs().sum() > 0 and op.weight.grad[3:].abs().max() == 0
    assert op.bias.grad[3:].abs().max() == 0


def test_linear_slices_in_and_out_features_on_tokens():
    op = ElasticLinear(12, 20)
    for fin, fout in itertools.product((4, 12), (1, 11, 20)):
        op.set_active(in_features=fin, out_features=fout)
        ref = _load(nn.Linear(fin, fout), op.active_state_dict())
        x = torch.randn(2, 5, fin)  # (B, tokens, embedding)
        assert _max_diff(op(x), ref(x)) < TOL
    bare = ElasticLinear(6, 3, bias=False)
    bare.set_active(in_features=2)
    assert set(bare.active_state_dict("fc.")) == {"fc.weight"}


def test_layernorm_slices_the_embedding_width():
    op = ElasticLayerNorm(16, eps=1e-6)
    nn.init.normal_(op.weight), nn.init.normal_(op.bias)
    for width in (16, 8):
        op.set_active(width)
        ref = _load(nn.LayerNorm(width, eps=1e-6), op.active_state_dict())
        x = torch.randn(2, 4, width)
        assert _max_diff(op(x), ref(x)) < TOL


def test_squeeze_excite_slices_reduce_and_expand():
    op = ElasticSqueezeExcite(96)
    for c in (96, 72, 48, 16):
        op.set_active(c)
        ref = _load(SqueezeExcite(c), collect_active_state(op))
        x = torch.randn(2, c, 4, 4)
        assert _max_diff(op(x), ref(x)) < TOL


@pytest.mark.parametrize("has_se", [False, True])
def test_mbconv_each_setting_equals_mbconv_in_train_and_eval(has_se):
    block = ElasticMBConv(8, 8, (3, 5, 7), 48, 1, True, nn.Hardswish, has_se=has_se, bn_eps=1e-5)
    _randomise_bn(block)
    for k, mid in itertools.product((3, 5, 7), (24, 32, 48)):
        block.set_active(k, mid)
        ref = _load(MBConv(8, 8, k, mid / 8, 1, True, nn.Hardswish, mid_channels=mid, has_se=has_se, bn_eps=1e-5),
                    collect_active_state(block))
        x = torch.randn(3, 8, 6, 6)
        block.eval(), ref.eval()
        assert _max_diff(block(x), ref(x)) < TOL, (k, mid)
        block.train(), ref.train()
        assert _max_diff(block(x), ref(x)) < TOL, (k, mid)
        after = collect_active_state(block)
        for name, tensor in ref.state_dict().items():  # running stats updated alike
            assert _max_diff(after[name].float(), tensor.float()) < TOL, name


def test_depth_runs_the_first_blocks_and_names_them_as_the_standalone_chain():
    def make(width: int) -> nn.Module:
        return nn.Sequential(OrderedDict(conv=ElasticConv2d(4, width, (3, 5)), bn=ElasticBatchNorm2d(width)))

    stage = ElasticDepth({"s1_b1": make(4), "s1_b2": make(4), "s1_b3": make(4)})
    stage.set_active(2)
    for _, block in stage.active_blocks():
        block.conv.set_active(kernel_size=3)
    state = stage.active_state_dict()
    assert {k.split(".")[0] for k in state} == {"s1_b1", "s1_b2"}
    ref = nn.Sequential(OrderedDict(
        (name, nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 3, 1, 1, bias=False), bn=nn.BatchNorm2d(4))))
        for name in ("s1_b1", "s1_b2")))
    _load(ref, state)
    stage.eval(), ref.eval()
    x = torch.randn(2, 4, 5, 5)
    out = stage(x)
    assert _max_diff(out, ref(x)) < TOL
    out.sum().backward()
    assert stage["s1_b3"].conv.weight.grad is None  # not run


def test_collect_walks_plain_and_elastic_modules():
    net = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3), body=ElasticConv2d(4, 8, (3, 5)),
                                    head=nn.Sequential(nn.Flatten(), nn.Linear(2, 2))))
    net.body.set_active(out_channels=6, kernel_size=3)
    state = collect_active_state(net, "net.")
    assert set(state) == {"net.stem.weight", "net.stem.bias", "net.body.weight", "net.head.1.weight",
                          "net.head.1.bias"}
    assert state["net.body.weight"].shape == (6, 4, 3, 3)
    assert not any(t.requires_grad for t in state.values())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ElasticConv2d(4, 4, (3, 4)), "odd"),
        (lambda: ElasticConv2d(4, 6, 3, depthwise=True), "depthwise"),
        (lambda: ElasticConv2d(4, 4, (3, 5)).set_active(kernel_size=7), "kernel_size 7 .*allowed: 3, 5"),
        (lambda: ElasticConv2d(4, 4).set_active(out_channels=5), "out_channels 5 .*1..4"),
        (lambda: ElasticConv2d(4, 4).set_active(in_channels=0), "in_channels 0"),
        (lambda: ElasticConv2d(4, 4, depthwise=True).set_active(in_channels=2, out_channels=3), "keeps its width"),
        (lambda: ElasticConv2d(4, 4)(torch.zeros(1, 3, 2, 2)), "3 channels"),
        (lambda: ElasticBatchNorm2d(4).set_active(5), "num_features 5"),
        (lambda: ElasticBatchNorm2d(4)(torch.zeros(2, 3, 2, 2)), r"\(B, 4, H, W\)"),
        (lambda: ElasticLinear(4, 4)(torch.zeros(2, 3)), "3 features"),
        (lambda: ElasticLayerNorm(4).set_active(9), "num_features 9"),
        (lambda: ElasticDepth({"a": nn.Identity()}).set_active(2), "depth 2"),
        (lambda: ElasticDepth({}), "at least one"),
        (lambda: ElasticMBConv(4, 8, (3,), 24, residual=True), "residual"),
    ],
)
def test_bad_settings_name_the_value_and_the_allowed_ones(call, match):
    with pytest.raises(ValueError, match=match):
        call()
