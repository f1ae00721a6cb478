"""Where latency tables live, how to find one, and the exact command that makes a missing one.

Two places hold tables, in the same layout `<device-id>/<space>-r<R>.yaml`:

- the user profiles directory, where every table a user measures, re-validates or rescales
  goes: `$NAS_PROFILES_DIR` if set, else `$XDG_DATA_HOME/nas/hardware_profiles` (by
  default `~/.local/share/nas/hardware_profiles`);
- the committed `hardware_profiles/` of the checkout, replaced only when `--out` names a file in it.

`resolve_table` looks in the user directory first, so a table measured (or rescaled) on this
host shadows the committed one of the same device id. A table at a space config other than
the space's defaults (resolution aside) is named `<space>-r<R>-<8 hex>.yaml`, the hex being
the start of the sha256 of its canonical config, so two configs at one resolution never share a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.arch import canonical_json
from nas.config import PROFILES_DIR
from nas.errors import NasError, UserError
from nas.hardware.table import LatencyTable

if TYPE_CHECKING:
    from nas.arch import Arch
    from nas.hardware.schema import Metadata
    from nas.space import SearchSpace

log = logging.getLogger(__name__)

ENV_DIR = "NAS_PROFILES_DIR"
_FLAGS = {"resolution": "--resolution", "num_classes": "--classes", "width_mult": "--width-mult"}
"""Space config keys `nas profile` sets by flag; the others only a preset (`--preset`) sets."""


def user_profiles_dir() -> Path:
    """The directory of the tables a user measures: `$NAS_PROFILES_DIR`, else the XDG data directory."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"  # XDG: relative paths are ignored
    return base / "nas" / "hardware_profiles"


def search_dirs() -> list[Path]:
    """Where `resolve_table` looks for a device id, first match wins: the user directory, then the committed one."""
    return [user_profiles_dir(), PROFILES_DIR]


def table_name(space: SearchSpace) -> str:
    """`<space>-r<R>.yaml` at the space's default config (any resolution), else `<space>-r<R>-<8 hex>.yaml`."""
    config = space.config.model_dump(mode="json")
    resolution = config["resolution"]
    if config == _base_config(space, None, resolution):
        return f"{space.name}-r{resolution}.yaml"
    return f"{space.name}-r{resolution}-{hashlib.sha256(canonical_json(config).encode()).hexdigest()[:8]}.yaml"


def table_path(device_id: str, space: SearchSpace, root: Path | None = None) -> Path:
    """`<root>/<device-id>/<table_name(space)>`; `root` defaults to the user profiles directory."""
    return (user_profiles_dir() if root is None else Path(root)) / device_id / table_name(space)


def find_table(device_id: str, space: SearchSpace) -> Path | None:
    """The file of `space`'s table for `device_id`: in the user directory, else the committed one, else None."""
    for root in search_dirs():
        path = table_path(device_id, space, root)
        if path.is_file():
            return path
    return None


class TableNotFound(UserError):
    """No table file where one was looked for (a table that exists but is damaged is a plain `UserError`)."""


def resolve_table(
    hardware: str | None, space: SearchSpace, batch: int, backend: str = "cpu", threads: int = 1
) -> LatencyTable:
    """Find, load and check the table that prices `space` at `batch`, bound to `space`.

    Args:
        hardware: a table file path, a device id (looked up by `find_table`), or None for the
            default device id of this machine's `backend` timer with `threads` threads.
    """
    if hardware is not None and (hardware.endswith((".yaml", ".yml")) or os.sep in hardware):
        path = Path(hardware)
        if not path.is_file():
            raise TableNotFound(f"latency table {path} not found; make it with "
                            f"`{profile_command(space, backend, batch, threads)}`")
        return LatencyTable.load(path, space, batch)
    device = dict(device=backend, threads=threads, batch=batch, dtype="fp32")
    if hardware is None:
        hardware = default_device_id(backend, threads, batch)
    else:
        device.update(parse_device_id(hardware) or {})
    path = find_table(hardware, space)
    if path is None:
        known = sorted({p.name for root in search_dirs() if root.is_dir() for p in root.iterdir() if p.is_dir()})
        looked = " and ".join(str(table_path(hardware, space, root)) for root in search_dirs())
        raise TableNotFound(f"no latency table for device {hardware!r}: looked for {looked}; make it with "
                        f"`{profile_command(space, **device)}` (profiled devices: {', '.join(known) or 'none'})")
    return LatencyTable.load(path, space, batch)


