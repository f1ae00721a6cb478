"""Export one arch as JSON, a PyTorch checkpoint, TorchScript or ONNX, each verified after writing.

`export` builds the network once (or takes a trained one), writes each requested
format to a temp file in the output directory, loads that file back and compares it
with the network on a seeded random batch of another size than the one used for
tracing (so a baked-in batch size is caught), and only then `os.replace`s it into
place. A file that fails its check is deleted and raises `NasError`: it is a bug,
not a user mistake. Files are named `<space>-<short hash>.<format suffix>`.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.registry import EXPORTERS
from nas.space import space_of

log = logging.getLogger(__name__)

_TRACE_BATCH = 2  # batch of the example input used to trace / export
_CHECK_BATCH = 3  # batch of the verification input: differs, so the batch axis must be dynamic
_CALIBRATION_BATCHES, _CALIBRATION_BATCH = 2, 8  # random batches that set fresh batch-norm statistics


@dataclass(frozen=True)
class Exported:
    """One written and verified file: its format, path and largest output difference from PyTorch."""

    format: str
    path: Path
    max_abs_diff: float


class Exporter(ABC):
    """One export format: writes a file and loads it back.

    Subclasses register with `@EXPORTERS.register(name)`, set `suffix` (file name after
    the stem) and `tolerance` (largest allowed output difference from PyTorch).
    """

    suffix: ClassVar[str]
    tolerance: ClassVar[float] = 0.0

    @abstractmethod
    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        """Write `arch` / `model` to `path`; `example` is an input of the right shape."""

    @abstractmethod
    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor | None:
        """Load `path` back, check what it can, and return its output on `x` (None if it has no weights)."""


@EXPORTERS.register("json")
class JsonExporter(Exporter):
    """The arch's canonical JSON: space, choices and config, no weights."""

    suffix = "json"

    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        path.write_text(arch.to_json() + "\n")

    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> None:
        _check_same_arch(Arch.from_json(path.read_text()), arch, path)
        return None


@EXPORTERS.register("pt")
class StateDictExporter(Exporter):
    """`torch.save` of {"arch": JSON, "state_dict": weights}; load with `torch.load(weights_only=True)`."""

    suffix = "pt"

    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        torch.save({"arch": arch.to_json(), "state_dict": model.state_dict()}, path)

    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        loaded = Arch.from_json(checkpoint["arch"])
        _check_same_arch(loaded, arch, path)
        model = _build(loaded, seed=0)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
        with torch.inference_mode():
            return model(x)


@EXPORTERS.register("torchscript")
class TorchScriptExporter(Exporter):
    """`torch.jit.trace` of the eval-mode network; load with `torch.jit.load`."""

    suffix = "torchscript.pt"
    tolerance = 1e-5

    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        # Tracing fixes the arch's (already fixed) control flow; scripting would reject
        # ordinary Python in space modules. The verification runs another batch size.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path))

    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return loaded(x)


@EXPORTERS.register("onnx")
class OnnxExporter(Exporter):
    """ONNX opset 17 with a dynamic batch axis (input `input`, output `logits`), run by onnxruntime."""

    suffix = "onnx"
    tolerance = 1e-4
    opset = 17

    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        # The TorchScript-based exporter (dynamo=False) needs no onnxscript and handles
        # every op of the spaces; it warns that it is deprecated, which is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=self.opset,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )

    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor:
        import onnx
        import onnxruntime

        onnx.checker.check_model(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"input": x.numpy()})
        return torch.from_numpy(logits)


