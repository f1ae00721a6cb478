"""Export one arch as JSON, a PyTorch checkpoint, TorchScript or ONNX, each verified after writing.

`export` builds the network once (or takes a trained one), writes every requested
format into one temp directory inside the output directory, loads each file back and
compares it with the network on a seeded random batch of another size than the one
used for tracing (so a baked-in batch size is caught), and only when all pass
`os.replace`s them into place. So a failed check (a `NasError`: a bug, not a user
mistake) or a full disk (a `UserError`) changes nothing in the output directory, and
a killed export leaves no partial file there, only its temp directory
(`.export-<pid>-<host>-*`), which the next export in that directory removes. Files are
named `<space>-<short hash>.<format suffix>`.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
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
from nas.run_dir import is_running
from nas.space import space_of

log = logging.getLogger(__name__)

_TRACE_BATCH = 2  # batch of the example input used to trace / export
_CHECK_BATCH = 3  # batch of the verification input: differs, so the batch axis must be dynamic
_CALIBRATION_PIXELS = 128 * 32 * 32  # random images (this many pixels, 16 to 128 images) set fresh BN statistics
_CALIBRATION_BATCH = 32
_TEMP = ".export-"
_TEMP_NAME = re.compile(r"\.export-(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8})-|$)")
_STALE_SECONDS = 3600  # a temp entry this old is stale whatever its pid says (pids are reused)
UNTRAINED = "untrained (random initialisation)"
_ZERO_SCALE_STANDIN = 0.25
"""Batch-norm scale given to one initialised to zero, for the check (see `_build`): the size trained residual
blocks' last scales typically reach, so that activations do not grow block after block as they would at 1."""


@dataclass(frozen=True)
class Exported:
    """One written and verified file: its format, path and largest output difference from PyTorch."""

    format: str
    path: Path
    max_abs_diff: float


class Exporter(ABC):
    """One export format: writes a file and loads it back.

    Subclasses register with `@EXPORTERS.register(name)`, set `suffix` (file name after
    the stem) and `tolerance` (largest allowed output difference from PyTorch, relative to the largest
    output magnitude where that is over 1).
    """

    suffix: ClassVar[str]
    tolerance: ClassVar[float] = 0.0
    notes: dict[str, str | bool] = {}  # noqa: RUF012 (replaced per instance by `export`, never mutated)
    """What the weights are (`trained`, `weights`), set by `export`; formats with room for metadata store it."""

    @abstractmethod
    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        """Write `arch` / `model` to `path` (with `write_bytes`); `example` is an input of the right shape."""

    @abstractmethod
    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor | None:
        """Load `path` back, check what it can, and return its output on `x` (None if it has no weights)."""


@EXPORTERS.register("json")
class JsonExporter(Exporter):
    """The arch's canonical JSON: space, choices and config, no weights."""

    suffix = "json"

    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        write_bytes(path, (arch.to_json() + "\n").encode())

    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> None:
        _check_same_arch(Arch.from_json(path.read_text()), arch, path)
        return None