def table_for_arch(arch: Arch, device_id: str) -> tuple[LatencyTable | None, str]:
    """The table that prices `arch` on `device_id`, and a note saying which one or why none does.

    The table of the arch's own config first (`find_table`); else a table of the same space and
    resolution, measured at another config, that holds every latency key of the arch (keys
    name a unit's shapes, so equal keys are equal units). The note of a missing table names
    the config fields that differ, the keys lacking and the exact command that makes one.
    """
    from nas.space import load_space, space_of

    space = space_of(arch)
    keys = space.latency_keys(arch)
    path = find_table(device_id, space)
    if path is not None:
        return LatencyTable.load(path, space, batch=1), str(path)
    nearest = ""
    prefix = f"{space.name}-r{space.config.resolution}"
    # In lookup order (the user's tables first, then the committed ones), sorted within each directory.
    candidates = [p for root in search_dirs() for p in sorted((root / device_id).glob(f"{prefix}*.yaml"))]
    for other in dict.fromkeys(candidates):
        if other.stem != prefix and not other.stem.startswith(f"{prefix}-"):
            continue
        meta = LatencyTable.load(other).metadata
        table = LatencyTable.load(other, load_space(meta.space, meta.space_config), meta.batch)
        lacking = sorted({k for k in keys if k not in table.entries})
        fields = ", ".join(f"{k}={meta.space_config.get(k)!r} (this arch: {arch.config.get(k)!r})"
                           for k in _key_changing_fields(meta.space_config, arch))
        if not lacking:
            return table, f"{other} (measured at {fields or 'an equivalent config'}; it has every unit of this arch)"
        shown = ", ".join(lacking[:2]) + (", ..." if len(lacking) > 2 else "")
        nearest = nearest or (f"{other} differs in {fields or 'its config'} and lacks {len(lacking)} of the "
                              f"arch's {len(set(keys))} keys ({shown}); ")
    device = parse_device_id(device_id) or {}
    return None, f"no table for this config on {device_id}: {nearest}make one with `{profile_command(space, **device)}`"


def _key_changing_fields(config: dict[str, Any], arch: Arch) -> list[str]:
    """The fields of `config` that differ from the arch's config and change the arch's latency keys."""
    from nas.space import load_space, space_of

    keys = space_of(arch).latency_keys(arch)
    fields = []
    for key in sorted(set(config) | set(arch.config)):
        if config.get(key) != arch.config.get(key):
            other = load_space(arch.space, {**arch.config, key: config.get(key)})
            if other.latency_keys(other.make_arch(dict(arch.choices))) != keys:
                fields.append(key)
    return fields


def load_bound(path: Path) -> LatencyTable:
    """The table at `path`, bound to the space and config its metadata names (so fully checked)."""
    from nas.space import load_space

    meta = LatencyTable.load(path).metadata
    return LatencyTable.load(path, load_space(meta.space, meta.space_config), meta.batch)


def default_device_id(backend: str, threads: int = 1, batch: int = 1, dtype: str = "fp32") -> str:
    """The device id of this machine's `backend` timer (`amd-epyc-torch-t1-fp32-b1`)."""
    from nas.registry import TIMERS

    return TIMERS.get(backend)(threads=threads, batch=batch, dtype=dtype).device_id


def parse_device_id(device_id: str) -> dict[str, Any] | None:
    """The `nas profile` device, threads, dtype and batch a device id names; None for another kind of id.

    A device id is `<hardware>-<engine>-t<threads>-<dtype>-b<batch>` (`Timer.device_id`). The
    engine `torch` is both `cpu` and `cuda`: an NVIDIA GPU's hardware name tells them apart.
    """
    from nas.hardware.timers import _slug
    from nas.registry import TIMERS

    for name in TIMERS.names():
        engine = _slug(TIMERS.get(name).engine)
        match = re.fullmatch(rf"(.+)-{engine}-t(\d+)-([a-z0-9]+)-b(\d+)", device_id)
        if match and (engine != "torch" or (name == "cuda") is match[1].startswith("nvidia")):
            return {"device": name, "threads": int(match[2]), "dtype": match[3], "batch": int(match[4])}
    return None


def profile_command(
    space: SearchSpace, device: str = "cpu", batch: int = 1, threads: int = 1, dtype: str = "fp32",
    preset: str | None = None,
) -> str:
    """The exact `nas profile` command that measures the table of `space` at its config.

    `--resolution` always; `--classes` and `--width-mult` where the config differs from the
    space's defaults; `--preset` where it sets keys no flag sets (widths of a published
    model): the given `preset`, else the first of the space whose config gives those keys.
    """
    config = space.config.model_dump(mode="json")
    if preset is None and _unflagged_diff(config, _base_config(space, None, config["resolution"])):
        preset = next((p for p in space.preset_names()
                       if not _unflagged_diff(config, _base_config(space, p, config["resolution"]))), None)
    base = _base_config(space, preset, config["resolution"])
    parts = [f"nas profile --space {space.name}"] + ([f"--preset {preset}"] if preset else [])
    parts.append(f"--resolution {config['resolution']}")
    parts += [f"{flag} {config[key]}" for key, flag in _FLAGS.items() if key != "resolution"
              and key in config and config[key] != base.get(key)]
    parts.append(f"--device {device} --batch {batch} --threads {threads}")
    parts += [f"--dtype {dtype}"] if dtype != "fp32" else []
    return " ".join(parts)


