"""`nas profile` and `nas spaces` on latency tables: where tables go, which table is read, what is printed.

The commands run in-process (typer's runner) with the timing itself replaced where it
would take minutes; what is checked is which table is read and which path is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.config import PROFILES_DIR
from nas.hardware.store import default_device_id, table_path
from nas.space import find_preset, space_of

from .test_store import _synthetic, run_suggested

TORCH_R32 = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_new_table_goes_to_the_user_dir(user_profiles, monkeypatch, tmp_path):
    got = run_suggested("nas profile --space proxylessnas --resolution 224", monkeypatch)
    assert got.path == user_profiles / got.timer.device_id / "proxylessnas-r224.yaml"
    named = tmp_path / "here.yaml"
    assert run_suggested(f"nas profile --out {named}", monkeypatch).path == named  # only --out goes elsewhere


def test_validate_reads_the_committed_table_and_writes_the_user_dir(user_profiles, monkeypatch, tmp_path):
    calls = []

    def capture(table, space, timer, n, progress, out_path):
        calls.append((table.path, Path(out_path)))
        raise SystemExit(0)

    monkeypatch.setattr("nas.hardware.profile.validate", capture)
    before = TORCH_R32.read_bytes()
    assert _invoke("profile", "--validate", "--n-validate", "3").exit_code == 0
    device = default_device_id("cpu")
    if device == "amd-epyc-torch-t1-fp32-b1":  # the committed tables' device: found there
        assert calls[-1] == (TORCH_R32.resolve(), user_profiles / device / "proxylessnas-r32.yaml")
    copy = tmp_path / "copy.yaml"
    copy.write_bytes(before)
    assert _invoke("profile", "--validate", "--out", copy).exit_code == 0  # --out names both
    assert calls[-1] == (copy.resolve(), copy)
    assert _invoke("profile", "--validate", "--table", copy, "--out", tmp_path / "new.yaml").exit_code == 0
    assert calls[-1] == (copy.resolve(), tmp_path / "new.yaml")
    assert TORCH_R32.read_bytes() == before


@pytest.mark.parametrize(("args", "needles"), [
    (["--validate", "--rescale"], ["--validate and --rescale"]),
    (["--table", "t.yaml"], ["--table t.yaml", "--validate or --rescale"]),
    (["--preset", "proxylessnas_tiny", "--space", "nasnet"], ["proxylessnas_tiny", "nasnet", "--space proxylessnas"]),
])
def test_profile_refuses_contradictory_flags(args, needles):
    result = _invoke("profile", *args)
    assert result.exit_code != 0 and result.exception is not None
    for needle in needles:
        assert needle in str(result.exception), str(result.exception)


def test_spaces_prices_a_preset_with_the_table_of_its_config():
    arch = find_preset("proxylessnas_tiny")
    space = space_of(arch)
    result = _invoke("spaces", "--preset", "proxylessnas_tiny", "--json")
    info = json.loads(result.stdout)
    assert info["latency_ms"] is None and "--width-mult 0.35" in info["latency_note"]
    path = _synthetic(space, table_path(default_device_id("cpu"), space))
    info = json.loads(_invoke("spaces", "--preset", "proxylessnas_tiny", "--json").stdout)
    assert info["latency_ms"] == pytest.approx(0.01 * len(space.latency_keys(arch)))
    assert info["latency_table"] == str(path.resolve())
    text = _invoke("spaces", "--preset", "proxylessnas_tiny").stdout
    assert f"LUT latency: {info['latency_ms']:.3f} ms ({path})" in text


def test_spaces_says_why_a_preset_has_no_table_and_how_to_make_one(monkeypatch):
    result = _invoke("spaces", "proxylessnas", "--preset", "proxyless_mobile")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "LUT latency" in line)
    assert "LUT latency: - ms (no table for this config" in line
    if default_device_id("cpu") == "amd-epyc-torch-t1-fp32-b1":  # the committed r224 table is the nearest
        assert "num_classes=10 (this arch: 1000)" in line and "proxylessnas-r224.yaml" in line
    command = line.rsplit("`", 2)[-2]
    got = run_suggested(command, monkeypatch)
    assert got.space.config == space_of(find_preset("proxyless_mobile")).config
    assert "--preset proxyless_mobile" in command
