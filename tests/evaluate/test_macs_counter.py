"""`count_macs` counts torch functions itself and gives exactly `FlopCounterMode`'s MACs: on every unit, preset
and some random archs of every registered space (where it must not need the fallback), and on modules it
cannot count itself (transposed convolutions, einsum), which it hands to the fallback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nas.evaluate.metrics import _count_fast, _count_with_flop_counter, count_macs
from nas.registry import SPACES
from nas.space import load_space, space_of

SLOW_PRESETS = {"nasnet_a_large"}  # 24 GMACs: seconds per forward pass, twice


def _both(module: nn.Module, shape: tuple[int, ...]) -> tuple[int | None, int]:
    return _count_fast(module, shape), _count_with_flop_counter(module, shape)


@pytest.mark.parametrize("name", SPACES.names())
def test_every_unit_of_every_space_counts_as_flop_counter(name):
    space = load_space(name)
    for key in space.all_latency_keys():
        unit = space.unit(key)
        fast, reference = _both(unit.module, unit.input_shape)
        assert fast == reference, (key, fast, reference)


def _presets() -> list[object]:
    cases = []
    for name in SPACES.names():
        for preset in load_space(name).preset_names():
            marks = [pytest.mark.slow] if preset in SLOW_PRESETS else []
            cases.append(pytest.param(name, preset, marks=marks, id=preset))
    return cases


@pytest.mark.parametrize(("name", "preset"), _presets())
def test_every_preset_counts_as_flop_counter(name, preset):
    arch = load_space(name).preset(preset)
    own = space_of(arch)
    r = own.input_resolution(arch)
    fast, reference = _both(own.build(arch), (3, r, r))
    assert fast == reference > 0
    assert own.cost(arch)["macs"] == reference  # the unit sums the searches use, too


@pytest.mark.parametrize("name", SPACES.names())
def test_random_archs_count_as_flop_counter(name):
    space = load_space(name)
    rng = np.random.default_rng(12)
    for _ in range(3):
        arch = space.sample(rng)
        r = space.input_resolution(arch)
        fast, reference = _both(space.build(arch), (3, r, r))
        assert fast == reference > 0, arch.short_hash


class _Attention(nn.Module):
    """Self-attention over the pixels: batched matrix products (`@` on 3-D tensors)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(c, 3 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # (B, C, HW) each
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, HW, HW)
        return (v @ attn.transpose(1, 2)).view(b, c, h, w)


class _Linear3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(2))  # (B, C, HW) -> (B, C, 5)


class _Einsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.w)


@pytest.mark.parametrize(("module", "shape", "macs"), [
    # 3x3 conv, 1x1 qkv conv, then two products of 16 x 8 x 16 multiply-accumulates each
    (nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), _Attention(8)), (4, 6, 6), 16 * 8 * 36 + 16 * 24 * 8 + 2 * 2048),
    (nn.Sequential(nn.Conv2d(3, 4, 1), _Linear3d()), (3, 2, 4), 8 * 4 * 3 + 4 * 8 * 5),  # a token-wise linear
], ids=["attention", "linear_3d"])
def test_matrix_products_on_tokens_count_fast_as_flop_counter(module: nn.Module, shape: tuple[int, ...],
                                                              macs: int) -> None:
    fast, reference = _both(module, shape)
    assert fast == reference == macs


@pytest.mark.parametrize(("module", "shape"), [
    (nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2), nn.BatchNorm2d(4)), (3, 5, 5)),
    (_Einsum(), (4, 3, 3)),
], ids=["conv_transpose", "einsum"])
def test_modules_the_fast_counter_does_not_know_go_to_flop_counter(module, shape):
    fast, reference = _both(module, shape)
    assert fast is None
    assert count_macs(module, shape) == reference > 0


@pytest.mark.parametrize(("module", "shape", "macs"), [
    (nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 9, 9), 8 * 5 * 5 * 3 * 9),
    (nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False), (8, 4, 4), 8 * 16 * 25),
    (nn.Conv1d(2, 4, 3), (2, 10), 4 * 8 * 2 * 3),
    (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10)), (6, 3, 3), 60),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 7, bias=False)), (3, 2, 2), 84),
])
def test_fast_counts_by_hand(module, shape, macs):
    assert _both(module, shape) == (macs, macs)


def test_training_flag_is_restored_and_input_unchanged():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    module.train()
    stats = module[1].running_mean.clone()
    count_macs(module, (3, 5, 5))
    assert module.training and module[1].training
    assert torch.equal(module[1].running_mean, stats)  # eval mode: batch-norm statistics untouched
    module.eval()
    count_macs(module, (3, 5, 5))
    assert not module.training


def test_counting_a_space_needs_no_dispatch_mode():
    """Counting every unit of a space never enters `FlopCounterMode` (whose first use costs seconds)."""
    code = ("import sys, torch\n"
            "from nas.space import load_space\n"
            "s = load_space('proxylessnas')\n"
            "s.cost_of_keys(s.all_latency_keys())\n"
            "print('torch.utils.flop_counter' in sys.modules, 'torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"], done.stderr