@EXPORTERS.register("pt")
class StateDictExporter(Exporter):
    """`torch.save` of {"arch": JSON, "state_dict": weights}; load with `torch.load(weights_only=True)`."""

    suffix = "pt"

    def write(self, arch: Arch, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        buffer = io.BytesIO()
        torch.save({"arch": arch.to_json(), "state_dict": model.state_dict(), **self.notes}, buffer)
        write_bytes(path, buffer.getvalue())

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
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
        write_bytes(path, buffer.getvalue())

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
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=self.opset,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        write_bytes(path, buffer.getvalue())

    def reload(self, arch: Arch, path: Path, x: torch.Tensor) -> torch.Tensor:
        import onnx
        import onnxruntime

        onnx.checker.check_model(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"input": x.numpy()})
        return torch.from_numpy(logits)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to the new file `path` and fsync it: the one place exporters touch the disk.

    Exporters serialise to memory first, so a full disk always surfaces here as an `OSError`
    (ENOSPC), which `export` reports, rather than inside a library as some other error.
    """
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def export(
    arch: Arch,
    formats: Sequence[str],
    out_dir: str | Path,
    model: nn.Module | None = None,
    seed: int = 0,
    weights: str | None = None,
) -> dict[str, Exported]:
    """Write `arch` in every format of `formats` to `out_dir`, verifying each file.

    Args:
        arch: the architecture to export.
        formats: registered export format names (`json`, `onnx`, `pt`, `torchscript`).
        out_dir: directory for the files; created if missing.
        model: trained network of `arch` to export (copied to CPU, left untouched);
            without it the network is built with weights initialised from `seed`.
        seed: seed of the initial weights (when `model` is None) and of the check input.
        weights: where `model`'s trained weights come from, stored in the `pt` file (`trained`, `weights`);
            None: the network is untrained (random initialisation), and the `pt` file says so.

    Returns:
        The written files by format, in the order of `formats`, with their verification figure.

    Raises:
        UserError: a bad format or output directory, or the disk filled up; nothing was changed.
        NasError: a written file did not load back or match the network; nothing was changed.
    """
    exporters = {name: EXPORTERS.get(name)() for name in dict.fromkeys(formats)}
    if not exporters:
        raise UserError(f"--format: no export format given; allowed: {', '.join(EXPORTERS.names())}")
    notes = {"trained": weights is not None, "weights": weights or UNTRAINED}
    for exporter in exporters.values():
        exporter.notes = notes
    out = _writable_dir(Path(out_dir))
    _remove_stale_temps(out)
    model = _build(arch, seed) if model is None else copy.deepcopy(model).cpu().eval()
    r = space_of(arch).input_resolution(arch)  # the arch's own: a space may search the resolution
    inputs = torch.randn(_TRACE_BATCH + _CHECK_BATCH, 3, r, r,
                         generator=torch.Generator().manual_seed(seed))  # (B, 3, R, R)
    example, check = inputs[:_TRACE_BATCH], inputs[_TRACE_BATCH:]
    with torch.inference_mode():
        expected = model(check)
    stem = f"{arch.space}-{arch.short_hash}"
    writing = "a temp directory"
    try:
        # One temp directory rather than mkstemp files: each file gets the umask's usual mode
        # (not 0600) and its final name, and whatever a failed export leaves is removed.
        with tempfile.TemporaryDirectory(dir=out, prefix=_temp_prefix()) as tmp_dir:
            staged = {}
            for name, exporter in exporters.items():
                tmp = Path(tmp_dir) / f"{stem}.{exporter.suffix}"
                writing = tmp.name
                exporter.write(arch, model, example, tmp)
                staged[name] = (tmp, _verify(name, exporter, arch, tmp, check, expected))
            written = {}
            for name, (tmp, diff) in staged.items():  # renames within one directory: atomic, need no space
                os.replace(tmp, out / tmp.name)
                written[name] = Exported(name, out / tmp.name, diff)
                log.info("wrote %s (max abs diff %.3g)", out / tmp.name, diff)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"--out {out}: disk full while writing {writing}; nothing was written or changed there; "
                        "free some space and re-run") from None
    return written


def _verify(name: str, exporter: Exporter, arch: Arch, path: Path, check: torch.Tensor,
            expected: torch.Tensor) -> float:
    """Largest output difference of the written file `path` from PyTorch; `NasError` if over tolerance."""
    try:
        got = exporter.reload(arch, path, check)
    except Exception as err:  # whatever stops the file loading back fails its verification
        if type(err) is NasError:
            raise
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise NasError(f"export {name}: {path.name} does not load back ({reason}); nothing was written") from err
    diff = 0.0 if got is None else _max_abs_diff(got, expected, name)
    # float32 rounding grows with the values: outputs of tens (an untrained deep residual net, or confident
    # logits) are compared at the tolerance relative to their largest magnitude, outputs up to 1 absolutely.
    scale = max(1.0, float(expected.abs().max()))
    if not diff <= exporter.tolerance * scale:  # also catches NaN
        relative = f", {diff / scale:.3g} of the largest output {scale:.3g}" if scale > 1 else ""
        raise NasError(f"export {name}: {path.name} differs from PyTorch by {diff:.3g}{relative} "
                       f"(tolerance {exporter.tolerance:g}); nothing was written")
    return diff


def _temp_prefix() -> str:
    """`.export-<pid>-<host>-`: whose temp entry it is, so a later export can tell a dead one."""
    return f"{_TEMP}{os.getpid()}-{_host_tag()}-"


def _host_tag() -> str:
    """8 hex digits of this host's name: an output directory on a shared disk sees several hosts' pids."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _remove_stale_temps(out: Path) -> None:
    """Remove temp entries that killed exports left in `out`: their process is gone, or they are old.

    An entry whose name carries no host counts as this host's (older exports named none).
    """
    now, host = time.time(), _host_tag()
    for entry in out.iterdir():
        if not entry.name.startswith(_TEMP):
            continue
        match = _TEMP_NAME.match(entry.name)
        try:
            old = now - entry.lstat().st_mtime > _STALE_SECONDS
        except OSError:  # removed meanwhile
            continue
        ours = match is not None and match["host"] in (None, host)
        if old or (ours and not is_running(int(match["pid"]))):
            log.info("removing %s, left by an export that did not finish", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


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
    checked outputs vary with the input the way a trained network's do. For the same reason a
    batch-norm scale initialised to zero (BossNet's last norm of each block, as in zero-init
    ResNets) is set to `_ZERO_SCALE_STANDIN`: such a block adds nothing until trained, so the check
    would not see it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        space = space_of(arch)
        model = space.build(arch)
        resolution = space.input_resolution(arch)
        norms = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        for norm in norms:
            if norm.affine:
                with torch.no_grad():
                    norm.weight.masked_fill_(norm.weight == 0, _ZERO_SCALE_STANDIN)
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batches
        model.train()
        with torch.no_grad():
            for batch in _calibration_batches(resolution):
                model(torch.randn(batch, 3, resolution, resolution))
        for norm, momentum in norms.items():
            norm.momentum = momentum
        return model.eval()


def _calibration_batches(resolution: int) -> list[int]:
    """Batch sizes of the random calibration images: many at small inputs, where a late feature map has a
    pixel or two and a few images give a norm's variance from a handful of values (an untrained BossNet at
    32 px then reached logits of 2,000, where ONNX and PyTorch differ by 1e-2), few at large ones (time)."""
    images = min(128, max(16, _CALIBRATION_PIXELS // (resolution * resolution)))
    return [min(_CALIBRATION_BATCH, images - start) for start in range(0, images, _CALIBRATION_BATCH)]


def _writable_dir(out: Path) -> Path:
    """`out`, created if missing, after proving a file can be created in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=f"{_temp_prefix()}probe-", suffix=".tmp")
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err}); "
                        "choose a writable directory") from None
    os.close(fd)
    os.unlink(probe)
    return out


__all__ = ["UNTRAINED", "Exported", "Exporter", "export", "write_bytes"]
