"""Timers: measure the latency of one module on one backend, the same way every time.

A `Timer` runs a module on a fixed input of shape (B, C, H, W) with a fixed number
of threads. The protocol, shared by every backend (`_measure`): warm-up calls for
`warmup_ms`; one calibration call sets the calls per block so that a block lasts
about `block_ms`; then `blocks` timed blocks. The reported `mean_ms` is the median
over blocks of the per-call block mean (robust to the stray interruptions of a
shared machine), `std_ms` the standard deviation of the block means and `count`
the number of timed calls. The garbage collector is paused while timing. Backends:
`cpu` (PyTorch eager, eval mode, inference mode), `onnxruntime` (the module exported
with the TorchScript exporter, CPU execution provider) and `cuda` (CUDA events).
Torch and onnxruntime are imported lazily, so `import nas.hardware` stays light.
"""

from __future__ import annotations

import gc
import math
import platform
import re
import statistics
import tempfile
import time as _clock
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from nas.errors import UserError
from nas.registry import TIMERS

if TYPE_CHECKING:
    from torch import nn

RunCalls = Callable[[int], float]
"""Runs the module `n` times back to back and returns the elapsed seconds."""


@dataclass(frozen=True)
class Timing:
    """One measurement: robust per-call latency in ms, its spread, and how many calls were timed."""

    mean_ms: float
    std_ms: float
    count: int


class Timer(ABC):
    """Base class of timers; a subclass names its engine and runs a module on its backend.

    Args:
        threads: intra-op threads of the backend (`--threads`), fixed while timing.
        batch: batch size of the timed input (`--batch`).
        blocks: number of timed blocks.
        block_ms: target duration of one block.
        warmup_ms: warm-up time before calibration.
    """

    name: ClassVar[str]
    engine: ClassVar[str]
    dtype: ClassVar[str] = "fp32"

    def __init__(
        self,
        threads: int = 1,
        batch: int = 1,
        *,
        blocks: int = 9,
        block_ms: float = 10.0,
        warmup_ms: float = 20.0,
    ) -> None:
        _check_positive("--threads", threads)
        _check_positive("--batch", batch)
        if blocks < 1 or block_ms <= 0 or warmup_ms < 0:
            raise UserError(f"timer protocol: blocks >= 1, block_ms > 0, warmup_ms >= 0; got "
                            f"{blocks}, {block_ms}, {warmup_ms}")
        self.threads = threads
        self.batch = batch
        self.blocks = blocks
        self.block_ms = block_ms
        self.warmup_ms = warmup_ms

    @property
    @abstractmethod
    def hardware(self) -> str:
        """The hardware model, e.g. `AMD EPYC` or `NVIDIA H100 80GB HBM3`."""

    @abstractmethod
    def _session(self, module: nn.Module, shape: tuple[int, ...]) -> AbstractContextManager[RunCalls]:
        """Context manager: prepare `module` for input `shape` (batch included), yield its runner."""

    def versions(self) -> dict[str, str]:
        """Library versions that influence the timings."""
        import torch

        return {"python": platform.python_version(), "torch": torch.__version__}

    @property
    def device_id(self) -> str:
        """Path-safe slug of hardware, engine, threads, dtype and batch: `amd-epyc-torch-t1-fp32-b1`."""
        return _slug(f"{self.hardware} {self.engine} t{self.threads} {self.dtype} b{self.batch}")

    def protocol(self) -> dict[str, float | int | str]:
        """The measurement protocol, stored with every table."""
        return {"blocks": self.blocks, "block_ms": self.block_ms, "warmup_ms": self.warmup_ms,
                "statistic": "median of per-call block means"}

    def time(self, module: nn.Module, input_shape: tuple[int, ...], batch: int | None = None) -> Timing:
        """Latency of one forward pass of `module` on a random input of shape (batch, *input_shape).

        `batch` defaults to the timer's own; the device id describes only that one.
        """
        batch = self.batch if batch is None else batch
        _check_positive("--batch", batch)
        with self._session(module, (batch, *input_shape)) as run:
            return _measure(run, self.warmup_ms / 1e3, self.block_ms / 1e3, self.blocks)


