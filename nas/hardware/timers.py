"""Timers: measure the latency of one module on one backend, the same way every time.

A `Timer` runs a module in eval mode on a fixed random input of shape (B, C, H, W)
with a fixed number of threads, by the protocol every backend shares
(`nas.hardware.protocol`: blocks, references, calibration). A table stores each
reference's `ms` (and the reference network), so re-validation reuses them.
`std_ms` is the spread of the blocks on the same scale and `count` the number of timed
calls. Backends here: `cpu` (PyTorch eager, inference mode) and `cuda` (CUDA events; fp32, fp16
or bf16); `nas.hardware.onnx_timers` has the ONNX Runtime ones. Torch and onnxruntime are imported lazily, so `import
nas.hardware` stays light.
"""

from __future__ import annotations

import platform
import re
import statistics
import time as _clock
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nas.errors import UserError
from nas.hardware.protocol import (
    REFERENCE_SHAPE,
    Prepared,
    Reference,
    RunCalls,
    Timing,
    calibrate,
    calls_per_block,
    eval_mode,
    gc_paused,
    measure,
    reference_module,
    steady_allocator,
)
from nas.registry import TIMERS

if TYPE_CHECKING:
    import torch
    from torch import nn

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class Timer(ABC):
    """Base class of timers; a subclass names its engine and prepares a module for its backend.

    Args:
        threads: intra-op threads of the backend (`--threads`), fixed while timing.
        batch: batch size of the timed input (`--batch`).
        dtype: number format of weights and input (`--dtype`), one of the class's `dtypes`.
        blocks: number of timed blocks.
        block_ms: target duration of one block.
        warmup_ms: warm-up time before calibration.
        budget_ms: timed calls (with their reference blocks) of a module slower than `block_ms` stop after
            about this long
            (at least `_MIN_BLOCKS` blocks), so whole networks at 224x224 take seconds, not minutes.
        reference: time relative to the reference module (default: the class's `normalizes`).
        reference_ms: latency the reference stands for; calibrated at first use when None.
    """

    name: ClassVar[str]
    engine: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]] = ("fp32",)
    normalizes: ClassVar[bool] = True

    def __init__(
        self,
        threads: int = 1,
        batch: int = 1,
        *,
        dtype: str = "fp32",
        blocks: int = 21,
        block_ms: float = 5.0,
        warmup_ms: float = 20.0,
        budget_ms: float = 300.0,
        reference: bool | None = None,
        reference_ms: float | None = None,
    ) -> None:
        _check_positive("--threads", threads)
        _check_positive("--batch", batch)
        if dtype not in self.dtypes:
            raise UserError(f"--dtype {dtype!r} is not supported by device {self.name!r}; allowed: "
                            f"{', '.join(self.dtypes)}")
        if blocks < 1 or block_ms <= 0 or warmup_ms < 0 or budget_ms <= 0:
            raise UserError(f"timer protocol: blocks >= 1, block_ms > 0, warmup_ms >= 0, budget_ms > 0; got "
                            f"{blocks}, {block_ms}, {warmup_ms}, {budget_ms}")
        self.threads = threads
        self.batch = batch
        self.dtype = dtype
        self.allocator = steady_allocator()
        self.blocks = blocks
        self.block_ms = block_ms
        self.warmup_ms = warmup_ms
        self.budget_ms = budget_ms
        self.reference = self.normalizes if reference is None else reference
        self.unit_reference = Reference("mbconv-16x16x16", reference_module(), REFERENCE_SHAPE, ms=reference_ms)
        self._reference_runs: dict[str, Prepared] = {}
        # One thread: its CPU clock, blind to the time the OS gives other processes; else the wall clock.
        self.clock: Callable[[], float] = _clock.thread_time if threads == 1 else _clock.perf_counter

    @property
    @abstractmethod
    def hardware(self) -> str:
        """The hardware model, e.g. `AMD EPYC` or `NVIDIA H100 80GB HBM3`."""

    @abstractmethod
    def _prepare(self, module: nn.Module, shape: tuple[int, ...], key: str | None = None) -> RunCalls:
        """The runner of `module` (in eval mode) on a random input of `shape` (batch included)."""

    def versions(self) -> dict[str, str]:
        """Library versions that influence the timings."""
        import torch

        return {"python": platform.python_version(), "torch": torch.__version__}

    @property
    def reference_ms(self) -> float | None:
        """Latency the default (unit) reference stands for."""
        return self.unit_reference.ms

    @reference_ms.setter
    def reference_ms(self, ms: float | None) -> None:
        self.unit_reference.ms = ms

    def network_reference(self, module: nn.Module, input_shape: tuple[int, ...], name: str,
                          ms: float | None = None) -> Reference:
        """A whole network as the reference for timing networks of its kind (no refill), calibrated now."""
        reference = Reference(name, module.eval(), tuple(input_shape), refill=False, ms=ms)
        if self.reference:
            with self._pinned():
                self._reference(reference)
        return reference

    @property
    def device_id(self) -> str:
        """Path-safe slug of hardware, engine, threads, dtype and batch: `amd-epyc-torch-t1-fp32-b1`."""
        return _slug(f"{self.hardware} {self.engine} t{self.threads} {self.dtype} b{self.batch}")

    def protocol(self) -> dict[str, Any]:
        """The measurement protocol, stored with every table (calibrates the reference if needed)."""
        protocol: dict[str, Any] = {"blocks": self.blocks, "block_ms": self.block_ms, "warmup_ms": self.warmup_ms,
                                    "budget_ms": self.budget_ms, "reference": self.reference,
                                    "allocator": self.allocator}
        if self.reference:
            with self._pinned():
                self._reference(self.unit_reference)
            protocol["reference_ms"] = self.reference_ms
            protocol["statistic"] = "median of block / adjacent reference blocks, times reference_ms"
        else:
            protocol["statistic"] = "median of per-call block means"
        return protocol

    def time(
        self, module: nn.Module, input_shape: tuple[int, ...], batch: int | None = None, key: str | None = None,
        reference: Reference | None = None,
    ) -> Timing:
        """Latency of one forward pass of `module` on a random input of shape (batch, *input_shape).

        `batch` defaults to the timer's own; the device id describes only that one. `key` names
        the module for backends that convert it (onnxruntime), so timing it again skips the export.
        `reference` defaults to `unit_reference`; unused by a timer that does not normalise.
        """
        batch = self.batch if batch is None else batch
        _check_positive("--batch", batch)
        reference = (reference or self.unit_reference) if self.reference else None
        with self._pinned(), eval_mode(module):
            run = self._prepare(module, (batch, *input_shape), key)
            prepared = self._reference(reference) if reference is not None else None
            values, calls = measure(run, self.warmup_ms / 1e3, self.block_ms / 1e3, self.blocks, prepared,
                                     self.budget_ms / 1e3)
        scale = reference.ms if reference is not None else 1e3
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return Timing(mean_ms=statistics.median(values) * scale, std_ms=std * scale, count=calls * len(values))

    def calibrated_ms(self, module: nn.Module, input_shape: tuple[int, ...], seconds: float = 0.0,
                      key: str | None = None) -> float:
        """Latency (ms) of `module` by the statistic a network reference's `ms` is calibrated with.

        That is its fastest block over a short calibration run (no refill, as for a network
        reference); the median over as many runs as fit in `seconds` (one at least), so a host
        that slows down for a moment moves it less. `nas.hardware.rescale` compares it with the
        `ms` a table stored for its reference network to find the speed of this host.
        """
        with self._pinned(), eval_mode(module):
            run = self._prepare(module, (self.batch, *input_shape), key)
            values, started = [], _clock.perf_counter()
            while not values or _clock.perf_counter() - started < seconds:
                values.append(calibrate(run, self.warmup_ms / 1e3, refill=False))
        return statistics.median(values) * 1e3

    @contextmanager
    def _pinned(self) -> Iterator[None]:
        """Torch's intra-op threads fixed to `threads` (restored after)."""
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _reference(self, reference: Reference) -> Prepared:
        """`reference` prepared and its blocks sized once per name; calibrates its `ms` when unset."""
        prepared = self._reference_runs.get(reference.name)
        if prepared is None:
            run = self._prepare(reference.module, (self.batch, *reference.input_shape), f"reference-{reference.name}")
            with gc_paused():
                calls, per_call = calls_per_block(run, self.warmup_ms / 1e3, self.block_ms / 1e3)
            prepared = Prepared(run, calls, per_call * (calls + reference.refill), reference.refill)
            self._reference_runs[reference.name] = prepared
        if reference.ms is None:
            reference.ms = calibrate(prepared.run, self.warmup_ms / 1e3, reference.refill) * 1e3
        return prepared


