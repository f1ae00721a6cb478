"""The timing protocol every timer shares: blocks, references, calibration, a steady allocator.

Protocol (`measure`): warm-up calls for `warmup_ms`; one calibration call sets the calls
per block so that a block lasts about `block_ms`; then `blocks` timed blocks, with the
garbage collector paused. A shared virtual machine is noisy in two ways, and CPU timers
answer both. Other processes take the core away: a single-threaded timer reads the
thread's CPU clock, which does not run while the thread waits (more threads: the wall
clock). The host slows the whole machine down by tens of per cent for seconds at a time,
and not every kind of work alike: neighbours that share the last-level cache slow a
network that streams its weights from it far more than a small block that lives in L1/L2.
So every block is sandwiched between blocks of a fixed `Reference` module, and the
latency is the median ratio of a block to its two neighbouring reference blocks times the
reference's `ms`, its fastest block over a calibration run at first use (`calibrate`);
latencies thus read as ms at the machine's best observed speed. The default reference is
a small MBConv-like block (`reference_module`), right for single units; whole networks are
better compared with a fixed network of the same space (`Timer.network_reference`, which
`nas.hardware.profile` uses for end-to-end timings, since it follows the drift of a
shared machine far better). Without a reference the
latency is the median per-call block mean. A module slower than a block gets at most
`budget_ms` of timed calls and reference blocks (at least 11 blocks). glibc malloc is set
to keep freed memory (`steady_allocator`), so large feature maps do not page-fault on
every call.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

RunCalls = Callable[[int], float]
"""Runs the module `n` times back to back and returns the elapsed seconds."""

REFERENCE_SHAPE = (16, 16, 16)  # (C, H, W) of the reference module's input
_CALIBRATION_BLOCKS = 100
_CALIBRATION_BLOCK_S = 0.005
_MIN_BLOCKS = 11
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt options


@dataclass
class Reference:
    """A fixed module every timed block is compared with, on the timer's backend.

    Args:
        name: names the module in the table's protocol and in export caches.
        module: the module, in eval mode.
        input_shape: its input shape without the batch.
        refill: run it once untimed before each timed block, so it reads warm whatever ran
            before it (right for a small block after a large module). A network reference after
            a network of the same kind is in the cache state of the network it normalises, so it
            runs without refill, cold like it.
        ms: its latency at the machine's best observed speed; calibrated at first use when None.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    refill: bool = True
    ms: float | None = None


@dataclass(frozen=True)
class Prepared:
    """A reference ready to run: its runner, calls per block and seconds per block (refill included)."""

    run: RunCalls
    calls: int
    block_s: float
    refill: bool


@dataclass(frozen=True)
class Timing:
    """One measurement: robust per-call latency in ms, its spread, and how many calls were timed."""

    mean_ms: float
    std_ms: float
    count: int


@cache
def steady_allocator() -> str:
    """Keep glibc malloc from returning memory to the OS, so every timed call runs fault-free.

    By default, glibc serves blocks above a dynamic threshold (128 KiB at first) with fresh
    `mmap`s and trims the heap on free, so the feature maps of a 224x224 network page-fault
    on every call, and how often depends on the allocation history of the process, so the
    same network re-timed a minute later differs. With large blocks kept on the heap
    (threshold 32 MiB, glibc's maximum, no trimming) repeated timings agree closely, and
    latencies read as the steady state a serving process reaches. Applies to the whole
    process; returns what was set, for the table's protocol.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        settings = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}
        if all(libc.mallopt(option, value) == 1 for option, value in settings.items()):
            return "glibc: mmap_threshold 32 MiB, trim_threshold 1 GiB, top_pad 64 MiB"
    except (OSError, AttributeError):
        pass
    return "default (not glibc)"


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextmanager
def gc_paused() -> Iterator[None]:
    gc.collect(1)  # the young generations only: a full collection can take a quarter of a second
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def calls_per_block(run: RunCalls, warmup_s: float, block_s: float) -> tuple[int, float]:
    """Warm `run` up for `warmup_s` (two calls at least), then size a block to last about `block_s`.

    Returns the calls per block and the seconds of one call.
    """
    spent, calls = 0.0, 0
    while calls < 2 or spent < warmup_s:
        spent += run(1)
        calls += 1
    per_call = max(run(1), 1e-7)
    return max(1, math.ceil(block_s / per_call)), per_call


def measure(
    run: RunCalls, warmup_s: float, block_s: float, blocks: int, reference: Prepared | None, budget_s: float
) -> tuple[list[float], int]:
    """Per-block seconds per call of `run` (or ratios to the adjacent reference blocks) and calls per block.

    A module slower than a block gets one call per block and as many blocks (with their
    reference blocks) as fit in `budget_s`, between `_MIN_BLOCKS` and `blocks`.
    """
    with gc_paused():
        n, per_call = calls_per_block(run, warmup_s, block_s)
        if n == 1:
            cost = per_call + (reference.block_s if reference is not None else 0.0)
            blocks = max(min(blocks, _MIN_BLOCKS), min(blocks, int(budget_s / cost)))
        if reference is None:
            return [run(n) / n for _ in range(blocks)], n
        ref, m, refill = reference.run, reference.calls, reference.refill
        before = reference_block(ref, m, refill)
        ratios = []
        for _ in range(blocks):
            per_call = run(n) / n
            after = reference_block(ref, m, refill)
            ratios.append(2 * per_call / (before + after))
            before = after
        return ratios, n


def reference_block(reference: RunCalls, m: int, refill: bool = True) -> float:
    """Seconds per call of `m` reference calls, after one untimed call when `refill`.

    The untimed call refills the caches the timed module emptied, so a small reference reads
    the same after a large network as after a small unit.
    """
    if refill:
        reference(1)
    return reference(m) / m


def calibrate(reference: RunCalls, warmup_s: float, refill: bool = True) -> float:
    """Fastest per-call block mean (seconds) of the reference over a short calibration run.

    Blocks last `_CALIBRATION_BLOCK_S` (one call at least), as many as fit in
    `_CALIBRATION_BLOCKS` such blocks' time, at least `_MIN_BLOCKS`.
    """
    with gc_paused():
        m, per_call = calls_per_block(reference, warmup_s, _CALIBRATION_BLOCK_S)
        blocks = max(_MIN_BLOCKS, min(_CALIBRATION_BLOCKS, int(_CALIBRATION_BLOCKS * _CALIBRATION_BLOCK_S / per_call)))
        return min(reference_block(reference, m, refill) for _ in range(blocks))


def reference_module() -> nn.Module:
    """A fixed MBConv-like block (1x1 expand x3, depthwise 3x3, 1x1 project) on 16x16x16, eval mode."""
    import torch
    from torch import nn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = nn.Sequential(
            nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16),
        )
    return module.eval()


__all__ = [
    "Prepared",
    "REFERENCE_SHAPE",
    "Reference",
    "RunCalls",
    "Timing",
    "calibrate",
    "calls_per_block",
    "eval_mode",
    "gc_paused",
    "measure",
    "reference_block",
    "reference_module",
    "steady_allocator",
]