def _check_positive(flag: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{flag} must be a positive integer (1, 2, 4, ...); got {value!r}")


def _measure(run: RunCalls, warmup_s: float, block_s: float, blocks: int) -> Timing:
    """Warm up, calibrate calls per block, time `blocks` blocks (see the module docstring)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        spent, calls = 0.0, 0
        while calls < 2 or spent < warmup_s:
            spent += run(1)
            calls += 1
        per_call = run(1)
        n = max(1, math.ceil(block_s / max(per_call, 1e-7)))
        means = [run(n) / n for _ in range(blocks)]
    finally:
        if was_enabled:
            gc.enable()
    std = statistics.stdev(means) if len(means) > 1 else 0.0
    return Timing(mean_ms=statistics.median(means) * 1e3, std_ms=std * 1e3, count=n * blocks)


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
    """Shared eager-PyTorch session: eval mode, inference mode, fixed thread count (restored after)."""

    device: ClassVar[str]

    @contextmanager
    def _session(self, module: nn.Module, shape: tuple[int, ...]) -> Iterator[RunCalls]:
        import torch

        previous_threads, was_training = torch.get_num_threads(), module.training
        torch.set_num_threads(self.threads)
        module.eval()
        try:
            module = module.to(self.device)
            x = torch.randn(shape, device=self.device)  # (B, C, H, W)
            yield self._runner(module, x)
        finally:
            module.train(was_training)
            torch.set_num_threads(previous_threads)

    def _runner(self, module: nn.Module, x) -> RunCalls:
        import torch

        def run(n: int) -> float:
            with torch.inference_mode():
                start = _clock.perf_counter()
                for _ in range(n):
                    module(x)
                return _clock.perf_counter() - start

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
    """PyTorch eager on the current CUDA GPU, timed with CUDA events (threads set the CPU side)."""

    name = "cuda"
    engine = "torch"
    device = "cuda"

    def __init__(self, threads: int = 1, batch: int = 1, **protocol: float | int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise UserError("device 'cuda': no CUDA GPU on this machine; allowed here: cpu, onnxruntime")
        super().__init__(threads, batch, **protocol)

    @property
    def hardware(self) -> str:
        import torch

        return torch.cuda.get_device_name()

    def versions(self) -> dict[str, str]:
        import torch

        return {**super().versions(), "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version())}

    def _runner(self, module: nn.Module, x) -> RunCalls:
        import torch

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


@TIMERS.register("onnxruntime")
class OnnxRuntimeTimer(Timer):
    """ONNX Runtime, CPU execution provider, `intra_op_num_threads = threads`, all graph optimisations."""

    name = "onnxruntime"
    engine = "onnxruntime"

    @property
    def hardware(self) -> str:
        return _cpu_model()

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {**super().versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    @contextmanager
    def _session(self, module: nn.Module, shape: tuple[int, ...]) -> Iterator[RunCalls]:
        import numpy as np
        import onnxruntime as ort
        import torch

        was_training = module.training
        module.eval()
        try:
            with tempfile.TemporaryDirectory(prefix="nas-onnx-") as tmp:
                path = str(Path(tmp) / "unit.onnx")
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.onnx.export(module, (torch.zeros(shape),), path, dynamo=False,
                                      input_names=["x"], output_names=["y"])
                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        finally:
            module.train(was_training)
        feed = {"x": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}

        def run(n: int) -> float:
            start = _clock.perf_counter()
            for _ in range(n):
                session.run(None, feed)
            return _clock.perf_counter() - start

        yield run


__all__ = ["CpuTimer", "CudaTimer", "OnnxRuntimeTimer", "Timer", "Timing"]
