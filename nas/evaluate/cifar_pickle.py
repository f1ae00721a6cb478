"""A pickle reader that builds only what a CIFAR-10 batch file holds.

The CIFAR-10 python release is a set of pickles; `pickle.load` on a file from disk would run any
code the file names. `CifarUnpickler` builds plain containers, text, numbers and numpy arrays of
plain numbers only, and `count_operations` bounds a file's work before any of it runs.
"""

from __future__ import annotations

import math
import pickle
import pickletools

import numpy as np

from nas.errors import shorten

MAX_OPERATIONS = 500_000
"""Most pickle operations in a batch file: the release's have about 30,000 (10,000 labels and file names),
a copy that Python 3 re-pickled at protocol 2 about 90,000. Every object a pickle builds takes at
least one operation, so this bounds the memory a crafted file can claim."""
_NUMBER_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)  # subarray, names, fields, elsize, alignment, flags


def count_operations(raw: bytes) -> None:
    """Refuse a pickle of more than `MAX_OPERATIONS` operations (or an unreadable one) before any runs."""
    for count, _ in enumerate(pickletools.genops(raw), 1):
        if count > MAX_OPERATIONS:
            raise pickle.UnpicklingError(f"more than {MAX_OPERATIONS:,} pickle operations; a CIFAR-10 batch has "
                                         "under 100,000")


class _Dtype:
    """A numpy dtype named in a pickle: a plain number type only, made real once its state is checked."""

    def __init__(self, code: object) -> None:
        code = code.decode("ascii", "replace") if isinstance(code, bytes) else code
        if code not in _NUMBER_CODES:
            raise pickle.UnpicklingError(f"refusing dtype {shorten(code, 20)}; a CIFAR-10 batch holds plain numbers")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: object) -> None:
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for a plain number (version 4: + metadata None).
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] != len(state) - 5 \
                or state[2:8] != _PLAIN_DTYPE_STATE or state[8:] not in ((), (None,)):
            raise pickle.UnpicklingError("refusing a dtype with fields, sub-arrays or flags")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"refusing the byte order {shorten(order, 20)}")
        self.dtype = self.dtype.newbyteorder(order if order in ("<", ">") else "=")


class PickledArray:
    """A numpy array named in a pickle: built by `np.frombuffer` once its state is checked."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing an array state that numpy does not write")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _from_bytes(raw: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """An array of `shape` over the bytes `raw`, after checking every argument and the size."""
    if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes | bytearray) or order not in ("C", "F") \
            or not isinstance(shape, tuple) or len(shape) > 8 \
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise pickle.UnpicklingError("refusing an array that is not plain numbers in a buffer")
    if math.prod(shape) * dtype.dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(f"an array of shape {shorten(shape, 40)} over {len(raw):,} bytes")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order)


def _reconstruct(cls: object, shape: object, code: object) -> PickledArray:
    # numpy's reduce always writes _reconstruct(ndarray, (0,), b"b"): an empty array its state then fills.
    if cls is not _NDARRAY or shape != (0,) or code not in (b"b", "b"):
        raise pickle.UnpicklingError("refusing an array built other than numpy pickles it")
    return PickledArray()


def _frombuffer(buf: object, dtype: object, shape: object, order: object, axis_order: object = None) -> np.ndarray:
    if axis_order is not None:
        raise pickle.UnpicklingError("refusing a non-contiguous array")
    return _from_bytes(buf, dtype, shape, order)


def _scalar(dtype: object, raw: object) -> np.generic:
    return _from_bytes(raw, dtype, (), "C")[()]


def _dtype(code: object, align: object = False, copy: object = True) -> _Dtype:
    return _Dtype(code)


def _empty_bytes(*args: object) -> bytes:
    # Python 3 writes b"" in protocol 2 as bytes() (an empty array's buffer).
    if args:
        raise pickle.UnpicklingError("refusing bytes() with arguments")
    return b""


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    # Python 3 writes bytes in protocol 2 as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than to latin1")
    return text.encode("latin-1")


_NDARRAY = object()  # stands for numpy.ndarray, which only `_reconstruct` may name: calling it would allocate
_GLOBALS: dict[tuple[str, str], object] = {
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


class CifarUnpickler(pickle.Unpickler):
    """Builds plain containers, text, numbers and numpy arrays of plain numbers only: every global a
    pickle names is replaced by a checked stand-in (`_GLOBALS`), so a data file cannot run code or
    hand numpy a crafted dtype or array state."""

    def find_class(self, module: str, name: str) -> object:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {_cut(module, 60)}.{_cut(name, 60)}")
        return found


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


__all__ = ["MAX_OPERATIONS", "CifarUnpickler", "PickledArray", "count_operations"]
