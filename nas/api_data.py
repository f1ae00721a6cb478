"""A user's data set given to `nas.search` as arrays: checked, then written into the run dir for the `train` evaluator.

Ray workers build the evaluator from JSON, so the data must be a file they can read: the arrays
(`nas.evaluate.npz_data.check_arrays`: shapes, dtypes, labels, the space's resolution and classes)
are written as `data-<sha256 prefix>.npz` into the run dir, and the evaluator config names it as an
`npz` data set, as `nas search --data npz --data-dir FILE` would. The file is written once the whole
search config is checked and the run dir is known to be usable; a search refused after that (by the
plan, or by a run dir of another search) removes the file, and the run dir if the call made it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import NasError, UserError, shorten

if TYPE_CHECKING:
    import numpy as np

__all__ = ["data_file", "data_flags", "written_data"]


def data_flags(data: Any, data_dir: Any, evaluator: Any, evaluator_config: Mapping[str, Any] | None,
               space: str, space_overrides: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """The data keywords of `nas.search` as run-config flags (`evaluator_config.data`, `.data_dir`), and the
    user's arrays, checked against the space, or None: a name or a `.npz` path needs no arrays. The flag
    `data_dir` of arrays is the caller's to set, to `data_file`."""
    if data is None and data_dir is None:
        return None, {}
    if evaluator_config is not None and {"data", "data_dir"} & set(evaluator_config):
        raise UserError("data: given twice, as data/data_dir and in evaluator_config; allowed: one of them")
    if evaluator not in (None, "train"):
        raise UserError(f"data: only the train evaluator trains on a data set; evaluator is {shorten(evaluator)}")
    if isinstance(data, str | None):
        return None, {"evaluator_config.data": data, "evaluator_config.data_dir": _path(data_dir)}
    if data_dir is not None:
        raise UserError("data_dir: only with a data set name (data='cifar10'); arrays or a .npz path need none")
    if isinstance(data, os.PathLike):
        return None, {"evaluator_config.data": "npz", "evaluator_config.data_dir": _path(data)}
    from nas.evaluate.npz_data import check_arrays
    from nas.space import load_space

    raw = _arrays(data)
    config = load_space(space, space_overrides).config
    return check_arrays(raw, "data", config.resolution, config.num_classes), {"evaluator_config.data": "npz"}


def _path(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


def _arrays(data: Any) -> dict[str, np.ndarray]:
    """`(x_train, y_train, x_val, y_val)` or a dict of those keys, as numpy arrays (torch tensors converted)."""
    from nas.evaluate.npz_data import KEYS

    if isinstance(data, Mapping):
        items = dict(data)
    elif isinstance(data, Sequence) and len(data) == len(KEYS):
        items = dict(zip(KEYS, data, strict=True))
    else:
        raise UserError(f"data: {shorten(data, 60)}; allowed: a data set name, a .npz path, or the arrays "
                        f"({', '.join(KEYS)}) as a tuple or dict")
    return {str(key): _numpy(value, f"data: {key}") for key, value in items.items()}


def _numpy(value: Any, where: str) -> np.ndarray:
    import sys

    import numpy as np

    torch = sys.modules.get("torch")  # a tensor can only come from an imported torch
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise UserError(f"{where} is a {type(value).__name__}; allowed: a numpy array or a torch tensor")
    return value


def data_file(run_dir: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Where checked arrays live in a run dir: `data-<sha256 prefix>.npz`, named by their content, so other
    arrays are another file, which the run dir's stored config refuses as another search."""
    from nas.evaluate.npz_data import arrays_sha256

    return run_dir / f"data-{arrays_sha256(arrays)[:16]}.npz"


@contextmanager
def written_data(run_dir: Path, path: Path | None, arrays: Mapping[str, np.ndarray] | None) -> Iterator[None]:
    """The user's arrays in `path` while the block runs; a search that fails before its config names the file
    removes it, and the run dir if this made it, so a refused search leaves nothing behind."""
    if path is None or arrays is None:
        yield
        return
    from nas.evaluate.npz_data import write_npz
    from nas.run_dir import RunDir, remove_stale_temps

    made_dir = not os.path.lexists(run_dir)
    with RunDir(run_dir):  # refuses a directory that is no run dir, or one in use, before the file is written
        pass
    made_file = not path.exists()
    try:
        if made_file:
            remove_stale_temps(path)
            write_npz(arrays, path)
        yield
    except BaseException:
        if made_file and not _names(run_dir, path):
            path.unlink(missing_ok=True)
        if made_dir:
            _remove_if_unused(run_dir)
        raise


def _names(run_dir: Path, path: Path) -> bool:
    """Whether the run dir's `config.yaml` names `path` as its data (or cannot be read: then keep the file)."""
    from nas.files import load_yaml

    config = run_dir / "config.yaml"
    if not config.exists():
        return False
    try:
        stored = load_yaml(config)
    except (NasError, OSError):
        return True
    section = stored.get("evaluator_config") if isinstance(stored, dict) else None
    return not isinstance(section, dict) or section.get("data_dir") == str(path.resolve())


def _remove_if_unused(run_dir: Path) -> None:
    """Remove a run dir this call made if it holds no more than a search leaves before its first file."""
    import shutil

    try:
        if {p.name for p in run_dir.iterdir()} <= {".lock", "strategy"}:
            shutil.rmtree(run_dir / "strategy", ignore_errors=True)
            (run_dir / ".lock").unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass  # left in place: an empty dir is harmless, and a later search reuses it