def command_for(meta: Metadata | None, space: SearchSpace | None = None, batch: int | None = None) -> str:
    """The `nas profile` command that measures again the table `meta` describes (for `space`, `batch` if given)."""
    if meta is None:
        return "nas profile"
    if space is None:
        from nas.space import load_space

        try:
            space = load_space(meta.space, meta.space_config)
        except UserError:  # a table of an unknown space or config: the command cannot name it exactly
            return f"nas profile --space {meta.space} --device {meta.backend}"
    return profile_command(space, meta.backend, batch or meta.batch, meta.threads, meta.dtype)


def table_identity(table: LatencyTable) -> dict[str, Any]:
    """What a run records about the table it priced archs with: absolute path, device id, sha256 and scale."""
    if table.path is None or table.sha256 is None:
        raise NasError("table_identity: the table was built in memory; save or load it from a file first")
    return {"path": str(table.path), "device_id": table.metadata.device_id, "sha256": table.sha256,
            "scale": table_scale(table)}


def table_scale(table: LatencyTable) -> float:
    """The factor a rescale applied to the table's measured milliseconds (1.0 for a table never rescaled)."""
    rescaled = table.metadata.rescaled
    return 1.0 if rescaled is None else rescaled.scale


def write_table(table: LatencyTable, path: Path) -> None:
    """Save `table` to `path` atomically; on a full disk keep the measurements in the temp directory.

    The existing file at `path` stays as it was. When the disk is full the table is written to
    a fresh directory under the system temp directory instead (often another file system), and
    the error line says where, so minutes of measurement are not lost.
    """
    from nas.run_dir import DiskFullError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        table.save(path)
    except DiskFullError:
        raise DiskFullError(f"disk full while writing the latency table {path}: nothing was written there (an "
                            f"existing table is unchanged); {_keep_elsewhere(table, path)}") from None
    except OSError as err:
        raise UserError(f"cannot write the latency table {path} ({err.strerror or err}); nothing was written "
                        f"there; {_keep_elsewhere(table, path)}") from None


def remove_stale(path: Path) -> list[Path]:
    """Remove temp files of earlier, killed writers of `path` (see `nas.run_dir.remove_stale_temps`)."""
    from nas.run_dir import remove_stale_temps

    removed = remove_stale_temps(Path(path)) if Path(path).parent.is_dir() else []
    for tmp in removed:
        log.info("removed %s, left by a killed writer of %s", tmp, path)
    return removed


def _keep_elsewhere(table: LatencyTable, path: Path) -> str:
    """Save `table` under the system temp directory; says where, or that it could not."""
    from nas.run_dir import DiskFullError

    folder = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="nas-unsaved-"))
        spare = folder / path.name
        table.save(spare)
    except (OSError, DiskFullError) as err:  # the temp dir is often on the same full disk
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "the disk is full"
        return f"saving the measured table to {tempfile.gettempdir()} failed too ({reason}): it is lost"
    return f"the measured table was saved to {spare}: free space, then move it to {path}"


def _base_config(space: SearchSpace, preset: str | None, resolution: int) -> dict[str, Any]:
    """The config `nas profile --space S [--preset P] --resolution R` measures at, as JSON data."""
    from nas.registry import SPACES
    from nas.space import load_space

    if space.name not in SPACES:  # a space built in code (tests): its model's own defaults
        return space.config_model(resolution=resolution).model_dump(mode="json")
    overrides = dict(space.preset_spec(preset).config) if preset else {}
    return load_space(space.name, {**overrides, "resolution": resolution}).config.model_dump(mode="json")


def _unflagged_diff(config: dict[str, Any], base: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(config) | set(base)) if k not in _FLAGS and config.get(k) != base.get(k)]


__all__ = [
    "ENV_DIR",
    "TableNotFound",
    "command_for",
    "default_device_id",
    "find_table",
    "load_bound",
    "parse_device_id",
    "profile_command",
    "remove_stale",
    "resolve_table",
    "search_dirs",
    "table_identity",
    "table_name",
    "table_path",
    "table_for_arch",
    "table_scale",
    "user_profiles_dir",
    "write_table",
]
