"""Where tables live (user dir first, then the committed one), their names, identity and the exact fix commands.

A suggested `nas profile` command is checked by running it through the real CLI parser with
the profiling itself replaced: the space, device and path it would measure must be the ones
that were missing.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nas.config import PROFILES_DIR
from nas.errors import NasError, UserError
from nas.hardware import store
from nas.hardware.store import (
    default_device_id,
    profile_command,
    resolve_table,
    table_for_arch,
    table_identity,
    table_name,
    table_path,
    user_profiles_dir,
)
from nas.hardware.table import LatencyTable
from nas.space import find_preset, load_space, space_of

from .conftest import FakeConfig, FakeSpace
from .test_table import make_table

ORT_DEVICE = "amd-epyc-onnxruntime-t1-fp32-b1"
TORCH_R32 = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"


class _Captured(Exception):
    """Raised by the stand-in for `nas.hardware.profile.profile`: what the command would have measured."""

    def __init__(self, space, timer, path) -> None:
        super().__init__("captured")
        self.space, self.timer, self.path = space, timer, Path(path)


def run_suggested(command: str, monkeypatch: pytest.MonkeyPatch) -> _Captured:
    """Run a suggested `nas profile ...` command through the CLI, stopping where it would start timing."""
    from nas.cli import app

    def capture(space, timer, batch, path, **_):
        raise _Captured(space, timer, path)

    monkeypatch.setattr("nas.hardware.profile.profile", capture)
    argv = shlex.split(command)
    assert argv[:2] == ["nas", "profile"], command
    result = CliRunner().invoke(app, argv[1:])
    assert isinstance(result.exception, _Captured), (command, result.output, result.exception)
    return result.exception


def suggested(message: str) -> str:
    """The command in backticks at the end of an error message or note."""
    return message.rsplit("`", 2)[-2]


# -- places -------------------------------------------------------------------------------------

def test_user_profiles_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_PROFILES_DIR", str(tmp_path / "mine"))
    assert user_profiles_dir() == tmp_path / "mine"
    monkeypatch.delenv("NAS_PROFILES_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_profiles_dir() == tmp_path / "data" / "nas" / "hardware_profiles"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # the XDG spec: relative paths are ignored
    assert user_profiles_dir() == Path.home() / ".local" / "share" / "nas" / "hardware_profiles"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_profiles_dir() == Path.home() / ".local" / "share" / "nas" / "hardware_profiles"


def test_table_name_tells_configs_apart(space):
    assert table_name(load_space("proxylessnas")) == "proxylessnas-r32.yaml"
    assert table_name(load_space("proxylessnas", {"resolution": 224})) == "proxylessnas-r224.yaml"
    names = {table_name(load_space("proxylessnas", {"resolution": 224, **extra}))
             for extra in ({"num_classes": 1000}, {"width_mult": 0.5}, {"num_classes": 1000, "width_mult": 0.5})}
    assert len(names) == 3 and all(n.startswith("proxylessnas-r224-") and len(n) == len("proxylessnas-r224-") + 13
                                   for n in names)
    assert table_name(space) == "fake-r8.yaml" and table_name(FakeSpace(FakeConfig(width=16))) != "fake-r8.yaml"
    assert table_path("dev", space) == user_profiles_dir() / "dev" / "fake-r8.yaml"


def test_resolve_table_looks_in_the_user_dir_first(space, tmp_path, monkeypatch):
    committed = tmp_path / "committed"
    monkeypatch.setattr(store, "PROFILES_DIR", committed)
    with pytest.raises(UserError) as err:
        resolve_table(None, space, batch=1)
    message = str(err.value)
    for needle in (str(table_path(default_device_id("cpu"), space)), str(committed), "nas profile --space fake"):
        assert needle in message, message
    ours, theirs = make_table(space), make_table(space, corrected=False)
    theirs.save(table_path("my-device", space, committed))
    assert resolve_table("my-device", space, batch=1).data == theirs.data
    ours.save(table_path("my-device", space))
    found = resolve_table("my-device", space, batch=1)
    assert found.data == ours.data and found.path == table_path("my-device", space).resolve()
    with pytest.raises(UserError, match="not 4"):
        resolve_table("my-device", space, batch=4)
    file = tmp_path / "elsewhere.yaml"
    theirs.save(file)
    assert resolve_table(str(file), space, batch=1).data == theirs.data
    with pytest.raises(UserError, match="not found"):
        resolve_table(str(tmp_path / "nope.yaml"), space, batch=1)


def test_table_identity(tmp_path, space):
    table = LatencyTable.load(TORCH_R32)
    identity = table_identity(table)
    assert identity == {"path": str(TORCH_R32.resolve()), "device_id": "amd-epyc-torch-t1-fp32-b1",
                        "sha256": hashlib.sha256(TORCH_R32.read_bytes()).hexdigest(), "scale": 1.0}
    assert Path(identity["path"]).is_absolute()
    with pytest.raises(NasError, match="in memory"):
        table_identity(make_table(space))


# -- exact fix commands ---------------------------------------------------------------------------

def test_missing_table_command_measures_what_is_missing(monkeypatch):
    space = load_space("proxylessnas", {"resolution": 224, "num_classes": 1000})
    with pytest.raises(UserError) as err:
        resolve_table(None, space, batch=1)
    command = suggested(str(err.value))
    assert "--resolution 224" in command and "--classes 1000" in command and "--device cpu" in command
    got = run_suggested(command, monkeypatch)
    assert got.space.config == space.config and got.timer.name == "cpu"
    assert got.path == table_path(default_device_id("cpu"), space)  # where resolve_table looks first


@pytest.mark.parametrize("how", ["device-id", "other-config"])
def test_onnxruntime_tables_suggest_the_onnxruntime_device(how, monkeypatch):
    space = load_space("proxylessnas", {"resolution": 64})
    with pytest.raises(UserError) as err:
        if how == "device-id":
            resolve_table(ORT_DEVICE, space, batch=1)  # no r64 table for this device id
        else:
            LatencyTable.load(PROFILES_DIR / ORT_DEVICE / "proxylessnas-r32.yaml", space)
    command = suggested(str(err.value))
    assert "--device onnxruntime " in command and "--resolution 64" in command, command
    got = run_suggested(command, monkeypatch)
    assert got.space.config == space.config and got.timer.name == "onnxruntime"
    assert got.timer.device_id == default_device_id("onnxruntime")


@pytest.mark.parametrize("preset", ["proxyless_cpu", "proxyless_mobile", "proxylessnas_tiny"])
def test_preset_commands_measure_the_preset_config(preset, monkeypatch):
    arch = find_preset(preset)
    table, note = table_for_arch(arch, default_device_id("cpu"))
    assert table is None
    command = suggested(note)
    got = run_suggested(command, monkeypatch)
    assert got.space.config == space_of(arch).config, command
    assert got.path.name == table_name(space_of(arch)) and f"--resolution {arch.config['resolution']}" in command


def test_profile_command_flags(space):
    assert profile_command(load_space("proxylessnas")) == (
        "nas profile --space proxylessnas --resolution 32 --device cpu --batch 1 --threads 1")
    assert profile_command(load_space("proxylessnas", {"width_mult": 0.5}), "cuda", 64, 2, "fp16") == (
        "nas profile --space proxylessnas --resolution 32 --width-mult 0.5 --device cuda --batch 64 --threads 2 "
        "--dtype fp16")
    assert store.parse_device_id(ORT_DEVICE) == {"device": "onnxruntime", "threads": 1, "dtype": "fp32", "batch": 1}
    assert store.parse_device_id("nvidia-h100-torch-t1-fp16-b64")["device"] == "cuda"
    assert store.parse_device_id("synthetic") is None


# -- tables for presets -------------------------------------------------------------------------

def test_a_preset_is_priced_by_the_table_of_its_config():
    """A table measured at the preset's own config (here a synthetic one) prices the preset."""
    arch = find_preset("proxylessnas_tiny")
    space = space_of(arch)
    demo = _synthetic(load_space("proxylessnas"), table_path(default_device_id("cpu"), load_space("proxylessnas")))
    table, note = table_for_arch(arch, default_device_id("cpu"))
    assert table is None and "width_mult=1.0 (this arch: 0.35)" in note and str(demo) in note
    path = _synthetic(space, table_path(default_device_id("cpu"), space))
    table, note = table_for_arch(arch, default_device_id("cpu"))
    assert table is not None and note == str(path)
    assert table.predict(arch) == pytest.approx(0.01 * len(space.latency_keys(arch)))


