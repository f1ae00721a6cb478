"""Data sets: bundled digits (shapes, split, determinism) and CIFAR-10 from a pickle directory."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.errors import UserError
from nas.evaluate import data as data_module
from nas.evaluate.data import load_dataset


def test_digits_shapes_classes_and_split() -> None:
    d = load_dataset("digits", resolution=16)
    assert (d.name, d.num_classes, d.resolution) == ("digits", 10, 16)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.shape[1:] == (3, 16, 16) and d.x_val.shape[1:] == (3, 16, 16)
    assert len(d.x_train) == len(d.y_train) and len(d.x_val) == len(d.y_val)
    assert len(d.y_train) + len(d.y_val) == 1797
    assert len(d.y_val) == pytest.approx(0.2 * 1797, abs=10)
    assert set(d.y_train.tolist()) == set(d.y_val.tolist()) == set(range(10))  # stratified
    assert torch.equal(d.x_train[:, 0], d.x_train[:, 2])  # gray replicated to 3 channels
    assert abs(float(d.x_train.mean())) < 1e-3 and float(d.x_train.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_split_is_seeded() -> None:
    a = load_dataset("digits", resolution=8, seed=0)
    assert load_dataset("digits", resolution=8, seed=0) is a  # cached per (resolution, seed)
    fresh = data_module._digits.__wrapped__(8, 0, 0.2)  # bypass the cache: same split from scratch
    assert torch.equal(fresh.x_train, a.x_train) and torch.equal(fresh.y_val, a.y_val)
    other = load_dataset("digits", resolution=8, seed=1)
    assert not torch.equal(other.x_val, a.x_val)


def _write_cifar(root: Path, n_batches: int = 2, per_batch: int = 6, protocol: int = 2) -> dict:
    """A miniature CIFAR-10 python release; returns the raw rows and labels written."""
    rng = np.random.default_rng(0)
    root.mkdir()
    written = {}
    for name in [f"data_batch_{i + 1}" for i in range(n_batches)] + ["test_batch"]:
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with (root / name).open("wb") as f:
            batch = {b"batch_label": name.encode(), b"data": rows, b"labels": labels}
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (rows, labels)
    return written


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_loads_pickle_directory(tmp_path: Path, protocol: int) -> None:
    written = _write_cifar(tmp_path / "cifar", protocol=protocol)
    d = load_dataset("cifar10", tmp_path / "cifar")
    assert (d.name, d.num_classes) == ("cifar10", 10)
    assert d.x_train.shape == (12, 3, 32, 32) and d.x_val.shape == (6, 3, 32, 32)
    assert d.y_train.tolist() == written["data_batch_1"][1] + written["data_batch_2"][1]
    assert d.y_val.dtype == torch.int64 and d.y_val.tolist() == written["test_batch"][1]
    # Row layout is R plane, G plane, B plane; channel 1 normalised with the CIFAR mean/std.
    rows = written["data_batch_1"][0]
    assert float(d.x_train[0, 1, 0, 0]) == pytest.approx((rows[0, 1024] / 255 - 0.4822) / 0.2435, abs=1e-5)


def test_cifar10_resizes(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar", n_batches=1)
    d = load_dataset("cifar10", str(tmp_path / "cifar"), resolution=16)
    assert d.x_train.shape == (6, 3, 16, 16) and d.x_val.shape == (6, 3, 16, 16)


@pytest.mark.parametrize(
    ("name", "data_dir", "fragment"),
    [
        ("imagenet", None, "unknown data set 'imagenet'; allowed: cifar10, digits"),
        ("cifar10", None, "--data-dir"),
        ("cifar10", "missing", "no such directory"),
        ("cifar10", "empty", "no data_batch_* files"),
    ],
)
def test_bad_requests_are_user_errors(tmp_path: Path, name: str, data_dir: str | None, fragment: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=fragment.replace("*", r"\*")) as err:
        load_dataset(name, None if data_dir is None else tmp_path / data_dir)
    assert "\n" not in str(err.value)


def test_corrupt_pickle_is_user_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar", n_batches=1)
    (tmp_path / "cifar" / "data_batch_1").write_bytes(b"\x80\x02}q\x00(truncated")
    with pytest.raises(UserError, match="data_batch_1 is not a CIFAR-10 pickle"):
        load_dataset("cifar10", tmp_path / "cifar")


def test_pickle_cannot_run_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar", n_batches=1)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    with (tmp_path / "cifar" / "test_batch").open("wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset("cifar10", tmp_path / "cifar")
    assert not marker.exists()


def test_bad_resolution_and_val_fraction() -> None:
    with pytest.raises(UserError, match="--resolution"):
        load_dataset("digits", resolution=0)
    with pytest.raises(UserError, match="--val-fraction"):
        load_dataset("digits", val_fraction=1.0)
