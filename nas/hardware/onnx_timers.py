"""ONNX Runtime timers: `onnxruntime` (TorchScript ONNX export, CPU execution provider) and
`onnxruntime_cuda` (CUDA execution provider), on the protocol every timer shares (`nas.hardware.timers`).
onnx and onnxruntime are imported lazily, so `import nas.hardware` stays light.
"""

from __future__ import annotations

import tempfile
import time as _clock
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nas.errors import UserError
from nas.hardware.protocol import RunCalls
from nas.hardware.timers import Timer, _cpu_model, _slug
from nas.registry import TIMERS

if TYPE_CHECKING:
    from torch import nn


@TIMERS.register("onnxruntime")
class OnnxRuntimeTimer(Timer):
    """ONNX Runtime, CPU execution provider, `intra_op_num_threads = threads`, all graph optimisations."""

    name = "onnxruntime"
    engine = "onnxruntime"
    provider: ClassVar[str] = "CPUExecutionProvider"

    def __init__(self, threads: int = 1, batch: int = 1, **protocol: Any) -> None:
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            raise UserError(f"--device {self.name}: onnxruntime here lacks {self.provider} (it has "
                            f"{', '.join(ort.get_available_providers())}); allowed here: cpu, onnxruntime")
        super().__init__(threads, batch, **protocol)
        self._exports: tempfile.TemporaryDirectory | None = None  # ONNX files by module key, removed with the timer

    @property
    def hardware(self) -> str:
        return _cpu_model()

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {**super().versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def _prepare(self, module: nn.Module, shape: tuple[int, ...], key: str | None = None) -> RunCalls:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(self._exported(module, shape, key), options, providers=[self.provider])
        feed = {"x": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}

        now = self.clock

        def run(n: int) -> float:
            start = now()
            for _ in range(n):
                session.run(None, feed)
            return now() - start

        return run

    def _exported(self, module: nn.Module, shape: tuple[int, ...], key: str | None) -> str:
        """Path of the ONNX export of `module` for input `shape`, exported once per `key` (none: every time)."""
        import torch

        if self._exports is None:
            self._exports = tempfile.TemporaryDirectory(prefix="nas-onnx-")
        name = f"{key}-{'x'.join(map(str, shape))}" if key else "module"
        path = Path(self._exports.name) / f"{_slug(name)}.onnx"
        if key is None or not path.exists():
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", DeprecationWarning)
                # No constant folding: ONNX Runtime folds and fuses the same graph itself (identical optimised
                # graphs, checked for ProxylessNAS), and the export takes half the time.
                torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, do_constant_folding=False,
                                  input_names=["x"], output_names=["y"])
        return str(path)


@TIMERS.register("onnxruntime_cuda")
class OnnxRuntimeCudaTimer(OnnxRuntimeTimer):
    """ONNX Runtime with the CUDA execution provider (needs onnxruntime-gpu); wall clock, no reference."""

    name = "onnxruntime_cuda"
    engine = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    normalizes = False

    def __init__(self, threads: int = 1, batch: int = 1, **protocol: Any) -> None:
        super().__init__(threads, batch, **protocol)
        self.clock = _clock.perf_counter  # session.run returns after the GPU is done: wall time is the latency

    @property
    def hardware(self) -> str:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda-gpu"


__all__ = ["OnnxRuntimeCudaTimer", "OnnxRuntimeTimer"]
