"""Data sets for short training runs: scikit-learn's bundled digits and CIFAR-10 from disk.

`load_dataset` returns a `Dataset` of normalised float32 images (N, 3, R, R) and int64
labels, already split into train and validation. `digits` (1,797 8x8 gray images, 10
classes) ships with scikit-learn, so it needs no download: it is upscaled bilinearly
to R x R, replicated to three channels and split per class with a seeded
`numpy.random.Generator`. `cifar10` reads the standard python-pickle release
(`cifar-10-batches-py`): train from the `data_batch_*` files present, validation
from `test_batch`. `npz` reads a user's own data set from one `.npz` file
(`nas.evaluate.npz_data`). Nothing is ever downloaded. Each CIFAR-10 file is read once per
process while it is unchanged (cached by path, modification time and size), so a
search checks the whole data set at its start and its workers reload it cheaply.
A batch file is untrusted input: it is size-bounded, its pickle operations are counted
before any runs, and `_CifarUnpickler` builds only dicts, lists, text, numbers and numpy
arrays of plain numbers, each array from checked arguments (`np.frombuffer`), never
from the dtype or array state the file claims.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import UserError, shorten
from nas.evaluate.cifar_pickle import CifarUnpickler, PickledArray, count_operations
from nas.files import check_regular

DATASETS = ("cifar10", "digits", "npz")
DATA_DIR_DATASETS = ("cifar10", "npz")
"""The data sets read from a `data_dir`; the others ship with a library and take none."""

# Per-channel statistics of the CIFAR-10 training set (the usual published values).
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_MAX_RESOLUTION = 1024  # as nas.space.MAX_RESOLUTION; 60,000 CIFAR images at 1024 px are already 750 GB
_CIFAR_REEXTRACT = "re-extract cifar-10-python.tar.gz"
_CIFAR_FIX = "point --data-dir at the extracted cifar-10-batches-py directory (data_batch_1..5, test_batch)"
_MAX_CIFAR_BYTES = 40 * 2**20
"""Largest batch file: the release's are 31 MB (10,000 images of 3,072 bytes, plus labels and names)."""


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
    _resized: dict[int, Dataset] = field(init=False, default_factory=dict, repr=False)

    @property
    def resolution(self) -> int:
        """Height (= width) of every image."""
        return int(self.x_train.shape[-1])

    def at_resolution(self, resolution: int) -> Dataset:
        """These images resized to `resolution` (`resize_images`), made once per resolution and kept with this data
        set: a space that searches the input resolution loads its data at the largest (the config's `resolution`)
        and feeds each arch at its own (`SearchSpace.input_resolution`)."""
        if resolution == self.resolution:
            return self
        resized = self._resized.get(resolution)
        if resized is None:
            resized = self._resized[resolution] = Dataset(
                self.name, resize_images(self.x_train, resolution), self.y_train,
                resize_images(self.x_val, resolution), self.y_val, self.num_classes)
        return resized


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    resolution: int = 32,
    seed: int = 0,
    val_fraction: float = 0.2,
    num_classes: int | None = None,
) -> Dataset:
    """Load data set `name` at `resolution` x `resolution`.

    Args:
        name: `digits` (bundled with scikit-learn), `cifar10` or `npz` (both need `data_dir`).
        data_dir: directory of the CIFAR-10 python release, or the `.npz` file of `npz`; None for
            `digits`, which ships with scikit-learn (a data dir given with it is refused, not ignored).
        resolution: side of the square images the network sees.
        seed: seed of the digits train/validation split (CIFAR-10 has a fixed one).
        val_fraction: share of each digits class held out for validation.
        num_classes: the logits the networks output (the space's `num_classes`, `--classes`); a data set with a
            label beyond them is refused (given, no network could learn it; its loss fails in every trial).
    """
    data = _load_dataset(name, data_dir, resolution, seed, val_fraction)
    if num_classes is not None and data.num_classes > num_classes:
        top = int(max(data.y_train.max(), data.y_val.max()))
        raise UserError(f"--classes {num_classes}: data set {name}{'' if data_dir is None else f' ({data_dir})'} has "
                        f"labels up to {top}, beyond the networks' {num_classes} outputs; allowed: --classes "
                        f"{data.num_classes} or more")
    return data