def test_a_table_of_an_equivalent_config_prices_the_arch():
    """The configs differ in a field that changes no latency key: the table prices the arch, and says so."""
    space = load_space("proxylessnas", {"resolution": 48})
    arch = space.sample(np.random.default_rng(5))
    other = load_space("proxylessnas", {"resolution": 48, "dropout": 0.5})
    path = _synthetic(other, table_path(default_device_id("cpu"), other))
    table, note = table_for_arch(arch, default_device_id("cpu"))
    assert table is not None and "equivalent config" in note and str(path) in note
    assert table.predict_keys(space.latency_keys(arch)) == pytest.approx(0.01 * len(space.latency_keys(arch)))


def _synthetic(space, path: Path) -> Path:
    """A table of 0.01 ms per key for `space` at its config, saved to `path`."""
    from nas.hardware.schema import Entry, Metadata, TableFile

    meta = Metadata(space=space.name, space_config=space.config.model_dump(mode="json"), device_id="synthetic",
                    backend="cpu", hardware="synthetic", batch=1, dtype="fp32", threads=1, versions={},
                    measured_at="2026-01-01")
    entries = {k: Entry(mean=0.01, std=0.0, count=1) for k in space.all_latency_keys()}
    LatencyTable(TableFile(metadata=meta, entries=entries)).save(path)
    return path


def test_a_table_that_cannot_be_kept_in_the_temp_dir_either_is_reported_lost(tmp_path, monkeypatch):
    """The temp dir is often on the same full disk: the spare save fails with `DiskFullError`, the
    message says the table is lost, and no empty `nas-unsaved-*` folder stays behind."""
    import tempfile

    from nas.run_dir import DiskFullError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    table = make_table(FakeSpace(FakeConfig()))

    def full(path):
        raise DiskFullError(f"disk full writing {path}")

    monkeypatch.setattr(table, "save", full)
    message = store._keep_elsewhere(table, tmp_path / "out.yaml")
    assert "it is lost" in message and "disk is full" in message, message
    assert not list(tmp_path.glob("nas-unsaved-*"))
