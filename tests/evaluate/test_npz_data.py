"""The `npz` data kind: a user's data set in one `.npz` file, read back exactly, refused in one line when it is
not four plain arrays of the right shapes (crafted files below), written atomically, and trained on."""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.errors import UserError
from nas.evaluate.data import load_dataset
from nas.evaluate.npz_data import KEYS, arrays_sha256, check_arrays, write_npz
from nas.run_dir import DiskFullError

R = 8


def _arrays(n: int = 12, m: int = 5, resolution: int = R, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n, 3, resolution, resolution)).astype(np.float32),
            "y_train": rng.integers(0, classes, n), "x_val": rng.normal(size=(m, 3, resolution, resolution)),
            "y_val": rng.integers(0, classes, m).astype(np.uint8)}


def _one_line(err: pytest.ExceptionInfo[UserError], *needles: str) -> str:
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def test_a_data_set_round_trips_through_its_file(tmp_path: Path) -> None:
    given = _arrays()
    checked = check_arrays(given, "data", R, num_classes=3)
    assert checked["x_val"].dtype == np.float32 and checked["y_val"].dtype == np.int64  # float64, uint8 converted
    write_npz(checked, tmp_path / "d.npz")
    d = load_dataset("npz", tmp_path / "d.npz", resolution=R)
    assert (d.name, d.resolution) == ("npz", R)
    assert d.num_classes == int(max(given["y_train"].max(), given["y_val"].max())) + 1
    for key in KEYS:
        tensor = getattr(d, key)
        assert tensor.dtype == (torch.float32 if key.startswith("x") else torch.int64)
        assert np.array_equal(tensor.numpy(), checked[key]), key
    assert load_dataset("npz", tmp_path / "d.npz", resolution=R) is d  # cached while the file is unchanged
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp file left


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    write_npz(check_arrays(_arrays(n=4), "data", R), path)
    first = load_dataset("npz", path, resolution=R)
    write_npz(check_arrays(_arrays(n=6), "data", R), path)
    assert len(load_dataset("npz", path, resolution=R).y_train) == 6 and len(first.y_train) == 4


def test_the_content_hash_follows_the_data() -> None:
    a = check_arrays(_arrays(), "data", R)
    assert arrays_sha256(a) == arrays_sha256(check_arrays(_arrays(), "data", R))
    changed = {**a, "y_val": a["y_val"].copy()}
    changed["y_val"][0] += 1
    assert arrays_sha256(changed) != arrays_sha256(a)


