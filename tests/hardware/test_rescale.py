"""Rescaling a table to this host's speed: the arithmetic, the host's scale, the warning and the command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nas.config import PROFILES_DIR
from nas.errors import UserError
from nas.hardware import rescale as rescale_module
from nas.hardware.rescale import host_scale, rescale, scale_warning, scaled
from nas.hardware.schema import Rescale
from nas.hardware.store import table_identity, table_path, table_scale
from nas.hardware.table import LatencyTable
from nas.space import load_space

TORCH_R32 = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"


@pytest.fixture(autouse=True)
def _fresh_host_speed_cache(tmp_path, monkeypatch):
    """These tests replace the timing: a timing another test left in the session's cache must not answer."""
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))


def _record(factor: float) -> Rescale:
    return Rescale(scale=factor, measured_ms=2.0 * factor, stored_ms=2.0, source="t.yaml", source_sha256="0" * 64,
                   source_device_id="dev", rescaled_at="2026-01-01T00:00:00+00:00")


def test_scaled_multiplies_every_millisecond():
    table = LatencyTable.load(TORCH_R32)
    space = load_space("proxylessnas")
    double = scaled(table, 2.0, _record(2.0))
    for arch in (space.sample(np.random.default_rng(seed)) for seed in (11, 12, 13)):
        assert double.predict(arch) == pytest.approx(2.0 * table.predict(arch), rel=1e-12)
    key = next(iter(table.entries))
    assert double.entries[key].mean == 2.0 * table.entries[key].mean
    assert double.correction.fit_ms == pytest.approx([2.0 * ms for ms in table.correction.fit_ms])
    assert np.array(double.validation.points) == pytest.approx(2.0 * np.array(table.validation.points))
    relative = ("mape", "within_5", "within_10", "spearman", "noise")
    assert [getattr(double.validation, f) for f in relative] == [getattr(table.validation, f) for f in relative]
    protocol = double.metadata.protocol
    assert protocol["network_reference"]["ms"] == 2.0 * table.metadata.protocol["network_reference"]["ms"]
    assert protocol["reference_ms"] == 2.0 * table.metadata.protocol["reference_ms"]
    assert table_scale(double) == 2.0 and table_scale(table) == 1.0
    assert double.lower_bound(space) == pytest.approx(2.0 * table.lower_bound(space))


def test_scale_warning_needs_a_stored_reference(monkeypatch):
    table = LatencyTable.load(TORCH_R32)
    protocol = {k: v for k, v in table.metadata.protocol.items() if k != "network_reference"}
    bare = LatencyTable(table.data.model_copy(update={"metadata": table.metadata.model_copy(
        update={"protocol": protocol})}), "bare.yaml")

    def never(*_):
        raise AssertionError("timed a table without a reference network")

    monkeypatch.setattr(rescale_module, "_time_reference", never)
    assert scale_warning(bare) is None
    with pytest.raises(Exception, match="timed a table"):
        scale_warning(table)


def test_scale_warning_names_the_rescale_command(monkeypatch, tmp_path):
    table = LatencyTable.load(TORCH_R32)
    stored = table.metadata.protocol["network_reference"]["ms"]
    monkeypatch.setattr(rescale_module, "_time_reference", lambda t, s: (stored * 1.1, stored))
    assert scale_warning(table) is None  # within 15%
    monkeypatch.setattr(rescale_module, "_time_reference", lambda t, s: (stored * 0.6, stored))
    assert scale_warning(table) is None  # the first timing, reused for minutes (nas.hardware.host_speed)
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "another-cache"))
    warning = scale_warning(table)
    assert "scale 0.60" in warning and "1.67x faster" in warning and "\n" not in warning
    assert warning.endswith(f"`nas profile --rescale --table {TORCH_R32}`")


def test_rescale_refuses_a_scale_out_of_range(monkeypatch):
    """A host measured 10 000 times faster than the table (a broken timer, a wrong table) is no rescale."""
    table = LatencyTable.load(TORCH_R32)
    stored = table.metadata.protocol["network_reference"]["ms"]
    monkeypatch.setattr(rescale_module, "_time_reference", lambda t, s: (stored / 10_000, stored))
    with pytest.raises(UserError, match=r"out of range \(a finite number in \[0.001, 1000\]\)") as err:
        rescale(table)
    assert "\n" not in str(err.value) and "nas profile --space proxylessnas" in str(err.value)


class _FixedTimer:
    """A timer that measures every network at `ms`: this host's speed, fixed, so the arithmetic is exact
    (a real timing on a shared machine drifts by tens of per cent within a test)."""

    def __init__(self, ms: float, device_id: str, hardware: str) -> None:
        self.ms, self.device_id, self.hardware = ms, device_id, hardware

    def calibrated_ms(self, module, input_shape, seconds, key=""):
        assert input_shape[0] == 3 and seconds > 0
        return self.ms


def test_rescale_a_table_whose_reference_time_was_doubled(tmp_path, user_profiles, monkeypatch):
    """A copy of the PyTorch r32 table with its reference network's ms doubled: this host looks twice as fast.

    The rescaled copy lands in the user profiles dir, scaled by half of what the unchanged
    table gives, and this host then runs its reference at its stored speed.
    """
    from nas.cli import app

    data = yaml.safe_load(TORCH_R32.read_text())
    stored = data["metadata"]["protocol"]["network_reference"]["ms"]
    data["metadata"]["protocol"]["network_reference"]["ms"] *= 2
    doubled = tmp_path / "proxylessnas-r32.yaml"
    doubled.write_text(yaml.safe_dump(data, sort_keys=True))
    original = LatencyTable.load(TORCH_R32)
    meta = original.metadata
    monkeypatch.setattr(rescale_module, "_timer",
                        lambda table: _FixedTimer(1.3 * stored, meta.device_id, meta.hardware))
    plain = host_scale(original, seconds=1.0)
    assert plain == pytest.approx(1.3)
    result = CliRunner().invoke(app, ["profile", "--rescale", "--table", str(doubled), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["scale"] == pytest.approx(0.5 * plain), report
    space = load_space("proxylessnas")
    out = Path(report["table"])
    assert out == table_path(out.parent.name, space) and out.is_relative_to(user_profiles)
    rescaled = LatencyTable.load(out, space)
    record = rescaled.metadata.rescaled
    assert record.scale == pytest.approx(report["scale"]) and record.source == str(doubled.resolve())
    assert record.source_sha256 == hashlib.sha256(doubled.read_bytes()).hexdigest()
    assert table_identity(rescaled)["scale"] == record.scale and table_identity(rescaled)["path"] == str(out)
    arch = space.sample(np.random.default_rng(21))
    assert rescaled.predict(arch) == pytest.approx(record.scale * LatencyTable.load(doubled).predict(arch))
    assert host_scale(rescaled, seconds=1.0) == pytest.approx(1.0)
    assert doubled.read_text() == yaml.safe_dump(data, sort_keys=True)  # the source is left alone


@pytest.mark.slow
def test_host_scale_times_the_reference_network_on_this_host():
    """The real timer: a positive, finite scale (its value depends on this machine and its load)."""
    scale = host_scale(LatencyTable.load(TORCH_R32), seconds=0.5)
    assert 0.01 < scale < 100
