"""A user's own data set as one `.npz` file: the `npz` data kind of the `train` evaluator.

The file holds four arrays and nothing else: `x_train` and `x_val`, float images (N, 3, R, R)
already normalised, at the space's resolution R; `y_train` and `y_val`, integer class labels
(N,). `nas search --data npz --data-dir FILE.npz` reads it, and `nas.search(data=(x_train, ...))`
writes the arrays it is given into one (`write_npz`, named by their content), since Ray workers
build the evaluator from JSON and read the data from disk. The file is untrusted input: it is read
with `np.load(allow_pickle=False)`, and its size and every array header (shape, dtype) are
checked before any array is read, so a crafted file can neither run code nor claim huge memory.
`check_arrays` is the one check of shapes, dtypes and labels, for a file and for arrays alike;
each refusal is one `UserError` line naming the key.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nas.errors import UserError, shorten
from nas.files import check_regular

if TYPE_CHECKING:
    from nas.evaluate.data import Dataset

KEYS = ("x_train", "y_train", "x_val", "y_val")
"""The arrays of a data set, in the order `nas.search(data=(...))` takes them."""
MAX_BYTES = 8 * 2**30
"""Largest data set (all four arrays, bytes): 8 GiB, e.g. 680,000 images of 3 x 64 x 64 float32."""
_MAX_HEADER = 10_000  # bytes of one .npy header; numpy writes about 128
_NPZ_FIX = "write it with numpy.savez(path, x_train=..., y_train=..., x_val=..., y_val=...)"


def check_arrays(arrays: Mapping[str, np.ndarray], where: str, resolution: int,
                 num_classes: int | None = None) -> dict[str, np.ndarray]:
    """The four arrays of a data set, checked, as float32 images and int64 labels (C-contiguous).

    Args:
        arrays: `KEYS` -> numpy array (every key present, no other).
        where: the source, first in messages (`--data-dir d.npz`, `data`).
        resolution: the side R of the images the space's networks take.
        num_classes: the classes the networks output; labels must lie in 0..num_classes-1 (None: any >= 0).

    Raises:
        UserError: one line naming the key, what it is and what is allowed.
    """
    keys = set(arrays)
    if keys != set(KEYS):
        odd = sorted(keys - set(KEYS)) or sorted(set(KEYS) - keys)
        state = "unknown" if keys - set(KEYS) else "missing"
        raise UserError(f"{where}: key {shorten(odd[0])} is {state}; allowed: exactly the arrays "
                        f"{', '.join(KEYS)}")
    total = sum(int(a.nbytes) for a in arrays.values())
    if total > MAX_BYTES:
        raise UserError(f"{where}: the arrays take {total:,} bytes; allowed: at most {MAX_BYTES:,}")
    checked: dict[str, np.ndarray] = {}
    for split in ("train", "val"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        checked[f"x_{split}"] = _images(x, f"{where}: x_{split}", resolution)
        checked[f"y_{split}"] = _labels(y, f"{where}: y_{split}", len(x), num_classes)
    return checked


def _images(x: np.ndarray, where: str, resolution: int) -> np.ndarray:
    allowed = f"allowed: float images (N, 3, {resolution}, {resolution}), N >= 1"
    if x.dtype.kind != "f" or x.ndim != 4 or x.shape[0] < 1 or x.shape[1] != 3:
        raise UserError(f"{where} is {x.dtype} {tuple(x.shape)}; {allowed}")
    if x.shape[2:] != (resolution, resolution):
        raise UserError(f"{where}: images are {x.shape[2]}x{x.shape[3]}, but the space's resolution is {resolution}; "
                        f"{allowed} (resize the images, or set the space's resolution to theirs)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{where} holds NaN or infinite values; {allowed}, finite")
    return x


def _labels(y: np.ndarray, where: str, n: int, num_classes: int | None) -> np.ndarray:
    top = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
    allowed = f"allowed: {n} integer labels (N,) in {top}, one per image"
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise UserError(f"{where} is {y.dtype} {tuple(y.shape)}; {allowed}")
    low, high = int(y.min()), int(y.max())  # n >= 1: checked with the images
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = low if low < 0 else high
        raise UserError(f"{where} holds label {bad}; {allowed}" + (
            " (the space's networks output num_classes logits)" if num_classes is not None else ""))
    return np.ascontiguousarray(y, dtype=np.int64)


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of checked arrays (`check_arrays`): their keys, dtypes, shapes and bytes, in `KEYS` order."""
    digest = hashlib.sha256()
    for key in KEYS:
        array = arrays[key]
        digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def write_npz(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Write checked arrays to `path` as an uncompressed `.npz`: a temp file beside it, fsynced, renamed over it.

    Raises:
        DiskFullError: the disk is full; nothing is left behind.
    """
    from nas.run_dir import write_atomic

    write_atomic(path, lambda handle: np.savez(handle, **{key: arrays[key] for key in KEYS}),
                 if_full="nothing was written; free space and run the search again")


def load_npz(data_dir: str | Path | None, resolution: int) -> Dataset:
    """The data set in the `.npz` file `data_dir` (checked by `check_arrays`), cached while the file is unchanged."""
    if data_dir is None:
        raise UserError(f"--data-dir: data set 'npz' needs one: the path of a .npz file; {_NPZ_FIX}")
    path = Path(data_dir)
    try:
        check_regular(path, f"--data-dir {path}")
        stat = path.stat()
    except OSError as err:
        raise UserError(f"--data-dir {path}: cannot read it ({err.strerror}); give the path of a .npz file") from None
    return _load(path.resolve(), stat.st_mtime_ns, stat.st_size, resolution)


# Datasets hold whole arrays: two cover a search (its data, at one resolution) with room for a changed file.
@lru_cache(maxsize=2)
def _load(path: Path, mtime_ns: int, size: int, resolution: int) -> Dataset:
    """`load_npz` of one version of the file (`mtime_ns`, `size`: the cache key)."""
    import torch

    from nas.evaluate.data import Dataset  # here: data.py imports this module

    where = f"--data-dir {path}"
    if size > MAX_BYTES + 2**20:  # the arrays plus their headers and the zip directory
        raise UserError(f"{where} is {size:,} bytes; allowed: at most {MAX_BYTES:,} of arrays")
    _check_headers(path, where)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in KEYS}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise UserError(f"{where}: not a readable .npz file ({reason}); {_NPZ_FIX}") from None
    arrays = check_arrays(raw, where, resolution)
    num_classes = int(max(arrays["y_train"].max(), arrays["y_val"].max())) + 1
    return Dataset("npz", *(torch.from_numpy(arrays[key]) for key in KEYS), num_classes=num_classes)


def _check_headers(path: Path, where: str) -> None:
    """Refuse a file that is no zip of exactly the four `.npy` arrays, or whose headers claim a dtype that is not
    a plain number or more than `MAX_BYTES` in all, before any array is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            names = {name.removesuffix(".npy") for name in members}
            if names != set(KEYS) or len(members) != len(KEYS):
                extra = sorted(names - set(KEYS))
                problem = (f"holds an unknown array {shorten(extra[0])}" if extra else
                           f"has no array {sorted(set(KEYS) - names)[0]}")
                raise UserError(f"{where} {problem}; allowed: exactly the arrays {', '.join(KEYS)}; {_NPZ_FIX}")
            total = 0
            for key in KEYS:
                with archive.open(members[f"{key}.npy"]) as member:
                    shape, dtype = _header(member)
                if dtype.kind not in "fiu" or dtype.hasobject:
                    raise UserError(f"{where}: {key} has dtype {str(dtype)[:40]}; allowed: float images "
                                    "and integer labels")
                total += math.prod(shape) * dtype.itemsize
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise UserError(f"{where}: not a readable .npz file ({reason}); {_NPZ_FIX}") from None
    if total > MAX_BYTES:
        raise UserError(f"{where}: the arrays take {total:,} bytes; allowed: at most {MAX_BYTES:,}")


def _header(member: zipfile.ZipExtFile) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a `.npy` header (format 1.0 or 2.0, what `numpy.save` writes for plain arrays)."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_HEADER)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_HEADER)
    else:
        raise ValueError(f".npy format {version[0]}.{version[1]}; allowed: 1.0 or 2.0")
    return shape, dtype


__all__ = ["KEYS", "MAX_BYTES", "arrays_sha256", "check_arrays", "load_npz", "write_npz"]
