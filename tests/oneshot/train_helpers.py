"""Shared pieces of the one-shot trainer tests: a tiny SPOS run (NAS-Bench-201 at 16 px, 4 channels, one cell per
stage, digits) as CLI arguments or as a `TrainRequest`, and readers of what a run leaves in its run dir."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.oneshot.trainer import TrainRequest

SPACE = "nasbench201"
SPACE_CONFIG = {"resolution": 16, "cells_per_stage": 1, "init_channels": 4}
METHOD_CONFIG = {"batch_size": 16, "max_steps_per_epoch": 20, "checkpoint_every": 5, "search_archs": 2,
                 "epochs": 2, "seed": 3}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Training in this process sets torch's thread count (one per worker CPU): restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cli_args(run_dir: Path, *extra: str, space: dict[str, Any] | None = None, **method: Any) -> list[str]:
    """`nas supernet train` arguments of the tiny run (space and method config keys overridable)."""
    args = ["supernet", "train", "--space", SPACE, "--method", "spos", "--run-dir", str(run_dir)]
    for key, value in {**SPACE_CONFIG, **(space or {})}.items():
        args += ["--space-set", f"{key}={value}"]
    for key, value in {**METHOD_CONFIG, **method}.items():
        args += ["--set", f"{key}={value}"]
    return [*args, *extra]


def request(run_dir: Path, workers: int = 0, **method: Any) -> TrainRequest:
    """The tiny run as a `TrainRequest` (in this process by default: Ray Train's local mode)."""
    return TrainRequest(space=SPACE, method="spos", run_dir=run_dir, space_config=SPACE_CONFIG,
                        method_config={**METHOD_CONFIG, **method}, workers=workers, progress_every=1)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint dirs, oldest first."""
    root = run_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def final_state(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint's saved state."""
    return torch.load(checkpoints(run_dir)[-1] / "state.pt", weights_only=True)


def meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def assert_same_tensors(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts/lists of tensors and plain values, equal exactly (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def wait_for_checkpoint(run_dir: Path, proc: Any, timeout_s: float) -> Path:
    """The first checkpoint a running process writes; fails (with its stderr) if none comes in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = checkpoints(run_dir)
        if found:
            return found[0]
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate(timeout=30)
    raise AssertionError(f"no checkpoint within {timeout_s} s (exit {proc.returncode}); stderr:\n{err}")
