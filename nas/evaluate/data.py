"""Data sets for short training runs: scikit-learn's bundled digits and CIFAR-10 from disk.

`load_dataset` returns a `Dataset` of normalised float32 images (N, 3, R, R) and int64
labels, already split into train and validation. `digits` (1,797 8x8 gray images, 10
classes) ships with scikit-learn, so it needs no download: it is upscaled bilinearly
to R x R, replicated to three channels and split per class with a seeded
`numpy.random.Generator`. `cifar10` reads the standard python-pickle release
(`cifar-10-batches-py`): train from the `data_batch_*` files present, validation
from `test_batch`. Nothing is ever downloaded. Each CIFAR-10 file is read once per
process while it is unchanged (cached by path, modification time and size), so a
search checks the whole data set at its start and its workers reload it cheaply.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.config import check_regular
from nas.errors import UserError, shorten

DATASETS = ("cifar10", "digits")

# Per-channel statistics of the CIFAR-10 training set (the usual published values).
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_MAX_RESOLUTION = 1024  # as nas.space.MAX_RESOLUTION; 60,000 CIFAR images at 1024 px are already 750 GB
_CIFAR_REEXTRACT = "re-extract cifar-10-python.tar.gz"
_CIFAR_FIX = "point --data-dir at the extracted cifar-10-batches-py directory (data_batch_1..5, test_batch)"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one data set, split into train and validation.

    Tensors may be shared with an in-process cache: index them (which copies), never
    modify them in place.
    """

    name: str
    x_train: torch.Tensor  # (N, 3, R, R) float32, normalised
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor  # (M, 3, R, R) float32, normalised
    y_val: torch.Tensor  # (M,) int64
    num_classes: int

    @property
    def resolution(self) -> int:
        """Height (= width) of every image."""
        return int(self.x_train.shape[-1])


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    resolution: int = 32,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> Dataset:
    """Load data set `name` at `resolution` x `resolution`.

    Args:
        name: `digits` (bundled with scikit-learn) or `cifar10` (needs `data_dir`).
        data_dir: directory of the CIFAR-10 python release; unused for `digits`.
        resolution: side of the square images the network sees.
        seed: seed of the digits train/validation split (CIFAR-10 has a fixed one).
        val_fraction: share of each digits class held out for validation.
    """
    if name not in DATASETS:
        raise UserError(f"--data: unknown data set {shorten(name)}; allowed: {', '.join(DATASETS)}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= _MAX_RESOLUTION:
        raise UserError(f"--resolution: must be an integer in [1, {_MAX_RESOLUTION}], got {shorten(resolution)}")
    if name == "digits":
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"--val-fraction: must lie strictly between 0 and 1, got {shorten(val_fraction)}")
        return _digits(resolution, seed, float(val_fraction))
    return _cifar10(data_dir, resolution)


@lru_cache(maxsize=8)
def _digits(resolution: int, seed: int, val_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = _resize(images, resolution).repeat(1, 3, 1, 1)  # (N, 3, R, R)
    train, val = _stratified_split(labels, val_fraction, np.random.default_rng(seed))
    mean, std = images[train].mean(), images[train].std()  # gray: one value for all three channels
    images = (images - mean) / std
    y = torch.from_numpy(labels)
    return Dataset("digits", images[train], y[train], images[val], y[val], num_classes=10)


def _stratified_split(
    labels: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices (sorted), holding out `val_fraction` of each class."""
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.from_numpy(np.sort(np.concatenate(train))), torch.from_numpy(np.sort(np.concatenate(val)))


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to (N, C, R, R); antialiased when shrinking."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    shrink = resolution < images.shape[-1]
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=shrink)


def _cifar10(data_dir: str | Path | None, resolution: int) -> Dataset:
    if data_dir is None:
        raise UserError(f"--data-dir: data set 'cifar10' needs one; {_CIFAR_FIX}")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root}: no such directory; {_CIFAR_FIX}")
    batches = sorted(root.glob("data_batch_*"))
    if not batches:
        raise UserError(f"--data-dir {root}: no data_batch_* files; {_CIFAR_FIX}")
    if not (root / "test_batch").is_file():
        raise UserError(f"--data-dir {root}: no test_batch file (the validation split); {_CIFAR_FIX}")
    parts = [_read_cifar_file(path) for path in batches]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_val, y_val = (part.copy() for part in _read_cifar_file(root / "test_batch"))  # the cached arrays are read-only
    return Dataset("cifar10", _cifar_images(x_train, resolution), torch.from_numpy(y_train),
                   _cifar_images(x_val, resolution), torch.from_numpy(y_val), num_classes=10)


def _cifar_images(rows: np.ndarray, resolution: int) -> torch.Tensor:
    """(N, 3072) uint8 rows (R plane, G plane, B plane) -> normalised (N, 3, R, R) float32."""
    images = torch.from_numpy(rows).reshape(-1, 3, 32, 32).float() / 255.0
    mean = torch.tensor(_CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD).view(1, 3, 1, 1)
    return _resize((images - mean) / std, resolution).contiguous()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a data file cannot run code."""

    _ALLOWED = {
        ("_codecs", "encode"),  # bytes in protocol 2 pickles written by Python 3
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`_read_cifar_batch`, cached while the file keeps its path, modification time and size."""
    try:
        stat = path.stat()
    except OSError as err:
        raise UserError(f"--data-dir: cannot read {path} ({err.strerror}); {_CIFAR_REEXTRACT}") from None
    return _read_cifar_batch(path.resolve(), stat.st_mtime_ns, stat.st_size)


# Six files of 30 MB: the whole release. The arrays are shared: callers copy before changing them.
@lru_cache(maxsize=6)
def _read_cifar_batch(path: Path, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) uint8 and labels (N,) int64 of one CIFAR-10 pickle file (`mtime_ns`, `size`: cache key).

    Both pickles of the release are read: the original one (bytes keys, `b"data"`) and the
    one that Python 3 code re-pickles (str keys, `"data"`).
    """
    fix = _CIFAR_REEXTRACT
    check_regular(path, "--data-dir")
    try:
        with path.open("rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise UserError(f"--data-dir: cannot read {path} ({err.strerror}); {fix}") from None
    except Exception as err:  # unpickling fails in many ways (EOFError, ValueError, ...): all mean corrupt
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 pickle ({reason}); {fix}") from None
    if not isinstance(batch, dict):
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict); {fix}")
    entries = {key.decode(errors="replace") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        found = shorten(sorted(map(str, entries)))
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 batch (keys {found}, need data and labels); {fix}")
    data = np.asarray(entries["data"])
    labels = np.asarray(entries["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = shorten(f"{data.dtype} {data.shape}")
        raise UserError(f"--data-dir: {path}: data is {got}, expected uint8 (N, 3072); {fix}")
    is_int = labels.shape == (len(data),) and np.issubdtype(labels.dtype, np.integer)
    if not is_int or (len(labels) > 0 and (labels.min() < 0 or labels.max() > 9)):
        raise UserError(f"--data-dir: {path}: labels must be {len(data)} integers in 0..9; {fix}")
    data.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return data, labels


__all__ = ["DATASETS", "Dataset", "load_dataset"]
