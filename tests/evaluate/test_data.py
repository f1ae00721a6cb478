"""Data sets: bundled digits (shapes, split, determinism) and CIFAR-10 from a pickle directory, read by a
pickle reader that builds only what a CIFAR-10 batch holds (crafted files below)."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.errors import UserError
from nas.evaluate import data as data_module
from nas.evaluate.cifar_pickle import CifarUnpickler
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


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
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


def _write_str_keyed(root: Path) -> None:
    """The variant that Python 3 code re-pickles: str keys, protocol 4."""
    rng = np.random.default_rng(1)
    root.mkdir()
    for name in ("data_batch_1", "test_batch"):
        batch = {"batch_label": name, "data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8),
                 "labels": [0, 1, 2, 9]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=4))


def test_cifar10_str_keyed_pickles_are_read(tmp_path: Path) -> None:
    _write_str_keyed(tmp_path / "cifar")
    d = load_dataset("cifar10", tmp_path / "cifar")
    assert d.x_train.shape == (4, 3, 32, 32) and d.y_val.tolist() == [0, 1, 2, 9]


def test_cifar10_foreign_keys_are_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar", n_batches=1)
    (tmp_path / "cifar" / "test_batch").write_bytes(pickle.dumps({"images": [], "targets": []}))
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR-10 batch \(keys \['images', 'targets'\], "
                                        r"need data and labels\)") as err:
        load_dataset("cifar10", tmp_path / "cifar")
    assert "\n" not in str(err.value)


def test_cifar10_files_are_read_once_while_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _write_cifar(tmp_path / "cifar", n_batches=1)
    reads = []
    original = CifarUnpickler.load
    monkeypatch.setattr(CifarUnpickler, "load", lambda self: reads.append(1) or original(self))
    first = load_dataset("cifar10", tmp_path / "cifar")
    load_dataset("cifar10", tmp_path / "cifar", resolution=16)
    assert len(reads) == 2  # data_batch_1 and test_batch, once each
    first.x_val.zero_()  # a caller's change to its tensors must not reach the cache
    assert load_dataset("cifar10", tmp_path / "cifar").x_val.abs().sum() > 0
    assert len(reads) == 2
    rows, labels = written["test_batch"]
    with (tmp_path / "cifar" / "test_batch").open("wb") as f:  # changed: read again
        pickle.dump({b"data": rows[:5], b"labels": labels[:5]}, f, protocol=2)
    assert len(load_dataset("cifar10", tmp_path / "cifar").y_val) == 5
    assert len(reads) == 3


def test_resolution_is_bounded() -> None:
    with pytest.raises(UserError, match=r"--resolution: must be an integer in \[1, 1024\], got 10000000"):
        load_dataset("digits", resolution=10_000_000)
    with pytest.raises(UserError, match=r"unknown data set 'xxx.*…' \(1000000 chars\)") as err:
        load_dataset("x" * 1_000_000)
    assert len(str(err.value)) < 300


def test_digits_refuses_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^--data-dir: data set 'digits' takes no data dir .*take one: cifar10"):
        load_dataset("digits", tmp_path)


# -- crafted CIFAR-10 files -------------------------------------------------------------------------

def _op_str(data: bytes) -> bytes:
    """A Python 2 `str` in a protocol-2 pickle (SHORT_BINSTRING or BINSTRING)."""
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


_PLAIN_U1_STATE = b"(K\x03" + _op_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"


def _py2_batch(rows: np.ndarray, labels: list[int], dtype_state: bytes = _PLAIN_U1_STATE,
               reconstruct_shape: bytes = b"K\x00\x85") -> bytes:
    """A batch as the release's files hold it: Python 2 cPickle at protocol 2, `str` as BINSTRING,
    numpy 1.x module paths (numpy.core.multiarray._reconstruct, numpy.dtype('u1', 0, 1))."""
    n = rows.shape[0]
    array = (b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03" + reconstruct_shape
             + _op_str(b"b") + b"\x87Rq\x04(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86cnumpy\ndtype\nq\x05"
             + _op_str(b"u1") + b"K\x00K\x01\x87Rq\x06" + dtype_state + b"\x89" + _op_str(rows.tobytes()) + b"tb")
    label_ops = b"]q\x07(" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}q\x01(" + _op_str(b"data") + array + _op_str(b"labels") + label_ops
            + _op_str(b"batch_label") + _op_str(b"training batch 1 of 5") + b"u.")


def _cifar_with(tmp_path: Path, batch: bytes) -> Path:
    """A CIFAR-10 dir whose data_batch_1 is `batch` (its test_batch is good)."""
    _write_cifar(tmp_path / "cifar", n_batches=1)
    (tmp_path / "cifar" / "data_batch_1").write_bytes(batch)
    return tmp_path / "cifar"


def test_cifar10_reads_the_releases_python2_pickles(tmp_path: Path) -> None:
    rows = np.random.default_rng(3).integers(0, 256, size=(7, 3072), dtype=np.uint8)
    root = _cifar_with(tmp_path, _py2_batch(rows, [0, 1, 2, 3, 4, 5, 9]))
    d = load_dataset("cifar10", root)
    assert d.y_train.tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert float(d.x_train[6, 2, 31, 31]) == pytest.approx((rows[6, 3071] / 255 - 0.4465) / 0.2616, abs=1e-5)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_pickle_that_calls_os_system_does_not_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    root = _cifar_with(tmp_path, pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=protocol))
    with pytest.raises(UserError, match=r"data_batch_1 is not a CIFAR-10 pickle \(UnpicklingError: refusing to "
                                        r"load (posix|os)\.system\)"):
        load_dataset("cifar10", root)
    assert not marker.exists()


def _crafted(kind: str) -> bytes:
    rows = np.zeros((2, 3072), np.uint8)
    if kind == "huge_list":  # 600,000 labels: more pickle operations than any batch has
        return pickle.dumps({b"data": rows, b"labels": list(range(600_000))}, protocol=2)
    if kind == "nested_lists":  # 4,000 memo references that np.asarray would expand into 1e12 numbers
        nested: list = [0] * 1000
        for _ in range(3):
            nested = [nested] * 1000
        return pickle.dumps({b"data": nested, b"labels": [0, 1]}, protocol=2)
    if kind == "ndarray_called":  # numpy.ndarray((2**40,)): would allocate a terabyte
        return b"\x80\x02cnumpy\nndarray\nL1099511627776L\n\x85R."
    if kind == "reconstruct_big":  # _reconstruct(ndarray, (2**30,), b"b"): not what numpy writes
        return _py2_batch(rows, [0, 1], reconstruct_shape=b"J\x00\x00\x00\x40\x85")
    if kind == "dtype_with_fields":  # a u1 dtype given a field 100,000 bytes past its one byte
        field = b"cnumpy\ndtype\n" + _op_str(b"u8") + b"K\x00K\x01\x87R" + b"(K\x03" + _op_str(b"<") \
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        state = (b"(K\x03" + _op_str(b"|") + b"N" + _op_str(b"a") + b"\x85}" + _op_str(b"a") + field
                 + b"J\xa0\x86\x01\x00\x86sJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        return _py2_batch(rows, [0, 1], dtype_state=state)
    if kind == "object_array":
        return pickle.dumps({b"data": np.array([None, None], dtype=object), b"labels": [0, 1]}, protocol=2)
    if kind == "wrong_shape":
        return pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=4)
    if kind == "list_data":
        return pickle.dumps({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, protocol=2)
    if kind == "float_labels":
        return pickle.dumps({b"data": rows, b"labels": [0.5, 1.0]}, protocol=2)
    if kind == "short_labels":
        return pickle.dumps({b"data": rows, b"labels": [0]}, protocol=2)
    if kind == "array_size_lie":  # a state whose buffer is shorter than its shape says
        return _py2_batch(rows, [0, 1]).replace(b"M\x02\x00M\x00\x0c\x86", b"M\x00\x01M\x00\x0c\x86")
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "needle"), [
    ("huge_list", "more than 500,000 pickle operations"),
    ("nested_lists", "data is a list"),
    ("ndarray_called", "not callable"),
    ("reconstruct_big", "refusing an array built other than numpy pickles it"),
    ("dtype_with_fields", "refusing a dtype with fields"),
    ("object_array", "refusing dtype 'O8'"),
    ("wrong_shape", "data is uint8 (2, 1024), expected a uint8 array (N, 3072)"),
    ("list_data", "data is a list"),
    ("float_labels", "labels must be a list of 2 integers in 0..9"),
    ("short_labels", "labels must be a list of 2 integers in 0..9"),
    ("array_size_lie", "an array of shape (256, 3072) over 6,144 bytes"),
])
def test_crafted_cifar_files_are_refused_before_numpy_sees_them(tmp_path: Path, kind: str, needle: str) -> None:
    with pytest.raises(UserError, match="data_batch_1") as err:
        load_dataset("cifar10", _cifar_with(tmp_path, _crafted(kind)))
    message = str(err.value)
    assert needle in message and "\n" not in message and len(message) < 400, message


def test_an_oversized_cifar_file_is_refused_unread(tmp_path: Path) -> None:
    root = _cifar_with(tmp_path, b"")
    with (root / "data_batch_1").open("wb") as f:
        f.truncate(data_module._MAX_CIFAR_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(UserError, match=r"data_batch_1 is 41,943,041 bytes, more than the 41,943,040 allowed"):
        load_dataset("cifar10", root)