def _load_dataset(name: str, data_dir: str | Path | None, resolution: int, seed: int, val_fraction: float
                  ) -> Dataset:
    if name not in DATASETS:
        raise UserError(f"--data: unknown data set {shorten(name)}; allowed: {', '.join(DATASETS)}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= _MAX_RESOLUTION:
        raise UserError(f"--resolution: must be an integer in [1, {_MAX_RESOLUTION}], got {shorten(resolution)}")
    if data_dir is not None and name not in DATA_DIR_DATASETS:
        raise UserError(f"--data-dir: data set {name!r} takes no data dir (it ships with scikit-learn); data sets "
                        f"that take one: {', '.join(DATA_DIR_DATASETS)}; drop --data-dir")
    if name == "digits":
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"--val-fraction: must lie strictly between 0 and 1, got {shorten(val_fraction)}")
        return _digits(resolution, seed, float(val_fraction))
    if name == "npz":
        from nas.evaluate.npz_data import load_npz

        return load_npz(data_dir, resolution)
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


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, R, R) as the loaders here resize: bilinear, antialiased when shrinking; also how a batch
    loaded at a space's largest resolution reaches an arch's own (`SearchSpace.input_resolution`)."""
    return _resize(images, resolution)


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
    one that Python 3 code re-pickles (str keys, `"data"`). The file is bounded before it is
    read (`_MAX_CIFAR_BYTES`) and its pickle operations are counted before any runs
    (`_MAX_CIFAR_OPS`), so a crafted file can neither run code nor build a huge object.
    """
    fix = _CIFAR_REEXTRACT
    check_regular(path, "--data-dir")
    if size > _MAX_CIFAR_BYTES:
        raise UserError(f"--data-dir: {path} is {size:,} bytes, more than the {_MAX_CIFAR_BYTES:,} allowed for one "
                        f"CIFAR-10 batch file (the release's are 31 MB); {fix}")
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CIFAR_BYTES + 1)
    except OSError as err:
        raise UserError(f"--data-dir: cannot read {path} ({err.strerror}); {fix}") from None
    try:
        if len(raw) > _MAX_CIFAR_BYTES:
            raise pickle.UnpicklingError(f"it grew past {_MAX_CIFAR_BYTES:,} bytes while being read")
        count_operations(raw)
        batch = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # unpickling fails in many ways (EOFError, ValueError, ...): all mean corrupt
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 pickle ({_cut(reason)}); {fix}") from None
    data, labels = _batch_arrays(batch, path)
    data.setflags(write=False)
    labels.setflags(write=False)
    return data, labels


def _batch_arrays(batch: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The checked images (N, 3072) uint8 and labels (N,) int64 of an unpickled batch.

    Types, lengths and dtypes are checked before anything is converted, so a foreign
    object never reaches numpy.
    """
    fix = _CIFAR_REEXTRACT
    if not isinstance(batch, dict):
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict); {fix}")
    if not all(isinstance(key, str | bytes) for key in batch):
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 batch (a key is not text); {fix}")
    entries = {key.decode(errors="replace") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        found = shorten(sorted(entries))
        raise UserError(f"--data-dir: {path} is not a CIFAR-10 batch (keys {found}, need data and labels); {fix}")
    data = entries["data"].array if isinstance(entries["data"], PickledArray) else entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise UserError(f"--data-dir: {path}: data is {got}, expected a uint8 array (N, 3072); {fix}")
    labels = entries["labels"].array if isinstance(entries["labels"], PickledArray) else entries["labels"]
    if isinstance(labels, list) and len(labels) == len(data) \
            and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels):
        labels = np.array(labels, dtype=np.int64)
    is_int = isinstance(labels, np.ndarray) and labels.shape == (len(data),) and labels.dtype.kind in "iu"
    if not is_int or (len(labels) > 0 and (labels.min() < 0 or labels.max() > 9)):
        raise UserError(f"--data-dir: {path}: labels must be a list of {len(data)} integers in 0..9; {fix}")
    return data, labels.astype(np.int64)


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


__all__ = ["DATASETS", "DATA_DIR_DATASETS", "Dataset", "load_dataset", "resize_images"]