def _check_positive(flag: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{flag} must be a positive integer (1, 2, 4, ...); got {value!r}")


def _slug(text: str) -> str:
    """Lower-case words joined by '-', nothing else: safe as a directory name."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


@cache
def _cpu_model() -> str:
    """CPU model from /proc/cpuinfo ('model name'), trimmed of trademarks and clock speed."""
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1]
                break
    name = name or platform.processor() or platform.machine() or "unknown-cpu"
    name = re.sub(r"\((r|tm)\)|@.*$|\b(cpu|processor)\b", " ", name, flags=re.IGNORECASE)
    return " ".join(name.split())


class _TorchTimer(Timer):
    """Shared eager-PyTorch runner on `device`, in inference mode."""

    device: ClassVar[str]

    def _placed(self, module: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
        """`module` and a random input of `shape` (B, C, H, W) on the device, in the timer's dtype."""
        import torch

        dtype = getattr(torch, _TORCH_DTYPES[self.dtype])
        return module.to(self.device, dtype), torch.randn(shape, device=self.device, dtype=dtype)

    def _prepare(self, module: nn.Module, shape: tuple[int, ...], key: str | None = None) -> RunCalls:
        import torch

        module, x = self._placed(module, shape)
        now = self.clock

        def run(n: int) -> float:
            with torch.inference_mode():
                start = now()
                for _ in range(n):
                    module(x)
                return now() - start

        return run


@TIMERS.register("cpu")
class CpuTimer(_TorchTimer):
    """PyTorch eager on the CPU."""

    name = "cpu"
    engine = "torch"
    device = "cpu"

    @property
    def hardware(self) -> str:
        return _cpu_model()


@TIMERS.register("cuda")
class CudaTimer(_TorchTimer):
    """PyTorch eager on the current CUDA GPU, timed with CUDA events; no reference by default."""

    name = "cuda"
    engine = "torch"
    device = "cuda"
    dtypes = ("fp32", "fp16", "bf16")
    normalizes = False

    def __init__(self, threads: int = 1, batch: int = 1, **protocol: Any) -> None:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU on this machine; allowed here: cpu, onnxruntime")
        super().__init__(threads, batch, **protocol)

    @property
    def hardware(self) -> str:
        import torch

        return torch.cuda.get_device_name()

    def versions(self) -> dict[str, str]:
        import torch

        return {**super().versions(), "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version())}

    def _prepare(self, module: nn.Module, shape: tuple[int, ...], key: str | None = None) -> RunCalls:
        import torch

        module, x = self._placed(module, shape)

        def run(n: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.inference_mode():
                start.record()
                for _ in range(n):
                    module(x)
                end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return run


__all__ = ["CpuTimer", "CudaTimer", "Reference", "Timer", "Timing"]