def export(
    arch: Arch,
    formats: Sequence[str],
    out_dir: str | Path,
    model: nn.Module | None = None,
    seed: int = 0,
) -> dict[str, Exported]:
    """Write `arch` in every format of `formats` to `out_dir`, verifying each file.

    Args:
        arch: the architecture to export.
        formats: registered export format names (`json`, `onnx`, `pt`, `torchscript`).
        out_dir: directory for the files; created if missing.
        model: trained network of `arch` to export (copied to CPU, left untouched);
            without it the network is built with weights initialised from `seed`.
        seed: seed of the initial weights (when `model` is None) and of the check input.

    Returns:
        The written files by format, in the order of `formats`, with their verification figure.
    """
    exporters = {name: EXPORTERS.get(name)() for name in dict.fromkeys(formats)}
    if not exporters:
        raise UserError(f"--format: no export format given; allowed: {', '.join(EXPORTERS.names())}")
    out = _writable_dir(Path(out_dir))
    model = _build(arch, seed) if model is None else copy.deepcopy(model).cpu().eval()
    inputs = torch.randn(_TRACE_BATCH + _CHECK_BATCH, 3, arch.config["resolution"], arch.config["resolution"],
                         generator=torch.Generator().manual_seed(seed))  # (B, 3, R, R)
    example, check = inputs[:_TRACE_BATCH], inputs[_TRACE_BATCH:]
    with torch.inference_mode():
        expected = model(check)
    stem = f"{arch.space}-{arch.short_hash}"
    return {
        name: _write_verified(name, e, arch, model, example, check, expected, out / f"{stem}.{e.suffix}")
        for name, e in exporters.items()
    }


def _write_verified(
    name: str, exporter: Exporter, arch: Arch, model: nn.Module,
    example: torch.Tensor, check: torch.Tensor, expected: torch.Tensor, path: Path,
) -> Exported:
    """Write into a temp directory beside `path`, verify, then move the file into place."""
    # A temp directory rather than mkstemp: the file gets the umask's usual mode (not
    # 0600) and its final name, and whatever a failed attempt leaves is removed.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp_dir:
        tmp = Path(tmp_dir) / path.name
        exporter.write(arch, model, example, tmp)
        try:
            got = exporter.reload(arch, tmp, check)
        except Exception as err:  # whatever stops the file loading back fails its verification
            if type(err) is NasError:
                raise
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            raise NasError(f"export {name}: {path.name} does not load back ({reason})") from err
        diff = 0.0 if got is None else _max_abs_diff(got, expected, name)
        if not diff <= exporter.tolerance:  # also catches NaN
            raise NasError(f"export {name}: {path.name} differs from PyTorch by {diff:.3g} "
                           f"(tolerance {exporter.tolerance:g}); the file was not kept")
        os.replace(tmp, path)
    log.info("wrote %s (max abs diff %.3g)", path, diff)
    return Exported(name, path, diff)


def _max_abs_diff(got: torch.Tensor, expected: torch.Tensor, name: str) -> float:
    if got.shape != expected.shape:
        raise NasError(f"export {name}: output shape {tuple(got.shape)} != PyTorch's {tuple(expected.shape)}")
    return float((got.float() - expected.float()).abs().max())


def _check_same_arch(loaded: Arch, arch: Arch, path: Path) -> None:
    if loaded.hash != arch.hash:
        raise NasError(f"export: {path.name} reloads as arch {loaded.short_hash}, not {arch.short_hash}")


def _build(arch: Arch, seed: int) -> nn.Module:
    """The eval-mode network of `arch`, initialised from `seed` without touching the global RNG.

    Fresh batch-norm statistics (mean 0, variance 1) let activations shrink layer by layer
    until the logits hardly depend on the input, which would make the export check compare
    constants; the statistics are therefore set from a few random batches first, so the
    checked outputs vary with the input the way a trained network's do.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = space_of(arch).build(arch)
        resolution = arch.config["resolution"]
        norms = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batches
        model.train()
        with torch.no_grad():
            for _ in range(_CALIBRATION_BATCHES):
                model(torch.randn(_CALIBRATION_BATCH, 3, resolution, resolution))
        for norm, momentum in norms.items():
            norm.momentum = momentum
        return model.eval()


def _writable_dir(out: Path) -> Path:
    """`out`, created if missing, after proving a file can be created in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe-", suffix=".tmp")
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err}); "
                        "choose a writable directory") from None
    os.close(fd)
    os.unlink(probe)
    return out


__all__ = ["Exported", "Exporter", "export"]