@pytest.mark.parametrize(("change", "needles"), [
    ({"x_train": np.zeros((4, 3, 4, 4), np.float32)}, ["x_train", "4x4", "resolution is 8"]),
    ({"x_train": np.zeros((4, 1, R, R), np.float32)}, ["x_train", "(4, 1, 8, 8)", "(N, 3, 8, 8)"]),
    ({"x_train": np.zeros((4, 3, R, R), np.int64)}, ["x_train", "int64", "float images"]),
    ({"x_val": np.zeros((0, 3, R, R), np.float32)}, ["x_val", "N >= 1"]),
    ({"x_val": np.full((5, 3, R, R), np.nan, np.float32)}, ["x_val", "NaN"]),
    ({"y_train": np.zeros(12, np.float32)}, ["y_train", "float32", "integer labels"]),
    ({"y_train": np.zeros(11, np.int64)}, ["y_train", "(11,)", "12 integer labels"]),
    ({"y_val": np.array([0, 1, -1, 0, 0])}, ["y_val", "label -1"]),
    ({"y_val": np.array([0, 1, 3, 0, 0])}, ["y_val", "label 3", "0..2"]),
    ({"y_val": np.zeros(5, bool)}, ["y_val", "bool"]),
])
def test_bad_arrays_are_refused_in_one_line_naming_the_key(change: dict, needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        check_arrays({**_arrays(), **change}, "data", R, num_classes=3)
    _one_line(err, "data: ", *needles)


def test_missing_and_unknown_keys_are_refused() -> None:
    arrays = _arrays()
    with pytest.raises(UserError) as err:
        check_arrays({k: v for k, v in arrays.items() if k != "y_val"}, "data", R)
    _one_line(err, "y_val", "missing", "x_train, y_train, x_val, y_val")
    with pytest.raises(UserError) as err:
        check_arrays({**arrays, "x_test": arrays["x_val"]}, "data", R)
    _one_line(err, "x_test", "unknown")


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _crafted_header(shape: tuple[int, ...]) -> bytes:
    """A .npy member whose header claims `shape` of float32 but holds 16 bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 16


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
    return path


@pytest.mark.parametrize(("make", "needles"), [
    (lambda p: p.write_bytes(b"not a zip at all"), ["not a readable .npz file", "BadZipFile"]),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p),
     ["not a readable .npz"]),
    (lambda p: p.write_bytes(_npz_bytes(**_arrays())[:-200]), ["not a readable .npz"]),  # cut short
    (lambda p: p.write_bytes(_npz_bytes(**{k: v for k, v in _arrays().items() if k != "x_val"})), ["no array x_val"]),
    (lambda p: p.write_bytes(_npz_bytes(**_arrays(), extra=np.zeros(2))), ["unknown array 'extra'"]),
    (lambda p: p.write_bytes(_npz_bytes(**{**_arrays(), "y_val": np.array([{"a": 1}] * 5, dtype=object)})),
     ["y_val has dtype object"]),  # a pickled object array: refused from its header, never unpickled
    (lambda p: p.write_bytes(_npz_bytes(**{**_arrays(), "y_val": np.array(["a"] * 5)})), ["y_val has dtype <U1"]),
    (lambda p: _zip(p, {f"{k}.npy": _crafted_header((10**6, 3, 64, 64) if k == "x_train" else (1,)) for k in KEYS}),
     ["arrays take 49,152,000,0", "at most 8,589,934,592"]),  # claims 49 GB: refused before any array is read
    (lambda p: _zip(p, {f"{k}.npy": b"\x93NUMPY\x09\x00junk" for k in KEYS}), ["not a readable .npz"]),
    (lambda p: p.write_bytes(_npz_bytes(**{**_arrays(), "x_val": np.zeros((5, 3, 4, 4), np.float32)})),
     ["x_val: images are 4x4", "resolution is 8"]),
])
def test_a_bad_file_is_refused_in_one_line(tmp_path: Path, make, needles: list[str]) -> None:
    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises(UserError) as err:
        load_dataset("npz", path, resolution=R)
    _one_line(err, f"--data-dir {path}", *needles)


@pytest.mark.parametrize(("where", "needles"), [
    (None, ["--data-dir", "needs one", "numpy.savez"]),
    ("missing.npz", ["cannot read it", "No such file"]),
    (".", ["is a directory"]),
])
def test_a_missing_file_is_refused_in_one_line(tmp_path: Path, where: str | None, needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        load_dataset("npz", None if where is None else tmp_path / where, resolution=R)
    _one_line(err, *needles)


def test_a_full_disk_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_savez = np.savez

    def savez_then_disk_full(handle, **arrays):
        real_savez(io.BytesIO(), **arrays)
        handle.write(b"PK" * 1000)  # partway
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez_then_disk_full)
    with pytest.raises(DiskFullError):
        write_npz(check_arrays(_arrays(), "data", R), tmp_path / "d.npz")
    assert list(tmp_path.iterdir()) == []


def test_the_train_evaluator_trains_on_an_npz_file(tmp_path: Path) -> None:
    from nas.evaluate.base import EvaluatorSpec, build_evaluator
    from nas.space import load_space

    write_npz(check_arrays(_arrays(n=16, m=6, resolution=32, classes=10), "data", 32), tmp_path / "d.npz")
    spec = EvaluatorSpec(space="proxylessnas", evaluator="train",
                         config={"data": "npz", "data_dir": str(tmp_path / "d.npz"), "epochs": 1, "batch_size": 8})
    evaluator = build_evaluator(spec)
    metrics = evaluator.evaluate(load_space("proxylessnas").sample(np.random.default_rng(0)))
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["params"] > 0
    assert round(metrics["accuracy"] * 6) == metrics["accuracy"] * 6  # a share of the 6 validation images


def test_the_train_config_takes_an_npz_file_and_refuses_one_for_digits(tmp_path: Path) -> None:
    from nas.evaluate.evaluators import normalize_evaluator_config

    config = normalize_evaluator_config("train", {"data": "npz", "data_dir": "d.npz"})
    assert config["data_dir"] == str(Path("d.npz").resolve())
    with pytest.raises(UserError) as err:
        normalize_evaluator_config("train", {"data": "digits", "data_dir": str(tmp_path / "d.npz")})
    _one_line(err, "data_dir", "cifar10, npz")
